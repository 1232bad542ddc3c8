// This machine's ceilings, measured at run time, so that kernel figures can be reported as
// fractions of what the hardware does (the CPU under these machines changes from day to day).
#pragma once
#include <cstddef>

namespace epserve::kernels {

struct Roofline {
  int threads = 0;              // OpenMP threads used for every figure
  double read_gbps = 0;         // memory read bandwidth (buffer ≫ L3), GB/s (1e9 bytes)
  double fp32_fma_gflops = 0;   // FP32 FMA peak: 2 flops per lane per FMA, GFLOP/s
  bool has_bf16_dot = false;    // AVX512-BF16 compiled in
  double bf16_dot_gflops = 0;   // vdpbf16ps peak: 4 flops per 32-bit lane (2 products, 2 adds); 0 if absent
  double amx_bf16_gflops = 0;   // TDPBF16PS peak (not used by the kernels); 0 if absent
};

// The read-bandwidth probe's buffer, allocated and faulted in once, for measuring again and again
// between other work. (Mapping and unmapping hundreds of MB per measurement slowed the engine steps
// timed after it by 20-130% on a PVM guest, whose shadow page tables pay for every unmap: `sim
// engine` measures between its rounds, docs/PERFORMANCE.md.)
class ReadBandwidthProbe {
 public:
  // A buffer of `bytes`, or of twice the last-level cache where that is larger
  // (probe_bytes_past_caches), so that every pass reads memory.
  explicit ReadBandwidthProbe(size_t bytes = size_t(512) << 20);
  ~ReadBandwidthProbe();
  ReadBandwidthProbe(const ReadBandwidthProbe&) = delete;
  ReadBandwidthProbe& operator=(const ReadBandwidthProbe&) = delete;
  // Streams the buffer (split between the threads) several times and keeps the best pass.
  double gbps() const;

 private:
  float* data_ = nullptr;
  size_t n_ = 0;  // floats
};

// max(bytes, twice the last-level cache), at most 2 GiB.
size_t probe_bytes_past_caches(size_t bytes);

// A probe of `bytes` (or more, as above), measured once.
double measure_read_bandwidth_gbps(size_t bytes = size_t(512) << 20);
// Independent FMA chains in registers (enough to cover latency × throughput), best of a few runs.
double measure_fp32_fma_gflops();
// Same with vdpbf16ps; 0 where the target has no AVX512-BF16.
double measure_bf16_dot_gflops();
// Asks Linux for the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM, once per process); false
// where the build does not target AMX or the kernel refuses.
bool request_amx_permission();
// This thread's tile configuration: eight tiles of 16 rows × 64 bytes (FP32 accumulators of 16 × 16,
// BF16 pairs of 16 × 16), the shape the AMX probe and kernels use. Needs the permission above.
void configure_amx_tiles();
// The AMX-BF16 peak (TDPBF16PS on four accumulator tiles, all threads), where the build targets AMX
// and Linux grants the tile state; 0 otherwise. The kernels do not use AMX: the figure is reported
// beside the vector peaks so that a fraction of those is not read as one of all the CPU offers.
double measure_amx_bf16_gflops();
// Whether vdpbf16ps multiplies and adds at least as fast as FP32 FMAs on this CPU (flops per
// second, one thread, the best of short alternating runs: about 3 ms). Zen 5 runs it at twice the
// FMA rate, an Intel Xeon of the AMX generation at half of it. False without AVX512-BF16.
bool bf16_dot_at_least_fma_rate();

// All of the above (about a second).
Roofline measure_roofline();

}  // namespace epserve::kernels
