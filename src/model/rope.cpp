#include "model/rope.h"

#include <algorithm>
#include <cmath>

namespace epserve::model {

YarnRope::YarnRope(const ModelConfig& c) {
  const int dim = c.qk_rope_head_dim;
  const double base = c.rope_theta;
  const auto& y = c.rope_scaling;
  freqs_.resize(dim / 2);
  for (int i = 0; i < dim / 2; ++i) freqs_[i] = float(1.0 / std::pow(base, double(2 * i) / dim));
  if (y.factor > 1) {
    auto correction_dim = [&](double rotations) {
      return dim * std::log(y.original_max_position_embeddings / (rotations * 2 * M_PI)) / (2 * std::log(base));
    };
    const double lo = std::max(std::floor(correction_dim(y.beta_fast)), 0.0);
    double hi = std::min(std::ceil(correction_dim(y.beta_slow)), double(dim - 1));
    if (lo == hi) hi += 0.001;
    for (int i = 0; i < dim / 2; ++i) {
      const float ramp = float(std::clamp((i - lo) / (hi - lo), 0.0, 1.0));
      freqs_[i] = freqs_[i] / float(y.factor) * ramp + freqs_[i] * (1 - ramp);
    }
  }
}

void YarnRope::angles(int pos, std::span<float> cos, std::span<float> sin) const {
  for (size_t i = 0; i < freqs_.size(); ++i) {
    const float angle = float(pos) * freqs_[i];
    cos[i] = std::cos(angle);
    sin[i] = std::sin(angle);
  }
}

void YarnRope::rotate(std::span<float> x, std::span<const float> cos, std::span<const float> sin) const {
  for (size_t i = 0; i < freqs_.size(); ++i) {
    const float c = cos[i], s = sin[i];
    const float a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = a * c - b * s;
    x[2 * i + 1] = a * s + b * c;
  }
}

}  // namespace epserve::model
