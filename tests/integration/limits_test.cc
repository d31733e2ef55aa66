// Request limits (server/core/limits.h) against a real `ckptd` on loopback,
// sent with a raw stub so that no client-side check is in the way. Each
// over-limit request gets INVALID_ARGUMENT (or RESOURCE_EXHAUSTED for the
// message size) naming the limit and its flag; the message quotes at most
// 200 bytes of the input, so even a request of megabytes gets a short
// answer; and what was stored before still reads back.
//
// The server runs with some limits lowered (so that a case needs kilobytes,
// not gigabytes), and with the defaults for the cases found by probing: a
// 1M-segment key path, 100 MB of labels.
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ckptd/client.h"
#include "ckptd/v1/checkpoint.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/base/digest.h"
#include "tests/integration/support/server_process.h"
#include "tests/support/random_bytes.h"

namespace ckptd {
namespace {

using ::ckptd::testing::RandomBytes;
using ::ckptd::testing::ServerProcess;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int kRpcSeconds = 60;
// What an error message may be at most: 200 bytes of echoed input plus the
// words around it.
constexpr size_t kMaxMessageLength = 600;

std::unique_ptr<grpc::ClientContext> Context() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(kRpcSeconds));
  return ctx;
}

std::string DigestBytes(const std::string& data) {
  return std::string(DigestOf(data.data(), data.size()).AsBytes());
}

class LimitsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess({
        "--max_manifest_entries=1000",
        "--max_list_length=100",
        "--max_value_depth=8",
        "--max_metrics=8",
        "--max_labels=16",
        // Large enough that three versions' labels outgrow one
        // ListVersions reply (8 MiB).
        "--max_label_value_bytes=4194304",
        "--max_find_missing_digests=50",
    });
    absl::Status st = server_->Start();
    ASSERT_TRUE(st.ok()) << st;
    ClientOptions options;
    options.address = server_->address();
    options.rpc_timeout_seconds = kRpcSeconds;
    auto client = Client::Connect(options);
    ASSERT_TRUE(client.ok()) << client.status();
    client_ = client->release();
    channel_ = new std::shared_ptr<grpc::Channel>(grpc::CreateCustomChannel(
        server_->address(), grpc::InsecureChannelCredentials(), [] {
          grpc::ChannelArguments args;
          args.SetMaxSendMessageSize(512 << 20);
          args.SetMaxReceiveMessageSize(512 << 20);
          return args;
        }()));
    stub_ = v1::Checkpoint::NewStub(*channel_).release();
  }

  static void TearDownTestSuite() {
    delete stub_;
    delete channel_;
    delete client_;
    delete server_;
  }

  // A pending version of `run` to commit bad manifests into.
  static uint64_t Begin(const std::string& run, int64_t step) {
    v1::BeginVersionRequest req;
    req.set_run(run);
    req.set_step(step);
    v1::BeginVersionResponse resp;
    grpc::Status st = stub_->BeginVersion(Context().get(), req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp.version();
  }

  static grpc::Status Commit(const std::string& run, uint64_t version,
                             const v1::ShardManifest& m, int metric_count = 1) {
    v1::CommitShardRequest req;
    req.set_run(run);
    req.set_version(version);
    *req.mutable_manifest() = m;
    for (int i = 0; i < metric_count; ++i) {
      (*req.mutable_metrics())[absl::StrCat("m", i)] = i;
    }
    v1::CommitShardResponse resp;
    return stub_->CommitShard(Context().get(), req, &resp);
  }

  static void ExpectLimit(const grpc::Status& st, grpc::StatusCode code,
                          const std::vector<std::string>& mentions,
                          const std::string& what) {
    EXPECT_EQ(st.error_code(), code)
        << what << ": got " << st.error_code() << " '"
        << st.error_message().substr(0, 300) << "'";
    for (const std::string& m : mentions) {
      EXPECT_THAT(st.error_message(), HasSubstr(m)) << what;
    }
    EXPECT_LE(st.error_message().size(), kMaxMessageLength)
        << what << ": the message echoes too much: "
        << st.error_message().substr(0, 300) << "...";
  }

  static ServerProcess* server_;
  static Client* client_;
  static std::shared_ptr<grpc::Channel>* channel_;
  static v1::Checkpoint::Stub* stub_;
};

ServerProcess* LimitsTest::server_ = nullptr;
Client* LimitsTest::client_ = nullptr;
std::shared_ptr<grpc::Channel>* LimitsTest::channel_ = nullptr;
v1::Checkpoint::Stub* LimitsTest::stub_ = nullptr;

v1::ShardManifest RootOnly() {
  v1::ShardManifest m;
  m.add_entries()->mutable_container()->set_kind(v1::ContainerInfo::DICT);
  return m;
}

v1::ManifestEntry IntValue(const std::string& key) {
  v1::ManifestEntry e;
  e.add_path()->set_key(key);
  e.mutable_value()->set_int_value(1);
  return e;
}

TEST_F(LimitsTest, OversizedManifestsAreRefusedNamingTheLimit) {
  const uint64_t version = Begin("manifests", 1);
  struct Case {
    std::string name;
    std::function<void(v1::ShardManifest&)> build;
    std::vector<std::string> mentions;
  };
  const std::vector<Case> cases = {
      {"a key path of 1,000,000 segments",
       [](v1::ShardManifest& m) {
         v1::ManifestEntry* e = m.add_entries();
         for (int i = 0; i < 1'000'000; ++i) {
           e->add_path()->set_key(absl::StrCat("s", i));
         }
         e->mutable_value()->set_int_value(1);
       },
       {"1000000 segments", "the limit is 64", "--max_key_depth", "s0.s1.s2"}},
      {"a key segment of 5000 bytes",
       [](v1::ShardManifest& m) {
         *m.add_entries() = IntValue(std::string(5000, 'k'));
       },
       {"5000 bytes", "--max_key_segment_bytes", "(1 segments)"}},
      {"1001 entries",
       [](v1::ShardManifest& m) {
         for (int i = 0; i < 1000; ++i) {
           *m.add_entries() = IntValue(absl::StrCat("v", i));
         }
       },
       {"1001 entries", "the limit is 1000", "--max_manifest_entries"}},
      {"a list of 101 items",
       [](v1::ShardManifest& m) {
         v1::ManifestEntry e = IntValue("groups");
         auto* list = e.mutable_value()->mutable_list_value();
         for (int i = 0; i < 101; ++i) list->add_items()->set_int_value(i);
         *m.add_entries() = e;
       },
       {"101 items", "--max_list_length", "'groups'"}},
      {"lists nested 9 deep",
       [](v1::ShardManifest& m) {
         v1::ManifestEntry e = IntValue("nest");
         v1::Value* v = e.mutable_value();
         for (int i = 0; i < 10; ++i) {
           v = v->mutable_list_value()->add_items();
         }
         v->set_int_value(1);
         *m.add_entries() = e;
       },
       {"--max_value_depth", "'nest'"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::ShardManifest m = RootOnly();
    c.build(m);
    ExpectLimit(Commit("manifests", version, m),
                grpc::StatusCode::INVALID_ARGUMENT, c.mentions, c.name);
  }
  // Nine metrics: over --max_metrics=8.
  ExpectLimit(Commit("manifests", version, RootOnly(), 9),
              grpc::StatusCode::INVALID_ARGUMENT,
              {"9 metrics", "--max_metrics"}, "nine metrics");
  // The version is still pending and takes a good shard.
  grpc::Status ok = Commit("manifests", version, RootOnly(), 8);
  EXPECT_TRUE(ok.ok()) << ok.error_message();
}

TEST_F(LimitsTest, OversizedLabelsAreRefusedBeforeAnythingIsStored) {
  struct Case {
    std::string name;
    std::function<void(v1::Environment&)> build;
    std::vector<std::string> mentions;
  };
  const std::vector<Case> cases = {
      {"100 MB of labels",
       [](v1::Environment& env) {
         for (int i = 0; i < 3; ++i) {
           (*env.mutable_labels())[absl::StrCat("big", i)] =
               std::string(34 << 20, 'x');
         }
       },
       {"--max_label_value_bytes", "35651584 bytes", "the value of label"}},
      {"17 labels",
       [](v1::Environment& env) {
         for (int i = 0; i < 17; ++i) {
           (*env.mutable_labels())[absl::StrCat("k", i)] = "v";
         }
       },
       {"17 labels", "--max_labels"}},
      {"a label key of 1000 bytes",
       [](v1::Environment& env) {
         (*env.mutable_labels())[std::string(1000, 'q')] = "v";
       },
       {"1000 bytes", "--max_label_key_bytes", "'qqqq"}},
      {"a hostname of 5 MB",
       [](v1::Environment& env) {
         env.set_hostname(std::string(5 << 20, 'h'));
       },
       {"hostname", "--max_label_value_bytes"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::BeginVersionRequest req;
    req.set_run("labels");
    req.set_step(1);
    c.build(*req.mutable_env());
    v1::BeginVersionResponse resp;
    ExpectLimit(stub_->BeginVersion(Context().get(), req, &resp),
                grpc::StatusCode::INVALID_ARGUMENT, c.mentions, c.name);
  }
  ListVersionsRequest list;
  list.set_run("labels");
  auto versions = client_->ListVersions(list);
  EXPECT_EQ(versions.status().code(), absl::StatusCode::kNotFound)
      << "a refused BeginVersion created the run: " << versions.status();
}

// Three versions whose labels together outgrow one reply: ListVersions
// pages by bytes, and the client reads every page.
TEST_F(LimitsTest, ListVersionsOfLargeMetadataPagesByBytes) {
  for (int i = 0; i < 3; ++i) {
    PushRequest push;
    push.run = "heavy";
    push.step = i;
    push.env.mutable_labels()->insert({"notes", std::string(3 << 20, 'n')});
    ManifestEntry root;
    root.mutable_container()->set_kind(v1::ContainerInfo::DICT);
    push.entries.push_back({root, {}});
    auto pushed = client_->Push(push, PushOptions());
    ASSERT_TRUE(pushed.ok()) << pushed.status();
  }
  v1::ListVersionsRequest req;
  req.set_run("heavy");
  v1::ListVersionsResponse page;
  grpc::Status st = stub_->ListVersions(Context().get(), req, &page);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(page.versions_size(), 2) << "9 MiB of versions in one page";
  EXPECT_FALSE(page.next_page_token().empty());

  auto all = client_->ListVersions(req);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 3u);
  for (const auto& v : *all) {
    EXPECT_EQ(v.env().labels().at("notes").size(), size_t{3} << 20);
  }
}

TEST_F(LimitsTest, FindMissingBlobsOverTheLimitAndTheClientStillPushes) {
  const uint64_t version = Begin("digests", 1);
  v1::FindMissingBlobsRequest req;
  req.set_run("digests");
  req.set_version(version);
  for (int i = 0; i < 51; ++i) {
    req.add_digests(DigestBytes(absl::StrCat("blob", i)));
  }
  v1::FindMissingBlobsResponse resp;
  ExpectLimit(stub_->FindMissingBlobs(Context().get(), req, &resp),
              grpc::StatusCode::INVALID_ARGUMENT,
              {"51 digests", "the limit is 50", "--max_find_missing_digests"},
              "51 digests");

  // 120 tensors of 2 MiB (not packed): the client halves its batches until
  // the server takes them.
  std::vector<std::string> tensors;
  PushRequest push;
  push.run = "digests-client";
  ManifestEntry root;
  root.mutable_container()->set_kind(v1::ContainerInfo::DICT);
  push.entries.push_back({root, {}});
  for (int i = 0; i < 120; ++i) tensors.push_back(RandomBytes(2 << 20, i));
  for (int i = 0; i < 120; ++i) {
    ManifestEntry e;
    e.add_path()->set_key(absl::StrCat("t", i));
    e.mutable_tensor()->set_dtype(v1::UINT8);
    e.mutable_tensor()->add_shape(static_cast<int64_t>(tensors[i].size()));
    TensorData data;
    data.data = tensors[i].data();
    data.byte_length = tensors[i].size();
    push.entries.push_back({e, data});
  }
  auto pushed = client_->Push(push, PushOptions());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  EXPECT_EQ(pushed->state(), v1::COMMITTED);
}

// Bytes that are not a GetVersionRequest: INVALID_ARGUMENT naming the
// message type, not gRPC's UNIMPLEMENTED (which says the method is absent).
TEST_F(LimitsTest, AnUnparseableRequestIsInvalidArgument) {
  grpc::GenericStub generic(*channel_);
  for (const char* method : {"GetVersion", "Pin", "CommitShard"}) {
    SCOPED_TRACE(method);
    const std::string garbage = "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01";
    grpc::Slice slice(garbage);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    auto ctx = Context();
    std::promise<grpc::Status> done;
    generic.UnaryCall(ctx.get(), absl::StrCat("/ckptd.v1.Checkpoint/", method),
                      grpc::StubOptions(), &request, &response,
                      [&done](grpc::Status st) { done.set_value(st); });
    const grpc::Status st = done.get_future().get();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << st.error_code() << " " << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr("does not parse as ckptd.v1."));
    EXPECT_THAT(st.error_message(),
                HasSubstr(absl::StrCat("a request message to ", method)));
  }
  // A method that does not exist stays UNIMPLEMENTED.
  grpc::Slice slice(std::string(""));
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  auto ctx = Context();
  std::promise<grpc::Status> done;
  generic.UnaryCall(ctx.get(), "/ckptd.v1.Checkpoint/NoSuchMethod",
                    grpc::StubOptions(), &request, &response,
                    [&done](grpc::Status st) { done.set_value(st); });
  EXPECT_EQ(done.get_future().get().error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
}

// A message over --max_message_bytes: RESOURCE_EXHAUSTED, and the server
// keeps serving.
TEST(MessageLimitTest, AMessageOverTheLimitIsRefused) {
  ServerProcess server({"--max_message_bytes=8388608"});
  ASSERT_TRUE(server.Start().ok());
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(64 << 20);
  auto stub = v1::Checkpoint::NewStub(grpc::CreateCustomChannel(
      server.address(), grpc::InsecureChannelCredentials(), args));
  v1::BeginVersionRequest req;
  req.set_run("big");
  (*req.mutable_env()->mutable_labels())["x"] = std::string(9 << 20, 'x');
  v1::BeginVersionResponse resp;
  grpc::Status st = stub->BeginVersion(Context().get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << st.error_message();
  EXPECT_LE(st.error_message().size(), kMaxMessageLength);
  req.mutable_env()->clear_labels();
  st = stub->BeginVersion(Context().get(), req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
}

}  // namespace
}  // namespace ckptd
