#pragma once
// Per-thread buffers that keep their memory from call to call.
//
// A prefill forward needs tens of megabytes of activations per layer (the routed experts' outputs
// alone are tokens × 8 × hidden floats: 64 MB for 2,048 tokens of the bench model). Fresh vectors
// are mapped, page-faulted in and unmapped again on every layer (glibc maps each allocation over
// 32 MB afresh), and those page faults were about a sixth of the bench's prefill profile.

#include <cstddef>
#include <vector>

namespace epserve {

// This thread's buffer for `Tag`, resized to n elements: old contents are kept, new ones zero; the
// capacity never shrinks. Each Tag belongs to one function, which must not be re-entered on the
// same thread while it uses the buffer (write `scratch<struct SomeName>(n)`).
template <class Tag, class T = float>
std::vector<T>& scratch(size_t n) {
  thread_local std::vector<T> v;
  v.resize(n);
  return v;
}

// This thread's object of type T for `Tag`, as left by its last use. Bind it to a reference before
// an OpenMP region: a thread_local named inside one is each worker thread's own.
template <class Tag, class T>
T& scratch_object() {
  thread_local T object;
  return object;
}

}  // namespace epserve
