// What the simulator knows about one accelerator (a "GPU"; on the cpu preset, one host running one
// epserve rank) and its node. Every number carries its source in hardware.cpp and in
// docs/ARCHITECTURE.md ("Simulator").
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/roofline.h"

namespace epserve::sim {

struct Hardware {
  std::string name;
  // Dense peak rates per GPU (no sparsity), in TFLOPS.
  double fp8_tflops = 0;
  double bf16_tflops = 0;
  // HBM: bandwidth (GB/s, 1e9) and capacity (GB).
  double hbm_gbps = 0;
  double hbm_gb = 0;
  // Scale-up (NVLink) bandwidth per GPU, one direction, GB/s; scale-out (RDMA NIC) per GPU, GB/s.
  double nvlink_gbps = 0;
  double rdma_gbps = 0;
  double rdma_latency_us = 0;  // one all-to-all round's fixed cost
  int gpus_per_node = 8;
  int sms = 132;               // streaming multiprocessors (compute units)
  double usd_per_gpu_hour = 0;
  // Reading from the disk KV cache per node (GB/s).
  double kv_read_gbps_per_node = 0;

  // Kernel efficiencies: the fraction of the peak above that the published kernels reach.
  double gemm_eff = 0;           // FP8 GEMM, large shapes (DeepGEMM)
  double mla_decode_mem_eff = 0; // FlashMLA, memory-bound side (fraction of hbm_gbps)
  double mla_decode_flop_eff = 0;// FlashMLA, compute-bound side (fraction of bf16_tflops)
  double attn_prefill_eff = 0;   // causal BF16 attention in prefill (fraction of bf16_tflops)
  double hbm_eff = 0;            // streaming weights through memory-bound GEMMs
  double ll_comm_eff = 0;        // DeepEP low-latency (decode) kernels, fraction of rdma_gbps
  double normal_comm_eff = 0;    // DeepEP normal (prefill) kernels, fraction of rdma_gbps
  double nvlink_eff = 0;         // fraction of nvlink_gbps reached by DeepEP intranode
  int comm_sms_prefill = 0;      // SMs given to communication while prefill overlaps
  int gemm_row_tile = 1;         // GEMM rows are computed in multiples of this (Hopper WGMMA: 64)

  bool measured = false;         // the cpu preset: rates measured on this machine

  // The cpu preset only: products are costed as epserve's own CPU kernels run them (src/kernels,
  // docs/ARCHITECTURE.md "Simulator", "The cpu preset"); false on the GPU presets.
  bool cpu_kernels = false;
  double fp32_tflops = 0;        // FP32 FMA peak: decode kernels, BF16-weight products, attention loops
  int decode_max_m = 8;          // products of up to this many rows stream their weights (kDecodeMaxM)
  bool bf16_widened = false;     // prefill-regime BF16 weights widened to FP32 tiles as FP8 ones are (AVX2)
  double decode_flop_eff = 0;    // decode kernels' multiply-adds, fraction of fp32_tflops
  double hbm_dot_eff = 0;        // decode products on BF16 dot products (the lm_head in DeepSeek
                                 // numerics) stream their BF16 weights at this fraction of hbm_gbps
  double dequant_eff = 0;        // prefill kernels: weight elements widened per 128-row block, at
                                 // fp32_tflops * dequant_eff elements/s
  double attn_eff = 0;           // the absorbed attention kernel (model/absorbed_attention.h), fraction of fp32_tflops
  double gemm_bf16_eff = 0;      // prefill-regime products of BF16 weights (the lm_head of a decode
                                 // step of more than decode_max_m sequences, the router gate in a
                                 // prefill): their microkernel, fraction of the dot / FMA peak
};

// `h800`, `h100` or `cpu` (measured here, in about a second). Throws epserve::Error otherwise.
Hardware hardware_preset(const std::string& name);
nlohmann::json hardware_json(const Hardware& h);
std::vector<std::string> hardware_preset_names();

// This machine's read bandwidth, FP32 FMA and BF16 dot-product peaks (src/kernels/roofline.h).
struct CpuMeasurement {
  double mem_gbps = 0;
  double fma_gflops = 0;
  double bf16_gflops = 0;  // the vdpbf16ps peak where the kernels use it (kernels::bf16_dot_in_use), else 0
  int threads = 0;
};
// `probe`: a read-bandwidth buffer kept between measurements (sim engine measures between its
// timed rounds and must not map and unmap one each time); null: a fresh 128 MiB one.
CpuMeasurement measure_cpu(const kernels::ReadBandwidthProbe* probe = nullptr);
// The cpu preset for given ceilings (hardware_preset("cpu") measures them first).
Hardware cpu_preset(const CpuMeasurement& m);

}  // namespace epserve::sim
