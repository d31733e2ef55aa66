// Authentication and authorization against a real ckptd: TLS, mTLS, bearer
// tokens from an --auth_file, the role table, secure defaults, SIGHUP
// reload. Certificates are made per test suite with the `openssl` tool.
#include <signal.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "ckptd/client.h"
#include "ckptd/v1/checkpoint.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/impl/codegen/client_unary_call.h"
#include "gtest/gtest.h"
#include "proto/base/secret.h"
#include "tests/integration/support/server_process.h"
#include "tests/support/file_bytes.h"
#include "tests/support/random_bytes.h"

namespace ckptd {
namespace {

using ::ckptd::testing::ReadFile;
using ::ckptd::testing::ServerProcess;
using ::testing::HasSubstr;

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// A CA, a server certificate for 127.0.0.1 and client certificates (one from
// the CA, one from an unrelated CA), made with the openssl tool.
struct Pki {
  std::string dir;
  std::string ca, server_cert, server_key;
  std::string client_cert, client_key;  // CN=deployer, signed by ca
  std::string rogue_cert, rogue_key;    // CN=deployer, another CA
  std::string Path(const std::string& name) const { return dir + "/" + name; }
};

bool Run(const std::string& command) {
  const int rc =
      std::system(("bash -c '" + command + "' >/dev/null 2>&1").c_str());
  return rc == 0;
}

Pki MakePki() {
  Pki pki;
  pki.dir = ServerProcess::MakeTempDir("ckptd-pki");
  const std::string d = pki.dir;
  const std::string key =
      "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  auto ca = [&](const std::string& name) {
    return Run(absl::StrCat("openssl req -x509 ", key, " -keyout ", d, "/",
                            name, ".key -out ", d, "/", name,
                            ".pem -days 2 -subj /CN=", name));
  };
  auto leaf = [&](const std::string& name, const std::string& cn,
                  const std::string& issuer, const std::string& ext) {
    return Run(absl::StrCat("openssl req ", key, " -keyout ", d, "/", name,
                            ".key -out ", d, "/", name,
                            ".csr -subj /CN=", cn)) &&
           Run(absl::StrCat("printf \"", ext, "\" > ", d, "/", name,
                            ".ext && openssl x509 -req -in ", d, "/", name,
                            ".csr -CA ", d, "/", issuer, ".pem -CAkey ", d, "/",
                            issuer, ".key -CAcreateserial -days 2 -out ", d,
                            "/", name, ".pem -extfile ", d, "/", name, ".ext"));
  };
  EXPECT_TRUE(ca("test-ca") && ca("rogue-ca"));
  EXPECT_TRUE(leaf("server", "localhost", "test-ca",
                   "subjectAltName=IP:127.0.0.1,DNS:localhost"));
  EXPECT_TRUE(
      leaf("client", "deployer", "test-ca", "extendedKeyUsage=clientAuth"));
  EXPECT_TRUE(
      leaf("rogue", "deployer", "rogue-ca", "extendedKeyUsage=clientAuth"));
  pki.ca = ReadFile(pki.Path("test-ca.pem"));
  pki.server_cert = ReadFile(pki.Path("server.pem"));
  pki.server_key = ReadFile(pki.Path("server.key"));
  pki.client_cert = ReadFile(pki.Path("client.pem"));
  pki.client_key = ReadFile(pki.Path("client.key"));
  pki.rogue_cert = ReadFile(pki.Path("rogue.pem"));
  pki.rogue_key = ReadFile(pki.Path("rogue.key"));
  return pki;
}

ListVersionsRequest RunVersions(const std::string& run) {
  ListVersionsRequest r;
  r.set_run(run);
  return r;
}

struct Tokens {
  std::string reader, writer, admin, other_writer, late;
};

// The auth file: identities over runs team-a and team-b.
std::string AuthFile(const Tokens& t) {
  return absl::StrCat(
      "# ckptd credentials for the auth test\n",
      "reader-a reader team-a sha256:", Sha256Hex(t.reader), "\n",
      "writer-a   writer team-a,team-a-*  sha256:", Sha256Hex(t.writer), "\n\n",
      "root admin * sha256:", Sha256Hex(t.admin), "\n",
      "writer-b writer team-b sha256:", Sha256Hex(t.other_writer), "\n",
      "deployer writer team-a cert:deployer\n");
}

std::string MustToken() {
  auto t = NewBearerToken();
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : "";
}

// A client's way in: channel credentials plus an optional token.
struct Caller {
  std::string name;
  std::shared_ptr<grpc::ChannelCredentials> creds;
  std::string token;
  bool mtls_server = false;   // talks to the mTLS server
  bool local_socket = false;  // talks to the server's --local_socket
};

std::shared_ptr<grpc::ChannelCredentials> Tls(const Pki& pki,
                                              const std::string& cert = "",
                                              const std::string& key = "") {
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = pki.ca;
  o.pem_cert_chain = cert;
  o.pem_private_key = key;
  return grpc::SslCredentials(o);
}

std::unique_ptr<grpc::ClientContext> Ctx(const Caller& c, double seconds = 10) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!c.token.empty()) ctx->AddMetadata("authorization", "Bearer " + c.token);
  ctx->set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int>(seconds * 1000)));
  return ctx;
}

grpc::ByteBuffer Bytes(const std::string& s) {
  grpc::Slice slice(s);
  return grpc::ByteBuffer(&slice, 1);
}

// One call of every RPC, on run team-a, shaped so that an authorized call
// changes nothing that matters (unknown versions, an empty policy).
using Probe = std::function<grpc::Status(v1::Checkpoint::Stub&, grpc::Channel&,
                                         const Caller&)>;

std::vector<std::pair<std::string, Probe>> Probes() {
  std::vector<std::pair<std::string, Probe>> p;
  auto unary = [&](const std::string& name, auto fn) {
    p.push_back({name, [fn](v1::Checkpoint::Stub& stub, grpc::Channel&,
                            const Caller& c) { return fn(stub, *Ctx(c)); }});
  };
  static int step = 5000;
  unary("BeginVersion", [](auto& s, grpc::ClientContext& ctx) {
    v1::BeginVersionRequest r;
    r.set_run("team-a");
    r.set_step(++step);
    r.set_world_size(1);
    v1::BeginVersionResponse out;
    return s.BeginVersion(&ctx, r, &out);
  });
  unary("FindMissingBlobs", [](auto& s, grpc::ClientContext& ctx) {
    v1::FindMissingBlobsRequest r;
    r.set_run("team-a");
    r.set_version(999);
    v1::FindMissingBlobsResponse out;
    return s.FindMissingBlobs(&ctx, r, &out);
  });
  p.push_back({"UploadBlobs",
               [](v1::Checkpoint::Stub& s, grpc::Channel&, const Caller& c) {
                 auto ctx = Ctx(c);
                 v1::UploadBlobsResponse out;
                 auto w = s.UploadBlobs(ctx.get(), &out);
                 v1::UploadChunk chunk;
                 chunk.set_run("team-a");
                 chunk.set_version(999);
                 chunk.set_digest(std::string(16, 'x'));
                 w->Write(chunk);
                 w->WritesDone();
                 return w->Finish();
               }});
  unary("QueryUpload", [](auto& s, grpc::ClientContext& ctx) {
    v1::QueryUploadRequest r;
    r.set_run("team-a");
    r.set_version(999);
    r.set_digest(std::string(16, 'x'));
    v1::QueryUploadResponse out;
    return s.QueryUpload(&ctx, r, &out);
  });
  unary("CommitShard", [](auto& s, grpc::ClientContext& ctx) {
    v1::CommitShardRequest r;
    r.set_run("team-a");
    r.set_version(999);
    v1::CommitShardResponse out;
    return s.CommitShard(&ctx, r, &out);
  });
  unary("AbortVersion", [](auto& s, grpc::ClientContext& ctx) {
    v1::AbortVersionRequest r;
    r.set_run("team-a");
    r.set_version(999);
    v1::AbortVersionResponse out;
    return s.AbortVersion(&ctx, r, &out);
  });
  unary("GetVersion", [](auto& s, grpc::ClientContext& ctx) {
    v1::GetVersionRequest r;
    r.set_run("team-a");
    r.set_ref("last");
    v1::GetVersionResponse out;
    return s.GetVersion(&ctx, r, &out);
  });
  p.push_back({"ReadBlobs",
               [](v1::Checkpoint::Stub& s, grpc::Channel&, const Caller& c) {
                 auto ctx = Ctx(c);
                 v1::ReadBlobsRequest r;
                 r.set_run("team-a");
                 r.set_version(1);
                 auto reader = s.ReadBlobs(ctx.get(), r);
                 v1::ReadChunk chunk;
                 while (reader->Read(&chunk)) {
                 }
                 return reader->Finish();
               }});
  p.push_back({"ExportSafetensors",
               [](v1::Checkpoint::Stub& s, grpc::Channel&, const Caller& c) {
                 auto ctx = Ctx(c);
                 v1::ExportSafetensorsRequest r;
                 r.set_run("team-a");
                 r.set_ref("1");
                 auto reader = s.ExportSafetensors(ctx.get(), r);
                 v1::ExportChunk chunk;
                 while (reader->Read(&chunk)) {
                 }
                 return reader->Finish();
               }});
  p.push_back({"WatchRef",
               [](v1::Checkpoint::Stub& s, grpc::Channel&, const Caller& c) {
                 auto ctx = Ctx(c);
                 v1::WatchRefRequest r;
                 r.set_run("team-a");
                 r.set_ref("last");
                 auto reader = s.WatchRef(ctx.get(), r);
                 v1::WatchRefEvent event;
                 if (reader->Read(&event)) {
                   ctx->TryCancel();  // allowed: the current target came
                   reader->Finish();
                   return grpc::Status::OK;
                 }
                 return reader->Finish();
               }});
  unary("ListRuns", [](auto& s, grpc::ClientContext& ctx) {
    v1::ListRunsResponse out;
    return s.ListRuns(&ctx, v1::ListRunsRequest(), &out);
  });
  unary("ListVersions", [](auto& s, grpc::ClientContext& ctx) {
    v1::ListVersionsRequest r;
    r.set_run("team-a");
    v1::ListVersionsResponse out;
    return s.ListVersions(&ctx, r, &out);
  });
  unary("GetMetricHistory", [](auto& s, grpc::ClientContext& ctx) {
    v1::GetMetricHistoryRequest r;
    r.set_run("team-a");
    r.set_metric("loss");
    v1::GetMetricHistoryResponse out;
    return s.GetMetricHistory(&ctx, r, &out);
  });
  unary("SetAlias", [](auto& s, grpc::ClientContext& ctx) {
    v1::SetAliasRequest r;
    r.set_run("team-a");
    r.set_name("prod");
    r.set_ref("1");
    v1::AliasInfo out;
    return s.SetAlias(&ctx, r, &out);
  });
  unary("DeleteAlias", [](auto& s, grpc::ClientContext& ctx) {
    v1::DeleteAliasRequest r;
    r.set_run("team-a");
    r.set_name("no-such-alias");
    v1::DeleteAliasResponse out;
    return s.DeleteAlias(&ctx, r, &out);
  });
  unary("GetAliasHistory", [](auto& s, grpc::ClientContext& ctx) {
    v1::GetAliasHistoryRequest r;
    r.set_run("team-a");
    v1::GetAliasHistoryResponse out;
    return s.GetAliasHistory(&ctx, r, &out);
  });
  unary("Pin", [](auto& s, grpc::ClientContext& ctx) {
    v1::PinRequest r;
    r.set_run("team-a");
    r.set_ref("1");
    v1::VersionInfo out;
    return s.Pin(&ctx, r, &out);
  });
  unary("Unpin", [](auto& s, grpc::ClientContext& ctx) {
    v1::PinRequest r;
    r.set_run("team-a");
    r.set_ref("1");
    v1::VersionInfo out;
    return s.Unpin(&ctx, r, &out);
  });
  unary("DeleteVersion", [](auto& s, grpc::ClientContext& ctx) {
    v1::DeleteVersionRequest r;
    r.set_run("team-a");
    r.set_ref("999");
    v1::DeleteVersionResponse out;
    return s.DeleteVersion(&ctx, r, &out);
  });
  unary("SetPolicy", [](auto& s, grpc::ClientContext& ctx) {
    v1::SetPolicyRequest r;
    r.set_run("team-a");
    v1::Policy out;
    return s.SetPolicy(&ctx, r, &out);
  });
  unary("GetPolicy", [](auto& s, grpc::ClientContext& ctx) {
    v1::GetPolicyRequest r;
    r.set_run("team-a");
    v1::Policy out;
    return s.GetPolicy(&ctx, r, &out);
  });
  unary("CollectGarbage", [](auto& s, grpc::ClientContext& ctx) {
    v1::CollectGarbageResponse out;
    return s.CollectGarbage(&ctx, v1::CollectGarbageRequest(), &out);
  });
  unary("Verify", [](auto& s, grpc::ClientContext& ctx) {
    v1::VerifyRequest r;
    r.set_run("team-a");
    r.set_ref("1");
    v1::VerifyResponse out;
    return s.Verify(&ctx, r, &out);
  });
  unary("GetAuditLog", [](auto& s, grpc::ClientContext& ctx) {
    v1::GetAuditLogRequest r;
    r.set_run("team-a");
    v1::GetAuditLogResponse out;
    return s.GetAuditLog(&ctx, r, &out);
  });
  unary("Backup", [](auto& s, grpc::ClientContext& ctx) {
    // A relative dir: an admin passes the access check and is refused by
    // the path rules (INVALID_ARGUMENT), so nothing is written.
    v1::BackupRequest r;
    r.set_dir("not-absolute");
    v1::BackupResponse out;
    return s.Backup(&ctx, r, &out);
  });
  p.push_back(
      {"Health",
       [](v1::Checkpoint::Stub&, grpc::Channel& channel, const Caller& c) {
         auto ctx = Ctx(c);
         grpc::ByteBuffer out;
         // grpc.health.v1.HealthCheckRequest{} is empty.
         return grpc::internal::BlockingUnaryCall<grpc::ByteBuffer,
                                                  grpc::ByteBuffer>(
             &channel,
             grpc::internal::RpcMethod("/grpc.health.v1.Health/Check",
                                       grpc::internal::RpcMethod::NORMAL_RPC),
             ctx.get(), Bytes(""), &out);
       }});
  p.push_back(
      {"Reflection",
       [](v1::Checkpoint::Stub&, grpc::Channel& channel, const Caller& c) {
         auto ctx = Ctx(c);
         std::unique_ptr<
             grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>>
             stream(
                 grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer,
                                                           grpc::ByteBuffer>::
                     Create(&channel,
                            grpc::internal::RpcMethod(
                                "/grpc.reflection.v1alpha."
                                "ServerReflection/"
                                "ServerReflectionInfo",
                                grpc::internal::RpcMethod::BIDI_STREAMING),
                            ctx.get()));
         // ServerReflectionRequest{list_services: ""} (field 7).
         stream->Write(Bytes(std::string("\x3a\x00", 2)));
         grpc::ByteBuffer response;
         stream->Read(&response);
         stream->WritesDone();
         return stream->Finish();
       }});
  return p;
}

class AuthTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pki_ = new Pki(MakePki());
    tokens_ = new Tokens{MustToken(), MustToken(), MustToken(), MustToken(),
                         MustToken()};
    auth_path_ = new std::string(pki_->Path("auth"));
    WriteFile(*auth_path_, AuthFile(*tokens_));
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(pki_->dir);
    delete pki_;
    delete tokens_;
    delete auth_path_;
  }

  // A TLS server with the auth file; with `mtls`, client certificates from
  // the test CA are required.
  std::unique_ptr<ServerProcess> StartServer(bool mtls) {
    std::vector<std::string> flags = {"--tls_cert=" + pki_->Path("server.pem"),
                                      "--tls_key=" + pki_->Path("server.key"),
                                      "--auth_file=" + *auth_path_};
    if (mtls) flags.push_back("--tls_client_ca=" + pki_->Path("test-ca.pem"));
    auto server = std::make_unique<ServerProcess>(flags);
    server->set_ready_credentials(
        mtls ? Tls(*pki_, pki_->client_cert, pki_->client_key) : Tls(*pki_));
    absl::Status st = server->Start();
    EXPECT_TRUE(st.ok()) << st;
    return server;
  }

  std::unique_ptr<Client> Connect(const ServerProcess& server,
                                  const std::string& token) {
    ClientOptions o;
    o.address = server.address();
    o.token = token;
    o.root_certificates = pki_->ca;
    o.rpc_timeout_seconds = 20;
    auto c = Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  // Pushes one small version of `run` as `token`.
  absl::StatusOr<VersionInfo> Push(Client& client, const std::string& run,
                                   int64_t step) {
    PushRequest req;
    req.run = run;
    req.step = step;
    req.metrics["loss"] = 1.0 / static_cast<double>(step + 1);
    ManifestEntry root;
    root.mutable_container()->set_kind(v1::ContainerInfo::DICT);
    req.entries.push_back({root, {}});
    bytes_.push_back(testing::RandomBytes(4096, step * 31 + run.size()));
    ManifestEntry e;
    e.add_path()->set_key("w");
    e.mutable_tensor()->set_dtype(v1::UINT8);
    e.mutable_tensor()->add_shape(4096);
    TensorData data;
    data.data = bytes_.back().data();
    data.byte_length = bytes_.back().size();
    req.entries.push_back({e, data});
    return client.Push(req, PushOptions());
  }

  static Pki* pki_;
  static Tokens* tokens_;
  static std::string* auth_path_;
  std::vector<std::string> bytes_;
};

Pki* AuthTest::pki_ = nullptr;
Tokens* AuthTest::tokens_ = nullptr;
std::string* AuthTest::auth_path_ = nullptr;

// Every RPC x every kind of caller, against a table written out here (not
// derived from the server's), printed as it is checked.
TEST_F(AuthTest, MatrixOfEveryRpcAndCaller) {
  auto server = StartServer(/*mtls=*/false);
  auto mtls_server = StartServer(/*mtls=*/true);
  ASSERT_NE(server, nullptr);
  {
    auto admin = Connect(*server, tokens_->admin);
    ASSERT_NE(admin, nullptr);
    auto pushed = Push(*admin, "team-a", 1);
    ASSERT_TRUE(pushed.ok()) << pushed.status() << server->LogTail();
    ASSERT_TRUE(Push(*admin, "team-b", 1).ok());
  }
  const std::vector<Caller> callers = {
      {"none", Tls(*pki_), ""},
      {"unknown", Tls(*pki_), "ckptd_not-a-token-anyone-was-given"},
      {"reader", Tls(*pki_), tokens_->reader},
      {"writer", Tls(*pki_), tokens_->writer},
      {"admin", Tls(*pki_), tokens_->admin},
      {"other-run", Tls(*pki_), tokens_->other_writer},
      {"plaintext", grpc::InsecureChannelCredentials(), tokens_->admin},
      {"mtls-cert", Tls(*pki_, pki_->client_cert, pki_->client_key), "", true},
      {"rogue-ca", Tls(*pki_, pki_->rogue_cert, pki_->rogue_key), "", true},
      // The same tokens over the co-located socket (plaintext, local
      // credentials): the same answers as over TLS.
      {"sock-none", grpc::InsecureChannelCredentials(), "", false, true},
      {"sock-reader", grpc::InsecureChannelCredentials(), tokens_->reader,
       false, true},
      {"sock-admin", grpc::InsecureChannelCredentials(), tokens_->admin, false,
       true},
      {"sock-other", grpc::InsecureChannelCredentials(), tokens_->other_writer,
       false, true},
  };
  // a: allowed; U: UNAUTHENTICATED; P: PERMISSION_DENIED; X: no connection.
  // Columns in the order of `callers`; the sock-* columns repeat none,
  // reader, admin and other-run.
  const std::map<std::string, std::string> expected = {
      {"BeginVersion", "UUPaaPXaXUPaP"},
      {"FindMissingBlobs", "UUPaaPXaXUPaP"},
      {"UploadBlobs", "UUPaaPXaXUPaP"},
      {"QueryUpload", "UUPaaPXaXUPaP"},
      {"CommitShard", "UUPaaPXaXUPaP"},
      {"AbortVersion", "UUPaaPXaXUPaP"},
      {"GetVersion", "UUaaaPXaXUaaP"},
      {"ReadBlobs", "UUaaaPXaXUaaP"},
      {"ExportSafetensors", "UUaaaPXaXUaaP"},
      {"WatchRef", "UUaaaPXaXUaaP"},
      {"ListRuns", "UUaaaaXaXUaaa"},
      {"ListVersions", "UUaaaPXaXUaaP"},
      {"GetMetricHistory", "UUaaaPXaXUaaP"},
      {"SetAlias", "UUPaaPXaXUPaP"},
      {"DeleteAlias", "UUPaaPXaXUPaP"},
      {"GetAliasHistory", "UUaaaPXaXUaaP"},
      {"Pin", "UUPaaPXaXUPaP"},
      {"Unpin", "UUPaaPXaXUPaP"},
      {"DeleteVersion", "UUPPaPXPXUPaP"},
      {"SetPolicy", "UUPaaPXaXUPaP"},
      {"GetPolicy", "UUaaaPXaXUaaP"},
      {"CollectGarbage", "UUPPaPXPXUPaP"},
      {"Verify", "UUPPaPXPXUPaP"},
      {"GetAuditLog", "UUaaaPXaXUaaP"},
      {"Backup", "UUPPaPXPXUPaP"},
      {"Health", "aaaaaaXaXaaaa"},
      {"Reflection", "UUaaaaXaXUaaa"},
  };
  auto classify = [](const grpc::Status& st) {
    switch (st.error_code()) {
      case grpc::StatusCode::UNAUTHENTICATED:
        return 'U';
      case grpc::StatusCode::PERMISSION_DENIED:
        return 'P';
      case grpc::StatusCode::UNAVAILABLE:
        return 'X';
      default:
        return 'a';
    }
  };
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<v1::Checkpoint::Stub>> stubs;
  for (const Caller& c : callers) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    const std::string address =
        c.local_socket  ? "unix:" + server->data_dir() + "/ckptd.sock"
        : c.mtls_server ? mtls_server->address()
                        : server->address();
    channels.push_back(grpc::CreateCustomChannel(address, c.creds, args));
    stubs.push_back(v1::Checkpoint::NewStub(channels.back()));
  }
  std::string table = absl::StrCat("\n", std::string(18, ' '));
  for (const Caller& c : callers) absl::StrAppend(&table, c.name, " ");
  absl::StrAppend(&table, "\n");
  const auto probes = Probes();
  ASSERT_EQ(probes.size(), expected.size());
  for (const auto& [method, probe] : probes) {
    ASSERT_TRUE(expected.count(method)) << method;
    const std::string& want = expected.at(method);
    std::string got;
    absl::StrAppend(&table, method, std::string(18 - method.size(), ' '));
    for (size_t i = 0; i < callers.size(); ++i) {
      const grpc::Status st = probe(*stubs[i], *channels[i], callers[i]);
      got.push_back(classify(st));
      const std::string cell =
          got.back() == 'a' ? "ok" : std::string(1, got.back());
      absl::StrAppend(
          &table, cell,
          std::string(callers[i].name.size() + 1 - cell.size(), ' '));
      EXPECT_EQ(got.back(), want[i])
          << method << " as " << callers[i].name << ": " << st.error_code()
          << " " << st.error_message();
      if (got.back() == 'P') {
        // Names identity, role and method.
        EXPECT_THAT(st.error_message(), HasSubstr("identity '"));
        EXPECT_THAT(st.error_message(), HasSubstr(method));
      }
      if (got.back() == 'U' && method != "Reflection") {
        EXPECT_THAT(
            st.error_message(),
            ::testing::AnyOf(HasSubstr("token"), HasSubstr("credential")));
      }
    }
    absl::StrAppend(&table, "\n");
  }
  std::cout << "auth matrix (ok: allowed, U: UNAUTHENTICATED, P: "
               "PERMISSION_DENIED, X: no TLS connection)"
            << table << std::flush;
}

TEST_F(AuthTest, ListRunsShowsOnlyReadableRuns) {
  auto server = StartServer(false);
  auto admin = Connect(*server, tokens_->admin);
  ASSERT_TRUE(Push(*admin, "team-a", 1).ok());
  ASSERT_TRUE(Push(*admin, "team-b", 1).ok());
  auto names = [&](Client& c) {
    std::vector<std::string> out;
    auto runs = c.ListRuns();
    EXPECT_TRUE(runs.ok()) << runs.status();
    if (runs.ok()) {
      for (const RunInfo& r : *runs) out.push_back(r.name());
    }
    return out;
  };
  EXPECT_THAT(names(*admin), ::testing::ElementsAre("team-a", "team-b"));
  EXPECT_THAT(names(*Connect(*server, tokens_->other_writer)),
              ::testing::ElementsAre("team-b"));
  EXPECT_THAT(names(*Connect(*server, tokens_->reader)),
              ::testing::ElementsAre("team-a"));
}

TEST_F(AuthTest, WriterMayNotSetAPolicyThatDeletesVersions) {
  auto server = StartServer(false);
  auto writer = Connect(*server, tokens_->writer);
  for (int step = 1; step <= 3; ++step) {
    ASSERT_TRUE(Push(*writer, "team-a", step).ok());
  }
  Policy keep_one;
  keep_one.set_keep_last(1);
  auto denied = writer->SetPolicy("team-a", keep_one);
  ASSERT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied)
      << denied.status();
  EXPECT_THAT(denied.status().message(), HasSubstr("versions 1, 2"));
  EXPECT_THAT(denied.status().message(), HasSubstr("admin"));
  auto versions = writer->ListVersions(RunVersions("team-a"));
  ASSERT_TRUE(versions.ok());
  EXPECT_EQ(versions->size(), 3u) << "nothing was deleted";
  // A policy that deletes nothing now is a writer's to set.
  Policy keep_ten;
  keep_ten.set_keep_last(10);
  EXPECT_TRUE(writer->SetPolicy("team-a", keep_ten).ok());
  // An admin may.
  auto admin = Connect(*server, tokens_->admin);
  ASSERT_TRUE(admin->SetPolicy("team-a", keep_one).ok());
  versions = admin->ListVersions(RunVersions("team-a"));
  ASSERT_TRUE(versions.ok());
  EXPECT_EQ(versions->size(), 1u);
  // The audit log names the identities, not peer addresses.
  auto audit = admin->GetAuditLog("team-a", 0);
  ASSERT_TRUE(audit.ok()) << audit.status();
  std::vector<std::string> who;
  for (const AuditEvent& e : *audit) {
    who.push_back(absl::StrCat(e.identity(), ":", e.action()));
  }
  EXPECT_THAT(who, ::testing::Contains("writer-a:set_policy"));
  EXPECT_THAT(who, ::testing::Contains("root:set_policy"));
  EXPECT_THAT(who, ::testing::Contains("writer-a:alias_move"));
  for (const AuditEvent& e : *audit) {
    EXPECT_THAT(e.identity(), ::testing::Not(HasSubstr("127.0.0.1")));
  }
  // Every run's log is an admin's.
  EXPECT_EQ(writer->GetAuditLog("", 0).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(admin->GetAuditLog("", 0).ok());
}

// gRPC keeps a processor's auth properties on the connection: one call's
// token must not vouch for the next call on the same connection.
TEST_F(AuthTest, ACredentialVouchesForItsOwnCallOnly) {
  auto server = StartServer(false);
  auto channel = grpc::CreateChannel(server->address(), Tls(*pki_));
  auto stub = v1::Checkpoint::NewStub(channel);
  const Caller admin{"admin", nullptr, tokens_->admin};
  const Caller reader{"reader", nullptr, tokens_->reader};
  const Caller none{"none", nullptr, ""};
  v1::CollectGarbageResponse out;
  ASSERT_TRUE(
      stub->CollectGarbage(Ctx(admin).get(), v1::CollectGarbageRequest(), &out)
          .ok());
  EXPECT_EQ(
      stub->CollectGarbage(Ctx(none).get(), v1::CollectGarbageRequest(), &out)
          .error_code(),
      grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(
      stub->CollectGarbage(Ctx(reader).get(), v1::CollectGarbageRequest(), &out)
          .error_code(),
      grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(
      stub->CollectGarbage(Ctx(admin).get(), v1::CollectGarbageRequest(), &out)
          .ok());
}

TEST_F(AuthTest, SighupReloadsAndABrokenFileKeepsTheOldTable) {
  const std::string path = pki_->Path("auth-reload");
  WriteFile(path, AuthFile(*tokens_));
  ServerProcess server({"--tls_cert=" + pki_->Path("server.pem"),
                        "--tls_key=" + pki_->Path("server.key"),
                        "--auth_file=" + path});
  server.set_ready_credentials(Tls(*pki_));
  ASSERT_TRUE(server.Start().ok()) << server.LogTail();
  auto late = Connect(server, tokens_->late);
  EXPECT_EQ(late->ListRuns().status().code(),
            absl::StatusCode::kUnauthenticated);
  WriteFile(path, absl::StrCat(AuthFile(*tokens_), "late reader * sha256:",
                               Sha256Hex(tokens_->late), "\n"));
  ::kill(server.pid(), SIGHUP);
  bool admitted = false;
  for (int i = 0; i < 100 && !admitted; ++i) {
    admitted = late->ListRuns().ok();
    if (!admitted) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(admitted) << server.LogTail();
  // A file that does not parse: the old table stays, the log says why.
  WriteFile(path, "late reader * sha256:nothex\n");
  ::kill(server.pid(), SIGHUP);
  bool logged = false;
  for (int i = 0; i < 100 && !logged; ++i) {
    logged = server.LogTail().find("kept the previous credentials") !=
             std::string::npos;
    if (!logged) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(logged) << server.LogTail();
  EXPECT_THAT(server.LogTail(), HasSubstr(path + ":1:"));
  EXPECT_TRUE(late->ListRuns().ok());
  EXPECT_TRUE(Connect(server, tokens_->admin)->ListRuns().ok());
}

// Blob tenancy: bytes are reachable only through versions the caller may
// read, and their existence is not revealed across runs.
TEST_F(AuthTest, BlobsOfAnotherRunAreNeitherReadableNorProvable) {
  auto server = StartServer(false);
  {
    auto admin = Connect(*server, tokens_->admin);
    ASSERT_TRUE(Push(*admin, "team-a", 1).ok());
  }
  auto channel = grpc::CreateChannel(server->address(), Tls(*pki_));
  auto stub = v1::Checkpoint::NewStub(channel);
  const Caller a{"writer-a", nullptr, tokens_->writer};
  const Caller b{"writer-b", nullptr, tokens_->other_writer};
  // team-a's manifest and its blob digest.
  v1::GetVersionRequest get;
  get.set_run("team-a");
  get.set_ref("1");
  get.set_include_manifest(true);
  v1::GetVersionResponse version;
  ASSERT_TRUE(stub->GetVersion(Ctx(a).get(), get, &version).ok());
  ASSERT_EQ(version.shards_size(), 1);
  std::string digest;
  for (const auto& e : version.shards(0).entries()) {
    if (e.has_tensor()) digest = e.tensor().blob_digest();
  }
  ASSERT_EQ(digest.size(), 16u);
  // writer-b's own pending version of team-b.
  v1::BeginVersionRequest begin;
  begin.set_run("team-b");
  begin.set_step(7);
  begin.set_world_size(1);
  v1::BeginVersionResponse pending;
  ASSERT_TRUE(stub->BeginVersion(Ctx(b).get(), begin, &pending).ok());

  // Reading team-a's bytes: refused for team-a, not found through team-b.
  const std::string runs[] = {"team-a", "team-b"};
  for (const std::string& run : runs) {
    v1::ReadBlobsRequest read;
    read.set_run(run);
    read.set_version(run == "team-a" ? 1 : pending.version());
    read.add_ranges()->set_digest(digest);
    auto ctx = Ctx(b);
    auto reader = stub->ReadBlobs(ctx.get(), read);
    v1::ReadChunk chunk;
    EXPECT_FALSE(reader->Read(&chunk)) << "no byte of team-a via " << run;
    const grpc::Status st = reader->Finish();
    EXPECT_EQ(st.error_code(), run == "team-a"
                                   ? grpc::StatusCode::PERMISSION_DENIED
                                   : grpc::StatusCode::FAILED_PRECONDITION)
        << run << ": " << st.error_message();
  }
  // FindMissingBlobs: missing for writer-b, present for team-a's writer.
  v1::FindMissingBlobsRequest find;
  find.set_run("team-b");
  find.set_version(pending.version());
  find.add_digests(digest);
  v1::FindMissingBlobsResponse missing;
  ASSERT_TRUE(stub->FindMissingBlobs(Ctx(b).get(), find, &missing).ok());
  EXPECT_EQ(missing.missing_size(), 1) << "an existence oracle across runs";
  begin.set_run("team-a");
  v1::BeginVersionResponse pending_a;
  ASSERT_TRUE(stub->BeginVersion(Ctx(a).get(), begin, &pending_a).ok());
  find.set_run("team-a");
  find.set_version(pending_a.version());
  ASSERT_TRUE(stub->FindMissingBlobs(Ctx(a).get(), find, &missing).ok());
  EXPECT_EQ(missing.missing_size(), 0) << "dedup within the run";
  // QueryUpload: no answer about blobs outside the caller's version.
  v1::QueryUploadRequest query;
  query.set_run("team-b");
  query.set_version(pending.version());
  query.set_digest(digest);
  v1::QueryUploadResponse queried;
  ASSERT_TRUE(stub->QueryUpload(Ctx(b).get(), query, &queried).ok());
  EXPECT_FALSE(queried.complete());
  EXPECT_EQ(queried.durable_offset(), 0u);
  // Starting (not finishing) an upload of the digest grants nothing.
  {
    auto ctx = Ctx(b);
    v1::UploadBlobsResponse out;
    auto writer = stub->UploadBlobs(ctx.get(), &out);
    v1::UploadChunk chunk;
    chunk.set_run("team-b");
    chunk.set_version(pending.version());
    chunk.set_digest(digest);
    chunk.set_blob_size(4096);
    chunk.set_data("x");
    chunk.set_checksum(0);  // wrong: the stream fails
    writer->Write(chunk);
    writer->WritesDone();
    writer->Finish();
  }
  // CommitShard of team-a's manifest into team-b: the blob is "missing".
  v1::CommitShardRequest commit;
  commit.set_run("team-b");
  commit.set_version(pending.version());
  *commit.mutable_manifest() = version.shards(0);
  v1::CommitShardResponse committed;
  const grpc::Status st = stub->CommitShard(Ctx(b).get(), commit, &committed);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << st.error_message();
  EXPECT_THAT(st.error_message(), HasSubstr("missing"));
  // Proof of possession: uploading the same bytes makes the commit work.
  auto b_client = Connect(*server, tokens_->other_writer);
  auto a_client = Connect(*server, tokens_->admin);
  auto a_version = a_client->GetVersion("team-a", "1", GetVersionOptions());
  ASSERT_TRUE(a_version.ok());
  auto tensors = a_client->ReadAllTensors(*a_version, nullptr, PullOptions());
  ASSERT_TRUE(tensors.ok() && tensors->size() == 1);
  PushRequest req;
  req.run = "team-b";
  req.step = 8;
  ManifestEntry root;
  root.mutable_container()->set_kind(v1::ContainerInfo::DICT);
  req.entries.push_back({root, {}});
  ManifestEntry e;
  e.add_path()->set_key("w");
  e.mutable_tensor()->set_dtype(v1::UINT8);
  e.mutable_tensor()->add_shape(
      static_cast<int64_t>((*tensors)[0].bytes.size()));
  TensorData data;
  data.data = (*tensors)[0].bytes.data();
  data.byte_length = (*tensors)[0].bytes.size();
  req.entries.push_back({e, data});
  auto pushed = b_client->Push(req, PushOptions());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  EXPECT_EQ(pushed->state(), v1::COMMITTED);
  EXPECT_GT(pushed->uploaded_bytes(), 0u) << "the bytes had to be sent";
}

// ckptd refuses to start in the unsafe configurations, and says why.
TEST(AuthStartTest, RefusesUnsafeListenAddresses) {
  auto run = [](std::vector<std::string> flags) {
    const std::string dir = ServerProcess::MakeTempDir("ckptd-refuse");
    std::string cmd = ServerProcess::BinaryPath();
    for (const auto& f : flags) absl::StrAppend(&cmd, " '", f, "'");
    absl::StrAppend(&cmd, " --data_dir=", dir, " 2>&1");
    FILE* p = ::popen(cmd.c_str(), "r");
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
    const int status = ::pclose(p);
    std::filesystem::remove_all(dir);
    return std::make_pair(WEXITSTATUS(status), out);
  };
  auto [rc, out] = run({"--listen=0.0.0.0:0"});
  EXPECT_NE(rc, 0);
  EXPECT_THAT(out, HasSubstr("--insecure_no_auth"));
  EXPECT_THAT(out, HasSubstr("--auth_file"));
  const std::string dir = ServerProcess::MakeTempDir("ckptd-auth-file");
  WriteFile(dir + "/auth",
            absl::StrCat("a admin * sha256:", std::string(64, 'a'), "\n"));
  std::tie(rc, out) =
      run({"--listen=0.0.0.0:0", "--auth_file=" + dir + "/auth"});
  EXPECT_NE(rc, 0);
  EXPECT_THAT(out, HasSubstr("clear text"));
  WriteFile(dir + "/bad", "a admin * 0123\n");
  std::tie(rc, out) = run({"--auth_file=" + dir + "/bad"});
  EXPECT_NE(rc, 0);
  EXPECT_THAT(out, HasSubstr(dir + "/bad:1:"));
  std::tie(rc, out) = run({"--tls_cert=" + dir + "/auth"});
  EXPECT_NE(rc, 0);
  EXPECT_THAT(out, HasSubstr("--tls_key"));
  std::filesystem::remove_all(dir);
}

TEST(AuthStartTest, TheFirstLogLineSaysHowCallersAreAuthenticated) {
  ServerProcess server;
  ASSERT_TRUE(server.Start().ok()) << server.LogTail();
  const std::string log = server.LogTail();
  const std::string first = log.substr(0, log.find('\n'));
  EXPECT_THAT(first, HasSubstr("authentication off: serving loopback only"));
}

}  // namespace
}  // namespace ckptd
