// The `ckptd` process itself: its command line, the standard gRPC services
// (health, reflection), graceful shutdown on SIGTERM and restart over the
// same data dir, and the one-daemon-per-data-dir lock.
//
// The health and reflection protos are not installed as C++ headers with
// Debian's libgrpc++, so those calls are made with grpc::ByteBuffer messages
// encoded and decoded by hand (google::protobuf::UnknownFieldSet reads the
// replies).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "ckptd/client.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/client_unary_call.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/sync_stream.h"
#include "gtest/gtest.h"
#include "tests/integration/support/ckptd_run.h"
#include "tests/integration/support/server_process.h"
#include "tests/support/assert_ok.h"
#include "tests/support/file_bytes.h"
#include "tests/support/random_bytes.h"

namespace ckptd {
namespace {

using ::ckptd::testing::CkptdRun;
using ::ckptd::testing::ReadFile;
using ::ckptd::testing::RunCkptdToExit;
using ::ckptd::testing::ServerProcess;
using ::google::protobuf::UnknownField;
using ::google::protobuf::UnknownFieldSet;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr int kRpcSeconds = 30;

grpc::ByteBuffer ToByteBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromByteBuffer(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

// A length-delimited protobuf field: tag, length, bytes.
std::string LengthDelimited(int field, const std::string& value) {
  std::string out;
  auto varint = [&out](uint64_t v) {
    while (v >= 0x80) {
      out.push_back(static_cast<char>(v | 0x80));
      v >>= 7;
    }
    out.push_back(static_cast<char>(v));
  };
  varint((static_cast<uint64_t>(field) << 3) | 2);
  varint(value.size());
  out += value;
  return out;
}

// The length-delimited values of field `number` in `message`.
std::vector<std::string> Fields(const std::string& message, int number) {
  UnknownFieldSet fields;
  std::vector<std::string> out;
  if (!fields.ParseFromString(message)) return out;
  for (int i = 0; i < fields.field_count(); ++i) {
    const UnknownField& f = fields.field(i);
    if (f.number() == number &&
        f.type() == UnknownField::TYPE_LENGTH_DELIMITED) {
      out.push_back(f.length_delimited());
    }
  }
  return out;
}

std::unique_ptr<grpc::ClientContext> Context() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(kRpcSeconds));
  return ctx;
}

// grpc.health.v1.Health/Check. Returns the status, and the ServingStatus
// enum value (1 = SERVING) in *serving.
grpc::Status HealthCheck(const std::string& address, const std::string& service,
                         int* serving) {
  auto channel =
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  // HealthCheckRequest { string service = 1; }
  const grpc::ByteBuffer request =
      ToByteBuffer(service.empty() ? "" : LengthDelimited(1, service));
  grpc::ByteBuffer response;
  auto ctx = Context();
  grpc::Status st = grpc::internal::BlockingUnaryCall(
      channel.get(),
      grpc::internal::RpcMethod("/grpc.health.v1.Health/Check",
                                grpc::internal::RpcMethod::NORMAL_RPC),
      ctx.get(), request, &response);
  *serving = 0;  // UNKNOWN, also the proto3 default when absent
  if (!st.ok()) return st;
  // HealthCheckResponse { ServingStatus status = 1; }
  UnknownFieldSet fields;
  if (!fields.ParseFromString(FromByteBuffer(response))) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "unparsable response");
  }
  for (int i = 0; i < fields.field_count(); ++i) {
    if (fields.field(i).number() == 1 &&
        fields.field(i).type() == UnknownField::TYPE_VARINT) {
      *serving = static_cast<int>(fields.field(i).varint());
    }
  }
  return st;
}

constexpr int kServing = 1;

// One server-reflection exchange: sends `request` (a serialized
// ServerReflectionRequest) and returns the serialized response, trying the
// v1alpha service (what gRPC 1.51 serves) and then v1.
absl::StatusOr<std::string> Reflect(const std::string& address,
                                    const std::string& request) {
  auto channel =
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::Status last;
  for (const char* method :
       {"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"}) {
    auto ctx = Context();
    std::unique_ptr<
        grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>>
        stream(
            grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer,
                                                      grpc::ByteBuffer>::
                Create(channel.get(),
                       grpc::internal::RpcMethod(
                           method, grpc::internal::RpcMethod::BIDI_STREAMING),
                       ctx.get()));
    grpc::ByteBuffer response;
    const bool wrote = stream->Write(ToByteBuffer(request));
    const bool got = wrote && stream->Read(&response);
    stream->WritesDone();
    last = stream->Finish();
    if (got && last.ok()) return FromByteBuffer(response);
    if (last.error_code() != grpc::StatusCode::UNIMPLEMENTED) break;
  }
  return absl::Status(
      static_cast<absl::StatusCode>(last.error_code()),
      absl::StrCat("server reflection: ", last.error_message()));
}

using ::ckptd::testing::RandomBytes;

// A one-shard state of a few tensors whose bytes depend on `seed`; the bytes
// live in *storage, which must outlive the push.
PushRequest MakePush(const std::string& run, int64_t step, uint64_t seed,
                     std::vector<std::string>* storage) {
  PushRequest req;
  req.run = run;
  req.step = step;
  req.metrics["loss"] = 1.0 / static_cast<double>(seed + 1);
  ManifestEntry root;
  root.mutable_container()->set_kind(v1::ContainerInfo::DICT);
  req.entries.push_back({root, {}});
  storage->clear();
  storage->push_back(RandomBytes((2 << 20) + 8, seed));
  storage->push_back(RandomBytes(512, seed + 1000));
  for (size_t i = 0; i < storage->size(); ++i) {
    ManifestEntry e;
    e.add_path()->set_key(absl::StrCat("t", i));
    e.mutable_tensor()->set_dtype(v1::UINT8);
    e.mutable_tensor()->add_shape(static_cast<int64_t>((*storage)[i].size()));
    TensorData data;
    data.data = (*storage)[i].data();
    data.byte_length = (*storage)[i].size();
    req.entries.push_back({e, data});
  }
  return req;
}

std::unique_ptr<Client> Connect(const ServerProcess& server) {
  ClientOptions options;
  options.address = server.address();
  options.rpc_timeout_seconds = kRpcSeconds;
  auto client = Client::Connect(options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

// Pulls run@version and compares every tensor with `bytes`.
void ExpectPullEquals(Client& client, const std::string& run, uint64_t version,
                      const std::vector<std::string>& bytes) {
  SCOPED_TRACE(absl::StrCat("pull ", run, "@", version));
  auto got = client.GetVersion(run, absl::StrCat(version), GetVersionOptions());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->info.state(), v1::COMMITTED);
  auto tensors = client.ReadAllTensors(*got, nullptr, PullOptions());
  ASSERT_TRUE(tensors.ok()) << tensors.status();
  ASSERT_EQ(tensors->size(), bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    EXPECT_TRUE((*tensors)[i].bytes == bytes[i])
        << "tensor t" << i << " does not read back bit-identical";
  }
}

std::string TempDataDir() {
  return ServerProcess::MakeTempDir("ckptd-daemon-data");
}

// ---------------------------------------------------------------------------
// Command line

TEST(DaemonTest, HelpExitsZeroAndListsTheFlags) {
  CkptdRun r = RunCkptdToExit({"--help"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* flag : {"--listen", "--log_level", "--pending_timeout"}) {
    EXPECT_THAT(r.output, HasSubstr(flag));
  }
  EXPECT_THAT(r.output,
              AnyOf(HasSubstr("--data_dir"), HasSubstr("--data-dir")));
}

TEST(DaemonTest, HelpfullListsTheFlags) {
  CkptdRun r = RunCkptdToExit({"--helpfull"});
  for (const char* flag : {"--listen", "--log_level", "--pending_timeout"}) {
    EXPECT_THAT(r.output, HasSubstr(flag)) << r.output;
  }
  EXPECT_THAT(r.output,
              AnyOf(HasSubstr("--data_dir"), HasSubstr("--data-dir")));
}

TEST(DaemonTest, BadLogLevelFailsNamingTheValue) {
  const std::string dir = TempDataDir();
  for (const char* level : {"loud", "INFOO", ""}) {
    CkptdRun r = RunCkptdToExit({absl::StrCat("--log_level=", level),
                                 "--data_dir=" + dir, "--listen=127.0.0.1:0"});
    EXPECT_NE(r.exit_code, 0) << "--log_level=" << level << ":\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(absl::StrCat("--log_level=", level, " ")))
        << "the message does not name the value";
    EXPECT_FALSE(r.served);
  }
  std::filesystem::remove_all(dir);
}

TEST(DaemonTest, BadListenFailsNamingTheValue) {
  const std::string dir = TempDataDir();
  for (const char* listen :
       {"nonsense", "127.0.0.1:abc", "256.1.1.1:80", "127.0.0.1:-1", ""}) {
    CkptdRun r = RunCkptdToExit({absl::StrCat("--listen=", listen),
                                 "--data-dir=" + dir, "--log_level=warn"});
    EXPECT_NE(r.exit_code, 0) << "--listen=" << listen << ":\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(absl::StrCat("'", listen, "'")))
        << "the message does not name the value";
    EXPECT_FALSE(r.served);
  }
  std::filesystem::remove_all(dir);
}

// gRPC's own address parser would take a port modulo 65536 and a missing
// port as 443; ckptd refuses such values.
TEST(DaemonTest, ListenWithABadPortFails) {
  const std::string dir = TempDataDir();
  for (const char* listen :
       {"127.0.0.1:99999", "127.0.0.1:65536", "127.0.0.1", "127.0.0.1:"}) {
    CkptdRun r = RunCkptdToExit({absl::StrCat("--listen=", listen),
                                 "--data_dir=" + dir, "--log_level=info"});
    EXPECT_NE(r.exit_code, 0) << "--listen=" << listen << ":\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(absl::StrCat("'", listen, "'")));
    EXPECT_FALSE(r.served);
  }
  std::filesystem::remove_all(dir);
}

// gRPC enables SO_REUSEPORT by default; a second ckptd on a port in use (over
// another data dir) must fail rather than share the port.
TEST(DaemonTest, ListenOnAPortInUseFails) {
  ServerProcess first;
  ASSERT_OK(first.Start());
  const std::string dir = TempDataDir();
  CkptdRun r = RunCkptdToExit(
      {"--listen=" + first.address(), "--data_dir=" + dir, "--log_level=info"});
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr(first.address()));
  EXPECT_FALSE(r.served);
  std::filesystem::remove_all(dir);
}

// ---------------------------------------------------------------------------
// Standard services

TEST(DaemonTest, HealthCheckIsServing) {
  ServerProcess server;
  ASSERT_OK(server.Start());
  int serving = 0;
  grpc::Status st = HealthCheck(server.address(), "", &serving);
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(serving, kServing);
  st = HealthCheck(server.address(), "no.such.Service", &serving);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST(DaemonTest, ReflectionListsTheCheckpointService) {
  ServerProcess server;
  ASSERT_OK(server.Start());
  // ServerReflectionRequest { string list_services = 7; }
  auto reply = Reflect(server.address(), LengthDelimited(7, ""));
  ASSERT_TRUE(reply.ok()) << reply.status();
  // ServerReflectionResponse { ListServiceResponse list_services_response =
  // 6; } ListServiceResponse { repeated ServiceResponse service = 1; }
  // ServiceResponse { string name = 1; }
  std::vector<std::string> services;
  for (const std::string& list : Fields(*reply, 6)) {
    for (const std::string& service : Fields(list, 1)) {
      for (const std::string& name : Fields(service, 1)) {
        services.push_back(name);
      }
    }
  }
  EXPECT_THAT(services, ::testing::Contains("ckptd.v1.Checkpoint"));

  // ServerReflectionRequest { string file_containing_symbol = 4; } ->
  // FileDescriptorResponse file_descriptor_response = 4 { repeated bytes
  // file_descriptor_proto = 1; }
  reply = Reflect(server.address(), LengthDelimited(4, "ckptd.v1.Checkpoint"));
  ASSERT_TRUE(reply.ok()) << reply.status();
  bool found = false;
  for (const std::string& files : Fields(*reply, 4)) {
    for (const std::string& file : Fields(files, 1)) {
      google::protobuf::FileDescriptorProto proto;
      ASSERT_TRUE(proto.ParseFromString(file));
      if (proto.package() != "ckptd.v1") continue;
      for (const auto& service : proto.service()) {
        if (service.name() != "Checkpoint") continue;
        found = true;
        std::vector<std::string> methods;
        for (const auto& m : service.method()) methods.push_back(m.name());
        EXPECT_THAT(methods, ::testing::IsSupersetOf(
                                 {"BeginVersion", "UploadBlobs", "CommitShard",
                                  "GetVersion", "ReadBlobs"}));
      }
    }
  }
  EXPECT_TRUE(found) << "no descriptor of ckptd.v1.Checkpoint";
}

// ---------------------------------------------------------------------------
// Lifecycle

TEST(DaemonTest, SigtermExitsZeroAndARestartSeesEveryVersion) {
  ServerProcess server;
  ASSERT_OK(server.Start());
  auto client = Connect(server);
  ASSERT_NE(client, nullptr);
  Policy policy;
  policy.set_monitor("loss");
  policy.set_mode(v1::MIN);
  ASSERT_TRUE(client->SetPolicy("life", policy).ok());
  std::map<uint64_t, std::vector<std::string>> pushed;
  // Losses 1/(seed+1): the first push (seed 3) is best.
  for (uint64_t seed : {3, 1, 2}) {
    std::vector<std::string> storage;
    auto info = client->Push(
        MakePush("life", static_cast<int64_t>(seed) * 10, seed, &storage),
        PushOptions());
    ASSERT_TRUE(info.ok()) << info.status();
    ASSERT_EQ(info->state(), v1::COMMITTED);
    pushed[info->version()] = storage;
  }
  auto alias = client->SetAlias("life", "prod", "1");
  ASSERT_TRUE(alias.ok()) << alias.status();
  const uint64_t last = pushed.rbegin()->first;
  const uint64_t best = 1;  // seed 3: loss 0.25
  client.reset();

  EXPECT_EQ(server.Stop(), 0) << "SIGTERM did not lead to a clean exit";
  ASSERT_OK(server.Start());
  client = Connect(server);
  ASSERT_NE(client, nullptr);
  ListVersionsRequest req;
  req.set_run("life");
  auto versions = client->ListVersions(req);
  ASSERT_TRUE(versions.ok()) << versions.status();
  std::vector<uint64_t> listed;
  for (const auto& v : *versions) listed.push_back(v.version());
  EXPECT_EQ(listed, (std::vector<uint64_t>{1, 2, 3}));
  for (const auto& [version, bytes] : pushed) {
    ExpectPullEquals(*client, "life", version, bytes);
  }
  for (const auto& [ref, want] : std::vector<std::pair<std::string, uint64_t>>{
           {"last", last}, {"best", best}, {"prod", 1}}) {
    auto got = client->GetVersion("life", ref, GetVersionOptions());
    ASSERT_TRUE(got.ok()) << ref << ": " << got.status();
    EXPECT_EQ(got->info.version(), want) << ref;
  }
  int serving = 0;
  ASSERT_TRUE(HealthCheck(server.address(), "", &serving).ok());
  EXPECT_EQ(serving, kServing);
  // Idle client channels hold a graceful shutdown for up to
  // --shutdown_grace; closing ours keeps the test fast.
  client.reset();
  EXPECT_EQ(server.Stop(), 0);
}

TEST(DaemonTest, SecondDaemonOnTheSameDataDirFailsAndTheFirstKeepsServing) {
  ServerProcess first;
  ASSERT_OK(first.Start());
  auto client = Connect(first);
  ASSERT_NE(client, nullptr);
  std::vector<std::string> storage;
  auto info = client->Push(MakePush("lock", 1, 7, &storage), PushOptions());
  ASSERT_TRUE(info.ok()) << info.status();

  for (const char* dir_flag : {"--data_dir=", "--data-dir="}) {
    CkptdRun r = RunCkptdToExit(
        {absl::StrCat("--listen=127.0.0.1:", ServerProcess::PickFreePort()),
         dir_flag + first.data_dir()});
    EXPECT_NE(r.exit_code, 0) << r.output;
    const std::string lower = absl::AsciiStrToLower(r.output);
    EXPECT_THAT(lower, AnyOf(HasSubstr("another ckptd"), HasSubstr("lock")))
        << r.output;
    EXPECT_THAT(r.output, HasSubstr(first.data_dir()))
        << "the message does not name the data dir";
    EXPECT_FALSE(r.served);
  }

  // The first one is untouched and still takes pushes.
  int serving = 0;
  grpc::Status st = HealthCheck(first.address(), "", &serving);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(serving, kServing);
  ExpectPullEquals(*client, "lock", info->version(), storage);
  std::vector<std::string> storage2;
  auto second = client->Push(MakePush("lock", 2, 8, &storage2), PushOptions());
  ASSERT_TRUE(second.ok()) << second.status();
  ExpectPullEquals(*client, "lock", second->version(), storage2);
  client.reset();
  EXPECT_EQ(first.Stop(), 0);
}

TEST(DaemonTest, BadLimitFlagsFailNamingTheFlag) {
  const std::string dir = TempDataDir();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--max_labels=0", "--max_labels=0 must be at least 1"},
      {"--max_find_missing_digests=0", "--max_find_missing_digests=0"},
      {"--max_key_depth=-3", "--max_key_depth=-3 must be at least 1"},
      {"--max_message_bytes=4096", "--max_message_bytes=4096 is below 8 MiB"},
      {"--max_manifest_bytes=lots", "max_manifest_bytes"},
  };
  for (const auto& [flag, says] : cases) {
    CkptdRun r =
        RunCkptdToExit({flag, "--data_dir=" + dir, "--listen=127.0.0.1:0"});
    EXPECT_NE(r.exit_code, 0) << flag << ":\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr(says)) << flag;
    EXPECT_FALSE(r.served) << flag;
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace ckptd
