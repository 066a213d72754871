// `streamingllm` (Xiao et al., 2023): keep the first `sinks` tokens (attention
// sinks) and the `window` most recent tokens; evict everything in between.
// Applied at prefill and at every decode step, so the cache never holds more
// than sinks + window entries. Memory: whatever the store stage counts for
// the kept entries (fp16 by default).
#include "policies/policy.h"

namespace kvsim {
namespace {

class StreamingLlm final : public EvictStage {
 public:
  StreamingLlm(const Params& p, const ShardContext&)
      : sinks_(p.get_int("sinks")), window_(p.get_int("window")) {}

  void select(const ArrivalView& view, std::vector<int32_t>& evict) override {
    const int64_t oldest_recent = view.step - window_ + 1;
    for (int32_t pos : view.candidates) {
      if (pos >= sinks_ && pos < oldest_recent) evict.push_back(pos);
    }
  }

  CacheBound max_cache_tokens() const override { return {sinks_ + window_, false}; }

 private:
  int64_t sinks_, window_;
};

PolicyInfo streamingllm_info() {
  return policy_info<StreamingLlm>(
      "streamingllm", StageKind::kEvict, "attention sinks plus a recent window (StreamingLLM)",
      {
          ParamSpec::Int("sinks", 4, 0, 1 << 30, "leading tokens always kept"),
          ParamSpec::Int("window", 124, 1, 1 << 30,
                         "most recent tokens kept (the newest included)"),
      });
}

}  // namespace
KVSIM_REGISTER_POLICY(streamingllm_info());
}  // namespace kvsim
