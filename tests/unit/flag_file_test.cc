// ExpandFlagfiles (server/common/flag_file.h) over real files: what a flag
// file's lines become on the command line, and every way a file or a line
// can be wrong.
#include "server/common/flag_file.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/temp_dir.h"

namespace ckptd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A stand-in for ckptd's flags: two value flags, one boolean.
FlagKind Lookup(absl::string_view name) {
  static const std::map<std::string, FlagKind, std::less<>> kFlags = {
      {"data_dir", FlagKind::kValue},
      {"listen", FlagKind::kValue},
      {"insecure_no_auth", FlagKind::kBool},
  };
  auto it = kFlags.find(name);
  return it == kFlags.end() ? FlagKind::kUnknown : it->second;
}

class FlagFileTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::MakeTempDir("flag-file-test"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& text) {
    const std::string path = absl::StrCat(dir_, "/", name);
    std::ofstream(path, std::ios::binary) << text;
    return path;
  }

  absl::StatusOr<std::vector<std::string>> Expand(
      std::vector<std::string> args) {
    args.insert(args.begin(), "ckptd");
    return ExpandFlagfiles(args, Lookup);
  }

  std::string dir_;
};

TEST_F(FlagFileTest, LinesTakeThePlaceOfTheFlagfileArgument) {
  const std::string file = Write("a.flags",
                                 "# a comment\n"
                                 "\n"
                                 "   --data-dir=/var/lib/ckptd  \r\n"
                                 "\t# an indented comment\n"
                                 "-listen=0.0.0.0:50051\n"
                                 "--insecure-no-auth\n"
                                 "--noinsecure_no_auth\n"
                                 "--listen=a b # not a comment");
  auto args = Expand({"--listen=first", "--flagfile=" + file, "--data_dir=x"});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_THAT(
      *args, ElementsAre("ckptd", "--listen=first", "--data_dir=/var/lib/ckptd",
                         "--listen=0.0.0.0:50051", "--insecure_no_auth",
                         "--noinsecure_no_auth", "--listen=a b # not a comment",
                         "--data_dir=x"));
}

TEST_F(FlagFileTest, EveryWayOfNamingTheFileWorks) {
  const std::string a = Write("a.flags", "--listen=a\n");
  const std::string b = Write("b.flags", "--data_dir=b\n");
  for (const std::vector<std::string>& given :
       std::vector<std::vector<std::string>>{
           {"--flagfile=" + a + "," + b},
           {"--flagfile", a, "-flagfile", b},
           {"-flagfile=" + a, "--flagfile", b}}) {
    auto args = Expand(given);
    ASSERT_TRUE(args.ok()) << given[0] << ": " << args.status();
    EXPECT_THAT(*args, ElementsAre("ckptd", "--listen=a", "--data_dir=b"))
        << given[0];
  }
}

TEST_F(FlagFileTest, NestedFilesAndPositionalArgumentsStayInOrder) {
  const std::string inner = Write("inner.flags", "--data_dir=inner\n");
  const std::string outer =
      Write("outer.flags", absl::StrCat("--listen=outer\n--flagfile=", inner,
                                        "\n--insecure_no_auth=false\n"));
  auto args =
      Expand({"--flagfile=" + outer, "--", "--flagfile=" + inner, "extra"});
  ASSERT_TRUE(args.ok()) << args.status();
  EXPECT_THAT(*args, ElementsAre("ckptd", "--listen=outer", "--data_dir=inner",
                                 "--insecure_no_auth=false", "--",
                                 "--flagfile=" + inner, "extra"));
  args = Expand({"--listen=x", "positional"});
  ASSERT_TRUE(args.ok());
  EXPECT_THAT(*args, ElementsAre("ckptd", "--listen=x", "positional"));
}

TEST_F(FlagFileTest, BadFilesAndLinesNameTheFileTheLineAndTheFix) {
  const std::string missing = absl::StrCat(dir_, "/missing.flags");
  const std::string loop = absl::StrCat(dir_, "/loop.flags");
  Write("loop.flags", absl::StrCat("--flagfile=", loop, "\n"));
  struct Case {
    std::string name;
    std::vector<std::string> args;
    std::vector<std::string> message_parts;
  };
  auto file = [&](const std::string& name, const std::string& text) {
    return "--flagfile=" + Write(name, text);
  };
  const std::vector<Case> cases = {
      {"missing file",
       {"--flagfile=" + missing},
       {missing, "cannot read", "No such file"}},
      {"directory", {"--flagfile=" + dir_}, {dir_, "is a directory"}},
      {"no file given", {"--flagfile="}, {"--flagfile needs a file"}},
      {"no file after a bare --flagfile",
       {"--flagfile"},
       {"--flagfile needs a file"}},
      {"empty name in a list",
       {"--flagfile=" + missing + ","},
       {"empty file name"}},
      {"not a flag",
       {file("a.flags", "# ok\ndata_dir=/x\n")},
       {"a.flags line 2", "'data_dir=/x' is not a flag", "--name=value"}},
      {"space instead of =",
       {file("b.flags", "--listen 0.0.0.0:50051\n")},
       {"b.flags line 1", "--listen=0.0.0.0:50051"}},
      {"unknown flag",
       {file("c.flags", "\n\n--data_dri=/x\n")},
       {"c.flags line 3", "unknown flag --data_dri", "ckptd --help"}},
      {"value flag without a value",
       {file("d.flags", "--data-dir\n")},
       {"d.flags line 1", "--data_dir needs a value: --data_dir=VALUE"}},
      {"--no on a value flag",
       {file("e.flags", "--nodata_dir\n")},
       {"e.flags line 1", "unknown flag --nodata_dir"}},
      {"bare dashes",
       {file("f.flags", "--\n")},
       {"f.flags line 1", "a flag file holds only --name=value lines"}},
      {"nested missing file",
       {file("g.flags", "--listen=a\n--flagfile=" + missing + "\n")},
       {"g.flags line 2", missing, "cannot read"}},
      {"a file that includes itself",
       {"--flagfile=" + loop},
       {"nested more than 8 deep", "does one include itself?"}},
      {"oversized file",
       {file("h.flags", std::string(2 << 20, '#'))},
       {"h.flags is over 1048576 bytes"}},
  };
  for (const Case& c : cases) {
    auto args = Expand(c.args);
    ASSERT_FALSE(args.ok()) << c.name;
    EXPECT_EQ(args.status().code(), absl::StatusCode::kInvalidArgument)
        << c.name;
    for (const std::string& part : c.message_parts) {
      EXPECT_THAT(std::string(args.status().message()), HasSubstr(part))
          << c.name;
    }
  }
}

}  // namespace
}  // namespace ckptd
