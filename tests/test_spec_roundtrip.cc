// Property tests of the spec grammar (docs/policies.md, "Spec grammar"): every spec
// the parser accepts has a canonical form that parses back to itself and to the
// same values, and no value given in a spec is silently changed or merged with
// its neighbours.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include "sim/base/rng.h"
#include "test_util.h"

namespace kvsim {
namespace {

// Characters of random string values: ordinary path characters and every
// character the grammar gives a meaning to.
constexpr const char kStringAlphabet[] = "abcXYZ019./_-:=,+[]{}\" \t'~";

int64_t random_int(Rng& rng, double min, double max) {
  const auto lo = static_cast<int64_t>(min), hi = static_cast<int64_t>(max);
  switch (rng.next_u64() % 4) {
    case 0:
      return lo;
    case 1:
      return hi;
    default:
      return lo + static_cast<int64_t>(rng.next_u64() % static_cast<uint64_t>(hi - lo + 1));
  }
}

// The text of a random value of `p` and, in `expected`, the value it must parse to.
std::string random_value(Rng& rng, const ParamSpec& p, ParamValue& expected) {
  switch (p.type) {
    case ParamType::kInt: {
      const int64_t v = random_int(rng, p.min, p.max);
      expected = v;
      return std::to_string(v);
    }
    case ParamType::kFloat: {
      double v = p.min + (p.max - p.min) * rng.uniform();
      char buf[40];
      // Full precision, a short decimal, or an exponent with '+'.
      const int form = static_cast<int>(rng.next_u64() % 3);
      std::snprintf(buf, sizeof buf, form == 0 ? "%.17g" : form == 1 ? "%.3g" : "%.6e", v);
      v = std::strtod(buf, nullptr);
      if (v < p.min || v > p.max) {
        v = p.min;
        std::snprintf(buf, sizeof buf, "%.17g", v);
      }
      expected = v;
      return buf;
    }
    case ParamType::kBool: {
      static const char* const kTexts[] = {"true", "false", "1", "0", "yes", "no"};
      const int i = static_cast<int>(rng.next_u64() % 6);
      expected = i % 2 == 0;
      return kTexts[i];
    }
    case ParamType::kEnum: {
      const std::string& c = p.choices[rng.next_u64() % p.choices.size()];
      expected = c;
      return c;
    }
    case ParamType::kIntList: {
      std::vector<int64_t> items(rng.next_u64() % 4);
      std::string text = "[";
      for (size_t i = 0; i < items.size(); ++i) {
        items[i] = random_int(rng, p.min, p.max);
        text += (i ? "," : "") + std::to_string(items[i]);
      }
      expected = items;
      return text + "]";
    }
    case ParamType::kString: {
      std::string s;
      const size_t n = rng.next_u64() % 8;
      for (size_t i = 0; i < n; ++i) {
        s.push_back(kStringAlphabet[rng.next_u64() % (sizeof kStringAlphabet - 1)]);
      }
      // Whitespace next to a separator character (":,=+[]"), wherever it is, and around the
      // value is dropped (the grammar); whitespace between two other characters is refused,
      // so the expected value of such a spec does not matter.
      auto is_space = [](char c) { return c == ' ' || c == '\t'; };
      auto is_separator = [](char c) { return std::strchr(":,=+[]", c) != nullptr; };
      std::string kept;
      for (size_t i = 0; i < s.size();) {
        if (!is_space(s[i])) {
          kept.push_back(s[i++]);
          continue;
        }
        size_t next = i;
        while (next < s.size() && is_space(s[next])) ++next;
        const bool dropped =
            kept.empty() || next == s.size() || is_separator(kept.back()) || is_separator(s[next]);
        if (!dropped) kept.append(s, i, next - i);
        i = next;
      }
      expected = kept;
      return s;
    }
  }
  return "";
}

bool same_value(const ParamValue& a, const ParamValue& b) {
  if (a.index() != b.index()) return false;
  if (const double* x = std::get_if<double>(&a)) {
    return std::memcmp(x, &std::get<double>(b), sizeof(double)) == 0;
  }
  return a == b;
}

ParamValue value_of(const Params& params, const ParamSpec& p) {
  switch (p.type) {
    case ParamType::kInt:
      return params.get_int(p.name);
    case ParamType::kFloat:
      return params.get_float(p.name);
    case ParamType::kBool:
      return params.get_bool(p.name);
    case ParamType::kIntList:
      return params.get_int_list(p.name);
    default:
      return params.get_string(p.name);
  }
}

struct Given {
  size_t stage;
  const ParamSpec* param;
  ParamValue value;
};

// A random stage of `info`: a random subset of its parameters with random values.
std::string random_stage(Rng& rng, const PolicyInfo& info, size_t stage,
                         std::vector<Given>& given) {
  std::string args;
  for (const auto& p : info.params) {
    if (rng.next_u64() % 2) continue;
    ParamValue v;
    const std::string text = random_value(rng, p, v);
    append_joined(args, ",", p.name + "=" + text);
    given.push_back({stage, &p, v});
  }
  return args.empty() ? info.name : info.name + ":" + args;
}

// Parses `text`; when accepted, checks the given values and the canonical round trip.
// Returns whether it was accepted.
bool check_spec(const std::string& text, const std::vector<Given>& given) {
  std::optional<PolicySpec> spec;
  try {
    spec = PolicySpec::parse(text);
  } catch (const ConfigError&) {
    return false;
  }
  for (const Given& g : given) {
    EXPECT_TRUE(same_value(value_of(spec->stages()[g.stage].params, *g.param), g.value))
        << text << ": parameter '" << g.param->name << "' read as another value";
  }
  const std::string canonical = spec->canonical();
  PolicySpec again;
  try {
    again = PolicySpec::parse(canonical);
  } catch (const ConfigError& e) {
    ADD_FAILURE() << "canonical form of '" << text << "' is refused: " << e.what();
    return true;
  }
  EXPECT_EQ(again.canonical(), canonical) << text;
  EXPECT_EQ(again.stages().size(), spec->stages().size()) << text;
  for (size_t s = 0; s < spec->stages().size() && s < again.stages().size(); ++s) {
    for (const auto& p : spec->stages()[s].info->params) {
      EXPECT_TRUE(
          same_value(value_of(again.stages()[s].params, p), value_of(spec->stages()[s].params, p)))
          << canonical << ": '" << p.name << "' changes on re-parsing";
    }
  }
  return true;
}

TEST(SpecGrammar, CanonicalFormOfEveryAcceptedSpecParsesToItself) {
  Rng rng(16);
  const auto infos = PolicyRegistry::instance().all();
  int accepted = 0, tried = 0;
  for (const PolicyInfo* info : infos) {
    for (int trial = 0; trial < 300; ++trial) {
      std::vector<Given> given;
      std::string text = random_stage(rng, *info, 0, given);
      // Sometimes a second stage after an eviction (the composition rules decide).
      if (info->kind == StageKind::kEvict && rng.next_u64() % 2) {
        const PolicyInfo* next = infos[rng.next_u64() % infos.size()];
        text += "+" + random_stage(rng, *next, 1, given);
      }
      ++tried;
      accepted += check_spec(text, given);
    }
  }
  // The property says nothing if (almost) everything is refused.
  EXPECT_GT(accepted, tried / 4) << accepted << " of " << tried << " accepted";
}

TEST(SpecGrammar, RandomTextIsRefusedOrRoundTrips) {
  Rng rng(17);
  const std::string alphabet = "skvqunifomh2l:=,+[]0123456789.e- _abc";
  for (int trial = 0; trial < 20000; ++trial) {
    std::string text;
    // Start from a real policy name half of the time, so that some texts parse.
    if (trial % 2) text = trial % 4 == 1 ? "skvq:calib=" : "uniform:bits=";
    const size_t n = rng.next_u64() % 12;
    for (size_t i = 0; i < n; ++i) text.push_back(alphabet[rng.next_u64() % alphabet.size()]);
    check_spec(text, {});
  }
}

TEST(SpecGrammar, SeparatorsInStringValuesAreRefused) {
  // Once absorbed `calib_tokens` into the file name; now every reading is an error.
  EXPECT_NE(testing::spec_error("skvq:calib=a],calib_tokens=16").find("unmatched ']'"),
            std::string::npos);
  EXPECT_NE(testing::spec_error("skvq:calib=a]").find("unmatched ']'"), std::string::npos);
  EXPECT_NE(testing::spec_error("skvq:calib=[a").find("unclosed '['"), std::string::npos);
  EXPECT_NE(testing::spec_error("skvq:calib=[a]").find("may not contain"), std::string::npos);
  EXPECT_NE(testing::spec_error("skvq:calib=a+1.h5").find("may not contain"), std::string::npos);
  EXPECT_NE(testing::spec_error("skvq:calib=my file.h5").find("whitespace inside"),
            std::string::npos);
  EXPECT_NE(testing::spec_error("uniform:bits=1 2").find("whitespace inside"), std::string::npos);
  EXPECT_NE(testing::spec_error("h2o:budget=[[1]]").find("nested"), std::string::npos);
  // Whitespace around separators is still dropped; other characters pass.
  EXPECT_EQ(PolicySpec::parse(" h2o + kivi : bits = 2 ").canonical(),
            PolicySpec::parse("h2o+kivi:bits=2").canonical());
  EXPECT_EQ(PolicySpec::parse("skvq:calib=dir/a:b=c.h5").stages()[0].params.get_string("calib"),
            "dir/a:b=c.h5");
}

TEST(SpecGrammar, FloatsKeepEveryBit) {
  // 0.1 + 2^-55 differs from 0.1 in the last bit; 12 digits would print both as 0.1.
  const double x = std::nextafter(0.1, 1.0);
  char text[64];
  std::snprintf(text, sizeof text, "minicache:gamma=%.17g", x);
  const PolicySpec spec = PolicySpec::parse(text);
  const PolicySpec again = PolicySpec::parse(spec.canonical());
  EXPECT_EQ(again.stages()[0].params.get_float("gamma"), x) << spec.canonical();
  // Values people type keep their short form.
  EXPECT_NE(PolicySpec::parse("minicache:gamma=0.05").canonical().find("gamma=0.05,"),
            std::string::npos);
}

}  // namespace
}  // namespace kvsim
