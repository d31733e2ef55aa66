// Integrity against a real `ckptd` on loopback with a fast scrub
// (--scrub_interval=200ms): a byte flipped in a stored blob file under the
// data dir is found by the scrub alone (no read), the blob then counts as
// missing (FindMissingBlobs, raw stub), a re-push of the same state through
// ckptd::Client uploads the bytes again, and afterwards the old version and
// the new one pull back bit-identical. Replies name run@N and the tensor and
// never the data dir; Verify lists the damaged version.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ckptd/client.h"
#include "ckptd/v1/checkpoint.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/base/digest.h"
#include "tests/integration/support/server_process.h"
#include "tests/support/file_bytes.h"
#include "tests/support/random_bytes.h"

namespace ckptd {
namespace {

using ::ckptd::testing::FlipFileByte;
using ::ckptd::testing::RandomBytes;
using ::ckptd::testing::ServerProcess;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::SizeIs;

constexpr int kRpcSeconds = 30;
// Only a broken scrub waits this long (a pass over a few MiB takes
// milliseconds); the loop polls, it does not time anything.
constexpr auto kPollDeadline = std::chrono::seconds(120);

std::unique_ptr<grpc::ClientContext> Context() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(kRpcSeconds));
  return ctx;
}

v1::ManifestEntry Root() {
  v1::ManifestEntry e;
  e.mutable_container()->set_kind(v1::ContainerInfo::DICT);
  return e;
}

class HealTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<ServerProcess>(std::vector<std::string>{
        "--scrub_interval=200ms", "--shutdown_grace=1s"});
    absl::Status st = server_->Start();
    ASSERT_TRUE(st.ok()) << st;
    ClientOptions options;
    options.address = server_->address();
    options.rpc_timeout_seconds = kRpcSeconds;
    auto client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = *std::move(client);
    stub_ = v1::Checkpoint::NewStub(grpc::CreateChannel(
        server_->address(), grpc::InsecureChannelCredentials()));
    // A 3 MiB tensor (a blob of its own) and a small one (packed).
    big_ = RandomBytes((3 << 20) + 5, 1);
    small_ = RandomBytes(512, 2);
  }

  PushRequest State(int64_t step) const {
    PushRequest push;
    push.run = "heal";
    push.step = step;
    push.entries.push_back({Root(), {}});
    int i = 0;
    for (const std::string* bytes : {&big_, &small_}) {
      ManifestEntry e;
      e.add_path()->set_key(i++ == 0 ? "big" : "small");
      e.mutable_tensor()->set_dtype(v1::UINT8);
      e.mutable_tensor()->add_shape(static_cast<int64_t>(bytes->size()));
      TensorData data;
      data.data = bytes->data();
      data.byte_length = bytes->size();
      push.entries.push_back({e, data});
    }
    return push;
  }

  // Pulls every tensor of heal@`version`; compares with the pushed bytes.
  absl::Status PullMatches(uint64_t version) {
    auto v =
        client_->GetVersion("heal", absl::StrCat(version), GetVersionOptions());
    if (!v.ok()) return v.status();
    auto tensors = client_->ReadAllTensors(*v, nullptr, PullOptions());
    if (!tensors.ok()) return tensors.status();
    if (tensors->size() != 2) return absl::InternalError("not 2 tensors");
    if ((*tensors)[0].bytes != big_ || (*tensors)[1].bytes != small_) {
      return absl::InternalError("pulled bytes differ from the pushed ones");
    }
    return absl::OkStatus();
  }

  std::string BlobPath(const std::string& digest_bytes) const {
    const std::string hex = DigestFromBytes(digest_bytes)->Hex();
    return absl::StrCat(server_->data_dir(), "/blobs/", hex.substr(0, 2), "/",
                        hex);
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<v1::Checkpoint::Stub> stub_;
  std::string big_;
  std::string small_;
};

// The flipped byte followed by a re-save, found by the scrub.
TEST_F(HealTest, ScrubFindsAFlippedByteAndAResaveHealsBothVersions) {
  auto first = client_->Push(State(1), PushOptions());
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(PullMatches(first->version()).ok());
  auto v = client_->GetVersion("heal", "1", GetVersionOptions());
  ASSERT_TRUE(v.ok()) << v.status();
  const std::string big_digest = v->shards[0].entries(1).tensor().blob_digest();
  ASSERT_EQ(big_digest,
            std::string(DigestOf(big_.data(), big_.size()).AsBytes()));
  FlipFileByte(BlobPath(big_digest), 2 << 20);

  // No read: wait until the scrub has quarantined it, which shows as the
  // blob being missing to a new pending version.
  v1::BeginVersionRequest begin;
  begin.set_run("heal");
  begin.set_step(100);
  v1::BeginVersionResponse pending;
  ASSERT_TRUE(stub_->BeginVersion(Context().get(), begin, &pending).ok());
  v1::FindMissingBlobsRequest find;
  find.set_run("heal");
  find.set_version(pending.version());
  find.add_digests(big_digest);
  bool missing = false;
  const auto deadline = std::chrono::steady_clock::now() + kPollDeadline;
  while (!missing && std::chrono::steady_clock::now() < deadline) {
    v1::FindMissingBlobsResponse resp;
    grpc::Status st = stub_->FindMissingBlobs(Context().get(), find, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    missing = resp.missing_size() == 1;
    if (!missing) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(missing) << "the scrub never found the byte\n"
                       << server_->LogTail();
  v1::AbortVersionRequest abort;
  abort.set_run("heal");
  abort.set_version(pending.version());
  v1::AbortVersionResponse aborted;
  ASSERT_TRUE(stub_->AbortVersion(Context().get(), abort, &aborted).ok());
  EXPECT_THAT(server_->LogTail(20000), HasSubstr("found by scrub"));

  // Reads fail with DATA_LOSS naming the version and the tensor, not the
  // server's path.
  absl::Status bad = PullMatches(first->version());
  EXPECT_EQ(bad.code(), absl::StatusCode::kDataLoss) << bad;
  EXPECT_THAT(bad.message(), HasSubstr("heal@1: tensor 'big'"));
  EXPECT_THAT(bad.message(), Not(HasSubstr(server_->data_dir())));
  EXPECT_THAT(bad.message(), Not(HasSubstr("/blobs/")));
  std::string exported;
  absl::Status exp = client_->ExportSafetensors(
      "heal", "1", 0, {}, [&](std::string_view piece, uint64_t) {
        exported.append(piece);
        return absl::OkStatus();
      });
  EXPECT_EQ(exp.code(), absl::StatusCode::kDataLoss) << exp;
  EXPECT_THAT(exp.message(), HasSubstr("tensor 'big'"));
  EXPECT_THAT(exp.message(), Not(HasSubstr(server_->data_dir())));
  EXPECT_TRUE(exported.empty()) << "bytes were sent before the DATA_LOSS";

  // Verify lists the damaged version.
  auto report = client_->Verify("heal", "");
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_THAT(report->damaged(), SizeIs(1));
  EXPECT_EQ(report->damaged(0).version(), first->version());
  ASSERT_THAT(report->damaged(0).tensors(), SizeIs(1));
  EXPECT_EQ(report->damaged(0).tensors(0).key(), "big");
  for (const std::string& e : report->errors()) {
    EXPECT_THAT(e, Not(HasSubstr(server_->data_dir())));
  }

  // The re-save sends the damaged bytes again (and only those).
  auto second = client_->Push(State(2), PushOptions());
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->state(), v1::COMMITTED);
  EXPECT_EQ(second->uploaded_bytes(), big_.size());
  absl::Status old_version = PullMatches(first->version());
  EXPECT_TRUE(old_version.ok()) << old_version;
  absl::Status new_version = PullMatches(second->version());
  EXPECT_TRUE(new_version.ok()) << new_version;
  auto clean = client_->Verify("heal", "");
  ASSERT_TRUE(clean.ok()) << clean.status();
  EXPECT_THAT(clean->damaged(), SizeIs(0));
  // Still healed after a restart (the quarantine record went with it).
  ASSERT_TRUE(server_->Restart().ok());
  EXPECT_TRUE(PullMatches(first->version()).ok());
  auto third = client_->Push(State(3), PushOptions());
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_EQ(third->uploaded_bytes(), 0u);
}

// A damaged `best` goes with --force; `best` and `last` move.
TEST_F(HealTest, ForceDeleteOfADamagedBest) {
  v1::Policy policy;
  policy.set_monitor("loss");
  policy.set_mode(v1::MIN);
  ASSERT_TRUE(client_->SetPolicy("heal", policy).ok());
  std::vector<uint64_t> versions;
  for (int i = 0; i < 3; ++i) {
    PushRequest push = State(i + 1);
    push.metrics["loss"] = i == 1 ? 0.1 : 0.5 + i;
    const std::string bytes = RandomBytes(2048, 10 + i);
    push.entries[2].tensor.data = bytes.data();  // a blob per version
    push.entries[2].tensor.byte_length = bytes.size();
    push.entries[2].entry.mutable_tensor()->set_shape(0, 2048);
    auto info = client_->Push(push, PushOptions());
    ASSERT_TRUE(info.ok()) << info.status();
    versions.push_back(info->version());
  }
  auto best = client_->GetVersion("heal", "best", GetVersionOptions());
  ASSERT_TRUE(best.ok());
  ASSERT_EQ(best->info.version(), versions[1]);
  FlipFileByte(BlobPath(best->shards[0].entries(2).tensor().blob_digest()), 1);
  absl::Status refused = client_->DeleteVersion("heal", "best");
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.message(), HasSubstr("--force"));
  ASSERT_TRUE(client_->DeleteVersion("heal", "best", /*force=*/true).ok());
  GetVersionOptions meta;
  meta.include_manifest = false;
  EXPECT_EQ(client_->GetVersion("heal", "best", meta)->info.version(),
            versions[0]);
  ASSERT_TRUE(client_->DeleteVersion("heal", "last", /*force=*/true).ok());
  EXPECT_EQ(client_->GetVersion("heal", "last", meta)->info.version(),
            versions[0]);
  auto report = client_->Verify("heal", "");
  ASSERT_TRUE(report.ok());
  EXPECT_THAT(report->damaged(), SizeIs(0));
}

}  // namespace
}  // namespace ckptd
