#include "sim/hardware.h"

#include <omp.h>

#include <algorithm>

#include "base/error.h"
#include "kernels/roofline.h"

namespace epserve::sim {

namespace {

// Hopper (H100 SXM and its export variant H800): identical SMs, clocks and HBM; the H800 has less
// NVLink. Sources, in order of the fields:
//  - FP8 1979 / BF16 989 dense TFLOPS, HBM3 3.35 TB/s, 80 GB: NVIDIA H100 SXM datasheet (the sparse
//    figures are twice these); DeepSeek-V3 tech report: H800 = H100 compute with reduced NVLink.
//  - NVLink per direction: H100 900 GB/s bidirectional -> 450; H800 400 GB/s -> 200 (datasheets).
//    DeepSeek measures about 160 GB/s on H800 [D], DeepEP intranode 153-158 GB/s [D]: nvlink_eff 0.78.
//  - RDMA: one ConnectX-7 400 Gb/s NIC per GPU = 50 GB/s [D Day 6 / tech report]; both clusters.
//  - 132 SMs (H100 SXM); prefill overlap gives 24 of them to communication [D profile-data].
//  - 3FS read: about 40 GiB/s per client node [D 3FS README].
//  - gemm_eff: DeepGEMM "up to 1350+ FP8 TFLOPS" on H800 at release (Feb 2025) [D]: 1350/1979.
//  - FlashMLA: 3000 GB/s memory-bound, 580 TFLOPS compute-bound on H800 at release [D]:
//    3000/3350 and 580/989.
//  - attn_prefill_eff: FlashAttention-3 forward reaches 600-740 BF16 TFLOPS on H100 (Shah et al.
//    2024) [3P]; causal masking costs some: 0.6.
//  - hbm_eff: what a streaming kernel reaches (FlashMLA's 3000 of 3350 GB/s) [D, as above].
//  - ll_comm_eff: DeepEP low-latency kernels, EP128 at 128 tokens: 39-40 GB/s of 50 [D].
//  - normal_comm_eff: DeepEP normal kernels, internode EP32: 44-47 GB/s of 50 (Feb 2025) [D].
Hardware hopper(const std::string& name, double nvlink_gbps) {
  Hardware h;
  h.name = name;
  h.fp8_tflops = 1979;
  h.bf16_tflops = 989;
  h.hbm_gbps = 3350;
  h.hbm_gb = 80;
  h.nvlink_gbps = nvlink_gbps;
  h.rdma_gbps = 50;
  h.rdma_latency_us = 5;
  h.gpus_per_node = 8;
  h.sms = 132;
  h.usd_per_gpu_hour = 2.0;  // DeepSeek's assumption [D]; also used for H100 rentals
  h.kv_read_gbps_per_node = 40 * 1.073741824;
  h.gemm_eff = 1350.0 / 1979.0;
  h.mla_decode_mem_eff = 3000.0 / 3350.0;
  h.mla_decode_flop_eff = 580.0 / 989.0;
  h.attn_prefill_eff = 0.6;
  h.hbm_eff = 3000.0 / 3350.0;
  h.ll_comm_eff = 0.79;
  h.normal_comm_eff = 0.9;
  h.nvlink_eff = 0.78;
  h.comm_sms_prefill = 24;
  h.gemm_row_tile = 64;  // WGMMA m64 (DeepGEMM's block M is 64 or 128)
  return h;
}

}  // namespace

CpuMeasurement measure_cpu() {
  // The kernels' run-time roofline (src/kernels/roofline.h), with a smaller buffer to stay fast.
  CpuMeasurement m;
  m.threads = omp_get_max_threads();
  m.mem_gbps = kernels::measure_read_bandwidth_gbps(size_t(128) << 20);
  m.fma_gflops = kernels::measure_fp32_fma_gflops();
  m.bf16_gflops = kernels::measure_bf16_dot_gflops();
  return m;
}

nlohmann::json hardware_json(const Hardware& h) {
  return {{"name", h.name},
          {"measured", h.measured},
          {"fp8_tflops", h.fp8_tflops},
          {"bf16_tflops", h.bf16_tflops},
          {"hbm_gbps", h.hbm_gbps},
          {"hbm_gb", h.hbm_gb},
          {"nvlink_gbps", h.nvlink_gbps},
          {"rdma_gbps", h.rdma_gbps},
          {"rdma_latency_us", h.rdma_latency_us},
          {"gpus_per_node", h.gpus_per_node},
          {"usd_per_gpu_hour", h.usd_per_gpu_hour},
          {"efficiencies",
           {{"gemm", h.gemm_eff},
            {"mla_decode_mem", h.mla_decode_mem_eff},
            {"mla_decode_flop", h.mla_decode_flop_eff},
            {"attn_prefill", h.attn_prefill_eff},
            {"hbm", h.hbm_eff},
            {"ll_comm", h.ll_comm_eff},
            {"normal_comm", h.normal_comm_eff},
            {"nvlink", h.nvlink_eff}}}};
}

std::vector<std::string> hardware_preset_names() { return {"h800", "h100", "cpu"}; }

Hardware hardware_preset(const std::string& name) {
  if (name == "h800") return hopper("h800", 200);
  if (name == "h100") return hopper("h100", 450);
  if (name == "cpu") {
    // One epserve rank per host. The rates are measured here; the efficiencies and the network are
    // placeholders until the engine exists and the calibration (`Trust`) fits them.
    const CpuMeasurement m = measure_cpu();
    Hardware h;
    h.name = "cpu";
    h.measured = true;
    // FP8 weights widen exactly to BF16: BF16 dot products where the CPU has them, else FP32 FMA.
    const double dot = m.bf16_gflops > 0 ? m.bf16_gflops : m.fma_gflops;
    h.fp8_tflops = dot / 1000;
    h.bf16_tflops = dot / 1000;
    h.hbm_gbps = m.mem_gbps;
    h.hbm_gb = 64;
    h.nvlink_gbps = m.mem_gbps / 2;  // ranks on one host exchange through shared memory
    h.rdma_gbps = 12.5;              // assumed 100 Gb/s Ethernet between hosts
    h.rdma_latency_us = 20;
    h.gpus_per_node = 1;
    h.sms = std::max(1, m.threads);
    h.usd_per_gpu_hour = 0.5;  // placeholder
    h.kv_read_gbps_per_node = 2;
    h.gemm_eff = 0.5;
    h.mla_decode_mem_eff = 0.7;
    h.mla_decode_flop_eff = 0.4;
    h.attn_prefill_eff = 0.4;
    h.hbm_eff = 0.8;
    h.ll_comm_eff = 0.5;
    h.normal_comm_eff = 0.7;
    h.nvlink_eff = 0.8;
    h.comm_sms_prefill = 0;
    return h;
  }
  std::string names;
  for (const auto& n : hardware_preset_names()) names += (names.empty() ? "" : ", ") + n;
  throw Error("unknown hardware preset '" + name + "' (known: " + names + ")");
}

}  // namespace epserve::sim
