// Synthetic traces with the structure the KV-compression papers rely on:
// outlier key channels, attention sinks, locality, RoPE, GQA and cross-layer
// similarity that grows with depth. Deterministic from the seed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trace/trace.h"

namespace kvsim {

struct SynthConfig {
  int sequences = 1;
  int model_layers = 8;
  std::vector<int> keep_layers;  // original layer indices to store; empty = all
  int q_heads = 8;
  int kv_heads = 2;
  int head_dim = 64;
  int tokens = 512;
  int prompt_len = 384;
  uint64_t seed = 1;
  int outlier_channels = 4;     // per kv head, fixed across tokens and layers
  double outlier_scale = 10;    // magnitude multiplier of outlier key channels
  int sinks = 4;                // leading tokens that attract attention
  double locality = 0.9;        // AR(1) coefficient of the token process over time
  double depth_rho_min = 0.3;   // adjacent-layer correlation at the first layer...
  double depth_rho_max = 0.97;  // ...rising to this at the last
  double rope_theta = 10000;
  int sliding_window = 0;  // window of local layers; 0 = none
  int sliding_every = 0;   // Gemma-3 style: layer l is global iff l % every == every-1
  StoredDType dtype = StoredDType::kFloat16;
  int gzip_level = 0;

  // Largest in-memory size of one sequence's stored layers (float32), the
  // generator's working set: 16 GiB (the `bench` preset needs 3 GiB).
  static constexpr uint64_t kMaxSequenceBytes = uint64_t{16} << 30;

  void validate() const;  // throws ConfigError
};

// Named presets: "default" (small, for the quick start and tests), "bench"
// (32 layers, 32/8 heads, d=128, 4096 tokens), "tiny" (unit tests).
SynthConfig synth_preset(const std::string& name);
std::vector<std::string> synth_preset_names();

// Metadata of the trace the config describes.
TraceMeta synth_meta(const SynthConfig& config);

// Generates every stored layer of one sequence, in order of layer slot.
std::vector<LayerData> synth_sequence(const SynthConfig& config, int sequence);

// Generates and writes the whole trace (atomic rename).
void write_synth_trace(const std::string& path, const SynthConfig& config);

// Applies RoPE (rotate-half convention, as in Llama/Gemma) in place to x[head_dim] at `position`.
void apply_rope(float* x, int head_dim, int64_t position, double theta);

}  // namespace kvsim
