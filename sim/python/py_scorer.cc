// Eviction scorers written in Python (docs/python.md, "Policies written in Python"):
// kvsim._core.register_scorer() adds a policy to the C++ registry whose stage is a
// ScorerStage (policies/scorer.h) calling back into Python for score(). Everything else,
// the protected entries, budgets, top-k and tie rule, observed attention and counters, is
// the C++ base's, so a Python scorer composes with any store (`tova_py+kivi`).
//
// Threads: the engine replays units on OpenMP threads with the GIL released; score()
// takes the GIL for the call (scorers written in Python run one at a time, the rest of
// the replay in parallel). A Python exception in the callback leaves the engine as a C++
// exception (nanobind::python_error), stops the replay and is raised again, with its
// traceback, by kvsim.replay.
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <limits>
#include <map>

#include "policies/evict_budget.h"
#include "policies/scorer.h"
#include "sim/base/errors.h"
#include "sim/python/bindings.h"

namespace kvsim::python {
namespace {

// A registered Python scorer. Never freed (the registry keeps pointers to its policy for
// the life of the process); redefining a scorer updates it in place, with the GIL held.
struct PyScorerDef {
  std::string name;
  PyObject* callback = nullptr;  // a strong reference, released only when redefined
  ScorerStage::Observe observe = ScorerStage::Observe::kNone;
  int64_t prefill_rows = 0;
  bool decode_attention = false;
  bool protected_in_budget = true;
  std::string schedule = "cap";  // when the scorer does not declare `schedule`
  bool budget_is_fraction = false;
  std::vector<ParamSpec> specs;  // the declared parameters, as the registry holds them
  bool declares(const std::string& key) const {
    return std::any_of(specs.begin(), specs.end(),
                       [&](const ParamSpec& p) { return p.name == key; });
  }
};

std::map<std::string, PyScorerDef*>& scorer_defs() {
  static auto* defs = new std::map<std::string, PyScorerDef*>();
  return *defs;
}

// What score() sees, exposed to Python. Valid during the callback only: afterwards `view`
// is null and every accessor raises.
struct PyScoreView {
  const ScoreView* view = nullptr;
  const std::vector<ParamSpec>* specs = nullptr;
  const Params* params = nullptr;
  int layer = 0;  // the model's original layer index
  const ScoreView& get() const {
    if (!view) throw std::runtime_error("a ScoreView is valid only during the scorer's call");
    return *view;
  }
};

class PyScorer final : public ScorerStage {
 public:
  PyScorer(const PyScorerDef& def, const Params& p, const ShardContext& ctx)
      : ScorerStage(options(def, p, ctx), ctx), def_(def), params_(p) {
    for (size_t l = 0; l < ctx.slots.size(); ++l) {
      layer_ids_.push_back(ctx.original_layer(static_cast<int>(l)));
    }
  }

 private:
  static Options options(const PyScorerDef& def, const Params& p, const ShardContext& ctx) {
    Options o;
    o.name = def.name;
    o.budget =
        def.budget_is_fraction
            ? std::max<int64_t>(1, evict::fraction_tokens(p.get_float("budget"), ctx.prompt_len))
            : p.get_int("budget");
    o.schedule =
        evict::parse_schedule(def.declares("schedule") ? p.get_string("schedule") : def.schedule);
    o.sinks = def.declares("sinks") ? p.get_int("sinks") : 0;
    o.recent = def.declares("recent") ? p.get_int("recent") : 0;
    o.protected_in_budget = def.protected_in_budget;
    o.observe = def.observe;
    o.prefill_rows = def.prefill_rows;
    o.decode_attention = def.decode_attention;
    return o;
  }

  void score(const ScoreView& view, std::span<double> scores) override {
    nb::gil_scoped_acquire gil;
    auto* state = new PyScoreView{&view, &def_.specs, &params_, layer_ids_[view.local_layer]};
    nb::object py_view = nb::cast(state, nb::rv_policy::take_ownership);
    struct Expire {  // the view dies with the call, also when the callback raises
      PyScoreView* state;
      ~Expire() { state->view = nullptr; }
    } expire{state};
    nb::object result = nb::handle(def_.callback)(py_view);
    const auto array = nb::cast<nb::ndarray<const double, nb::ndim<1>, nb::c_contig>>(result);
    if (array.shape(0) != scores.size()) {
      throw ConfigError("scorer '" + def_.name + "' returned " + std::to_string(array.shape(0)) +
                        " scores for " + std::to_string(scores.size()) + " candidates");
    }
    std::copy(array.data(), array.data() + scores.size(), scores.begin());
  }

  const PyScorerDef& def_;
  Params params_;
  std::vector<int> layer_ids_;
};

// A parameter declared from a Python default: its type is the default's.
ParamSpec param_from_default(const std::string& name, nb::handle value, bool& fraction) {
  constexpr double kBig = static_cast<double>(int64_t{1} << 53);
  if (name == "schedule") {
    return ParamSpec::Enum(name, nb::cast<std::string>(value), {"once", "cap"},
                           "once: select at prefill only; cap: at every step");
  }
  if (nb::isinstance<nb::bool_>(value)) return ParamSpec::Bool(name, nb::cast<bool>(value), "");
  if (nb::isinstance<nb::int_>(value)) {
    const auto v = nb::cast<int64_t>(value);
    if (name == "budget") {
      return ParamSpec::Int(name, v, 1, int64_t{1} << 30, "tokens kept per (layer, kv head)");
    }
    if (name == "sinks" || name == "recent") {
      return ParamSpec::Int(
          name, v, 0, int64_t{1} << 30,
          name == "sinks" ? "leading positions never evicted" : "newest positions never evicted");
    }
    return ParamSpec::Int(name, v, -static_cast<int64_t>(kBig), static_cast<int64_t>(kBig), "");
  }
  if (nb::isinstance<nb::float_>(value)) {
    const auto v = nb::cast<double>(value);
    if (name == "budget") {
      fraction = true;
      return ParamSpec::Float(name, v, 0, 1,
                              "tokens kept per (layer, kv head), as a fraction of the prompt: "
                              "max(1, ceil(budget*P))");
    }
    return ParamSpec::Float(name, v, -std::numeric_limits<double>::max(),
                            std::numeric_limits<double>::max(), "");
  }
  if (nb::isinstance<nb::str>(value))
    return ParamSpec::String(name, nb::cast<std::string>(value), "");
  if (nb::isinstance<nb::list>(value)) {
    std::string text = "[";
    for (nb::handle item : nb::borrow<nb::list>(value)) {
      text += (text.size() > 1 ? "," : "") + std::to_string(nb::cast<int64_t>(item));
    }
    return ParamSpec::IntList(name, text + "]", -static_cast<int64_t>(kBig),
                              static_cast<int64_t>(kBig), "");
  }
  throw ConfigError("scorer parameter '" + name +
                    "': the default must be an int, float, bool, str or list of ints");
}

ScorerStage::Observe parse_observe(const std::string& text) {
  if (text == "none") return ScorerStage::Observe::kNone;
  if (text == "sum") return ScorerStage::Observe::kSum;
  if (text == "latest") return ScorerStage::Observe::kLatest;
  throw ConfigError("observe='" + text + "' (valid: none, sum, latest)");
}

void register_scorer(const std::string& name, nb::object callback, const nb::dict& params,
                     const std::string& summary, const std::string& observe, int64_t prefill_rows,
                     bool decode_attention, bool protected_in_budget, const std::string& schedule) {
  auto& registry = PolicyRegistry::instance();
  auto& defs = scorer_defs();
  const bool redefinition = defs.count(name) > 0;
  if (!redefinition && registry.find(name)) {
    throw ConfigError("policy '" + name + "' already exists (a C++ policy); choose another name");
  }
  if (name.empty() || !(std::islower(static_cast<unsigned char>(name[0])) || name[0] == '_') ||
      name.find_first_of(":+,=[] ") != std::string::npos) {
    throw ConfigError("scorer name '" + name +
                      "': start with a lower-case letter or '_', no ':+,=[] ' characters");
  }
  if (!params.contains("budget")) {
    throw ConfigError("scorer '" + name +
                      "': params must declare 'budget' (tokens kept per "
                      "(layer, kv head) as an int, or a fraction of the prompt as a float)");
  }
  if (schedule != "once" && schedule != "cap") {
    throw ConfigError("schedule='" + schedule + "' (valid: once, cap)");
  }
  PyScorerDef def;
  def.name = name;
  def.observe = parse_observe(observe);
  if (prefill_rows < -1) throw ConfigError("prefill_rows must be >= -1 (-1 = every prompt row)");
  def.prefill_rows = def.observe == ScorerStage::Observe::kNone ? 0 : prefill_rows;
  def.decode_attention = def.observe != ScorerStage::Observe::kNone && decode_attention;
  def.protected_in_budget = protected_in_budget;
  def.schedule = schedule;
  for (auto [key, value] : params) {
    def.specs.push_back(
        param_from_default(nb::cast<std::string>(key), value, def.budget_is_fraction));
  }

  PyScorerDef* stored = redefinition ? defs[name] : new PyScorerDef();
  PyObject* previous = stored->callback;
  *stored = std::move(def);
  stored->callback = callback.release().ptr();
  Py_XDECREF(previous);
  defs[name] = stored;

  PolicyInfo info;
  info.name = name;
  info.kind = StageKind::kEvict;
  info.summary = summary.empty() ? "eviction scorer written in Python" : summary;
  info.params = stored->specs;
  info.create = [stored](const Params& p, const ShardContext& ctx) -> std::unique_ptr<Stage> {
    return std::make_unique<PyScorer>(*stored, p, ctx);
  };
  if (redefinition) {
    registry.replace(std::move(info));
  } else {
    registry.add(std::move(info));
  }
}

// Read-only NumPy views over the engine's memory (no copy), kept alive by the view object.
template <typename T, size_t N>
using View = nb::ndarray<nb::numpy, const T, nb::ndim<N>>;

}  // namespace

void bind_scorer(nb::module_& m) {
  const auto ref = nb::rv_policy::reference_internal;
  nb::class_<PyScoreView>(m, "ScoreView",
                          "What an eviction scorer sees for one (layer, kv head) at one "
                          "selection; valid during the call only (copy arrays to keep them).")
      .def_prop_ro("layer",
                   [](const PyScoreView& s) {
                     s.get();
                     return s.layer;
                   })
      .def_prop_ro("kv_head", [](const PyScoreView& s) { return s.get().kv_head; })
      .def_prop_ro("step", [](const PyScoreView& s) { return s.get().step; })
      .def_prop_ro("prefill", [](const PyScoreView& s) { return s.get().prefill; })
      .def_prop_ro("keep", [](const PyScoreView& s) { return s.get().keep; })
      .def_prop_ro("budget", [](const PyScoreView& s) { return s.get().budget; })
      .def_prop_ro("group", [](const PyScoreView& s) { return s.get().group; })
      .def_prop_ro(
          "candidates",
          [](const PyScoreView& s) {
            const auto& c = s.get().candidates;
            return View<int32_t, 1>(c.data(), {c.size()});
          },
          ref)
      .def_prop_ro(
          "keys",
          [](const PyScoreView& s) {
            const ScoreView& v = s.get();
            return View<float, 2>(v.raw->key(v.kv_head, 0), {static_cast<size_t>(v.step + 1),
                                                             static_cast<size_t>(v.raw->head_dim)});
          },
          ref)
      .def_prop_ro(
          "values",
          [](const PyScoreView& s) {
            const ScoreView& v = s.get();
            return View<float, 2>(
                v.raw->value(v.kv_head, 0),
                {static_cast<size_t>(v.step + 1), static_cast<size_t>(v.raw->head_dim)});
          },
          ref)
      .def_prop_ro(
          "queries",
          [](const PyScoreView& s) {
            const ScoreView& v = s.get();
            const auto d = static_cast<int64_t>(v.raw->head_dim);
            return View<float, 3>(v.raw->query(v.kv_head * v.group, 0),
                                  {static_cast<size_t>(v.group), static_cast<size_t>(v.step + 1),
                                   static_cast<size_t>(d)},
                                  nb::handle(), {v.raw->num_tokens * d, d, 1});
          },
          ref)
      .def_prop_ro(
          "attention",
          [](const PyScoreView& s) -> nb::object {
            const ScoreView& v = s.get();
            if (v.attention.empty()) return nb::none();
            return nb::cast(View<double, 1>(v.attention.data(), {static_cast<size_t>(v.step + 1)}),
                            nb::rv_policy::reference);
          },
          ref)
      .def_prop_ro("params", [](const PyScoreView& s) {
        s.get();
        nb::dict d;
        for (const auto& p : *s.specs) d[p.name.c_str()] = param_value(p, *s.params);
        return d;
      });
  m.def("register_scorer", &register_scorer, nb::arg("name"), nb::arg("callback"),
        nb::arg("params"), nb::arg("summary") = "", nb::arg("observe") = "none",
        nb::arg("prefill_rows") = 0, nb::arg("decode_attention") = false,
        nb::arg("protected_in_budget") = true, nb::arg("schedule") = "cap");
  m.def("python_scorers", [] {
    std::vector<std::string> names;
    for (const auto& [name, def] : scorer_defs()) names.push_back(name);
    return names;
  });
}

}  // namespace kvsim::python
