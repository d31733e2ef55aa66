// Wire-level bad input against a real `ckptd` on loopback, sent with a raw
// ckptd::v1::Checkpoint stub (no client-side checks in the way). For every
// case: the gRPC status code, a message that names the bad value, and
// afterwards the version committed before still pulls back bit-identical
// through ckptd::Client and nothing new is listed (DESIGN.md invariant 7:
// clear errors, nothing lost).
//
// One server serves the whole suite. It holds run `base` with one committed
// version (pushed by the real client) and run `scratch` with one pending
// version that has one good blob uploaded: bad requests target it, so that
// each case has exactly one thing wrong.
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "ckptd/client.h"
#include "ckptd/v1/checkpoint.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/base/digest.h"
#include "tests/integration/support/server_process.h"
#include "tests/support/random_bytes.h"

namespace ckptd {
namespace {

using ::ckptd::testing::ServerProcess;
using ::testing::HasSubstr;

constexpr char kBaseRun[] = "base";
constexpr char kScratchRun[] = "scratch";
constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kMaxChunk = 4 * kMiB;  // the protocol's chunk limit
constexpr int kRpcSeconds = 30;

using ::ckptd::testing::RandomBytes;

std::string DigestBytes(const std::string& data) {
  return std::string(DigestOf(data.data(), data.size()).AsBytes());
}
std::string DigestHex(const std::string& data) {
  return DigestOf(data.data(), data.size()).Hex();
}

std::unique_ptr<grpc::ClientContext> Context() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(kRpcSeconds));
  return ctx;
}

// A chunk with a correct checksum.
v1::UploadChunk Chunk(const std::string& run, uint64_t version,
                      const std::string& digest, uint64_t blob_size,
                      uint64_t offset, std::string data) {
  v1::UploadChunk c;
  c.set_run(run);
  c.set_version(version);
  c.set_digest(digest);
  c.set_blob_size(blob_size);
  c.set_offset(offset);
  c.set_checksum(ChunkChecksum(data.data(), data.size()));
  c.set_data(std::move(data));
  return c;
}

v1::ManifestEntry Root() {
  v1::ManifestEntry e;
  e.mutable_container()->set_kind(v1::ContainerInfo::DICT);
  return e;
}

// A manifest with one FLOAT32 tensor "w" over all of `blob`.
v1::ShardManifest OneTensor(const std::string& blob) {
  v1::ShardManifest m;
  *m.add_entries() = Root();
  v1::ManifestEntry* e = m.add_entries();
  e->add_path()->set_key("w");
  v1::TensorInfo* t = e->mutable_tensor();
  t->set_dtype(v1::FLOAT32);
  t->add_shape(static_cast<int64_t>(blob.size() / 4));
  t->set_byte_length(blob.size());
  t->set_blob_digest(DigestBytes(blob));
  return m;
}

class BadInputTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess();
    absl::Status st = server_->Start();
    ASSERT_TRUE(st.ok()) << st;
    ClientOptions options;
    options.address = server_->address();
    options.rpc_timeout_seconds = kRpcSeconds;
    auto client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = client->release();
    stub_ = v1::Checkpoint::NewStub(
                grpc::CreateChannel(server_->address(),
                                    grpc::InsecureChannelCredentials()))
                .release();

    // base@1: a multi-chunk tensor, small (packed) ones, a value.
    base_tensors_ =
        new std::vector<std::string>{RandomBytes(5 * kMiB + 12, 1),
                                     RandomBytes(4096, 2), RandomBytes(24, 3)};
    PushRequest push;
    push.run = kBaseRun;
    push.step = 10;
    push.metrics["loss"] = 0.25;
    push.entries.push_back({Root(), {}});
    for (size_t i = 0; i < base_tensors_->size(); ++i) {
      const std::string& bytes = (*base_tensors_)[i];
      ManifestEntry e;
      e.add_path()->set_key(absl::StrCat("t", i));
      e.mutable_tensor()->set_dtype(v1::UINT8);
      e.mutable_tensor()->add_shape(static_cast<int64_t>(bytes.size()));
      TensorData data;
      data.data = bytes.data();
      data.byte_length = bytes.size();
      push.entries.push_back({e, data});
    }
    ManifestEntry epoch;
    epoch.add_path()->set_key("epoch");
    epoch.mutable_value()->set_int_value(3);
    push.entries.push_back({epoch, {}});
    auto pushed = client_->Push(push, PushOptions());
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    ASSERT_EQ(pushed->state(), v1::COMMITTED);
    base_version_ = pushed->version();
    // Cases below use t0's blob: a tensor this big is not packed with others.
    auto manifest = client_->GetVersion(kBaseRun, absl::StrCat(base_version_),
                                        GetVersionOptions());
    ASSERT_TRUE(manifest.ok()) << manifest.status();
    const v1::TensorInfo& t0 = manifest->shards[0].entries(1).tensor();
    ASSERT_EQ(t0.blob_digest(), DigestBytes((*base_tensors_)[0]));
    ASSERT_EQ(t0.blob_offset(), 0u);

    // scratch: a pending version with one good blob.
    auto begun = BeginScratch(1);
    ASSERT_TRUE(begun.ok()) << begun.status();
    scratch_version_ = *begun;
    good_blob_ = new std::string(RandomBytes(64, 4));
    grpc::Status up =
        Upload({Chunk(kScratchRun, scratch_version_, DigestBytes(*good_blob_),
                      good_blob_->size(), 0, *good_blob_)});
    ASSERT_TRUE(up.ok()) << up.error_message();

    auto runs = client_->ListRuns();
    ASSERT_TRUE(runs.ok()) << runs.status();
    ASSERT_EQ(runs->size(), 2u);
    ready_ = true;
  }

  static void TearDownTestSuite() {
    delete stub_;
    delete client_;
    delete server_;
    delete base_tensors_;
    delete good_blob_;
  }

  void SetUp() override { ASSERT_TRUE(ready_) << "suite set-up failed"; }

  // Every test ends here too.
  void TearDown() override {
    if (ready_) ExpectStoredStateUnchanged();
  }

  static absl::StatusOr<uint64_t> BeginScratch(int64_t step) {
    v1::BeginVersionRequest req;
    req.set_run(kScratchRun);
    req.set_step(step);
    req.set_world_size(1);
    v1::BeginVersionResponse resp;
    grpc::Status st = stub_->BeginVersion(Context().get(), req, &resp);
    if (!st.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                          st.error_message());
    }
    return resp.version();
  }

  // One UploadBlobs stream of `chunks`; the server may end it early.
  static grpc::Status Upload(const std::vector<v1::UploadChunk>& chunks,
                             v1::UploadBlobsResponse* resp = nullptr) {
    v1::UploadBlobsResponse ignored;
    auto ctx = Context();
    auto writer = stub_->UploadBlobs(ctx.get(), resp ? resp : &ignored);
    for (const v1::UploadChunk& c : chunks) {
      if (!writer->Write(c)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }

  static grpc::Status Commit(const std::string& run, uint64_t version,
                             uint32_t rank, const v1::ShardManifest& m) {
    v1::CommitShardRequest req;
    req.set_run(run);
    req.set_version(version);
    req.set_rank(rank);
    *req.mutable_manifest() = m;
    (*req.mutable_metrics())["loss"] = 0.5;
    v1::CommitShardResponse resp;
    return stub_->CommitShard(Context().get(), req, &resp);
  }

  // Reads every range of `req`; returns the status and counts the chunks.
  static grpc::Status Read(const v1::ReadBlobsRequest& req, int* chunks) {
    auto ctx = Context();
    auto reader = stub_->ReadBlobs(ctx.get(), req);
    v1::ReadChunk chunk;
    *chunks = 0;
    while (reader->Read(&chunk)) ++*chunks;
    return reader->Finish();
  }

  // The digests among `digests` that the server does not store.
  static std::set<std::string> Missing(
      const std::vector<std::string>& digests) {
    v1::FindMissingBlobsRequest req;
    req.set_run(kScratchRun);
    req.set_version(scratch_version_);
    for (const auto& d : digests) req.add_digests(d);
    v1::FindMissingBlobsResponse resp;
    grpc::Status st = stub_->FindMissingBlobs(Context().get(), req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return {resp.missing().begin(), resp.missing().end()};
  }

  static void ExpectStatus(const grpc::Status& st, grpc::StatusCode code,
                           const std::vector<std::string>& mentions,
                           const std::string& what) {
    EXPECT_EQ(st.error_code(), code) << what << ": got " << st.error_code()
                                     << " '" << st.error_message() << "'";
    for (const std::string& m : mentions) {
      EXPECT_THAT(st.error_message(), HasSubstr(m))
          << what << ": the message does not name the bad value";
    }
  }

  // base@1 pulls back bit-identical and is still `last`; nothing new is
  // listed; no run was created.
  void ExpectStoredStateUnchanged() {
    SCOPED_TRACE("after the bad request");
    auto version = client_->GetVersion(kBaseRun, absl::StrCat(base_version_),
                                       GetVersionOptions());
    ASSERT_TRUE(version.ok()) << version.status();
    EXPECT_EQ(version->info.state(), v1::COMMITTED);
    auto tensors = client_->ReadAllTensors(*version, nullptr, PullOptions());
    ASSERT_TRUE(tensors.ok()) << tensors.status();
    ASSERT_EQ(tensors->size(), base_tensors_->size());
    for (size_t i = 0; i < tensors->size(); ++i) {
      EXPECT_TRUE((*tensors)[i].bytes == (*base_tensors_)[i])
          << "base tensor t" << i << " does not read back bit-identical";
    }
    auto last = client_->GetVersion(kBaseRun, "last", GetVersionOptions());
    ASSERT_TRUE(last.ok()) << last.status();
    EXPECT_EQ(last->info.version(), base_version_);

    for (const char* run : {kBaseRun, kScratchRun}) {
      ListVersionsRequest req;
      req.set_run(run);
      auto versions = client_->ListVersions(req);
      ASSERT_TRUE(versions.ok()) << versions.status();
      std::vector<uint64_t> numbers;
      for (const auto& v : *versions) numbers.push_back(v.version());
      EXPECT_EQ(numbers, run == kBaseRun ? std::vector<uint64_t>{base_version_}
                                         : std::vector<uint64_t>{})
          << "versions of run " << run;
    }
    auto runs = client_->ListRuns();
    ASSERT_TRUE(runs.ok()) << runs.status();
    std::set<std::string> names;
    for (const auto& r : *runs) names.insert(r.name());
    EXPECT_EQ(names, (std::set<std::string>{kBaseRun, kScratchRun}));
  }

  static ServerProcess* server_;
  static Client* client_;
  static v1::Checkpoint::Stub* stub_;
  static std::vector<std::string>* base_tensors_;
  static std::string* good_blob_;
  static uint64_t base_version_;
  static uint64_t scratch_version_;
  static bool ready_;
};

ServerProcess* BadInputTest::server_ = nullptr;
Client* BadInputTest::client_ = nullptr;
v1::Checkpoint::Stub* BadInputTest::stub_ = nullptr;
std::vector<std::string>* BadInputTest::base_tensors_ = nullptr;
std::string* BadInputTest::good_blob_ = nullptr;
uint64_t BadInputTest::base_version_ = 0;
uint64_t BadInputTest::scratch_version_ = 0;
bool BadInputTest::ready_ = false;

// ---------------------------------------------------------------------------
// UploadBlobs

struct UploadCase {
  std::string name;
  std::vector<v1::UploadChunk> chunks;
  grpc::StatusCode code;
  std::vector<std::string> mentions;
  // Digests that must not be stored afterwards.
  std::vector<std::string> not_stored;
};

TEST_F(BadInputTest, BadUploads) {
  const uint64_t v = scratch_version_;
  std::vector<UploadCase> cases;
  {
    const std::string data = RandomBytes(3000, 10);
    v1::UploadChunk c =
        Chunk(kScratchRun, v, DigestBytes(data), data.size(), 0, data);
    c.set_checksum(c.checksum() + 1);
    cases.push_back({"chunk checksum wrong",
                     {c},
                     grpc::StatusCode::DATA_LOSS,
                     {DigestHex(data), "checksum", "offset 0"},
                     {DigestBytes(data)}});
  }
  {
    const std::string data = RandomBytes(3000, 21);
    const std::string d = DigestBytes(data);
    v1::UploadChunk bad =
        Chunk(kScratchRun, v, d, data.size(), 1000, data.substr(1000));
    bad.set_checksum(bad.checksum() ^ 1);
    cases.push_back(
        {"chunk checksum wrong after a good chunk",
         {Chunk(kScratchRun, v, d, data.size(), 0, data.substr(0, 1000)), bad},
         grpc::StatusCode::DATA_LOSS,
         {DigestHex(data), "checksum", "offset 1000"},
         {d}});
  }
  {
    // Other bytes under the digest of a stored blob (base's big tensor has
    // a blob of its own): refused, and the stored blob is untouched (the
    // pull after each case checks it).
    const std::string& stored = (*base_tensors_)[0];
    const std::string data = RandomBytes(stored.size(), 22);
    const std::string d = DigestBytes(stored);
    cases.push_back(
        {"other bytes under a stored blob's digest",
         {Chunk(kScratchRun, v, d, data.size(), 0, data.substr(0, kMaxChunk)),
          Chunk(kScratchRun, v, d, data.size(), kMaxChunk,
                data.substr(kMaxChunk))},
         grpc::StatusCode::INVALID_ARGUMENT,
         {DigestHex(stored), DigestHex(data)},
         {DigestBytes(data)}});
  }
  {
    const std::string data = RandomBytes(3000, 11);
    const std::string claimed = RandomBytes(3000, 12);
    cases.push_back(
        {"bytes do not match the digest",
         {Chunk(kScratchRun, v, DigestBytes(claimed), data.size(), 0, data)},
         grpc::StatusCode::INVALID_ARGUMENT,
         {DigestHex(claimed), DigestHex(data)},
         {DigestBytes(claimed), DigestBytes(data)}});
  }
  {
    const std::string data = RandomBytes(kMaxChunk + 1, 13);
    cases.push_back(
        {"chunk larger than 4 MiB",
         {Chunk(kScratchRun, v, DigestBytes(data), data.size(), 0, data)},
         grpc::StatusCode::INVALID_ARGUMENT,
         {absl::StrCat(kMaxChunk + 1), absl::StrCat(kMaxChunk)},
         {DigestBytes(data)}});
  }
  {
    const std::string data = RandomBytes(3000, 14);
    const std::string d = DigestBytes(data);
    cases.push_back(
        {"offset gap",
         {Chunk(kScratchRun, v, d, data.size(), 0, data.substr(0, 1000)),
          Chunk(kScratchRun, v, d, data.size(), 1500, data.substr(1500))},
         grpc::StatusCode::FAILED_PRECONDITION,
         {"offset 1500", "expected offset is 1000"},
         {d}});
  }
  {
    const std::string data = RandomBytes(3000, 15);
    cases.push_back({"first chunk at an offset with nothing to resume",
                     {Chunk(kScratchRun, v, DigestBytes(data), data.size(),
                            1000, data.substr(1000))},
                     grpc::StatusCode::FAILED_PRECONDITION,
                     {DigestHex(data), "offset 1000"},
                     {DigestBytes(data)}});
  }
  {
    const std::string data = RandomBytes(3000, 16);
    cases.push_back({"chunk runs past blob_size",
                     {Chunk(kScratchRun, v, DigestBytes(data), 2000, 0, data)},
                     grpc::StatusCode::INVALID_ARGUMENT,
                     {"blob_size 2000"},
                     {DigestBytes(data)}});
  }
  {
    const std::string data = RandomBytes(100, 17);
    cases.push_back({"digest of the wrong length",
                     {Chunk(kScratchRun, v, "abc", data.size(), 0, data)},
                     grpc::StatusCode::INVALID_ARGUMENT,
                     {"16 bytes", "got 3"},
                     {DigestBytes(data)}});
  }
  {
    const std::string data = RandomBytes(100, 18);
    cases.push_back(
        {"unknown version",
         {Chunk(kScratchRun, 987654, DigestBytes(data), data.size(), 0, data)},
         grpc::StatusCode::NOT_FOUND,
         {"987654"},
         {DigestBytes(data)}});
  }
  {
    const std::string data = RandomBytes(100, 19);
    cases.push_back(
        {"bad run name",
         {Chunk("../etc", v, DigestBytes(data), data.size(), 0, data)},
         grpc::StatusCode::INVALID_ARGUMENT,
         {"'../etc'"},
         {DigestBytes(data)}});
  }
  {
    const std::string a = RandomBytes(3000, 23);
    const std::string b = RandomBytes(100, 24);
    cases.push_back(
        {"next blob before the current one ended",
         {Chunk(kScratchRun, v, DigestBytes(a), a.size(), 0, a.substr(0, 1000)),
          Chunk(kScratchRun, v, DigestBytes(b), b.size(), 0, b)},
         grpc::StatusCode::FAILED_PRECONDITION,
         {DigestHex(a), DigestHex(b), "1000 of 3000"},
         {DigestBytes(a), DigestBytes(b)}});
  }
  {
    const std::string a = RandomBytes(100, 25);
    const std::string b = RandomBytes(100, 26);
    cases.push_back(
        {"another version in the same stream",
         {Chunk(kScratchRun, v, DigestBytes(a), a.size(), 0, a),
          Chunk(kBaseRun, base_version_, DigestBytes(b), b.size(), 0, b)},
         grpc::StatusCode::INVALID_ARGUMENT,
         {absl::StrCat(kBaseRun, "@", base_version_),
          absl::StrCat(kScratchRun, "@", v)},
         {DigestBytes(b)}});
  }
  {
    const std::string data = RandomBytes(100, 27);
    const uint64_t huge = uint64_t{1} << 50;
    cases.push_back({"blob_size over the server's limit",
                     {Chunk(kScratchRun, v, DigestBytes(data), huge, 0, data)},
                     grpc::StatusCode::RESOURCE_EXHAUSTED,
                     {absl::StrCat(huge)},
                     {DigestBytes(data)}});
  }
  for (const UploadCase& c : cases) {
    SCOPED_TRACE(c.name);
    v1::UploadBlobsResponse resp;
    grpc::Status st = Upload(c.chunks, &resp);
    ExpectStatus(st, c.code, c.mentions, c.name);
    EXPECT_EQ(resp.blobs_size(), 0) << c.name;
    std::set<std::string> missing = Missing(c.not_stored);
    for (const std::string& d : c.not_stored) {
      EXPECT_TRUE(missing.contains(d))
          << c.name << ": blob " << absl::BytesToHexString(d)
          << " is stored after a rejected upload";
    }
    ExpectStoredStateUnchanged();
  }
  // The rejections did not disturb the pending version or its good blob.
  EXPECT_TRUE(Missing({DigestBytes(*good_blob_)}).empty());
}

TEST_F(BadInputTest, UploadForAnAbortedVersion) {
  auto aborted = BeginScratch(100);
  ASSERT_TRUE(aborted.ok()) << aborted.status();
  v1::AbortVersionRequest abort;
  abort.set_run(kScratchRun);
  abort.set_version(*aborted);
  abort.set_reason("bad_input_test abort");
  v1::AbortVersionResponse resp;
  ASSERT_TRUE(stub_->AbortVersion(Context().get(), abort, &resp).ok());
  const std::string data = RandomBytes(100, 20);
  grpc::Status st = Upload(
      {Chunk(kScratchRun, *aborted, DigestBytes(data), data.size(), 0, data)});
  ExpectStatus(st, grpc::StatusCode::FAILED_PRECONDITION,
               {absl::StrCat(kScratchRun, "@", *aborted), "aborted"},
               "upload for an aborted version");
}

// ---------------------------------------------------------------------------
// CommitShard

struct CommitCase {
  std::string name;
  std::function<void(v1::ShardManifest&)> mutate;
  grpc::StatusCode code;
  std::vector<std::string> mentions;
};

TEST_F(BadInputTest, BadManifests) {
  const std::string never_uploaded = RandomBytes(64, 30);
  const std::vector<CommitCase> cases = {
      {"blob never uploaded",
       [&](v1::ShardManifest& m) {
         m.mutable_entries(1)->mutable_tensor()->set_blob_digest(
             DigestBytes(never_uploaded));
       },
       grpc::StatusCode::FAILED_PRECONDITION,
       {DigestHex(never_uploaded), "'w'", "never uploaded"}},
      {"shape x dtype size != byte_length",
       [](v1::ShardManifest& m) {
         m.mutable_entries(1)->mutable_tensor()->set_byte_length(60);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"'w'", "byte_length 60", "64"}},
      {"shape too large for the blob",
       [](v1::ShardManifest& m) {
         m.mutable_entries(1)->mutable_tensor()->set_shape(0, 32);
         m.mutable_entries(1)->mutable_tensor()->set_byte_length(128);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"'w'", "128", "64 bytes"}},
      {"unknown dtype",
       [](v1::ShardManifest& m) {
         m.mutable_entries(1)->mutable_tensor()->set_dtype(
             static_cast<v1::DType>(99));
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"'w'", "dtype 99"}},
      {"duplicate key path",
       [](v1::ShardManifest& m) { *m.add_entries() = m.entries(1); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"'w'", "repeats"}},
      {"duplicate int key path",
       [](v1::ShardManifest& m) {
         v1::ManifestEntry list;
         list.add_path()->set_key("groups");
         list.mutable_container()->set_kind(v1::ContainerInfo::LIST);
         *m.add_entries() = list;
         for (int i = 0; i < 2; ++i) {
           v1::ManifestEntry item;
           item.add_path()->set_key("groups");
           item.add_path()->set_int_key(7);
           item.mutable_value()->set_float_value(0.1 * i);
           *m.add_entries() = item;
         }
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"'groups.7'", "repeats"}},
      {"negative dimension",
       [](v1::ShardManifest& m) {
         m.mutable_entries(1)->mutable_tensor()->set_shape(0, -16);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"'w'", "-16"}},
      {"digest of the wrong length",
       [](v1::ShardManifest& m) {
         m.mutable_entries(1)->mutable_tensor()->set_blob_digest("abc");
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"'w'", "16 bytes", "got 3"}},
      {"no root container",
       [](v1::ShardManifest& m) { m.mutable_entries()->DeleteSubrange(0, 1); },
       grpc::StatusCode::INVALID_ARGUMENT,
       {"root container"}},
  };
  for (const CommitCase& c : cases) {
    SCOPED_TRACE(c.name);
    v1::ShardManifest m = OneTensor(*good_blob_);
    c.mutate(m);
    ExpectStatus(Commit(kScratchRun, scratch_version_, 0, m), c.code,
                 c.mentions, c.name);
    ExpectStoredStateUnchanged();
  }
  // Still pending, with no shard committed.
  v1::GetVersionRequest get;
  get.set_run(kScratchRun);
  get.set_ref(absl::StrCat(scratch_version_));
  v1::GetVersionResponse resp;
  ExpectStatus(stub_->GetVersion(Context().get(), get, &resp),
               grpc::StatusCode::FAILED_PRECONDITION,
               {"pending", "0 of 1 shards"}, "scratch version after the cases");
}

TEST_F(BadInputTest, CommitForAnAbortedVersion) {
  auto aborted = BeginScratch(101);
  ASSERT_TRUE(aborted.ok()) << aborted.status();
  v1::AbortVersionRequest abort;
  abort.set_run(kScratchRun);
  abort.set_version(*aborted);
  abort.set_reason("bad_input_test abort");
  v1::AbortVersionResponse resp;
  ASSERT_TRUE(stub_->AbortVersion(Context().get(), abort, &resp).ok());
  ExpectStatus(Commit(kScratchRun, *aborted, 0, OneTensor(*good_blob_)),
               grpc::StatusCode::FAILED_PRECONDITION,
               {absl::StrCat(kScratchRun, "@", *aborted), "aborted",
                "bad_input_test abort"},
               "commit for an aborted version");
  // Aborting again is a no-op; a committed version cannot be aborted.
  EXPECT_TRUE(stub_->AbortVersion(Context().get(), abort, &resp).ok());
  abort.set_run(kBaseRun);
  abort.set_version(base_version_);
  ExpectStatus(stub_->AbortVersion(Context().get(), abort, &resp),
               grpc::StatusCode::FAILED_PRECONDITION,
               {absl::StrCat(kBaseRun, "@", base_version_), "committed"},
               "abort of a committed version");
}

TEST_F(BadInputTest, CommitWithBadRankRunOrVersion) {
  const v1::ShardManifest good = OneTensor(*good_blob_);
  for (uint32_t rank : {1u, 7u}) {
    ExpectStatus(Commit(kScratchRun, scratch_version_, rank, good),
                 grpc::StatusCode::INVALID_ARGUMENT,
                 {absl::StrCat("rank ", rank), "world_size 1"},
                 absl::StrCat("rank ", rank, " >= world_size"));
  }
  ExpectStatus(Commit("no-such-run", 1, 0, good), grpc::StatusCode::NOT_FOUND,
               {"'no-such-run'"}, "unknown run");
  ExpectStatus(Commit(kScratchRun, 987654, 0, good),
               grpc::StatusCode::NOT_FOUND, {"987654"}, "unknown version");
  ExpectStatus(Commit(kScratchRun, 0, 0, good),
               grpc::StatusCode::INVALID_ARGUMENT, {"version is 0"},
               "version 0");
  // A committed version is immutable.
  ExpectStatus(Commit(kBaseRun, base_version_, 0, good),
               grpc::StatusCode::FAILED_PRECONDITION,
               {absl::StrCat(kBaseRun, "@", base_version_)},
               "commit into a committed version");
}

// ---------------------------------------------------------------------------
// BeginVersion

TEST_F(BadInputTest, BadRunNames) {
  const struct {
    std::string name;
    std::string mention;
  } cases[] = {
      {"", "empty"},
      {"../x", "'../x'"},
      {"a/b", "'a/b'"},
      {std::string(200, 'a'), "200 characters"},
      // Shown escaped, the way the server escapes it.
      {std::string("a\0b", 3),
       absl::StrCat("'", absl::CHexEscape(std::string("a\0b", 3)), "'")},
      {"-lead", "'-lead'"},
      {".hidden", "'.hidden'"},
      {"a b", "'a b'"},
  };
  for (const auto& c : cases) {
    const std::string shown = absl::CHexEscape(c.name.substr(0, 40));
    v1::BeginVersionRequest req;
    req.set_run(c.name);
    req.set_step(1);
    v1::BeginVersionResponse resp;
    ExpectStatus(stub_->BeginVersion(Context().get(), req, &resp),
                 grpc::StatusCode::INVALID_ARGUMENT, {c.mention},
                 absl::StrCat("BeginVersion run '", shown, "'"));
    // Named as a ref target, the same names are refused too.
    v1::GetVersionRequest get;
    get.set_run(c.name);
    get.set_ref("last");
    v1::GetVersionResponse got;
    ExpectStatus(stub_->GetVersion(Context().get(), get, &got),
                 grpc::StatusCode::INVALID_ARGUMENT, {c.mention},
                 absl::StrCat("GetVersion run '", shown, "'"));
    ExpectStoredStateUnchanged();
  }
}

TEST_F(BadInputTest, BadWorldSize) {
  v1::BeginVersionRequest req;
  req.set_run(kScratchRun);
  req.set_step(1);  // the pending scratch version, begun with world_size 1
  req.set_world_size(3);
  v1::BeginVersionResponse resp;
  ExpectStatus(stub_->BeginVersion(Context().get(), req, &resp),
               grpc::StatusCode::INVALID_ARGUMENT,
               {"world_size 3", "world_size 1"},
               "world_size differing from the pending version's");
  req.set_step(2);
  req.set_world_size(uint32_t{1} << 30);
  ExpectStatus(stub_->BeginVersion(Context().get(), req, &resp),
               grpc::StatusCode::INVALID_ARGUMENT,
               {absl::StrCat(uint32_t{1} << 30)}, "huge world_size");
}

// ---------------------------------------------------------------------------
// ReadBlobs

TEST_F(BadInputTest, ReadBlobsOutsideTheVersionOrTheBlob) {
  // base's big tensor has a blob of its own.
  const std::string big_digest = DigestBytes((*base_tensors_)[0]);
  const uint64_t big_size = (*base_tensors_)[0].size();
  const struct {
    std::string name;
    std::string run;
    uint64_t version;
    std::string digest;
    grpc::StatusCode code;
    std::vector<std::string> mentions;
    uint64_t offset = 0;
    uint64_t length = 0;
  } cases[] = {
      // Stored, but belongs to another (pending) version.
      {"blob of another version",
       kBaseRun,
       base_version_,
       DigestBytes(*good_blob_),
       grpc::StatusCode::NOT_FOUND,
       {DigestHex(*good_blob_), absl::StrCat(kBaseRun, "@", base_version_)}},
      {"blob never stored",
       kBaseRun,
       base_version_,
       DigestBytes(RandomBytes(10, 40)),
       grpc::StatusCode::NOT_FOUND,
       {DigestHex(RandomBytes(10, 40))}},
      {"pending version",
       kScratchRun,
       scratch_version_,
       DigestBytes(*good_blob_),
       grpc::StatusCode::FAILED_PRECONDITION,
       {absl::StrCat(kScratchRun, "@", scratch_version_), "pending"}},
      {"unknown version",
       kBaseRun,
       987654,
       DigestBytes(*good_blob_),
       grpc::StatusCode::NOT_FOUND,
       {"987654"}},
      {"digest of the wrong length",
       kBaseRun,
       base_version_,
       "abc",
       grpc::StatusCode::INVALID_ARGUMENT,
       {"16 bytes", "got 3"}},
      {"offset past the end",
       kBaseRun,
       base_version_,
       big_digest,
       grpc::StatusCode::OUT_OF_RANGE,
       {absl::StrCat(big_size + 1), absl::StrCat(big_size, " bytes")},
       big_size + 1,
       0},
      {"length past the end",
       kBaseRun,
       base_version_,
       big_digest,
       grpc::StatusCode::OUT_OF_RANGE,
       {absl::StrCat(big_size + 1), absl::StrCat(big_size, " bytes")},
       0,
       big_size + 1},
      {"offset + length overflows",
       kBaseRun,
       base_version_,
       big_digest,
       grpc::StatusCode::OUT_OF_RANGE,
       {absl::StrCat(big_size, " bytes")},
       16,
       ~uint64_t{0} - 8},
  };
  for (const auto& c : cases) {
    v1::ReadBlobsRequest req;
    req.set_run(c.run);
    req.set_version(c.version);
    v1::BlobRange* range = req.add_ranges();
    range->set_digest(c.digest);
    range->set_offset(c.offset);
    range->set_length(c.length);
    int chunks = 0;
    ExpectStatus(Read(req, &chunks), c.code, c.mentions, c.name);
    EXPECT_EQ(chunks, 0) << c.name << ": bytes were served";
    ExpectStoredStateUnchanged();
  }
}

TEST_F(BadInputTest, GetVersionBadRefOrRank) {
  const struct {
    std::string name;
    std::string run;
    std::string ref;
    std::vector<uint32_t> ranks;
    grpc::StatusCode code;
    std::vector<std::string> mentions;
  } cases[] = {
      {"rank >= world_size",
       kBaseRun,
       "last",
       {3},
       grpc::StatusCode::INVALID_ARGUMENT,
       {"rank 3", "world_size 1"}},
      {"version 0",
       kBaseRun,
       "0",
       {},
       grpc::StatusCode::INVALID_ARGUMENT,
       {"'0'"}},
      {"unknown version",
       kBaseRun,
       "987654",
       {},
       grpc::StatusCode::NOT_FOUND,
       {"987654"}},
      {"unknown alias",
       kBaseRun,
       "prod",
       {},
       grpc::StatusCode::NOT_FOUND,
       {"'prod'"}},
      {"bad ref",
       kBaseRun,
       "../1",
       {},
       grpc::StatusCode::INVALID_ARGUMENT,
       {"'../1'"}},
      {"empty ref",
       kBaseRun,
       "",
       {},
       grpc::StatusCode::INVALID_ARGUMENT,
       {"ref is empty"}},
      {"unknown run",
       "no-such-run",
       "last",
       {},
       grpc::StatusCode::NOT_FOUND,
       {"'no-such-run'"}},
      {"no best without a policy",
       kBaseRun,
       "best",
       {},
       grpc::StatusCode::NOT_FOUND,
       {"'best'"}},
  };
  for (const auto& c : cases) {
    v1::GetVersionRequest req;
    req.set_run(c.run);
    req.set_ref(c.ref);
    req.set_include_manifest(true);
    for (uint32_t r : c.ranks) req.add_ranks(r);
    v1::GetVersionResponse resp;
    ExpectStatus(stub_->GetVersion(Context().get(), req, &resp), c.code,
                 c.mentions, c.name);
    ExpectStoredStateUnchanged();
  }
}

}  // namespace
}  // namespace ckptd
