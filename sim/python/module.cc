// kvsim._core: the module, its exceptions, the policy registry and the spec parser.
// The Python package (analysis/kvsim/) wraps it; docs/python.md documents the API.
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "policies/policy.h"
#include "sim/base/errors.h"
#include "sim/python/bindings.h"

namespace kvsim::python {
namespace {

// C++ errors become Python exceptions of one hierarchy under kvsim.Error, with the
// message the CLI prints after "kvsim: error: ". Translators registered later are tried
// first, so the base comes first.
void bind_errors(nb::module_& m) {
  nb::exception<Error> base(m, "Error");
  nb::exception<ConfigError>(m, "ConfigError", base);
  nb::exception<FormatError>(m, "FormatError", base);
  nb::exception<IoError>(m, "IoError", base);
  nb::exception<BackendUnavailable>(m, "BackendUnavailable", base);
  nb::exception<InternalError>(m, "InternalError", base);
}

const char* param_type_name(ParamType type) {
  switch (type) {
    case ParamType::kInt:
      return "int";
    case ParamType::kFloat:
      return "float";
    case ParamType::kBool:
      return "bool";
    case ParamType::kString:
      return "str";
    case ParamType::kEnum:
      return "enum";
    case ParamType::kIntList:
      return "list[int]";
  }
  return "?";
}

nb::dict param_doc(const ParamSpec& p) {
  nb::dict d;
  d["name"] = p.name;
  d["type"] = param_type_name(p.type);
  d["default"] = p.default_value;
  d["range"] = p.describe_type();
  const bool numeric =
      p.type == ParamType::kInt || p.type == ParamType::kFloat || p.type == ParamType::kIntList;
  d["min"] = numeric ? nb::cast(p.min) : nb::none();
  d["max"] = numeric ? nb::cast(p.max) : nb::none();
  d["choices"] = p.choices;
  d["help"] = p.help;
  return d;
}

nb::list policies() {
  nb::list out;
  for (const PolicyInfo* info : PolicyRegistry::instance().all()) {
    nb::dict d;
    d["name"] = info->name;
    d["kind"] = stage_kind_name(info->kind);
    d["summary"] = info->summary;
    nb::list params;
    for (const auto& p : info->params) params.append(param_doc(p));
    d["params"] = params;
    out.append(d);
  }
  return out;
}

nb::dict parse_spec(const std::string& text) {
  const PolicySpec spec = PolicySpec::parse(text);
  nb::dict out;
  out["text"] = spec.text();
  out["canonical"] = spec.canonical();
  out["stage_names"] = spec.stage_names();
  nb::list stages;
  for (const StageSpec& stage : spec.stages()) {
    nb::dict s, params;
    s["name"] = stage.info->name;
    s["kind"] = stage_kind_name(stage.info->kind);
    for (const auto& p : stage.info->params) params[p.name.c_str()] = param_value(p, stage.params);
    s["params"] = params;
    s["given"] = stage.params.given();
    s["canonical"] = stage.canonical();
    stages.append(s);
  }
  out["stages"] = stages;
  return out;
}

}  // namespace

nb::object param_value(const ParamSpec& spec, const Params& params) {
  switch (spec.type) {
    case ParamType::kInt:
      return nb::cast(params.get_int(spec.name));
    case ParamType::kFloat:
      return nb::cast(params.get_float(spec.name));
    case ParamType::kBool:
      return nb::cast(params.get_bool(spec.name));
    case ParamType::kString:
    case ParamType::kEnum:
      return nb::cast(params.get_string(spec.name));
    case ParamType::kIntList:
      return nb::cast(params.get_int_list(spec.name));
  }
  throw InternalError("unhandled parameter type");
}

}  // namespace kvsim::python

NB_MODULE(_core, m) {
  using namespace kvsim::python;
  m.doc() = "kvsim's C++ engine (use the kvsim package, not this module)";
  // Registered Python scorers are kept for the life of the process on purpose (the policy
  // registry points at them), so nanobind's leak report at exit would only be noise.
  nb::set_leak_warnings(false);
  bind_errors(m);
  m.def("policies", &policies, "Every registered policy with its parameters, sorted by name.");
  m.def("parse_spec", &parse_spec, nb::arg("text"),
        "Parses and validates a policy spec with the C++ parser.");
  bind_trace(m);
  bind_replay(m);
  bind_scorer(m);
  bind_live(m);
}
