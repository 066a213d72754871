#include <gtest/gtest.h>

#include "test_util.h"

namespace kvsim {
namespace {

TEST(PolicySpec, DefaultsAreResolved) {
  const PolicySpec s = PolicySpec::parse("uniform");
  EXPECT_EQ(s.canonical(), "uniform:bits=4,group=32,k_axis=token,v_axis=token");
  EXPECT_EQ(PolicySpec::parse("full").canonical(), "full");
}

TEST(PolicySpec, ParsesValuesAndComposition) {
  const PolicySpec s =
      PolicySpec::parse("streamingllm:sinks=2,window=60+uniform:bits=2,k_axis=channel");
  ASSERT_EQ(s.stages().size(), 2u);
  EXPECT_EQ(s.stage_names(), "streamingllm+uniform");
  EXPECT_EQ(s.stages()[0].params.get_int("sinks"), 2);
  EXPECT_EQ(s.stages()[0].params.get_int("window"), 60);
  EXPECT_EQ(s.stages()[1].params.get_int("bits"), 2);
  EXPECT_EQ(s.stages()[1].params.get_string("k_axis"), "channel");
  EXPECT_EQ(s.canonical(),
            "streamingllm:sinks=2,window=60+uniform:bits=2,group=32,k_axis=channel,v_axis=token");
  // Whitespace is ignored; the canonical form parses to itself.
  EXPECT_EQ(PolicySpec::parse(" uniform : bits = 2 ").canonical(),
            PolicySpec::parse("uniform:bits=2").canonical());
  EXPECT_EQ(PolicySpec::parse(s.canonical()).canonical(), s.canonical());
}

TEST(PolicySpec, UnknownPolicyListsValidNames) {
  const std::string e = testing::spec_error("kivvi:bits=2");
  EXPECT_NE(e.find("unknown policy 'kivvi'"), std::string::npos) << e;
  EXPECT_NE(e.find("full"), std::string::npos) << e;
  EXPECT_NE(e.find("streamingllm"), std::string::npos) << e;
  EXPECT_NE(e.find("uniform"), std::string::npos) << e;
}

TEST(PolicySpec, UnknownKeyListsValidKeys) {
  const std::string e = testing::spec_error("uniform:bitz=2");
  EXPECT_NE(e.find("unknown parameter 'bitz'"), std::string::npos) << e;
  EXPECT_NE(e.find("bits, group, k_axis, v_axis"), std::string::npos) << e;
  EXPECT_NE(testing::spec_error("full:bits=2").find("takes no parameters"), std::string::npos);
}

TEST(PolicySpec, BadValuesAreRefusedWithTheExpectedType) {
  EXPECT_NE(testing::spec_error("uniform:bits=two").find("not an integer"), std::string::npos);
  EXPECT_NE(testing::spec_error("uniform:bits=9").find("out of range"), std::string::npos);
  EXPECT_NE(testing::spec_error("uniform:bits=0").find("int in [1, 8]"), std::string::npos);
  EXPECT_NE(testing::spec_error("uniform:k_axis=diagonal").find("one of token|channel"),
            std::string::npos);
  EXPECT_NE(testing::spec_error("uniform:bits").find("expected key=value"), std::string::npos);
  EXPECT_NE(testing::spec_error("uniform:bits=2,bits=3").find("given twice"), std::string::npos);
  EXPECT_NE(testing::spec_error("streamingllm:window=-1").find("out of range"), std::string::npos);
  EXPECT_NE(testing::spec_error("").find("empty"), std::string::npos);
  EXPECT_NE(testing::spec_error("full+").find("empty stage"), std::string::npos);
}

TEST(PolicySpec, NonsenseCombinationsAreRefusedWithTheReason) {
  EXPECT_NE(testing::spec_error("uniform+full").find("two quantize stages"), std::string::npos);
  const std::string order = testing::spec_error("uniform:bits=2+streamingllm");
  EXPECT_NE(order.find("order evict, merge, quantize"), std::string::npos) << order;
  EXPECT_EQ(testing::spec_error("streamingllm+streamingllm:window=10"),
            "");  // two evictions compose
  EXPECT_NE(testing::spec_error("minicache+minicache").find("two merge stages"), std::string::npos);
  EXPECT_NE(testing::spec_error("uniform+minicache").find("order evict, merge, quantize"),
            std::string::npos);
  EXPECT_EQ(testing::spec_error("streamingllm+minicache+uniform:bits=4"), "");
}

TEST(Params, TypedParsing) {
  const std::vector<ParamSpec> specs = {
      ParamSpec::Float("ratio", 0.5, 0, 1, "r"), ParamSpec::Bool("flag", false, "f"),
      ParamSpec::IntList("skip", "[0,1]", 0, 100, "s"), ParamSpec::String("path", "", "p")};
  Params p = Params::parse("x", specs, "ratio=2.5e-1,flag=true,skip=[3,12],path=/tmp/a.h5");
  EXPECT_DOUBLE_EQ(p.get_float("ratio"), 0.25);
  EXPECT_TRUE(p.get_bool("flag"));
  EXPECT_EQ(p.get_int_list("skip"), (std::vector<int64_t>{3, 12}));
  EXPECT_EQ(p.get_string("path"), "/tmp/a.h5");
  EXPECT_EQ(Params::parse("x", specs, "").get_int_list("skip"), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(Params::parse("x", specs, "skip=[]").get_int_list("skip").size(), 0u);
  EXPECT_THROW(Params::parse("x", specs, "ratio=nan"), ConfigError);
  EXPECT_THROW(Params::parse("x", specs, "skip=[1,x]"), ConfigError);
  EXPECT_THROW(Params::parse("x", specs, "skip=[101]"), ConfigError);
  EXPECT_THROW(Params::parse("x", specs, "flag=maybe"), ConfigError);
}

TEST(PolicySpec, ExponentPlusIsNotAStageSeparator) {
  const std::vector<ParamSpec> specs = {ParamSpec::Float("eps", 1, 0, 1e9, "e")};
  EXPECT_DOUBLE_EQ(Params::parse("x", specs, "eps=1e+3").get_float("eps"), 1000.0);
}

TEST(Registry, EveryPolicyHasAFactoryAndDocumentedParams) {
  const auto all = PolicyRegistry::instance().all();
  ASSERT_GE(all.size(), 3u);
  for (const PolicyInfo* info : all) {
    EXPECT_FALSE(info->summary.empty()) << info->name;
    for (const auto& p : info->params) EXPECT_FALSE(p.help.empty()) << info->name << "." << p.name;
    // Defaults must themselves be valid.
    EXPECT_NO_THROW(PolicySpec::parse(info->name)) << info->name;
  }
}

TEST(Params, GivenListsTheKeysTheTextSetInOrder) {
  const std::vector<ParamSpec> specs = {ParamSpec::Int("a", 1, 0, 9, ""),
                                        ParamSpec::Float("b", 0.5, 0, 1, ""),
                                        ParamSpec::IntList("c", "[]", 0, 9, "")};
  EXPECT_TRUE(Params::parse("p", specs, "").given().empty());
  const Params p = Params::parse("p", specs, "c=[1,2],a=3");
  EXPECT_EQ(p.given(), (std::vector<std::string>{"c", "a"}));
  EXPECT_EQ(p.canonical(), "a=3,b=0.5,c=[1,2]");
}

}  // namespace
}  // namespace kvsim
