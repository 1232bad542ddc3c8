#include "kernels/roofline.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <ctime>
#include <cstdlib>
#include <cstring>
#include <memory>

#include <sys/syscall.h>
#include <unistd.h>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 false positive inside its intrinsics
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

#include "base/error.h"

namespace epserve::kernels {

namespace {

// CPU time of the calling thread: each thread's rate is measured over the time it actually ran,
// so that other processes on a shared machine do not lower the ceilings (ratios against them stay
// conservative).
double thread_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

// Keeps a value alive without letting the compiler drop the work that made it.
template <class T>
void keep(const T& v) {
  asm volatile("" : : "r"(&v) : "memory");
}

// Independent FMA chains: ≥ FMA latency (4) × pipes (2) on every x86 we run on, with room. On AVX2,
// 14: the chains and the two operands fill its 16 ymm registers (16 chains would spill).
#if !defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
constexpr int kChains = 14;
#else
constexpr int kChains = 16;
#endif

}  // namespace

size_t probe_bytes_past_caches(size_t bytes) {
  // Twice the last-level cache: a buffer that fits in it is read partly from it (on an Intel Xeon
  // guest reporting 480 MiB of L3, a 128 MiB probe read 15 GB/s on its first pass and 19-47 GB/s
  // on later ones, where 512 MiB and 2 GiB gave a steady 15 and 29.5 on one and two threads).
  long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (l3 <= 0) l3 = long(32) << 20;
  return std::max(bytes, std::min(size_t(2) * size_t(l3), size_t(2) << 30));
}

ReadBandwidthProbe::ReadBandwidthProbe(size_t bytes)
    : n_(probe_bytes_past_caches(bytes) / sizeof(float) / 64 * 64) {
  data_ = static_cast<float*>(std::aligned_alloc(64, n_ * sizeof(float)));
  EPS_REQUIRE(data_ != nullptr, "roofline: cannot allocate the bandwidth buffer");
  float* p = data_;
  const size_t n = n_;
  // First touch by the threads that will read (pages local to them, all resident before timing).
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i += 16) std::memset(p + i, 0, 64);
}

ReadBandwidthProbe::~ReadBandwidthProbe() { std::free(data_); }

double measure_read_bandwidth_gbps(size_t bytes) { return ReadBandwidthProbe(bytes).gbps(); }

double ReadBandwidthProbe::gbps() const {
  const float* p = data_;
  const size_t n = n_;
  double best = 0;
  for (int rep = 0; rep < 8; ++rep) {
    double total = 0;  // Σ over threads of bytes / own time
#pragma omp parallel reduction(+ : total)
    {
      const int T = omp_get_num_threads(), t = omp_get_thread_num();
      const size_t chunk = n / 64 / T * 64, i0 = chunk * t, i1 = t == T - 1 ? n : i0 + chunk;
#pragma omp barrier
      const double t0 = thread_cpu_s();
#if defined(__AVX512F__)
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (size_t i = i0; i < i1; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
      }
      const float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#elif defined(__AVX2__) && defined(__FMA__)
      // 256-bit loads, a cache line per pair; 8 chains cover vaddps' latency (3) × 2 pipes, so
      // that only memory bounds the loop.
      __m256 a[8];
      for (int k = 0; k < 8; ++k) a[k] = _mm256_setzero_ps();
      for (size_t i = i0; i < i1; i += 64) {
#pragma GCC unroll 8
        for (int k = 0; k < 8; ++k) a[k] = _mm256_add_ps(a[k], _mm256_load_ps(p + i + 8 * k));
      }
      for (int k = 1; k < 8; ++k) a[0] = _mm256_add_ps(a[0], a[k]);
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, a[0]);
      float s = 0;
      for (float v : lanes) s += v;
#else
      float acc[16] = {};
      for (size_t i = i0; i < i1; i += 16)
        for (int j = 0; j < 16; ++j) acc[j] += p[i + j];
      float s = 0;
      for (float v : acc) s += v;
#endif
      keep(s);
      total += double(i1 - i0) * sizeof(float) / (thread_cpu_s() - t0);
    }
    best = std::max(best, total);
  }
  return best * 1e-9;
}

namespace {

// One thread's FMA rate over `iters` rounds of kChains independent chains, flops per second of its
// CPU time.
double fma_burst(long iters) {
#if defined(__AVX512F__)
  const double lanes = 16;
#else
  const double lanes = 8;
#endif
  const double t0 = thread_cpu_s();
#if defined(__AVX512F__)
  __m512 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm512_set1_ps(float(j));
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.001f);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  }
  for (int j = 1; j < kChains; ++j) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  keep(acc[0]);
#elif defined(__AVX2__) && defined(__FMA__)
  __m256 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm256_set1_ps(float(j));
  const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.001f);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < kChains; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  }
  for (int j = 1; j < kChains; ++j) acc[0] = _mm256_add_ps(acc[0], acc[j]);
  keep(acc[0]);
#else
  float acc[kChains][8];
  for (int j = 0; j < kChains; ++j)
    for (int l = 0; l < 8; ++l) acc[j][l] = float(j);
  for (long i = 0; i < iters; ++i)
    for (int j = 0; j < kChains; ++j)
      for (int l = 0; l < 8; ++l) acc[j][l] = acc[j][l] * 0.999f + 0.001f;
  keep(acc);
#endif
  return double(iters) * kChains * lanes * 2 / (thread_cpu_s() - t0);
}

// The same with vdpbf16ps (4 flops per 32-bit lane); 0 without AVX512-BF16.
[[maybe_unused]] double dot_burst(long iters) {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  const double t0 = thread_cpu_s();
  __m512 acc[kChains];
  for (int j = 0; j < kChains; ++j) acc[j] = _mm512_set1_ps(float(j));
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(-1e-3f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5f), _mm512_set1_ps(0.25f));
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < kChains; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
  }
  for (int j = 1; j < kChains; ++j) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  keep(acc[0]);
  return double(iters) * kChains * 16 * 4 / (thread_cpu_s() - t0);
#else
  (void)iters;
  return 0;
#endif
}

// The best of five runs of a burst on every thread at once, summed over the threads, GFLOP/s.
template <class Burst>
double all_threads_gflops(Burst burst) {
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    double total = 0;
#pragma omp parallel reduction(+ : total)
    total += burst(long(1) << 21);
    best = std::max(best, total);
  }
  return best * 1e-9;
}

}  // namespace

double measure_fp32_fma_gflops() { return all_threads_gflops(fma_burst); }

double measure_bf16_dot_gflops() {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  return all_threads_gflops(dot_burst);
#else
  return 0;
#endif
}

bool request_amx_permission() {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
  static const bool granted = [] {
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;  // <asm/prctl.h>, Linux 5.16
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return granted;
#else
  return false;
#endif
}

void configure_amx_tiles() {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
  struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
  } cfg;
  for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  // (GCC 12 does not see ldtilecfg read the struct and may drop the stores above: a scratch
  // program's configuration came out all zeros and its first tile instruction faulted.)
  asm volatile("" : : "r"(&cfg) : "memory");
  _tile_loadconfig(&cfg);
#endif
}

double measure_amx_bf16_gflops() {
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
  if (!request_amx_permission()) return 0;
  const long iters = 1 << 17;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    double total = 0;
#pragma omp parallel reduction(+ : total)
    {
      configure_amx_tiles();  // four FP32 accumulators, two A, two B
      alignas(64) uint16_t ones[16 * 32];
      std::fill(std::begin(ones), std::end(ones), uint16_t(0x3f80));  // BF16 1.0
      _tile_zero(0);  // (the tile intrinsics are asm statements: one per statement)
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      _tile_loadd(4, ones, 64);
      _tile_loadd(5, ones, 64);
      _tile_loadd(6, ones, 64);
      _tile_loadd(7, ones, 64);
      const double t0 = thread_cpu_s();
      for (long i = 0; i < iters; ++i) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      const double dt = thread_cpu_s() - t0;
      alignas(64) float out[16 * 16];
      _tile_stored(0, out, 64);
      keep(out);
      _tile_release();
      total += double(iters) * 4 * 16 * 16 * 32 * 2 / dt;  // 16 × 16 outputs × 32 products each
    }
    best = std::max(best, total);
  }
  return best * 1e-9;
#else
  return 0;
#endif
}

bool bf16_dot_at_least_fma_rate() {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  // One thread, no OpenMP (the kernels decide at their first product, which may run inside a
  // parallel region). CPU time, best of each: preemption and a slow first burst only lower a rate.
  double dot = 0, fma = 0;
  for (int round = 0; round < 7; ++round) {
    dot = std::max(dot, dot_burst(long(1) << 14));
    fma = std::max(fma, fma_burst(long(1) << 14));
  }
  return dot >= fma;
#else
  return false;
#endif
}

Roofline measure_roofline() {
  Roofline r;
  r.threads = omp_get_max_threads();
  r.read_gbps = measure_read_bandwidth_gbps();
  r.fp32_fma_gflops = measure_fp32_fma_gflops();
#if defined(__AVX512F__) && defined(__AVX512BF16__)
  r.has_bf16_dot = true;
  r.bf16_dot_gflops = measure_bf16_dot_gflops();
#endif
  r.amx_bf16_gflops = measure_amx_bf16_gflops();
  return r;
}

}  // namespace epserve::kernels
