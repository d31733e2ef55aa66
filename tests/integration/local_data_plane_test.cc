// The co-located zero-copy data plane (server/service/local_data_plane.h,
// client/src/local_plane.h) against a real ckptd: saves staged into a
// daemon-owned memfd and committed by the daemon, pulls that map verified
// blob files copy-on-write, the staged-memory bound, tokens and roles, a
// client that goes away after the daemon acknowledged its snapshot, and the
// bad inputs of the raw protocol.
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "ckptd/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/digest.h"
#include "proto/base/error_reason.h"
#include "proto/base/local_frame.h"
#include "proto/base/secret.h"
#include "proto/base/status.h"
#include "tests/integration/support/server_process.h"
#include "tests/support/assert_ok.h"
#include "tests/support/random_bytes.h"

namespace ckptd {
namespace {

using ::ckptd::testing::RandomBytes;
using ::ckptd::testing::ServerProcess;
using ::testing::HasSubstr;

class SocketDir {
 public:
  SocketDir() : dir_(ServerProcess::MakeTempDir("ckptd-dp")) {}
  ~SocketDir() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const {
    return absl::StrCat(dir_, "/", name);
  }

 private:
  std::string dir_;
};

// Tensors of several sizes: two large ones (own blobs, one repeated), small
// ones that share packs, an empty one.
struct State {
  std::vector<std::string> bytes;
  PushRequest Request(const std::string& run, int64_t step) const {
    PushRequest req;
    req.run = run;
    req.step = step;
    req.metrics["loss"] = 0.5;
    PushEntry root;
    root.entry.mutable_container()->set_kind(v1::ContainerInfo::DICT);
    req.entries.push_back(root);
    for (size_t i = 0; i < bytes.size(); ++i) {
      PushEntry e;
      e.entry.add_path()->set_key(absl::StrCat("t", i));
      e.entry.mutable_tensor()->set_dtype(v1::UINT8);
      e.entry.mutable_tensor()->add_shape(
          static_cast<int64_t>(bytes[i].size()));
      e.tensor.data = bytes[i].data();
      e.tensor.byte_length = bytes[i].size();
      req.entries.push_back(std::move(e));
    }
    return req;
  }
};

State MakeState(uint64_t seed) {
  std::string big = RandomBytes((9 << 20) + 1, seed);
  return State{{big, RandomBytes(4096, seed + 1), RandomBytes(100, seed + 2),
                "", RandomBytes(3 << 20, seed + 3), big,
                RandomBytes(1 << 20, seed + 4)}};
}

absl::StatusOr<std::unique_ptr<Client>> ConnectTo(const std::string& address,
                                                  const std::string& token) {
  ClientOptions options;
  options.address = address;
  options.token = token;
  options.rpc_timeout_seconds = 30;
  return Client::Connect(options);
}

// The tensors of run@ref, mapped over the data plane, in entry order.
absl::StatusOr<std::vector<std::string>> MapBytes(Client& client,
                                                  const std::string& run,
                                                  const std::string& ref) {
  auto version = client.GetVersion(run, ref, GetVersionOptions());
  if (!version.ok()) return version.status();
  std::vector<std::string> digests;
  std::vector<const v1::TensorInfo*> tensors;
  for (const auto& e : version->shards[0].entries()) {
    if (!e.has_tensor()) continue;
    tensors.push_back(&e.tensor());
    digests.push_back(e.tensor().blob_digest());
  }
  auto blobs =
      client.MapBlobs(version->info.run(), version->info.version(), digests);
  if (!blobs.ok()) return blobs.status();
  std::vector<std::string> out;
  for (size_t i = 0; i < tensors.size(); ++i) {
    out.emplace_back((*blobs)[i]->data() + tensors[i]->blob_offset(),
                     tensors[i]->byte_length());
  }
  return out;
}

// A raw connection to the data socket, for what the client never sends.
class RawConnection {
 public:
  explicit RawConnection(const std::string& path) {
    fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    connected_ = ::connect(fd_.get(), reinterpret_cast<sockaddr*>(&addr),
                           sizeof(addr)) == 0;
  }
  bool connected() const { return connected_; }
  int fd() const { return fd_.get(); }
  absl::StatusOr<v1::LocalReply> Call(const v1::LocalRequest& req,
                                      std::vector<UniqueFd>* fds) {
    CKPTD_RETURN_IF_ERROR(SendLocalFrame(fd_.get(), req));
    return Receive(fds);
  }
  absl::StatusOr<v1::LocalReply> Receive(std::vector<UniqueFd>* fds) {
    v1::LocalReply reply;
    CKPTD_RETURN_IF_ERROR(RecvLocalFrame(fd_.get(), &reply, fds));
    return reply;
  }
  void Close() { fd_.reset(); }

 private:
  UniqueFd fd_;
  bool connected_ = false;
};

v1::LocalRequest StageRequest(const std::string& run, uint64_t bytes) {
  v1::LocalRequest req;
  req.mutable_stage()->set_run(run);
  req.mutable_stage()->set_bytes(bytes);
  return req;
}

// A commit of one uint8 tensor of `len` bytes at `offset`.
v1::LocalRequest CommitRequest(const std::string& run, int64_t step,
                               uint64_t offset, uint64_t len) {
  v1::LocalRequest req;
  v1::LocalCommitRequest* c = req.mutable_commit();
  c->mutable_begin()->set_run(run);
  c->mutable_begin()->set_step(step);
  c->mutable_begin()->set_world_size(1);
  v1::ShardManifest* m = c->mutable_shard()->mutable_manifest();
  m->add_entries()->mutable_container()->set_kind(v1::ContainerInfo::DICT);
  v1::ManifestEntry* e = m->add_entries();
  e->add_path()->set_key("x");
  e->mutable_tensor()->set_dtype(v1::UINT8);
  e->mutable_tensor()->add_shape(static_cast<int64_t>(len));
  e->mutable_tensor()->set_byte_length(len);
  e->mutable_tensor()->set_blob_offset(offset);
  return req;
}

absl::StatusCode CodeOf(const absl::StatusOr<v1::LocalReply>& reply) {
  if (!reply.ok()) return reply.status().code();
  return FromRpcStatus(reply->status()).code();
}

std::string MessageOf(const absl::StatusOr<v1::LocalReply>& reply) {
  if (!reply.ok()) return std::string(reply.status().message());
  return reply->status().message();
}

// Stages `data` on `conn` through the raw protocol: fills and unmaps the
// memfd. Returns the reply to the stage request.
absl::StatusOr<v1::LocalReply> StageBytes(RawConnection& conn,
                                          const std::string& run,
                                          const std::string& data) {
  std::vector<UniqueFd> fds;
  auto reply = conn.Call(StageRequest(run, data.size()), &fds);
  if (!reply.ok() || reply->status().code() != 0) return reply;
  EXPECT_EQ(fds.size(), 1u);
  if (!data.empty()) {
    void* p = ::mmap(nullptr, data.size(), PROT_READ | PROT_WRITE, MAP_SHARED,
                     fds[0].get(), 0);
    EXPECT_NE(p, MAP_FAILED);
    std::memcpy(p, data.data(), data.size());
    ::munmap(p, data.size());
  }
  return reply;
}

TEST(LocalDataPlaneTest, StagedSaveAndMappedPullAreBitIdentical) {
  SocketDir dir;
  const std::string path = dir.Path("c.sock");
  ServerProcess server({"--local_socket=" + path});
  ASSERT_OK(server.Start());
  EXPECT_TRUE(std::filesystem::is_socket(path + ".data"));
  auto local = ConnectTo("unix:" + path, "");
  ASSERT_TRUE(local.ok()) << local.status();
  const State state = MakeState(5);
  auto staged = (*local)->StagePush(state.Request("colo", 1));
  ASSERT_TRUE(staged.ok()) << staged.status();
  EXPECT_EQ((*staged)->version(), 1u);
  auto info = (*staged)->Wait();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state(), v1::COMMITTED);
  EXPECT_EQ(info->metrics().at("loss"), 0.5);
  EXPECT_EQ(info->total_bytes(), state.bytes[0].size() * 2 +
                                     state.bytes[1].size() + 100 +
                                     state.bytes[4].size() + (1 << 20));
  // A second Wait is an error, not a hang.
  EXPECT_EQ((*staged)->Wait().status().code(),
            absl::StatusCode::kFailedPrecondition);

  auto mapped = MapBytes(**local, "colo", "last");
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(*mapped, state.bytes);
  // Over TCP the same bytes come back, read through the checked path.
  auto tcp = ConnectTo(server.address(), "");
  ASSERT_TRUE(tcp.ok());
  auto version = (*tcp)->GetVersion("colo", "1", GetVersionOptions());
  ASSERT_TRUE(version.ok());
  auto read = (*tcp)->ReadAllTensors(*version, nullptr, PullOptions());
  ASSERT_TRUE(read.ok()) << read.status();
  std::vector<std::string> tcp_bytes;
  for (OwnedTensor& t : *read) tcp_bytes.push_back(std::move(t.bytes));
  EXPECT_EQ(tcp_bytes, state.bytes);
}

TEST(LocalDataPlaneTest, StagedSavesDeduplicateWithTcpPushes) {
  SocketDir dir;
  const std::string path = dir.Path("d.sock");
  ServerProcess server({"--local_socket=" + path});
  ASSERT_OK(server.Start());
  const State state = MakeState(9);
  auto tcp = ConnectTo(server.address(), "");
  ASSERT_TRUE(tcp.ok());
  auto pushed = (*tcp)->Push(state.Request("dedup", 1), PushOptions());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  EXPECT_GT(pushed->uploaded_bytes(), 0u);
  auto local = ConnectTo("unix:" + path, "");
  ASSERT_TRUE(local.ok());
  auto staged = (*local)->StagePush(state.Request("dedup", 2));
  ASSERT_TRUE(staged.ok()) << staged.status();
  auto info = (*staged)->Wait();
  ASSERT_TRUE(info.ok()) << info.status();
  // Same packs and digests as the TCP push: nothing new was stored.
  EXPECT_EQ(info->uploaded_bytes(), 0u);
  auto a = (*tcp)->GetVersion("dedup", "1", GetVersionOptions());
  auto b = (*tcp)->GetVersion("dedup", "2", GetVersionOptions());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->shards[0].SerializeAsString(), b->shards[0].SerializeAsString());
}

TEST(LocalDataPlaneTest, PushOnTheSocketStagesWhatIsMissingOnly) {
  SocketDir dir;
  const std::string path = dir.Path("p.sock");
  ServerProcess server({"--local_socket=" + path});
  ASSERT_OK(server.Start());
  auto local = ConnectTo("unix:" + path, "");
  ASSERT_TRUE(local.ok());
  const State state = MakeState(61);
  auto first = (*local)->Push(state.Request("push", 1), PushOptions());
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->state(), v1::COMMITTED);
  EXPECT_THAT(server.LogTail(100000),
              HasSubstr("co-located save of push step 1"));
  // Unchanged: nothing is missing, so nothing is staged or sent.
  auto again = (*local)->Push(state.Request("push", 2), PushOptions());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->uploaded_bytes(), 0u);
  EXPECT_THAT(server.LogTail(100000),
              ::testing::Not(HasSubstr("co-located save of push step 2")));
  auto mapped = MapBytes(**local, "push", "2");
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(*mapped, state.bytes);
}

TEST(LocalDataPlaneTest, MappedBlobsAreCopyOnWriteAndVerified) {
  SocketDir dir;
  const std::string path = dir.Path("m.sock");
  ServerProcess server({"--local_socket=" + path});
  ASSERT_OK(server.Start());
  auto local = ConnectTo("unix:" + path, "");
  ASSERT_TRUE(local.ok());
  const State state = MakeState(13);
  auto staged = (*local)->StagePush(state.Request("cow", 1));
  ASSERT_TRUE(staged.ok());
  ASSERT_TRUE((*staged)->Wait().ok());
  auto version = (*local)->GetVersion("cow", "last", GetVersionOptions());
  ASSERT_TRUE(version.ok());
  const std::string digest =
      version->shards[0].entries(1).tensor().blob_digest();
  {
    auto blobs = (*local)->MapBlobs("cow", 1, {digest});
    ASSERT_TRUE(blobs.ok()) << blobs.status();
    (*blobs)[0]->data()[0] ^= 0x5a;  // private: the file does not change
  }
  auto again = MapBytes(**local, "cow", "1");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, state.bytes);

  // Damage the blob file on disk: the mapping fails verification.
  auto d = DigestFromBytes(digest);
  ASSERT_TRUE(d.ok());
  const std::string hex = d->Hex();
  const std::string file =
      absl::StrCat(server.data_dir(), "/blobs/", hex.substr(0, 2), "/", hex);
  ASSERT_TRUE(std::filesystem::exists(file)) << file;
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(1000);
    f.put('\x42' ^ state.bytes[0][1000]);
  }
  auto bad = (*local)->MapBlobs("cow", 1, {digest});
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << bad.status();
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("does not match its digest"));
}

TEST(LocalDataPlaneTest, MapOnlyHandsOutBlobsOfTheVersion) {
  SocketDir dir;
  const std::string path = dir.Path("t.sock");
  ServerProcess server({"--local_socket=" + path});
  ASSERT_OK(server.Start());
  auto local = ConnectTo("unix:" + path, "");
  ASSERT_TRUE(local.ok());
  const State a = MakeState(21);
  const State b = MakeState(31);
  ASSERT_TRUE((*local)->Push(a.Request("run-a", 1), PushOptions()).ok());
  ASSERT_TRUE((*local)->Push(b.Request("run-b", 1), PushOptions()).ok());
  auto vb = (*local)->GetVersion("run-b", "1", GetVersionOptions());
  ASSERT_TRUE(vb.ok());
  const std::string other = vb->shards[0].entries(1).tensor().blob_digest();
  auto refused = (*local)->MapBlobs("run-a", 1, {other});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kNotFound)
      << refused.status();
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("is not part of run-a@1"));
  EXPECT_EQ((*local)->MapBlobs("run-a", 7, {other}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ((*local)->MapBlobs("run-a", 1, {"short"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Over TCP there is no data plane: the caller is told to use ReadTensors.
  auto tcp = ConnectTo(server.address(), "");
  ASSERT_TRUE(tcp.ok());
  EXPECT_EQ((*tcp)->MapBlobs("run-a", 1, {other}).status().code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ((*tcp)->StagePush(a.Request("run-a", 2)).status().code(),
            absl::StatusCode::kUnimplemented);
}

TEST(LocalDataPlaneTest, TokensAndRolesApply) {
  SocketDir dir;
  const std::string path = dir.Path("a.sock");
  const std::string reader = "reader-token-0123456789abcdef";
  const std::string writer = "writer-token-0123456789abcdef";
  const std::string auth_file = dir.Path("auth_file");
  {
    std::ofstream out(auth_file);
    out << "r reader team-* sha256:" << Sha256Hex(reader) << "\n"
        << "w writer team-* sha256:" << Sha256Hex(writer) << "\n";
  }
  ServerProcess server({"--local_socket=" + path, "--auth_file=" + auth_file});
  ASSERT_OK(server.Start());
  const std::string address = "unix:" + path;
  const State state = MakeState(41);
  struct Case {
    const char* name;
    std::string token;
    std::string run;
    absl::StatusCode want;
  };
  const Case cases[] = {
      {"no token", "", "team-a", absl::StatusCode::kUnauthenticated},
      {"unknown token", "not-a-token", "team-a",
       absl::StatusCode::kUnauthenticated},
      {"reader saves", reader, "team-a", absl::StatusCode::kPermissionDenied},
      {"writer on another run", writer, "other",
       absl::StatusCode::kPermissionDenied},
      {"writer", writer, "team-a", absl::StatusCode::kOk},
  };
  for (const Case& c : cases) {
    auto client = ConnectTo(address, c.token);
    ASSERT_TRUE(client.ok()) << c.name;
    auto staged = (*client)->StagePush(state.Request(c.run, 1));
    absl::Status st = staged.status();
    if (st.ok()) st = (*staged)->Wait().status();
    EXPECT_EQ(st.code(), c.want) << c.name << ": " << st;
  }
  auto w = ConnectTo(address, writer);
  ASSERT_TRUE(w.ok());
  auto version = (*w)->GetVersion("team-a", "1", GetVersionOptions());
  ASSERT_TRUE(version.ok()) << version.status();
  const std::string digest =
      version->shards[0].entries(1).tensor().blob_digest();
  auto r = ConnectTo(address, reader);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE((*r)->MapBlobs("team-a", 1, {digest}).ok());
  auto none = ConnectTo(address, "");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ((*none)->MapBlobs("team-a", 1, {digest}).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*r)->MapBlobs("other", 1, {digest}).status().code(),
            absl::StatusCode::kPermissionDenied);
  // Every request is authorized on its own: a writer's stage does not let
  // a reader's token commit it.
  RawConnection conn(path + ".data");
  std::vector<UniqueFd> fds;
  v1::LocalRequest stage = StageRequest("team-b", 64);
  stage.set_token(writer);
  auto staged = conn.Call(stage, &fds);
  ASSERT_EQ(CodeOf(staged), absl::StatusCode::kOk) << MessageOf(staged);
  v1::LocalRequest commit = CommitRequest("team-b", 1, 0, 64);
  commit.set_token(reader);
  auto refused = conn.Call(commit, &fds);
  EXPECT_EQ(CodeOf(refused), absl::StatusCode::kPermissionDenied)
      << MessageOf(refused);
  EXPECT_FALSE((*w)->GetVersion("team-b", "last", GetVersionOptions()).ok());
}

TEST(LocalDataPlaneTest, StagedMemoryIsBounded) {
  SocketDir dir;
  const std::string path = dir.Path("b.sock");
  ServerProcess server({"--local_socket=" + path,
                        "--max_staged_bytes=" + std::to_string(8 << 20)});
  ASSERT_OK(server.Start());
  // One save larger than the bound is refused, naming the flag.
  auto local = ConnectTo("unix:" + path, "");
  ASSERT_TRUE(local.ok());
  const State big = MakeState(51);
  auto refused = (*local)->StagePush(big.Request("bound", 1));
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted)
      << refused.status();
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("--max_staged_bytes=8388608"));
  EXPECT_EQ(ReasonOf(refused.status()), v1::STAGED_MEMORY_LIMIT);
  // Push takes gRPC for it instead.
  auto pushed = (*local)->Push(big.Request("bound", 9), PushOptions());
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  EXPECT_EQ(pushed->state(), v1::COMMITTED);

  // Two of 5 MiB: the second waits while the first holds its memory.
  RawConnection first(path + ".data");
  ASSERT_TRUE(first.connected());
  auto held = StageBytes(first, "bound", RandomBytes(5 << 20, 1));
  ASSERT_EQ(CodeOf(held), absl::StatusCode::kOk) << MessageOf(held);
  std::atomic<bool> second_done{false};
  absl::Status second_status;
  std::thread second([&] {
    RawConnection conn(path + ".data");
    const std::string data = RandomBytes(5 << 20, 2);
    auto r = StageBytes(conn, "bound", data);
    second_status = r.ok() ? FromRpcStatus(r->status()) : r.status();
    if (second_status.ok()) {
      std::vector<UniqueFd> fds;
      auto staged = conn.Call(CommitRequest("bound", 2, 0, data.size()), &fds);
      auto committed = conn.Receive(&fds);
      if (!committed.ok())
        second_status = committed.status();
      else
        second_status = FromRpcStatus(committed->status());
    }
    second_done = true;
  });
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_FALSE(second_done.load()) << "the second stage did not wait";
  first.Close();  // drops the first stage: its memory goes back
  second.join();
  EXPECT_TRUE(second_status.ok()) << second_status;
  auto version = (*local)->GetVersion("bound", "last", GetVersionOptions());
  ASSERT_TRUE(version.ok());
  EXPECT_EQ(version->info.step(), 2);
  // After that commit the daemon keeps a spare of 5 MiB; a save of 6 MiB
  // needs its memory, and gets it (it does not wait for the spare).
  RawConnection third(path + ".data");
  const std::string six = RandomBytes(6 << 20, 3);
  auto staged = StageBytes(third, "bound", six);
  ASSERT_EQ(CodeOf(staged), absl::StatusCode::kOk) << MessageOf(staged);
  std::vector<UniqueFd> fds;
  auto sealed = third.Call(CommitRequest("bound", 3, 0, six.size()), &fds);
  ASSERT_EQ(CodeOf(sealed), absl::StatusCode::kOk) << MessageOf(sealed);
  auto committed = third.Receive(&fds);
  ASSERT_EQ(CodeOf(committed), absl::StatusCode::kOk) << MessageOf(committed);
  // And a save of the spare's size uses it (once prepared: a moment after
  // the commit), and its bytes come back intact.
  absl::SleepFor(absl::Milliseconds(300));
  RawConnection fourth(path + ".data");
  const std::string again = RandomBytes(6 << 20, 4);
  ASSERT_EQ(CodeOf(StageBytes(fourth, "bound", again)), absl::StatusCode::kOk);
  ASSERT_EQ(
      CodeOf(fourth.Call(CommitRequest("bound", 4, 0, again.size()), &fds)),
      absl::StatusCode::kOk);
  ASSERT_EQ(CodeOf(fourth.Receive(&fds)), absl::StatusCode::kOk);
  auto mapped = MapBytes(**local, "bound", "4");
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(*mapped, std::vector<std::string>{again});
  EXPECT_THAT(server.LogTail(100000),
              HasSubstr("bound step 4 (6 MiB staged into prepared memory)"));
}

TEST(LocalDataPlaneTest, ACommitGoesOnAfterTheClientIsGone) {
  SocketDir dir;
  const std::string path = dir.Path("g.sock");
  const std::string pause = dir.Path("pause");
  ServerProcess server({"--local_socket=" + path});
  // The daemon stores nothing until the client has gone.
  server.set_extra_env({"CKPTD_PAUSE_AT=staged.before_store=" + pause});
  ASSERT_OK(server.Start());
  const std::string data = RandomBytes(24 << 20, 77);
  {
    RawConnection conn(path + ".data");
    ASSERT_TRUE(conn.connected());
    auto staged = StageBytes(conn, "gone", data);
    ASSERT_EQ(CodeOf(staged), absl::StatusCode::kOk);
    std::vector<UniqueFd> fds;
    auto sealed = conn.Call(CommitRequest("gone", 1, 0, data.size()), &fds);
    ASSERT_EQ(CodeOf(sealed), absl::StatusCode::kOk) << MessageOf(sealed);
    ASSERT_TRUE(sealed->has_staged());
    EXPECT_EQ(sealed->staged().version(), 1u);
    for (int i = 0; i < 400 && !std::filesystem::exists(pause + ".reached");
         ++i) {
      absl::SleepFor(absl::Milliseconds(25));
    }
    ASSERT_TRUE(std::filesystem::exists(pause + ".reached"));
  }  // closed before anything is stored
  auto local = ConnectTo("unix:" + path, "");
  ASSERT_TRUE(local.ok());
  EXPECT_FALSE((*local)->GetVersion("gone", "last", GetVersionOptions()).ok());
  std::ofstream(pause + ".resume").put('\n');
  absl::StatusOr<VersionManifest> version;
  for (int i = 0; i < 300; ++i) {
    version = (*local)->GetVersion("gone", "1", GetVersionOptions());
    if (version.ok() && version->info.state() == v1::COMMITTED) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_TRUE(version.ok()) << version.status();
  ASSERT_EQ(version->info.state(), v1::COMMITTED);
  auto mapped = MapBytes(**local, "gone", "1");
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(*mapped, std::vector<std::string>{data});
}

TEST(LocalDataPlaneTest, SigtermCommitsAnAcknowledgedSaveBeforeExiting) {
  SocketDir dir;
  const std::string path = dir.Path("t.sock");
  const std::string pause = dir.Path("pause");
  ServerProcess server({"--local_socket=" + path});
  server.set_extra_env({"CKPTD_PAUSE_AT=staged.before_store=" + pause});
  ASSERT_OK(server.Start());
  const std::string data = RandomBytes(8 << 20, 88);
  RawConnection conn(path + ".data");
  ASSERT_TRUE(conn.connected());
  ASSERT_EQ(CodeOf(StageBytes(conn, "term", data)), absl::StatusCode::kOk);
  std::vector<UniqueFd> fds;
  auto sealed = conn.Call(CommitRequest("term", 1, 0, data.size()), &fds);
  ASSERT_EQ(CodeOf(sealed), absl::StatusCode::kOk) << MessageOf(sealed);
  for (int i = 0; i < 400 && !std::filesystem::exists(pause + ".reached");
       ++i) {
    absl::SleepFor(absl::Milliseconds(25));
  }
  ASSERT_TRUE(std::filesystem::exists(pause + ".reached"));
  // SIGTERM while the commit is held: ckptd waits for it, then exits 0.
  int exit_status = -1;
  std::thread stopper([&] { exit_status = server.Stop(); });
  absl::SleepFor(absl::Milliseconds(300));
  std::ofstream(pause + ".resume").put('\n');
  auto committed = conn.Receive(&fds);
  stopper.join();
  EXPECT_EQ(exit_status, 0) << server.LogTail();
  ASSERT_EQ(CodeOf(committed), absl::StatusCode::kOk) << MessageOf(committed);
  ASSERT_TRUE(committed->has_committed());
  EXPECT_EQ(committed->committed().state(), v1::COMMITTED);
  // After a restart the version is there, bit-identical.
  server.set_extra_env({});
  ASSERT_OK(server.Start());
  auto local = ConnectTo("unix:" + path, "");
  ASSERT_TRUE(local.ok());
  auto mapped = MapBytes(**local, "term", "1");
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(*mapped, std::vector<std::string>{data});
}

TEST(LocalDataPlaneTest, BadRequestsAreRefusedAndChangeNothing) {
  SocketDir dir;
  const std::string path = dir.Path("x.sock");
  ServerProcess server({"--local_socket=" + path});
  ASSERT_OK(server.Start());
  const std::string data_path = path + ".data";
  std::vector<UniqueFd> fds;
  {
    RawConnection conn(data_path);
    auto r = conn.Call(CommitRequest("bad", 1, 0, 10), &fds);
    EXPECT_EQ(CodeOf(r), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(MessageOf(r), HasSubstr("nothing is staged"));
    // The connection stays usable.
    r = conn.Call(v1::LocalRequest(), &fds);
    EXPECT_EQ(CodeOf(r), absl::StatusCode::kInvalidArgument);
  }
  {
    RawConnection conn(data_path);
    ASSERT_EQ(CodeOf(StageBytes(conn, "bad", std::string(4096, 'x'))),
              absl::StatusCode::kOk);
    // A second stage before the commit.
    auto r = conn.Call(StageRequest("bad", 10), &fds);
    EXPECT_EQ(CodeOf(r), absl::StatusCode::kFailedPrecondition);
    // A tensor that lies outside the staged bytes: refused before anything
    // is acknowledged or begun.
    r = conn.Call(CommitRequest("bad", 1, 4000, 200), &fds);
    EXPECT_EQ(CodeOf(r), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(MessageOf(r), HasSubstr("lies outside the 4096 staged bytes"));
  }
  {
    RawConnection conn(data_path);
    auto r = StageBytes(conn, "bad", std::string(100, 'y'));
    ASSERT_EQ(CodeOf(r), absl::StatusCode::kOk);
    v1::LocalRequest commit = CommitRequest("bad", 2, 0, 100);
    commit.mutable_commit()
        ->mutable_shard()
        ->mutable_manifest()
        ->mutable_entries(1)
        ->mutable_tensor()
        ->set_blob_digest(std::string(16, 'd'));
    r = conn.Call(commit, &fds);
    EXPECT_EQ(CodeOf(r), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(MessageOf(r), HasSubstr("names a blob digest"));
  }
  {
    // A manifest CommitShard refuses (no dtype): acknowledged as staged,
    // then the commit fails and the version it began is aborted at once.
    RawConnection conn(data_path);
    ASSERT_EQ(CodeOf(StageBytes(conn, "bad-dtype", std::string(64, 'z'))),
              absl::StatusCode::kOk);
    v1::LocalRequest commit = CommitRequest("bad-dtype", 1, 0, 64);
    commit.mutable_commit()
        ->mutable_shard()
        ->mutable_manifest()
        ->mutable_entries(1)
        ->mutable_tensor()
        ->set_dtype(v1::DTYPE_UNSPECIFIED);
    auto r = conn.Call(commit, &fds);
    ASSERT_EQ(CodeOf(r), absl::StatusCode::kOk) << MessageOf(r);
    r = conn.Receive(&fds);
    EXPECT_EQ(CodeOf(r), absl::StatusCode::kInvalidArgument) << MessageOf(r);
    auto client = ConnectTo(server.address(), "");
    ASSERT_TRUE(client.ok());
    ListVersionsRequest list;
    list.set_run("bad-dtype");
    list.set_include_aborted(true);
    auto versions = (*client)->ListVersions(list);
    ASSERT_TRUE(versions.ok()) << versions.status();
    ASSERT_EQ(versions->size(), 1u);
    EXPECT_EQ((*versions)[0].state(), v1::ABORTED);
  }
  {
    // Still mapped writable at the commit: the seal is refused.
    RawConnection conn(data_path);
    auto r = conn.Call(StageRequest("bad", 4096), &fds);
    ASSERT_EQ(CodeOf(r), absl::StatusCode::kOk);
    void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED,
                     fds[0].get(), 0);
    ASSERT_NE(p, MAP_FAILED);
    std::vector<UniqueFd> none;
    r = conn.Call(CommitRequest("bad", 3, 0, 4096), &none);
    EXPECT_EQ(CodeOf(r), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(MessageOf(r), HasSubstr("still mapped writable"));
    ::munmap(p, 4096);
  }
  {
    // Shrunk before the commit: refused, before the daemon maps it.
    RawConnection conn(data_path);
    auto r = conn.Call(StageRequest("bad", 1 << 20), &fds);
    ASSERT_EQ(CodeOf(r), absl::StatusCode::kOk);
    ASSERT_EQ(::ftruncate(fds[0].get(), 4096), 0);
    std::vector<UniqueFd> none;
    r = conn.Call(CommitRequest("bad", 4, 0, 1 << 20), &none);
    EXPECT_EQ(CodeOf(r), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(MessageOf(r), HasSubstr("was resized to 4096 bytes"));
  }
  {
    // A frame over the limit, and one that does not parse.
    RawConnection conn(data_path);
    const char header[4] = {'\xff', '\xff', '\xff', '\x7f'};
    ASSERT_EQ(::send(conn.fd(), header, 4, MSG_NOSIGNAL), 4);
    auto r = conn.Receive(&fds);
    EXPECT_EQ(CodeOf(r), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(MessageOf(r), HasSubstr("over the limit"));
  }
  {
    RawConnection conn(data_path);
    const char frame[7] = {3, 0, 0, 0, '\xff', '\xff', '\xff'};
    ASSERT_EQ(::send(conn.fd(), frame, 7, MSG_NOSIGNAL), 7);
    auto r = conn.Receive(&fds);
    EXPECT_EQ(CodeOf(r), absl::StatusCode::kInvalidArgument);
  }
  {
    // Descriptors sent to the daemon are refused.
    RawConnection conn(data_path);
    UniqueFd some(::memfd_create("x", MFD_CLOEXEC));
    const int raw = some.get();
    ASSERT_OK(SendLocalFrame(conn.fd(), StageRequest("bad", 1), {&raw, 1}));
    auto r = conn.Receive(&fds);
    EXPECT_EQ(CodeOf(r), absl::StatusCode::kInvalidArgument);
  }
  {
    // Bad run names and an oversized map request.
    RawConnection conn(data_path);
    auto r = conn.Call(StageRequest("../etc", 10), &fds);
    EXPECT_EQ(CodeOf(r), absl::StatusCode::kInvalidArgument) << MessageOf(r);
    v1::LocalRequest map;
    map.mutable_map()->set_run("bad");
    map.mutable_map()->set_version(1);
    for (int i = 0; i < 300; ++i)
      map.mutable_map()->add_digests(std::string(16, 'a'));
    r = conn.Call(map, &fds);
    EXPECT_EQ(CodeOf(r), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(MessageOf(r), HasSubstr("the limit is 250"));
  }
  // Nothing of that was committed; the server still serves.
  auto local = ConnectTo("unix:" + path, "");
  ASSERT_TRUE(local.ok());
  ListVersionsRequest list;
  list.set_run("bad");
  list.set_include_aborted(true);
  auto versions = (*local)->ListVersions(list);
  if (versions.ok()) {
    for (const VersionInfo& v : *versions) {
      EXPECT_NE(v.state(), v1::COMMITTED) << v.version();
    }
  } else {
    EXPECT_EQ(versions.status().code(), absl::StatusCode::kNotFound)
        << versions.status();
  }
  EXPECT_TRUE((*local)->ListRuns().ok());
}

TEST(LocalDataPlaneTest, ALocalSocketWithNoRoomForTheDataSocketIsRefused) {
  SocketDir dir;
  // 104 bytes: fits sun_path, its ".data" sibling does not.
  std::string path = dir.Path("");
  path += std::string(104 - path.size(), 's');
  ServerProcess server({"--local_socket=" + path});
  const absl::Status st = server.Start();
  ASSERT_FALSE(st.ok());
  EXPECT_THAT(server.LogTail(),
              HasSubstr("leaves no room for its data socket"));
}

}  // namespace
}  // namespace ckptd
