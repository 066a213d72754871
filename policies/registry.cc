#include <algorithm>
#include <cctype>
#include <cstring>
#include <map>
#include <numeric>
#include <vector>

#include "policies/policy.h"
#include "sim/base/errors.h"
#include "sim/base/union_find.h"

namespace kvsim {

std::string stage_kind_name(StageKind kind) {
  switch (kind) {
    case StageKind::kEvict:
      return "evict";
    case StageKind::kMerge:
      return "merge";
    case StageKind::kQuantize:
      return "quantize";
  }
  return "?";
}

PolicyRegistry& PolicyRegistry::instance() {
  static PolicyRegistry registry;
  return registry;
}

bool PolicyRegistry::add(PolicyInfo info) {
  KVSIM_CHECK_MSG(find(info.name) == nullptr, "policy '" << info.name << "' registered twice");
  KVSIM_CHECK_MSG(static_cast<bool>(info.create), "policy '" << info.name << "' has no factory");
  infos_.push_back(std::make_unique<PolicyInfo>(std::move(info)));
  return true;
}

void PolicyRegistry::replace(PolicyInfo info) {
  for (auto& existing : infos_) {
    if (existing->name != info.name) continue;
    KVSIM_CHECK_MSG(static_cast<bool>(info.create), "policy '" << info.name << "' has no factory");
    *existing = std::move(info);
    return;
  }
  KVSIM_CHECK_MSG(false, "policy '" << info.name << "' is not registered");
}

const PolicyInfo* PolicyRegistry::find(const std::string& name) const {
  for (const auto& info : infos_) {
    if (info->name == name) return info.get();
  }
  return nullptr;
}

std::vector<const PolicyInfo*> PolicyRegistry::all() const {
  std::vector<const PolicyInfo*> out;
  for (const auto& info : infos_) out.push_back(info.get());
  std::sort(out.begin(), out.end(), [](auto* a, auto* b) { return a->name < b->name; });
  return out;
}

std::string PolicyRegistry::names() const {
  std::string out;
  for (const auto* info : all()) append_joined(out, ", ", info->name);
  return out;
}

std::string StageSpec::canonical() const {
  const std::string params_text = params.canonical();
  return params_text.empty() ? info->name : info->name + ":" + params_text;
}

namespace {

bool is_name_start(char c) { return std::islower(static_cast<unsigned char>(c)) || c == '_'; }

// Splits `a:x=1+b` into stages. A '+' separates stages only when a policy
// name follows it, so values like 1e+3 survive.
std::vector<std::string> split_stages(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  int depth = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == '+' && depth == 0 && (i + 1 == text.size() || is_name_start(text[i + 1]))) {
      out.push_back(cur);
      cur.clear();
      continue;
    }
    cur.push_back(c);
  }
  out.push_back(cur);
  return out;
}

// Whitespace may surround the separators (`h2o + kivi`, `bits = 2`) and is
// dropped; inside a name or value (`calib=my file.h5`) it is refused, since
// dropping it would silently read another value.
std::string strip_whitespace(const std::string& raw) {
  auto is_space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  // ':' and '=' separate only as a stage's first ':' and an item's first '=';
  // later ones are part of a value (`inner=snapkv;window=8`), and whitespace
  // next to them is inside that value.
  bool stage_has_colon = false, item_has_equals = false;
  auto separates = [&](char c) {
    if (c == ':') return !stage_has_colon;
    if (c == '=') return !item_has_equals;
    return std::strchr(",+[]", c) != nullptr;
  };
  std::vector<bool> structural;  // per output char: a separator where it stands
  auto push = [&](char c) {
    const bool sep = separates(c);
    structural.push_back(sep);
    if (c == '+') stage_has_colon = item_has_equals = false;
    if (sep && c == ':') stage_has_colon = true;
    if (sep && c == ',') item_has_equals = false;
    if (sep && c == '=') item_has_equals = true;
  };
  std::string out;
  for (size_t i = 0; i < raw.size(); ++i) {
    if (!is_space(raw[i])) {
      out.push_back(raw[i]);
      push(raw[i]);
      continue;
    }
    size_t next = i;
    while (next < raw.size() && is_space(raw[next])) ++next;
    if (!out.empty() && next < raw.size() && !structural.back() && !separates(raw[next])) {
      throw ConfigError("policy spec '" + raw + "': whitespace inside a name or value");
    }
    i = next - 1;
  }
  return out;
}

// Brackets delimit list values; an unbalanced one would make the splitters
// swallow the rest of the spec into one value.
void check_brackets(const std::string& text) {
  int depth = 0;
  for (char c : text) {
    if (c == '[' && ++depth > 1) {
      throw ConfigError("policy spec '" + text + "': nested '[' (a list holds numbers)");
    }
    if (c == ']' && --depth < 0) throw ConfigError("policy spec '" + text + "': unmatched ']'");
  }
  if (depth != 0) throw ConfigError("policy spec '" + text + "': unclosed '['");
}

}  // namespace

PolicySpec PolicySpec::parse(const std::string& raw_text) {
  PolicySpec spec;
  const std::string text = strip_whitespace(raw_text);
  spec.text_ = text;
  if (text.empty()) throw ConfigError("empty policy spec");
  check_brackets(text);
  const auto& registry = PolicyRegistry::instance();
  for (const auto& part : split_stages(text)) {
    const auto colon = part.find(':');
    const std::string name = part.substr(0, colon);
    const std::string args = colon == std::string::npos ? "" : part.substr(colon + 1);
    if (name.empty()) throw ConfigError("policy spec '" + text + "' has an empty stage");
    const PolicyInfo* info = registry.find(name);
    if (!info) {
      throw ConfigError("unknown policy '" + name + "' in '" + text +
                        "' (valid policies: " + registry.names() + ")");
    }
    StageSpec stage{info, Params::parse(name, info->params, args)};
    if (info->check) info->check(stage.params);
    spec.stages_.push_back(std::move(stage));
  }

  // Composition rules: evict stages, then at most one merge, then at most one
  // quantize (the storage precision). Anything else has no clear meaning.
  int merges = 0, quantizers = 0;
  StageKind last = StageKind::kEvict;
  for (const auto& stage : spec.stages_) {
    const StageKind kind = stage.info->kind;
    if (kind == StageKind::kMerge && ++merges > 1) {
      throw ConfigError("policy '" + text + "': two merge stages; layers can be merged once");
    }
    if (kind == StageKind::kQuantize && ++quantizers > 1) {
      throw ConfigError("policy '" + text +
                        "': two quantize stages; a cache entry is stored at one precision "
                        "(use one quantizer, e.g. 'h2o+kivi')");
    }
    if (static_cast<int>(kind) < static_cast<int>(last)) {
      throw ConfigError("policy '" + text + "': stage '" + stage.info->name + "' (" +
                        stage_kind_name(kind) + ") comes after a " + stage_kind_name(last) +
                        " stage; write stages in the order evict, merge, quantize "
                        "(e.g. 'h2o+kivi', 'minicache+kivi')");
    }
    last = kind;
  }
  return spec;
}

std::string PolicySpec::canonical() const {
  std::string out;
  for (const auto& s : stages_) append_joined(out, "+", s.canonical());
  return out;
}

std::string PolicySpec::stage_names() const {
  std::string out;
  for (const auto& s : stages_) append_joined(out, "+", s.info->name);
  return out;
}

void PolicySpec::check_against(const TraceMeta& meta) const {
  for (const auto& s : stages_) {
    if (s.info->check_trace) s.info->check_trace(s.params, meta);
  }
  (void)layer_slot_groups(meta);
}

std::vector<std::vector<int>> PolicySpec::layer_slot_groups(const TraceMeta& meta) const {
  const int L = meta.num_layers();
  // Union-find over slots: every stage's groups are merged into connected sets.
  UnionFind sets(L);
  for (const auto& s : stages_) {
    if (!s.info->layer_groups) continue;
    for (const auto& group : s.info->layer_groups(s.params, meta)) {
      int first = -1;
      for (int layer : group) {
        const int slot = meta.slot_of_layer(layer);
        if (slot < 0) {
          throw ConfigError("policy '" + s.info->name + "' needs layer " + std::to_string(layer) +
                            ", which the trace does not store");
        }
        if (first < 0)
          first = slot;
        else
          sets.unite(slot, first);
      }
    }
  }
  std::vector<std::vector<int>> out = sets.groups();
  std::sort(out.begin(), out.end());
  return out;
}

Pipeline Pipeline::create(const PolicySpec& spec, const ShardContext& base,
                          const std::vector<std::shared_ptr<const PolicyState>>& prepared) {
  Pipeline pipeline;
  auto context_for = [&](size_t i, const ShardContext& ctx) {
    ShardContext out = ctx;
    out.prepared = i < prepared.size() ? prepared[i] : nullptr;
    return out;
  };
  auto make_store = [](const PolicyInfo& info, const Params& params, const ShardContext& ctx) {
    std::unique_ptr<Stage> made = info.create(params, ctx);
    KVSIM_CHECK_MSG(dynamic_cast<StoreStage*>(made.get()), info.name << " is not a StoreStage");
    return std::unique_ptr<StoreStage>(static_cast<StoreStage*>(made.release()));
  };
  MergeStage* merge = nullptr;
  std::unique_ptr<StoreStage> quantizer;
  for (size_t i = 0; i < spec.stages().size(); ++i) {
    const auto& stage = spec.stages()[i];
    const PolicyInfo& info = *stage.info;
    if (info.kind == StageKind::kEvict) {
      std::unique_ptr<Stage> made = info.create(stage.params, context_for(i, base));
      KVSIM_CHECK_MSG(dynamic_cast<EvictStage*>(made.get()),
                      info.name << " is registered as evict but is not an EvictStage");
      pipeline.evicts.emplace_back(static_cast<EvictStage*>(made.release()));
    } else if (info.kind == StageKind::kMerge) {
      pipeline.store = make_store(info, stage.params, context_for(i, base));
      merge = dynamic_cast<MergeStage*>(pipeline.store.get());
      KVSIM_CHECK_MSG(merge, info.name << " is registered as merge but is not a MergeStage");
    } else {
      // The quantizer stores what the merge stage keeps, in the merge stage's streams.
      const ShardContext ctx = merge ? merge->inner_context(base) : base;
      quantizer = make_store(info, stage.params, context_for(i, ctx));
    }
  }
  if (!quantizer) {
    const PolicyInfo* full = PolicyRegistry::instance().find("full");
    KVSIM_CHECK(full);
    quantizer = make_store(*full, Params::parse("full", full->params, ""),
                           merge ? merge->inner_context(base) : base);
  }
  const Stage* quantize_stage = quantizer.get();
  if (merge) {
    merge->set_inner(std::move(quantizer));
  } else {
    pipeline.store = std::move(quantizer);
  }
  size_t next_evict = 0;
  for (const auto& stage : spec.stages()) {
    switch (stage.info->kind) {
      case StageKind::kEvict:
        pipeline.spec_stages.push_back(pipeline.evicts[next_evict++].get());
        break;
      case StageKind::kMerge:
        pipeline.spec_stages.push_back(merge);
        break;
      case StageKind::kQuantize:
        pipeline.spec_stages.push_back(quantize_stage);
        break;
    }
  }
  return pipeline;
}

int64_t Pipeline::prefill_attention_rows() const {
  int64_t rows = store->prefill_attention_rows();
  for (const auto& e : evicts) {
    const int64_t r = e->prefill_attention_rows();
    if (r < 0 || rows < 0)
      rows = -1;
    else
      rows = std::max(rows, r);
  }
  return rows;
}

bool Pipeline::needs_decode_attention() const {
  bool needs = store->needs_decode_attention();
  for (const auto& e : evicts) needs = needs || e->needs_decode_attention();
  return needs;
}

std::vector<std::shared_ptr<const PolicyState>> prepare_policy(const PolicySpec& spec,
                                                               const CalibrationSource& trace) {
  std::vector<std::shared_ptr<const PolicyState>> out;
  for (const auto& s : spec.stages()) {
    out.push_back(s.info->prepare ? s.info->prepare(s.params, trace) : nullptr);
  }
  return out;
}

}  // namespace kvsim
