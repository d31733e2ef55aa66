// The --auth_file parser, glob matching, token digests and the access table.
#include <string>

#include "ckptd/v1/checkpoint.grpc.pb.h"
#include "ckptd/v1/checkpoint.pb.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "gtest/gtest.h"
#include "proto/base/secret.h"
#include "server/service/access.h"
#include "server/service/auth.h"

namespace ckptd::service {
namespace {

using ::testing::HasSubstr;

const std::string kHex(64, 'a');

TEST(AuthFileTest, ParsesLinesCommentsAndBothCredentialKinds) {
  const std::string token = "ckptd_secret";
  auto table = AuthTable::Parse(
      "# team credentials\n\n"
      "alice writer llama-*,bert sha256:" +
          Sha256Hex(token) +
          "\n"
          "   # indented comment\n"
          "deploy reader * cert:inference prod\n"
          "root admin * SHA256:" +  // prefix is case-sensitive: rejected
          kHex +
          "\n",
      "auth");
  ASSERT_FALSE(table.ok());
  EXPECT_THAT(table.status().message(), HasSubstr("auth:6:"));
  table =
      AuthTable::Parse("alice writer llama-*,bert sha256:" + Sha256Hex(token) +
                           "\ndeploy reader * cert:inference prod\n",
                       "auth");
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_EQ(table->entries().size(), 2u);
  const AuthTable::Entry* alice = table->FindToken(token);
  ASSERT_NE(alice, nullptr);
  EXPECT_EQ(alice->principal.identity, "alice");
  EXPECT_EQ(alice->principal.role, Role::kWriter);
  EXPECT_THAT(alice->principal.run_patterns,
              ::testing::ElementsAre("llama-*", "bert"));
  EXPECT_EQ(table->FindToken("ckptd_secreT"), nullptr);
  const AuthTable::Entry* deploy = table->FindCertCommonName("inference prod");
  ASSERT_NE(deploy, nullptr);
  EXPECT_EQ(deploy->principal.role, Role::kReader);
  EXPECT_EQ(table->FindCertCommonName("inference"), nullptr);
}

TEST(AuthFileTest, BadLinesNameTheLineAndTheProblem) {
  const struct {
    std::string line;
    std::string says;
  } cases[] = {
      {"alice writer *", "has 3 fields"},
      {"alice owner * sha256:" + kHex, "role 'owner'"},
      {"al/ice writer * sha256:" + kHex, "identity 'al/ice'"},
      {"alice writer llama-*, sha256:" + kHex, "empty run pattern"},
      {"alice writer a/b sha256:" + kHex, "run pattern 'a/b'"},
      {"alice writer * sha256:abc", "64 hex digits"},
      {"alice writer * sha256:" + std::string(64, 'g'), "64 hex digits"},
      {"alice writer * ckptd_plaintexttoken", "bare token"},
      {"alice writer * cert:", "CN of"},
      {std::string(129, 'a') + " writer * sha256:" + kHex, "limit is 128"},
  };
  for (const auto& c : cases) {
    auto table = AuthTable::Parse("# header\n" + c.line + "\n", "f");
    ASSERT_FALSE(table.ok()) << c.line;
    EXPECT_THAT(table.status().message(), HasSubstr("f:2: ")) << c.line;
    EXPECT_THAT(table.status().message(), HasSubstr(c.says)) << c.line;
    // Never echoes a credential's digest.
    EXPECT_THAT(table.status().message(),
                ::testing::Not(HasSubstr(std::string(20, 'a'))))
        << c.line;
  }
}

TEST(AuthFileTest, DuplicateCredentialsAndEmptyFilesAreRefused) {
  auto dup = AuthTable::Parse(
      "a reader * sha256:" + kHex + "\nb admin * sha256:" + kHex + "\n", "f");
  ASSERT_FALSE(dup.ok());
  EXPECT_THAT(dup.status().message(),
              HasSubstr("f:2: the same credential as line 1"));
  auto empty = AuthTable::Parse("# nothing\n\n", "f");
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(empty.status().message(), HasSubstr("no credentials"));
  EXPECT_EQ(AuthTable::Load("/nonexistent/auth").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(GlobTest, MatchesStarsAndQuestionMarks) {
  EXPECT_TRUE(GlobMatch("*", "anything"));
  EXPECT_TRUE(GlobMatch("*", ""));
  EXPECT_TRUE(GlobMatch("llama-*", "llama-7b"));
  EXPECT_TRUE(GlobMatch("llama-*", "llama-"));
  EXPECT_FALSE(GlobMatch("llama-*", "llama"));
  EXPECT_FALSE(GlobMatch("llama-*", "xllama-7b"));
  EXPECT_TRUE(GlobMatch("exp-?", "exp-1"));
  EXPECT_FALSE(GlobMatch("exp-?", "exp-12"));
  EXPECT_TRUE(GlobMatch("*-7b-*", "llama-7b-chat"));
  EXPECT_FALSE(GlobMatch("*-7b-*", "llama-13b-chat"));
  EXPECT_TRUE(GlobMatch("a*b*c", "aXXbYYc"));
  EXPECT_FALSE(GlobMatch("a*b*c", "aXXbYY"));
  EXPECT_FALSE(GlobMatch("bert", "bert2"));
  // A `*` in the pattern is always a wildcard, also facing a '*' (found by
  // auth_file_fuzzer).
  EXPECT_TRUE(GlobMatch("*", "* x"));
  EXPECT_TRUE(GlobMatch("a*", "a*bc"));
  Principal p{"x", Role::kReader, {"llama-*", "bert"}};
  EXPECT_TRUE(p.MayTouchRun("bert"));
  EXPECT_TRUE(p.MayTouchRun("llama-1"));
  EXPECT_FALSE(p.MayTouchRun("gpt"));
}

TEST(SecretTest, TokensAreFreshAndDigestsAreSha256) {
  auto a = NewBearerToken();
  auto b = NewBearerToken();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_EQ(a->size(), 6u + 43u);  // "ckptd_" + 256 bits in base64url
  EXPECT_EQ(a->find_first_not_of("ckptd_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijk"
                                 "lmnopqrstuvwxyz0123456789-"),
            std::string::npos);
  // FIPS 180-2 test vector.
  EXPECT_EQ(Sha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "ab"));
}

// Every method of ckptd.v1.Checkpoint has exactly one rule, and the rules
// say what the README's table says.
TEST(AccessTableTest, CoversEveryMethodOfTheService) {
  const google::protobuf::ServiceDescriptor* service =
      v1::BeginVersionRequest::descriptor()->file()->FindServiceByName(
          "Checkpoint");
  ASSERT_NE(service, nullptr);
  for (int i = 0; i < service->method_count(); ++i) {
    const std::string& name = service->method(i)->name();
    EXPECT_NE(RuleForName(name), nullptr) << name << " has no access rule";
  }
  EXPECT_EQ(RuleForName("NoSuchMethod"), nullptr);
  EXPECT_EQ(RuleFor(Method::kDeleteVersion).role, Role::kAdmin);
  EXPECT_EQ(RuleFor(Method::kCollectGarbage).role, Role::kAdmin);
  EXPECT_EQ(RuleFor(Method::kVerify).role, Role::kAdmin);
  EXPECT_EQ(RuleFor(Method::kSetPolicy).role, Role::kWriter);
  EXPECT_EQ(RuleFor(Method::kUploadBlobs).role, Role::kWriter);
  EXPECT_EQ(RuleFor(Method::kReadBlobs).role, Role::kReader);
  EXPECT_FALSE(RuleFor(Method::kListRuns).run_scoped);
  EXPECT_TRUE(RuleFor(Method::kGetVersion).run_scoped);
}

}  // namespace
}  // namespace ckptd::service
