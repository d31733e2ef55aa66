// The one absl -> gRPC status mapping: codes, typed reasons, and the
// redaction of the server's data dir from every reply.
#include "server/service/status_mapping.h"

#include <filesystem>
#include <string>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/error_reason.h"
#include "tests/support/temp_dir.h"

namespace ckptd::service {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(StatusMappingTest, RepliesNeverShowTheDataDir) {
  const std::string dir = ckptd::testing::MakeTempDir("ckptd-redact");
  RedactPathInReplies(dir);
  // A relative spelling of a data dir, as --data_dir may give it.
  RedactPathInReplies("./rel-data/");
  struct Case {
    std::string name;
    std::string message;
    std::string want;
  };
  const Case cases[] = {
      {"blob file", "blob ab (file " + dir + "/blobs/ab/ab, 3 bytes) is bad",
       "blob ab (file <data-dir>/blobs/ab/ab, 3 bytes) is bad"},
      {"twice", dir + "/tmp/x and " + dir + "/meta",
       "<data-dir>/tmp/x and <data-dir>/meta"},
      {"the dir itself", "create data dir " + dir,
       "create data dir <data-dir>"},
      {"relative", "open ./rel-data/blobs/x: EACCES",
       "open <data-dir>/blobs/x: EACCES"},
      {"a longer name is not the dir", "see " + dir + "-other/x",
       "see " + dir + "-other/x"},
      {"inside another path", "/srv" + dir + "/x", "/srv" + dir + "/x"},
      {"no path", "blob ab is not stored", "blob ab is not stored"},
  };
  for (const Case& c : cases) {
    const absl::Status in =
        WithReason(absl::DataLossError(c.message), v1::BLOB_MISSING);
    const absl::Status out = RedactPaths(in);
    EXPECT_EQ(out.message(), c.want) << c.name;
    EXPECT_EQ(out.code(), absl::StatusCode::kDataLoss) << c.name;
    EXPECT_EQ(ReasonOf(out), v1::BLOB_MISSING) << c.name;
    const grpc::Status reply = ToGrpcStatus(in);
    EXPECT_EQ(reply.error_message(), c.want) << c.name;
    EXPECT_EQ(reply.error_code(), grpc::StatusCode::DATA_LOSS) << c.name;
    // The typed reason's details carry the message too: redacted there.
    if (!absl::StrContains(c.want, dir + "/")) {
      EXPECT_THAT(reply.error_details(), Not(HasSubstr(dir + "/"))) << c.name;
    }
    EXPECT_FALSE(reply.error_details().empty()) << c.name;
  }
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace ckptd::service
