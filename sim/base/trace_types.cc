#include "sim/base/trace_types.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "sim/base/errors.h"

namespace kvsim {

std::string dtype_name(StoredDType dtype) {
  switch (dtype) {
    case StoredDType::kFloat16:
      return "float16";
    case StoredDType::kBFloat16:
      return "bfloat16";
    case StoredDType::kFloat32:
      return "float32";
  }
  return "?";
}

StoredDType parse_dtype(const std::string& name) {
  if (name == "float16" || name == "fp16") return StoredDType::kFloat16;
  if (name == "bfloat16" || name == "bf16") return StoredDType::kBFloat16;
  if (name == "float32" || name == "fp32") return StoredDType::kFloat32;
  throw ConfigError("unknown dtype '" + name + "' (valid: float16, bfloat16, float32)");
}

int TraceMeta::slot_of_layer(int original_layer) const {
  auto it = std::find(layer_ids.begin(), layer_ids.end(), original_layer);
  return it == layer_ids.end() ? -1 : static_cast<int>(it - layer_ids.begin());
}

void TraceMeta::validate(const std::string& context) const {
  auto fail = [&](const std::string& msg) { throw FormatError(context + ": " + msg); };
  if (layer_ids.empty()) fail("no layers stored");
  if (static_cast<int64_t>(layer_ids.size()) > kMaxTraceLayers) {
    fail(std::to_string(layer_ids.size()) + " stored layers (at most " +
         std::to_string(kMaxTraceLayers) + ")");
  }
  if (num_model_layers > kMaxTraceLayers || num_q_heads > kMaxTraceHeads ||
      num_kv_heads > kMaxTraceHeads || head_dim > kMaxTraceHeadDim) {
    fail("num_model_layers, num_q_heads, num_kv_heads and head_dim must be at most " +
         std::to_string(kMaxTraceLayers) + ", " + std::to_string(kMaxTraceHeads) + ", " +
         std::to_string(kMaxTraceHeads) + " and " + std::to_string(kMaxTraceHeadDim));
  }
  if (num_q_heads <= 0 || num_kv_heads <= 0 || head_dim <= 0) {
    fail("num_q_heads, num_kv_heads and head_dim must be positive");
  }
  if (num_q_heads % num_kv_heads != 0) {
    fail("num_q_heads (" + std::to_string(num_q_heads) + ") is not a multiple of num_kv_heads (" +
         std::to_string(num_kv_heads) + ")");
  }
  if (head_dim % 2 != 0) fail("head_dim must be even (RoPE pairs channels)");
  if (sliding_window.size() != layer_ids.size()) {
    fail("sliding_window has " + std::to_string(sliding_window.size()) + " entries for " +
         std::to_string(layer_ids.size()) + " layers");
  }
  for (size_t i = 0; i < layer_ids.size(); ++i) {
    if (layer_ids[i] < 0 || layer_ids[i] >= num_model_layers) {
      fail("layer id " + std::to_string(layer_ids[i]) + " outside the model's " +
           std::to_string(num_model_layers) + " layers");
    }
    if (i > 0 && layer_ids[i] <= layer_ids[i - 1]) fail("layer ids must be strictly ascending");
    if (sliding_window[i] < 0) fail("sliding_window must be >= 0 (0 = none)");
  }
  if (!(attn_scale > 0) || !std::isfinite(attn_scale)) fail("attn_scale must be positive");
  if (!(rope_theta >= 0) || !std::isfinite(rope_theta)) fail("rope_theta must be >= 0");
  if (rotary_dim < 0 || rotary_dim > head_dim || rotary_dim % 2 != 0) {
    fail("rotary_dim " + std::to_string(rotary_dim) + " must be even and in [0, head_dim]");
  }
  if (rope_layout != "half" && rope_layout != "interleaved") {
    fail("rope_layout '" + rope_layout + "' is not 'half' or 'interleaved'");
  }
  for (const auto* per_slot : {&rope_theta_by_slot, &rope_factor_by_slot}) {
    if (!per_slot->empty() && per_slot->size() != layer_ids.size()) {
      fail("a per-layer RoPE list has " + std::to_string(per_slot->size()) + " entries for " +
           std::to_string(layer_ids.size()) + " layers");
    }
    for (double x : *per_slot) {
      if (!(x > 0) || !std::isfinite(x)) fail("per-layer RoPE bases and factors must be > 0");
    }
  }
}

double TraceMeta::value_bound() const {
  constexpr double kFp16Max = 65504;
  const double scale = std::max(1.0, attn_scale);
  const double fp16_bound = kFp16Max / std::max(2.0, std::sqrt(static_cast<double>(head_dim)));
  return std::min(fp16_bound, std::sqrt(static_cast<double>(FLT_MAX) / (4.0 * head_dim * scale)));
}

}  // namespace kvsim
