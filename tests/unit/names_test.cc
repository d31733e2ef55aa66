// The name rules of proto/base/names.h: run, alias, user alias and metric
// names, and ParseRef. Every side (server, client, CLI, Python) uses these,
// so a case that changes here changes what every API accepts.
#include "proto/base/names.h"

#include <cstdint>
#include <limits>
#include <string>
#include <variant>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace ckptd {
namespace {

using ::testing::HasSubstr;

// One input checked by all three name validators. `error` is a part of the
// message expected from each validator that refuses the input ("" when all
// accept it).
struct NameCase {
  const char* case_name;
  std::string input;
  bool run_ok;
  bool alias_ok;
  bool user_alias_ok;
  const char* error;
};

const NameCase kNameCases[] = {
    {"simple", "llama-7b-sft", true, true, true, ""},
    {"one letter", "a", true, true, true, ""},
    {"one digit is a run but not a user alias", "7", true, true, false,
     "all digits"},
    {"starts with a digit", "7b", true, true, true, ""},
    {"dots underscores dashes", "a.b_c-d", true, true, true, ""},
    {"trailing dot", "a.", true, true, true, ""},
    {"128 characters", std::string(128, 'x'), true, true, true, ""},
    {"129 characters", std::string(129, 'x'), false, false, false,
     "is 129 characters long; the limit is 128"},
    {"129 characters, shown truncated", std::string(129, 'x'), false, false,
     false, "...'"},
    {"empty", "", false, false, false, "name is empty"},
    {"leading dot", ".hidden", false, false, false,
     "must start with a letter or digit"},
    {"dot dot", "..", false, false, false, "must start with a letter or digit"},
    {"leading dash", "-rf", false, false, false,
     "must start with a letter or digit"},
    {"leading underscore", "_x", false, false, false,
     "must start with a letter or digit"},
    {"slash (RocksDB key separator)", "a/b", false, false, false,
     "'/' at position 1"},
    {"path traversal", "a/../b", false, false, false, "'/' at position 1"},
    {"space", "a b", false, false, false, "' ' at position 1"},
    {"colon", "run:1", false, false, false, "':' at position 3"},
    {"at sign", "run@1", false, false, false, "'@' at position 3"},
    {"unicode (escaped in the message)", "mod\xc3\xa8le", false, false, false,
     "'\\xc3' at position 3"},
    {"unicode first byte", "\xc3\xa9t\xc3\xa9", false, false, false,
     "must start with a letter or digit"},
    {"NUL inside", std::string("a\0b", 3), false, false, false,
     "'\\x00' at position 1"},
    {"trailing newline", "run\n", false, false, false, "'\\n' at position 3"},
    {"tab", "a\tb", false, false, false, "at position 1"},
    {"last is kept by the server", "last", true, true, false,
     "kept by the server"},
    {"best is kept by the server", "best", true, true, false,
     "kept by the server"},
    {"LAST (names are case-sensitive)", "LAST", true, true, true, ""},
    {"lastly", "lastly", true, true, true, ""},
    {"all digits", "123", true, true, false, "all digits"},
    {"zero", "0", true, true, false, "all digits"},
    {"leading zeros", "007", true, true, false, "all digits"},
    {"huge number", "99999999999999999999999", true, true, false, "all digits"},
    {"digits and a dot", "1.5", true, true, true, ""},
    {"digits and a letter", "1a", true, true, true, ""},
};

void ExpectVerdict(const char* validator, const NameCase& c, bool ok,
                   const absl::Status& st) {
  if (ok) {
    EXPECT_TRUE(st.ok()) << c.case_name << ": " << validator << ": " << st;
    return;
  }
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument)
      << c.case_name << ": " << validator << ": " << st;
  EXPECT_THAT(st.message(), HasSubstr(c.error))
      << c.case_name << ": " << validator;
}

TEST(NamesTest, RunAliasAndUserAliasNames) {
  for (const NameCase& c : kNameCases) {
    ExpectVerdict("ValidateRunName", c, c.run_ok, ValidateRunName(c.input));
    ExpectVerdict("ValidateAliasName", c, c.alias_ok,
                  ValidateAliasName(c.input));
    ExpectVerdict("ValidateUserAliasName", c, c.user_alias_ok,
                  ValidateUserAliasName(c.input));
  }
}

TEST(NamesTest, MessagesSayWhichKindOfName) {
  struct Case {
    const char* case_name;
    absl::Status status;
    const char* prefix;
  };
  const Case cases[] = {
      {"run", ValidateRunName("a/b"), "run name 'a/b'"},
      {"alias", ValidateAliasName("a/b"), "alias name 'a/b'"},
      {"user alias", ValidateUserAliasName("a/b"), "alias name 'a/b'"},
      {"empty run", ValidateRunName(""), "run name is empty"},
  };
  for (const Case& c : cases) {
    EXPECT_THAT(std::string(c.status.message()),
                ::testing::StartsWith(c.prefix))
        << c.case_name << ": " << c.status;
  }
}

TEST(NamesTest, MetricNames) {
  struct Case {
    const char* case_name;
    std::string input;
    bool ok;
    const char* error;
  };
  const Case cases[] = {
      {"simple", "loss", true, ""},
      {"slashes and at signs", "val/acc@1", true, ""},
      {"spaces", "val loss", true, ""},
      {"leading dot", ".loss", true, ""},
      {"unicode", "\xce\xbb-loss", true, ""},
      {"256 characters", std::string(256, 'm'), true, ""},
      {"257 characters", std::string(257, 'm'), false, "must be 1-256"},
      {"empty", "", false, "must be 1-256"},
      {"tab", "val\tloss", false, "control character"},
      {"newline", "loss\n", false, "control character"},
      {"NUL", std::string("lo\0ss", 5), false, "control character"},
      {"escape", "\x1b[31mloss", false, "control character"},
      {"DEL", "lo\x7fss", false, "control character"},
  };
  for (const Case& c : cases) {
    const absl::Status st = ValidateMetricName(c.input);
    if (c.ok) {
      EXPECT_TRUE(st.ok()) << c.case_name << ": " << st;
    } else {
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument)
          << c.case_name << ": " << st;
      EXPECT_THAT(st.message(), HasSubstr(c.error)) << c.case_name;
    }
  }
}

TEST(NamesTest, ParseRef) {
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
  struct Case {
    const char* case_name;
    std::string input;
    // Exactly one of: a version, an alias, an error message part.
    std::variant<uint64_t, std::string> want;
    const char* error;
  };
  const Case cases[] = {
      {"version 1", "1", uint64_t{1}, nullptr},
      {"version 12", "12", uint64_t{12}, nullptr},
      {"leading zeros read as the number", "007", uint64_t{7}, nullptr},
      {"largest version", "18446744073709551615", kMax, nullptr},
      {"last", "last", std::string("last"), nullptr},
      {"best", "best", std::string("best"), nullptr},
      {"user alias", "prod", std::string("prod"), nullptr},
      {"digit then letters is an alias", "1a", std::string("1a"), nullptr},
      {"v-prefixed is an alias", "v1", std::string("v1"), nullptr},
      {"128-character alias", std::string(128, 'r'), std::string(128, 'r'),
       nullptr},
      {"zero", "0", uint64_t{0}, "versions start at 1"},
      {"zeros", "000", uint64_t{0}, "versions start at 1"},
      {"one past the largest version", "18446744073709551616", uint64_t{0},
       "not a valid version number"},
      {"huge number", "99999999999999999999999", uint64_t{0},
       "not a valid version number"},
      {"empty", "", uint64_t{0}, "ref is empty"},
      {"negative", "-1", uint64_t{0},
       "neither a version number nor an alias name"},
      {"plus sign", "+1", uint64_t{0},
       "neither a version number nor an alias name"},
      {"leading space", " 1", uint64_t{0},
       "neither a version number nor an alias name"},
      {"trailing space", "1 ", uint64_t{0},
       "neither a version number nor an alias name"},
      {"run@version", "run@3", uint64_t{0}, "'@' at position 3"},
      {"slash", "a/b", uint64_t{0}, "'/' at position 1"},
      {"leading dot", ".last", uint64_t{0}, "must start with a letter"},
      {"129 characters", std::string(129, 'r'), uint64_t{0},
       "129 characters long"},
      {"fullwidth digit", "\xef\xbc\x91", uint64_t{0},
       "neither a version number nor an alias name"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<Ref> ref = ParseRef(c.input);
    if (c.error != nullptr) {
      EXPECT_EQ(ref.status().code(), absl::StatusCode::kInvalidArgument)
          << c.case_name << ": " << ref.status();
      EXPECT_THAT(ref.status().message(), HasSubstr(c.error)) << c.case_name;
      continue;
    }
    ASSERT_TRUE(ref.ok()) << c.case_name << ": " << ref.status();
    EXPECT_EQ(ref->value, c.want) << c.case_name;
  }
}

// A ref that ParseRef reads as an alias is a valid alias name, and every
// valid user alias parses back as that alias (never as a version).
TEST(NamesTest, UserAliasesParseAsThemselves) {
  for (const NameCase& c : kNameCases) {
    if (!c.user_alias_ok) continue;
    absl::StatusOr<Ref> ref = ParseRef(c.input);
    ASSERT_TRUE(ref.ok()) << c.case_name << ": " << ref.status();
    ASSERT_TRUE(std::holds_alternative<std::string>(ref->value)) << c.case_name;
    EXPECT_EQ(std::get<std::string>(ref->value), c.input) << c.case_name;
  }
}

}  // namespace
}  // namespace ckptd
