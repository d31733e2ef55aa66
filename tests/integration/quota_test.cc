// Quotas against a real ckptd: --run_quota_bytes per run and
// --identity_quota_bytes over the runs one identity may write. A push that
// would cross a quota fails with RESOURCE_EXHAUSTED naming usage, quota and
// flag, before its bytes are stored; what was stored before still reads
// back; deleting versions frees quota.
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ckptd/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/secret.h"
#include "tests/integration/support/server_process.h"
#include "tests/support/random_bytes.h"

namespace ckptd {
namespace {

using ::ckptd::testing::RandomBytes;
using ::ckptd::testing::ServerProcess;
using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1 << 20;

std::unique_ptr<Client> Connect(const ServerProcess& server,
                                const std::string& token = "") {
  ClientOptions o;
  o.address = server.address();
  o.token = token;
  o.rpc_timeout_seconds = 30;
  auto c = Client::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

// One tensor of `bytes` (a blob of its own: larger than the pack threshold).
absl::StatusOr<VersionInfo> Push(Client& client, const std::string& run,
                                 const std::string& bytes, int64_t step) {
  PushRequest req;
  req.run = run;
  req.step = step;
  ManifestEntry root;
  root.mutable_container()->set_kind(v1::ContainerInfo::DICT);
  req.entries.push_back({root, {}});
  ManifestEntry e;
  e.add_path()->set_key("w");
  e.mutable_tensor()->set_dtype(v1::UINT8);
  e.mutable_tensor()->add_shape(static_cast<int64_t>(bytes.size()));
  TensorData data;
  data.data = bytes.data();
  data.byte_length = bytes.size();
  req.entries.push_back({e, data});
  PushOptions options;
  options.max_attempts = 1;
  return client.Push(req, options);
}

size_t BlobFiles(const std::string& data_dir) {
  size_t n = 0;
  for (const auto& f :
       std::filesystem::recursive_directory_iterator(data_dir + "/blobs")) {
    if (f.is_regular_file()) ++n;
  }
  return n;
}

void ExpectReadsBack(Client& client, const std::string& run,
                     const std::string& ref, const std::string& bytes) {
  auto v = client.GetVersion(run, ref, GetVersionOptions());
  ASSERT_TRUE(v.ok()) << v.status();
  auto tensors = client.ReadAllTensors(*v, nullptr, PullOptions());
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  ASSERT_EQ(tensors->size(), 1u);
  EXPECT_TRUE((*tensors)[0].bytes == bytes) << run << "@" << ref;
}

TEST(QuotaTest, RunQuotaRefusesUploadsThatWouldCrossIt) {
  ServerProcess server({absl::StrCat("--run_quota_bytes=", 10 * kMiB)});
  ASSERT_TRUE(server.Start().ok());
  auto client = Connect(server);
  const std::string six = RandomBytes(6 * kMiB, 1);
  const std::string other_six = RandomBytes(6 * kMiB, 2);
  const std::string four = RandomBytes(4 * kMiB, 3);

  ASSERT_TRUE(Push(*client, "a", six, 1).ok());
  const size_t files = BlobFiles(server.data_dir());

  auto over = Push(*client, "a", other_six, 2);
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted)
      << over.status();
  EXPECT_THAT(
      over.status().message(),
      HasSubstr(absl::StrCat("run 'a' stores ", 6 * kMiB,
                             " bytes and this upload adds ", 6 * kMiB)));
  EXPECT_THAT(over.status().message(),
              HasSubstr(absl::StrCat("the quota is ", 10 * kMiB,
                                     " bytes (--run_quota_bytes)")));
  EXPECT_EQ(BlobFiles(server.data_dir()), files)
      << "the refused upload stored bytes";
  ExpectReadsBack(*client, "a", "1", six);

  // The same bytes again cost nothing: a blob counts once per run.
  ASSERT_TRUE(Push(*client, "a", six, 3).ok());
  // Another run has its own quota.
  ASSERT_TRUE(Push(*client, "b", other_six, 1).ok());
  // Up to the quota exactly...
  ASSERT_TRUE(Push(*client, "a", four, 4).ok());
  // ...and then no new version at all.
  auto full = Push(*client, "a", RandomBytes(1024, 4), 5);
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.status().message(),
              HasSubstr(absl::StrCat("run 'a' stores ", 10 * kMiB,
                                     " bytes; the quota is ", 10 * kMiB)));

  // Deleting one of the two versions that hold `six` frees nothing...
  ASSERT_TRUE(client->DeleteVersion("a", "1").ok());
  auto still = Push(*client, "a", other_six, 6);
  EXPECT_EQ(still.status().code(), absl::StatusCode::kResourceExhausted)
      << still.status();
  // ...deleting the other frees its 6 MiB.
  ASSERT_TRUE(client->DeleteVersion("a", "3").ok());
  auto again = Push(*client, "a", other_six, 7);
  EXPECT_TRUE(again.ok()) << again.status();
  ExpectReadsBack(*client, "a", "4", four);
  ExpectReadsBack(*client, "b", "1", other_six);
}

TEST(QuotaTest, IdentityQuotaCountsEveryRunTheIdentityMayWrite) {
  const std::string dir = ServerProcess::MakeTempDir("ckptd-quota");
  const std::string team = *NewBearerToken(), other = *NewBearerToken();
  const std::string auth = dir + "/auth";
  std::ofstream(auth) << "team writer t-* sha256:" << Sha256Hex(team) << "\n"
                      << "other writer o-* sha256:" << Sha256Hex(other) << "\n";
  ServerProcess server({"--auth_file=" + auth,
                        absl::StrCat("--identity_quota_bytes=", 8 * kMiB)});
  ASSERT_TRUE(server.Start().ok());
  auto team_client = Connect(server, team);
  auto other_client = Connect(server, other);

  const std::string five = RandomBytes(5 * kMiB, 5);
  ASSERT_TRUE(Push(*team_client, "t-1", five, 1).ok());
  auto over = Push(*team_client, "t-2", RandomBytes(5 * kMiB, 6), 1);
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.status().message(),
              HasSubstr(absl::StrCat("identity 'team'")));
  EXPECT_THAT(over.status().message(), HasSubstr("--identity_quota_bytes"));
  EXPECT_THAT(over.status().message(),
              HasSubstr(absl::StrCat("stores ", 5 * kMiB, " bytes")));
  // Another identity has its own.
  EXPECT_TRUE(Push(*other_client, "o-1", RandomBytes(5 * kMiB, 7), 1).ok());
  ExpectReadsBack(*team_client, "t-1", "1", five);
}

TEST(QuotaTest, IdentityQuotaWithoutAuthIsRefusedAtStart) {
  ServerProcess server({"--identity_quota_bytes=100"});
  absl::Status st = server.Start();
  EXPECT_FALSE(st.ok());
}

}  // namespace
}  // namespace ckptd
