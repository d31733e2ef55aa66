// Server reflection: a real ckptd answers both grpc.reflection.v1 (its own
// ReflectionV1Service) and grpc.reflection.v1alpha (gRPC's plugin), with the
// same answers. The two versions' messages are field-for-field the same, so
// both calls use the v1 message types: v1 through its generated stub,
// v1alpha through grpc::TemplatedGenericStub on the v1alpha method name.
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/support/server_process.h"

namespace ckptd {
namespace {

using ::ckptd::testing::ServerProcess;
using ::grpc::reflection::v1::ServerReflectionRequest;
using ::grpc::reflection::v1::ServerReflectionResponse;
using ::testing::Contains;
using ::testing::IsSupersetOf;

constexpr auto kRpcDeadline = std::chrono::seconds(30);
constexpr char kV1alphaMethod[] =
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

// One stream per call: writes each request, reads its answer.
using Exchange = std::vector<ServerReflectionResponse> (*)(
    grpc::Channel*, const std::vector<ServerReflectionRequest>&);

std::vector<ServerReflectionResponse> ExchangeV1(
    grpc::Channel* channel, const std::vector<ServerReflectionRequest>& reqs) {
  auto stub = grpc::reflection::v1::ServerReflection::NewStub(
      std::shared_ptr<grpc::Channel>(channel, [](grpc::Channel*) {}));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kRpcDeadline);
  auto stream = stub->ServerReflectionInfo(&ctx);
  std::vector<ServerReflectionResponse> out;
  for (const ServerReflectionRequest& r : reqs) {
    ServerReflectionResponse resp;
    if (!stream->Write(r) || !stream->Read(&resp)) break;
    out.push_back(resp);
  }
  stream->WritesDone();
  const grpc::Status st = stream->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
  return out;
}

std::vector<ServerReflectionResponse> ExchangeV1alpha(
    grpc::Channel* channel, const std::vector<ServerReflectionRequest>& reqs) {
  grpc::TemplatedGenericStub<ServerReflectionRequest, ServerReflectionResponse>
      stub(std::shared_ptr<grpc::Channel>(channel, [](grpc::Channel*) {}));
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + kRpcDeadline);
  const auto wait = [&cq] {
    void* tag = nullptr;
    bool ok = false;
    return cq.Next(&tag, &ok) && ok;
  };
  auto stream = stub.PrepareCall(&ctx, kV1alphaMethod, &cq);
  stream->StartCall(nullptr);
  std::vector<ServerReflectionResponse> out;
  bool ok = wait();
  for (const ServerReflectionRequest& r : reqs) {
    if (!ok) break;
    stream->Write(r, nullptr);
    ServerReflectionResponse resp;
    if (!wait()) break;
    stream->Read(&resp, nullptr);
    if (!(ok = wait())) break;
    out.push_back(resp);
  }
  stream->WritesDone(nullptr);
  wait();
  grpc::Status st;
  stream->Finish(&st, nullptr);
  wait();
  EXPECT_TRUE(st.ok()) << st.error_message();
  cq.Shutdown();
  while (wait()) {
  }
  return out;
}

struct Version {
  const char* name;
  Exchange exchange;
};

class ReflectionTest : public ::testing::TestWithParam<Version> {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess();
    const absl::Status st = server_->Start();
    ASSERT_TRUE(st.ok()) << st;
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  std::vector<ServerReflectionResponse> Ask(
      const std::vector<ServerReflectionRequest>& reqs) {
    auto channel = grpc::CreateChannel(server_->address(),
                                       grpc::InsecureChannelCredentials());
    return GetParam().exchange(channel.get(), reqs);
  }

  static ServerProcess* server_;
};

ServerProcess* ReflectionTest::server_ = nullptr;

std::vector<google::protobuf::FileDescriptorProto> Files(
    const ServerReflectionResponse& resp) {
  std::vector<google::protobuf::FileDescriptorProto> out;
  for (const std::string& bytes :
       resp.file_descriptor_response().file_descriptor_proto()) {
    google::protobuf::FileDescriptorProto file;
    EXPECT_TRUE(file.ParseFromString(bytes));
    out.push_back(file);
  }
  return out;
}

TEST_P(ReflectionTest, ListsEveryService) {
  ServerReflectionRequest req;
  req.set_list_services("");
  auto resp = Ask({req});
  ASSERT_EQ(resp.size(), 1u);
  std::vector<std::string> names;
  for (const auto& s : resp[0].list_services_response().service()) {
    names.push_back(s.name());
  }
  EXPECT_THAT(names, IsSupersetOf({"ckptd.v1.Checkpoint",
                                   "grpc.reflection.v1.ServerReflection",
                                   "grpc.reflection.v1alpha.ServerReflection"}))
      << GetParam().name;
}

TEST_P(ReflectionTest, DescribesTheCheckpointService) {
  ServerReflectionRequest by_symbol;
  by_symbol.set_file_containing_symbol("ckptd.v1.Checkpoint");
  ServerReflectionRequest by_name;
  by_name.set_file_by_filename("ckptd/v1/checkpoint.proto");
  auto resp = Ask({by_symbol, by_name});
  ASSERT_EQ(resp.size(), 2u);
  const auto files = Files(resp[0]);
  ASSERT_FALSE(files.empty()) << resp[0].DebugString();
  EXPECT_EQ(files[0].name(), "ckptd/v1/checkpoint.proto");
  std::vector<std::string> methods;
  for (const auto& service : files[0].service()) {
    if (service.name() != "Checkpoint") continue;
    for (const auto& m : service.method()) methods.push_back(m.name());
  }
  EXPECT_THAT(methods, IsSupersetOf({"BeginVersion", "WatchRef",
                                     "GetAliasHistory", "ListVersions"}));
  EXPECT_EQ(resp[0].original_request().file_containing_symbol(),
            "ckptd.v1.Checkpoint");
  // Each answer is complete in itself: by file name, the same file first.
  const auto again = Files(resp[1]);
  ASSERT_FALSE(again.empty()) << resp[1].DebugString();
  EXPECT_EQ(again[0].name(), "ckptd/v1/checkpoint.proto");
}

TEST_P(ReflectionTest, UnknownSymbolIsNotFound) {
  ServerReflectionRequest req;
  req.set_file_containing_symbol("ckptd.v1.NoSuchService");
  auto resp = Ask({req});
  ASSERT_EQ(resp.size(), 1u);
  ASSERT_TRUE(resp[0].has_error_response()) << resp[0].DebugString();
  EXPECT_EQ(resp[0].error_response().error_code(),
            static_cast<int>(grpc::StatusCode::NOT_FOUND));
}

INSTANTIATE_TEST_SUITE_P(BothVersions, ReflectionTest,
                         ::testing::Values(Version{"v1", &ExchangeV1},
                                           Version{"v1alpha",
                                                   &ExchangeV1alpha}),
                         [](const ::testing::TestParamInfo<Version>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace ckptd
