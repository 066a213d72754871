// `full`: the fp16 reference cache. Every entry is kept as the trace stores it,
// so its attention equals the exact attention and every error metric is 0 (on a
// float32 trace the entries are rounded to fp16: the error of 16-bit storage).
// Memory: 16 bits per K and V element, no metadata.
#include "policies/policy.h"
#include "policies/quantizer.h"

namespace kvsim {
namespace {

class FullStore final : public StoreStage {
 public:
  FullStore(const Params&, const ShardContext& ctx)
      : dtype_(ctx.meta->dtype),
        head_dim_(ctx.meta->head_dim),
        tokens_(ctx.slots.size(), std::vector<int64_t>(ctx.meta->num_kv_heads, 0)) {}

  void insert(int layer, int head, HeadCache& cache, std::span<const int32_t> positions,
              const LayerData& raw, bool /*prefill*/) override {
    for (int32_t pos : positions) append_16bit_row(cache, raw, head, pos, dtype_);
    tokens_[layer][head] += static_cast<int64_t>(positions.size());
  }
  void removed(int layer, int head, HeadCache&, std::span<const int32_t> positions) override {
    tokens_[layer][head] -= static_cast<int64_t>(positions.size());
  }
  MemoryBits memory(int layer, int head) const override {
    return {2 * 16 * head_dim_ * tokens_[layer][head], 0};
  }
  bool acted() const override { return true; }  // the reference: storing exactly is its job
  size_t final_rows(int, int, const HeadCache& cache) const override { return cache.size(); }

 private:
  StoredDType dtype_;
  int64_t head_dim_;
  std::vector<std::vector<int64_t>> tokens_;  // [layer][kv head] entries held
};

PolicyInfo full_info() {
  return policy_info<FullStore>(
      "full", StageKind::kQuantize,
      "fp16 reference cache: keeps every entry as stored in the trace (zero error)");
}

}  // namespace
KVSIM_REGISTER_POLICY(full_info());
}  // namespace kvsim
