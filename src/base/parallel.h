#pragma once
// Loops over the OpenMP threads, entered only when the work is worth a parallel region.
//
// Why not `#pragma omp parallel for if (cond)`: a region whose `if` is false still builds a team
// of one thread. On these machines (2 vCPUs of a PVM guest) that cost 1.6 µs, 3 µs nested inside
// another region, against 3–5 µs for a real two-thread region; a batch-1 decode step of the bench
// model entered 450 regions, 340 of them with a false `if` (docs/PERFORMANCE.md). These helpers
// decide before OpenMP is entered, so a loop that stays on the calling thread costs nothing extra.
#include <omp.h>

#include <algorithm>
#include <concepts>

namespace epserve {

// body(i) for i in [0, n): in static chunks over the threads when `parallel`, else in order on the
// calling thread.
template <std::integral I, class F>
void parallel_for(I n, bool parallel, F&& body) {
  if (!parallel || n <= 1) {
    for (I i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(static)
  for (I i = 0; i < n; ++i) body(i);
}

// The same, handed out one index at a time (for uneven work).
template <std::integral I, class F>
void parallel_for_dynamic(I n, bool parallel, F&& body) {
  if (!parallel || n <= 1) {
    for (I i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (I i = 0; i < n; ++i) body(i);
}

// body(begin, end) once per thread over contiguous ranges splitting [0, n) (each thread's range as
// schedule(static) would give it), for loops that set up per-thread state once; once over [0, n)
// on the calling thread when not `parallel`.
template <std::integral I, class F>
void parallel_ranges(I n, bool parallel, F&& body) {
  if (!parallel || n <= 1) {
    if (n > 0) body(I(0), n);
    return;
  }
#pragma omp parallel
  {
    const I threads = I(omp_get_num_threads()), t = I(omp_get_thread_num());
    const I chunk = (n + threads - 1) / threads, begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
    if (begin < end) body(begin, end);
  }
}

}  // namespace epserve
