// The engine's records and their columns: /runs/NNNN/steps and /runs/NNNN/kv
// of the results file (docs/results-format.md is generated from these lists).
// A new metric is a member here, its line in the column list, and the code in
// replay_shard (sim/engine.cc) that fills it; see docs/architecture.md.
#pragma once

#include <cstdint>

#include "sim/schema.h"

namespace kvsim {

// Fidelity at one (sequence, layer, query head, measured step).
struct StepRecord {
  int32_t sequence, layer, q_head, kv_head, step;
  float rel_err, cosine, mass_retained, kl;
  int32_t top1_agreement;
};

inline constexpr Column<StepRecord> kStepColumns[] = {
    {"sequence", &StepRecord::sequence, "", "sequence index in the trace"},
    {"layer", &StepRecord::layer, "", "the model's original layer index"},
    {"q_head", &StepRecord::q_head, "", "query head"},
    {"kv_head", &StepRecord::kv_head, "", "KV head it reads (`q_head / (Hq / Hkv)`)"},
    {"step", &StepRecord::step, "token",
     "token position `t` of the query (decode steps are `t >= prompt_len`)"},
    {"rel_err", &StepRecord::rel_err, "", "`‖o_hat − o‖ / ‖o‖`", Summary::kMeanP95, "rel err"},
    {"cosine", &StepRecord::cosine, "", "`o_hat·o / (‖o_hat‖ ‖o‖)`", Summary::kMean, "cosine"},
    {"mass_retained", &StepRecord::mass_retained, "",
     "`Σ_{i kept} p_i` where `p` is the exact attention over all tokens `≤ t` (in the window): "
     "the attention that eviction (or merging away) lost is `1 − mass_retained`",
     Summary::kMean, "mass kept"},
    {"kl", &StepRecord::kl, "nats",
     "`KL(p̃ ‖ p̂)` where `p̃` is `p` restricted to the kept tokens and renormalised and `p̂` "
     "the compressed attention: how the weights among the kept tokens changed (through changed "
     "keys), not what eviction lost (that is `mass_retained`); exactly `0` where every kept key "
     "is bitwise the exact key, e.g. under pure eviction",
     Summary::kMean, "KL"},
    {"top1_agreement", &StepRecord::top1_agreement, "",
     "`1` when the compressed attention's top token (largest score `q·k̂_i` over the cache) is "
     "the exact attention's top token (largest `q·k_j` over the exact cache), else `0` (also when "
     "the cache is empty); on equal scores the lowest position is the top token, on both sides",
     Summary::kMean, "top-1 agree"},
};
static_assert(padded_cell_bytes(kStepColumns) == sizeof(StepRecord),
              "every StepRecord member needs a column in kStepColumns");

// Memory and reconstruction at one (sequence, layer, kv head, measured step).
struct KvRecord {
  int32_t sequence, layer, kv_head, step, kept_tokens;
  int64_t data_bits, meta_bits, fp16_bits;
  double ideal_bits;  // data at its ideal rate + meta (== data + meta unless ternary etc.)
  float key_err, value_err;
};

inline constexpr Column<KvRecord> kKvColumns[] = {
    {"sequence", &KvRecord::sequence, "", "sequence index in the trace"},
    {"layer", &KvRecord::layer, "", "the model's original layer index"},
    {"kv_head", &KvRecord::kv_head, "", "KV head"},
    {"step", &KvRecord::step, "token", "token position `t` of the query"},
    {"kept_tokens", &KvRecord::kept_tokens, "tokens",
     "entries the policy's cache holds when the step's query attends"},
    {"data_bits", &KvRecord::data_bits, "bits",
     "bits of payload (codes or fp16 values) for K and V", Summary::kSum},
    {"meta_bits", &KvRecord::meta_bits, "bits",
     "bits of metadata (scales, zero points, indices, maps)", Summary::kSum},
    {"fp16_bits", &KvRecord::fp16_bits, "bits",
     "`2 * 16 * head_dim * n_exact` with `n_exact` the tokens the exact cache holds",
     Summary::kSum},
    {"ideal_bits", &KvRecord::ideal_bits, "bits",
     "`data_bits` with the payload at its information-theoretic rate (log2(3) per ternary "
     "code) plus `meta_bits`",
     Summary::kSum},
    {"key_err", &KvRecord::key_err, "",
     "`‖K_hat − K‖_F / ‖K‖_F` over the kept tokens (0 when nothing is kept)", Summary::kMean},
    {"value_err", &KvRecord::value_err, "",
     "`‖V_hat − V‖_F / ‖V‖_F` over the kept tokens (0 when nothing is kept)", Summary::kMean},
};
static_assert(padded_cell_bytes(kKvColumns) == sizeof(KvRecord),
              "every KvRecord member needs a column in kKvColumns");

}  // namespace kvsim
