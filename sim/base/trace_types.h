// Plain trace data types (no HDF5): the metadata of a trace, its sequences and one layer's
// Q/K/V in float32. Shared by the trace reader/writer (trace/), the policies and the engine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvsim {

enum class StoredDType { kFloat16, kBFloat16, kFloat32 };
std::string dtype_name(StoredDType dtype);
StoredDType parse_dtype(const std::string& name);  // throws ConfigError

// What a trace may declare (docs/reliability.md): checked before anything is allocated.
inline constexpr int64_t kMaxTraceLayers = 1 << 12;        // stored and model layers
inline constexpr int64_t kMaxTraceHeads = 1 << 12;         // query or KV heads
inline constexpr int64_t kMaxTraceHeadDim = 1 << 12;       // channels per head
inline constexpr int64_t kMaxTraceTokens = 1 << 24;        // tokens per sequence
inline constexpr int64_t kMaxTraceSequences = 1 << 20;     // sequences per trace
inline constexpr uint64_t kMaxLayerElements = 1ull << 32;  // Hq * T * d of one layer read

// File-level metadata.
struct TraceMeta {
  std::string model_name;
  std::string model_source;
  std::string trace_id;             // identity of this trace's content
  int num_model_layers = 0;         // layers the model has
  std::vector<int> layer_ids;       // [L] original indices of the stored layers, ascending
  std::vector<int> sliding_window;  // [L] window in tokens, 0 = full attention
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  double attn_scale = 0.0;  // softmax scale, usually 1/sqrt(head_dim)
  double rope_theta = 0.0;
  StoredDType dtype = StoredDType::kFloat16;
  // RoPE as the model applied it (format v2; a v1 trace gets the defaults below, with
  // rope_theta, or Gemma 3's `rope_theta_by_layer_type`, per layer). policies/rope.h uses them.
  std::string rope_type = "default";  // default | linear | none | anything else (refused there)
  std::string rope_layout = "half";   // half (rotate_half: pairs i, i+r/2) | interleaved
  int rotary_dim = 0;                 // channels that rotate (the first ones); 0 = head_dim
  std::vector<double> rope_theta_by_slot;   // [L] base per stored layer; empty = rope_theta
  std::vector<double> rope_factor_by_slot;  // [L] linear scaling factor; empty = 1

  int num_layers() const { return static_cast<int>(layer_ids.size()); }
  int group_size() const { return num_q_heads / num_kv_heads; }
  // Slot (index into layer_ids) of an original layer index, or -1.
  int slot_of_layer(int original_layer) const;
  // Throws FormatError naming the problem.
  void validate(const std::string& context) const;
  // The largest |value| of Q, K or V that the engine computes with. The simulated cache is
  // fp16: quantizers keep scales and zero-points in fp16, so a group's range (at most twice
  // the bound) must fit fp16's 65504; MiniCache keeps a vector's norm (at most sqrt(d) times
  // the bound) in fp16. With a large attn_scale, float binds: a squared distance of two head
  // vectors (at most 4 d x^2) and a scaled score (at most max(1, attn_scale) d x^2) must stay
  // below FLT_MAX. So x <= min(65504 / max(2, sqrt(d)), sqrt(FLT_MAX / (4 d max(1, scale)))):
  // 8188 for d = 64, 5790 for d = 128.
  double value_bound() const;
};

struct SequenceInfo {
  int64_t num_tokens = 0;
  int64_t prompt_len = 0;
};

// One stored layer of one sequence, in float32.
struct LayerData {
  int slot = 0;
  int num_tokens = 0;
  int head_dim = 0;
  std::vector<float> q;  // [num_q_heads, num_tokens, head_dim]
  std::vector<float> k;  // [num_kv_heads, num_tokens, head_dim]
  std::vector<float> v;  // [num_kv_heads, num_tokens, head_dim]

  const float* query(int q_head, int token) const {
    return q.data() + (static_cast<size_t>(q_head) * num_tokens + token) * head_dim;
  }
  const float* key(int kv_head, int token) const {
    return k.data() + (static_cast<size_t>(kv_head) * num_tokens + token) * head_dim;
  }
  const float* value(int kv_head, int token) const {
    return v.data() + (static_cast<size_t>(kv_head) * num_tokens + token) * head_dim;
  }
};

}  // namespace kvsim
