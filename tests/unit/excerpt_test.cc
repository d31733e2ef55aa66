// Excerpt and KeyPathExcerpt (server/core/limits.h): what an error message
// may quote of client input.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/core/limits.h"

namespace ckptd::core {
namespace {

using ::testing::EndsWith;
using ::testing::StartsWith;

TEST(ExcerptTest, ShortInputIsQuotedWhole) {
  EXPECT_EQ(Excerpt("lr"), "'lr'");
  EXPECT_EQ(Excerpt(""), "''");
  EXPECT_EQ(Excerpt("a\nb"), "'a\\nb'");
}

TEST(ExcerptTest, LongInputIsCutAt200BytesAndSaysHowLongItWas) {
  const std::string big(1'000'000, 'x');
  const std::string shown = Excerpt(big);
  EXPECT_EQ(shown,
            "'" + std::string(kMaxEchoBytes, 'x') + "'... (1000000 bytes)");
}

TEST(ExcerptTest, EscapesCountTowardTheBudgetAndAreNeverSplit) {
  const std::string binary(300, '\x01');  // "\x01" each: 4 bytes shown
  const std::string shown = Excerpt(binary);
  EXPECT_THAT(shown, StartsWith("'\\x01\\x01"));
  EXPECT_THAT(shown, EndsWith("\\x01'... (300 bytes)"));
  // 50 escapes of 4 bytes fill the 200 bytes exactly.
  EXPECT_EQ(shown.size(), 1 + 200 + std::string("'... (300 bytes)").size());
}

TEST(KeyPathExcerptTest, DottedWhenShortCutWithTheSegmentCountWhenLong) {
  google::protobuf::RepeatedPtrField<v1::PathSegment> path;
  path.Add()->set_key("model");
  path.Add()->set_int_key(3);
  path.Add()->set_key("weight");
  EXPECT_EQ(KeyPathExcerpt(path), "model.3.weight");
  for (int i = 0; i < 1'000'000; ++i) path.Add()->set_key("seg");
  const std::string shown = KeyPathExcerpt(path);
  EXPECT_THAT(shown, StartsWith("model.3.weight.seg.seg"));
  EXPECT_THAT(shown, EndsWith("... (1000003 segments)"));
  EXPECT_LE(shown.size(), kMaxEchoBytes + 30);
}

TEST(OverLimitTest, NamesWhatTheLimitAndTheFlag) {
  absl::Status st =
      OverLimit("the number of labels", 300, "labels", 256, "max_labels");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(),
            "the number of labels is 300 labels; the limit is 256 "
            "(--max_labels)");
}

}  // namespace
}  // namespace ckptd::core
