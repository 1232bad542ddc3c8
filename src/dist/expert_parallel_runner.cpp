#include "dist/expert_parallel_runner.h"

#include <bit>
#include <chrono>
#include <cstring>

#include "base/bf16.h"
#include "base/error.h"
#include "base/scratch.h"

namespace epserve::dist {

using kernels::Numerics;

namespace {

// Wire format of one message: u32 count, then count × {u32 pair, u32 expert}, then count rows.
struct Entry {
  uint32_t pair;    // t * k + choice at the home rank
  uint32_t expert;  // logical expert
};

template <typename T>
void append(Bytes& b, const T* data, size_t n) {
  const auto* p = reinterpret_cast<const uint8_t*>(data);
  b.insert(b.end(), p, p + n * sizeof(T));
}

double since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

void ExpertParallelRunner::run(int layer, const model::MoeWeights& w, const model::ModelConfig& c,
                               const model::Routing& r, std::span<const float> x, int T, Numerics mode,
                               std::vector<float>& rows) {
  const int R = comm_.size(), d = c.hidden_size, blocks = kernels::ceil_div(d, kernels::kQuantBlock);
  const bool fp8 = mode == Numerics::kDeepSeek;
  const size_t row_bytes = fp8 ? size_t(d) + 4 * size_t(blocks) : 4 * size_t(d);
  auto t0 = std::chrono::steady_clock::now();

  // Dispatch: each (token, choice) to the rank holding the replica chosen for it.
  kernels::Fp8Rows xq;
  if (fp8 && T > 0) kernels::quantize_rows_fp8(x, T, d, xq);
  std::vector<std::vector<Entry>> entries(R);
  for (int t = 0; t < T; ++t)
    for (int k = 0; k < r.k; ++k) {
      const int e = r.expert[size_t(t) * r.k + k];
      const int dest = placement_.rank_of_slot(placement_.choose_slot(layer, e, comm_.rank(), t));
      entries[dest].push_back({uint32_t(t * r.k + k), uint32_t(e)});
    }
  std::vector<Bytes> send(R);
  for (int dest = 0; dest < R; ++dest) {
    auto& b = send[dest];
    const uint32_t n = uint32_t(entries[dest].size());
    b.reserve(4 + n * (sizeof(Entry) + row_bytes));
    append(b, &n, 1);
    append(b, entries[dest].data(), n);
    for (const auto& en : entries[dest]) {
      const int t = int(en.pair) / r.k;
      if (fp8) {
        append(b, &xq.codes[size_t(t) * d], d);
        append(b, &xq.scales[size_t(t) * blocks], blocks);
      } else {
        append(b, &x[size_t(t) * d], d);
      }
    }
    stats_.dispatch_bytes += long(b.size());
  }
  const auto received = comm_.all_to_all(std::move(send));
  stats_.dispatch_s += since(t0);

  // Gather what arrived per expert, remembering each row's origin for the combine: the messages
  // checked and the rows counted per expert first, then copied into one buffer (model::ExpertRows).
  auto t1 = std::chrono::steady_clock::now();
  const int E = c.n_routed_experts;
  std::vector<int> count(size_t(E), 0);
  std::vector<std::vector<std::pair<int, int>>> origin(R);  // per source: (expert, row in that expert)
  std::vector<uint32_t> arrived(R);
  for (int src = 0; src < R; ++src) {
    const auto& b = received[src];
    EPS_REQUIRE(b.size() >= 4, "dispatch: short message from rank " + std::to_string(src));
    uint32_t& n = arrived[size_t(src)];
    std::memcpy(&n, b.data(), 4);
    EPS_REQUIRE(b.size() == 4 + n * (sizeof(Entry) + row_bytes), "dispatch: malformed message from rank " + std::to_string(src));
    for (uint32_t i = 0; i < n; ++i) {
      Entry en;
      std::memcpy(&en, b.data() + 4 + i * sizeof(Entry), sizeof(Entry));
      EPS_REQUIRE(en.expert < uint32_t(E), "dispatch: bad expert id from rank " + std::to_string(src));
      origin[src].push_back({int(en.expert), count[en.expert]++});
    }
  }
  model::ExpertRows buffers(count, d, mode);
  for (int src = 0; src < R; ++src) {
    const uint8_t* payload = received[src].data() + 4 + arrived[size_t(src)] * sizeof(Entry);
    for (uint32_t i = 0; i < arrived[size_t(src)]; ++i) {
      const auto [e, m] = origin[src][i];
      const size_t row = buffers.first_row(e) + size_t(m);
      const uint8_t* in = payload + i * row_bytes;
      if (fp8) {
        std::memcpy(buffers.codes_row(row), in, size_t(d));
        std::memcpy(buffers.scales_row(row), in + d, 4 * size_t(blocks));
      } else {
        std::memcpy(buffers.f32_row(row), in, 4 * size_t(d));
      }
    }
  }
  const std::vector<model::ExpertInput> inputs = buffers.inputs();
  // The experts' output rows in one buffer, in the inputs' order (expert e's row m at
  // first_row(e) + m), kept between calls as the inputs are (base/scratch.h says why).
  size_t total_rows = 0;
  for (const int n : count) total_rows += size_t(n);
  auto& outputs = scratch<struct ExpertParallelOutputs>(total_rows * d);
  auto& out_rows = scratch_object<struct ExpertParallelOutRows, std::vector<std::vector<float*>>>();
  out_rows.resize(inputs.size());
  for (size_t e = 0; e < inputs.size(); ++e) {
    out_rows[e].resize(size_t(inputs[e].rows));
    for (int m = 0; m < inputs[e].rows; ++m) out_rows[e][size_t(m)] = &outputs[(buffers.first_row(int(e)) + size_t(m)) * d];
  }
  model::run_experts(w, c, inputs, out_rows, mode);
  stats_.experts_s += since(t1);

  // Combine: results go back in the order their rows came (BF16 in DeepSeek numerics: the expert
  // outputs are BF16 values already, so the narrowing is exact).
  auto t2 = std::chrono::steady_clock::now();
  std::vector<Bytes> reply(R);
  const size_t reply_row_bytes = fp8 ? 2 * size_t(d) : 4 * size_t(d);
  for (int src = 0; src < R; ++src) {
    auto& b = reply[src];
    b.resize(origin[src].size() * reply_row_bytes);
    for (size_t i = 0; i < origin[src].size(); ++i) {
      const auto [e, row] = origin[src][i];
      const float* out = &outputs[(buffers.first_row(e) + size_t(row)) * d];
      uint8_t* dst = b.data() + i * reply_row_bytes;
      if (fp8) {
        auto* narrow = reinterpret_cast<uint16_t*>(dst);  // 2-byte aligned: rows are whole BF16 rows
        for (int j = 0; j < d; ++j) narrow[j] = float_to_bf16(out[j]).bits;
      } else {
        std::memcpy(dst, out, reply_row_bytes);
      }
    }
    stats_.combine_bytes += long(b.size());
  }
  const auto back = comm_.all_to_all(std::move(reply));
  rows.resize(size_t(T) * r.k * d);
  const size_t out_row_bytes = fp8 ? 2 * size_t(d) : 4 * size_t(d);
  for (int dest = 0; dest < R; ++dest) {
    EPS_REQUIRE(back[dest].size() == entries[dest].size() * out_row_bytes,
                "combine: rank " + std::to_string(dest) + " returned a malformed message");
    for (size_t i = 0; i < entries[dest].size(); ++i) {
      float* target = &rows[size_t(entries[dest][i].pair) * d];
      const uint8_t* src = back[dest].data() + i * out_row_bytes;
      if (fp8) {
        const auto* wide = reinterpret_cast<const uint16_t*>(src);
        for (int j = 0; j < d; ++j) target[j] = std::bit_cast<float>(uint32_t(wide[j]) << 16);
      } else {
        std::memcpy(target, src, 4 * size_t(d));
      }
    }
  }
  stats_.combine_s += since(t2);
  ++stats_.layers;
}

}  // namespace epserve::dist
