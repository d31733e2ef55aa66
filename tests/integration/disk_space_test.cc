// A real `ckptd` whose data dir is a small tmpfs: the --min_free_disk
// watermark (pushes refused before anything is written, reads working, the
// health and the log saying why), a disk that fills up completely (SIGTERM
// still exits 0, nothing acknowledged is lost, the blobs of the failed saves
// are freed at once), and the validation of the resource flags.
//
// Mounting a tmpfs needs root (CAP_SYS_ADMIN); without it the tmpfs tests
// are skipped and say why. Free space is set exactly by a filler file.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "ckptd/client.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/client_unary_call.h"
#include "gtest/gtest.h"
#include "proto/base/digest.h"
#include "proto/base/error_reason.h"
#include "tests/integration/support/server_process.h"
#include "tests/support/random_bytes.h"

namespace ckptd {
namespace {

using ::ckptd::testing::RandomBytes;
using ::ckptd::testing::ServerProcess;
using ::testing::HasSubstr;

constexpr uint64_t kMiB = 1 << 20;
constexpr int kRpcSeconds = 60;

// A tmpfs mounted on an existing directory for the life of the object.
class Tmpfs {
 public:
  Tmpfs(const std::string& dir, uint64_t bytes) : dir_(dir) {
    const std::string options = absl::StrCat("size=", bytes);
    if (::mount("tmpfs", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV,
                options.c_str()) == 0) {
      mounted_ = true;
    } else {
      error_ =
          absl::StrCat("mount -t tmpfs -o ", options, " tmpfs ", dir, ": ",
                       std::strerror(errno), " (needs root or CAP_SYS_ADMIN)");
    }
  }
  ~Tmpfs() {
    if (mounted_) ::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  std::string dir_;
  bool mounted_ = false;
  std::string error_;
};

uint64_t FreeBytes(const std::string& dir) {
  struct statvfs st;
  if (::statvfs(dir.c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

// Writes a file of `bytes` zeros (as far as they fit) and returns how many
// were written.
uint64_t WriteFiller(const std::string& path, uint64_t bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0) return 0;
  const std::string block(kMiB, '\0');
  uint64_t done = 0;
  while (done < bytes) {
    const size_t n = static_cast<size_t>(std::min(bytes - done, kMiB));
    const ssize_t w = ::write(fd, block.data(), n);
    if (w <= 0) break;
    done += static_cast<uint64_t>(w);
  }
  ::close(fd);
  return done;
}

// Appends zeros to `path` until its filesystem has no byte free.
void FillCompletely(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0) return;
  for (size_t block : {size_t{1} << 20, size_t{4096}, size_t{1}}) {
    const std::string zeros(block, '\0');
    while (::write(fd, zeros.data(), zeros.size()) > 0) {
    }
  }
  ::close(fd);
}

// Waits (at most a minute, a guard against hangs, not a timing claim) until
// `done()` holds; returns whether it does.
template <typename Fn>
bool Eventually(Fn done) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

// The names of the regular files under `dir` (recursively).
std::set<std::string> FilesUnder(const std::string& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_regular_file()) out.insert(it->path().filename().string());
  }
  return out;
}

// A one-shard push of `tensors` tensors of `bytes` each, distinct per seed;
// the bytes live in *storage.
PushRequest MakePush(const std::string& run, int64_t step, int tensors,
                     uint64_t bytes, uint64_t seed,
                     std::vector<std::string>* storage) {
  PushRequest req;
  req.run = run;
  req.step = step;
  ManifestEntry root;
  root.mutable_container()->set_kind(v1::ContainerInfo::DICT);
  req.entries.push_back({root, {}});
  storage->clear();
  for (int i = 0; i < tensors; ++i) {
    storage->push_back(RandomBytes(bytes, seed * 1000 + i));
  }
  for (int i = 0; i < tensors; ++i) {
    ManifestEntry e;
    e.add_path()->set_key(absl::StrCat("t", i));
    e.mutable_tensor()->set_dtype(v1::UINT8);
    e.mutable_tensor()->add_shape(static_cast<int64_t>(bytes));
    TensorData data;
    data.data = (*storage)[i].data();
    data.byte_length = bytes;
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

// The hex digests of the blobs run@version references.
std::set<std::string> BlobsOf(Client& client, const std::string& run,
                              uint64_t version) {
  std::set<std::string> out;
  auto got = client.GetVersion(run, absl::StrCat(version), GetVersionOptions());
  EXPECT_TRUE(got.ok()) << got.status();
  if (!got.ok()) return out;
  for (const auto& shard : got->shards) {
    for (const auto& e : shard.entries()) {
      if (e.kind_case() != ManifestEntry::kTensor) continue;
      auto d = DigestFromBytes(e.tensor().blob_digest());
      if (d.ok()) out.insert(d->Hex());
    }
  }
  return out;
}

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

// grpc.health.v1.Health/Check of `service`: 1 SERVING, 2 NOT_SERVING, 0 if
// the call failed (the health protos are not installed as C++ headers, so
// the messages are encoded by hand).
int HealthOf(const std::string& address, const std::string& service) {
  auto channel =
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  std::string request;
  if (!service.empty()) {
    request.push_back(static_cast<char>((1 << 3) | 2));  // field 1, bytes
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer req(&slice, 1), resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::seconds(kRpcSeconds));
  grpc::Status st = grpc::internal::BlockingUnaryCall(
      channel.get(),
      grpc::internal::RpcMethod("/grpc.health.v1.Health/Check",
                                grpc::internal::RpcMethod::NORMAL_RPC),
      &ctx, req, &resp);
  if (!st.ok()) return 0;
  std::vector<grpc::Slice> slices;
  if (!resp.Dump(&slices).ok()) return 0;
  std::string bytes;
  for (const auto& s : slices) {
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  // HealthCheckResponse { ServingStatus status = 1; }: 0x08 <varint>.
  if (bytes.size() == 2 && bytes[0] == 0x08) return bytes[1];
  return bytes.empty() ? 0 : -1;
}

constexpr int kServing = 1;
constexpr int kNotServing = 2;
constexpr char kPushHealth[] = "ckptd.v1.Checkpoint.push";

// ---------------------------------------------------------------------------
// --min_free_disk

TEST(DiskWatermarkTest, PushesThatWouldCrossTheFloorAreRefusedBeforeWriting) {
  ServerProcess server({"--min_free_disk=64M"});
  Tmpfs tmpfs(server.data_dir(), 320 * kMiB);
  if (!tmpfs.mounted()) GTEST_SKIP() << tmpfs.error();
  ASSERT_TRUE(server.Start().ok());
  auto client = Connect(server);
  ASSERT_NE(client, nullptr);
  const std::string blobs_dir = server.data_dir() + "/blobs";
  const std::string tmp_dir = server.data_dir() + "/tmp";
  // The filler lives on the tmpfs, in the data dir (ckptd ignores it).
  const std::string filler_path = server.data_dir() + "/filler";

  std::vector<std::string> kept;
  auto first =
      client->Push(MakePush("wm", 1, 2, 4 * kMiB, 1, &kept), PushOptions());
  ASSERT_TRUE(first.ok()) << first.status();
  const std::set<std::string> blobs_before = FilesUnder(blobs_dir);
  ASSERT_EQ(blobs_before.size(), 2u);
  EXPECT_EQ(HealthOf(server.address(), kPushHealth), kServing);

  // 80 MiB free: a 24 MiB push would leave 56 MiB, under the 64 MiB floor.
  const uint64_t free_now = FreeBytes(server.data_dir());
  ASSERT_GT(free_now, 100 * kMiB);
  ASSERT_EQ(WriteFiller(filler_path, free_now - 80 * kMiB),
            free_now - 80 * kMiB);
  std::vector<std::string> big_bytes;
  auto big = client->Push(MakePush("wm", 2, 3, 8 * kMiB, 2, &big_bytes),
                          PushOptions());
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted)
      << big.status();
  EXPECT_EQ(ReasonOf(big.status()), v1::DISK_FULL) << big.status();
  EXPECT_THAT(big.status().message(), HasSubstr("--min_free_disk=64M"));
  EXPECT_THAT(big.status().message(), HasSubstr("reads keep working"));
  // Nothing of it stays: the blob that would cross the floor was refused
  // before its first byte, and the client aborted the version, which frees
  // the blobs its other streams wrote (once the server has seen those
  // streams end: it may still be reading what they sent).
  EXPECT_TRUE(Eventually([&] {
    return FilesUnder(blobs_dir) == blobs_before && FilesUnder(tmp_dir).empty();
  }));
  EXPECT_EQ(FilesUnder(blobs_dir), blobs_before);
  EXPECT_TRUE(FilesUnder(tmp_dir).empty());
  ListVersionsRequest list;
  list.set_run("wm");
  list.set_include_aborted(true);
  auto versions = client->ListVersions(list);
  ASSERT_TRUE(versions.ok()) << versions.status();
  ASSERT_EQ(versions->size(), 2u);
  EXPECT_EQ((*versions)[1].state(), v1::ABORTED);
  EXPECT_THAT((*versions)[1].abort_reason(), HasSubstr("--min_free_disk"));

  // A push that fits above the floor goes through; reads work throughout.
  std::vector<std::string> small_bytes;
  auto small = client->Push(MakePush("wm", 3, 1, 4 * kMiB, 3, &small_bytes),
                            PushOptions());
  ASSERT_TRUE(small.ok()) << small.status();
  ExpectPullEquals(*client, "wm", first->version(), kept);

  // Under the floor: BeginVersion is refused too, the push health says
  // NOT_SERVING while the server as a whole serves, and the log says why.
  const uint64_t free_before_fill = FreeBytes(server.data_dir());
  ASSERT_GT(free_before_fill, 60 * kMiB);
  WriteFiller(filler_path, free_before_fill - 60 * kMiB);
  std::vector<std::string> refused_bytes;
  auto refused = client->Push(MakePush("wm", 4, 1, 1024, 4, &refused_bytes),
                              PushOptions());
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(ReasonOf(refused.status()), v1::DISK_FULL) << refused.status();
  EXPECT_THAT(refused.status().message(),
              HasSubstr("BeginVersion of wm step 4 is refused: the free "
                        "space is under --min_free_disk=64M"));
  EXPECT_EQ(HealthOf(server.address(), kPushHealth), kNotServing);
  EXPECT_EQ(HealthOf(server.address(), ""), kServing);
  ExpectPullEquals(*client, "wm", small->version(), small_bytes);
  EXPECT_THAT(server.LogTail(20000), HasSubstr("under --min_free_disk=64M"));

  // Space freed: pushes are accepted again, without a restart.
  std::filesystem::remove(filler_path);
  std::vector<std::string> again_bytes;
  auto again = client->Push(MakePush("wm", 5, 1, 4 * kMiB, 5, &again_bytes),
                            PushOptions());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(HealthOf(server.address(), kPushHealth), kServing);
  EXPECT_THAT(server.LogTail(20000), HasSubstr("pushes are accepted"));
  client.reset();
  EXPECT_EQ(server.Stop(), 0);
}

// ---------------------------------------------------------------------------
// A full disk

TEST(DiskFullTest, SigtermWithNoFreeSpaceExitsZeroAndLosesNothing) {
  // No floor: the disk fills for real (ENOSPC from blob files and RocksDB).
  ServerProcess server({"--min_free_disk=0"});
  Tmpfs tmpfs(server.data_dir(), 256 * kMiB);
  if (!tmpfs.mounted()) GTEST_SKIP() << tmpfs.error();
  ASSERT_TRUE(server.Start().ok());
  auto client = Connect(server);
  ASSERT_NE(client, nullptr);
  const std::string blobs_dir = server.data_dir() + "/blobs";
  const std::string tmp_dir = server.data_dir() + "/tmp";
  const std::string filler_path = server.data_dir() + "/filler";

  // Pushes of 24 MiB until the disk refuses one.
  std::map<uint64_t, std::vector<std::string>> acknowledged;
  absl::Status failure;
  for (int step = 1; step <= 40 && failure.ok(); ++step) {
    std::vector<std::string> bytes;
    auto info = client->Push(MakePush("full", step, 3, 8 * kMiB,
                                      static_cast<uint64_t>(step), &bytes),
                             PushOptions());
    if (info.ok()) {
      ASSERT_EQ(info->state(), v1::COMMITTED);
      acknowledged[info->version()] = std::move(bytes);
    } else {
      failure = info.status();
    }
  }
  ASSERT_FALSE(failure.ok()) << "256 MiB never filled up";
  ASSERT_FALSE(acknowledged.empty());
  EXPECT_EQ(failure.code(), absl::StatusCode::kResourceExhausted) << failure;
  EXPECT_EQ(ReasonOf(failure), v1::DISK_FULL) << failure;
  EXPECT_THAT(failure.message(), HasSubstr("No space left on device"));
  EXPECT_THAT(failure.message(), HasSubstr("to free its blobs"));

  // The failed save left no blob behind, without a restart: every stored
  // blob belongs to an acknowledged version and no partial upload remains
  // (once the server has seen the save's streams end).
  std::set<std::string> wanted;
  for (const auto& [version, bytes] : acknowledged) {
    for (const std::string& d : BlobsOf(*client, "full", version)) {
      wanted.insert(d);
    }
  }
  auto only_acknowledged = [&] {
    return FilesUnder(blobs_dir) == wanted && FilesUnder(tmp_dir).empty();
  };
  EXPECT_TRUE(Eventually(only_acknowledged));
  EXPECT_EQ(FilesUnder(blobs_dir), wanted);
  EXPECT_TRUE(FilesUnder(tmp_dir).empty())
      << "partial uploads of the failed save remain";

  // Then nothing at all is free, as when something else fills the disk:
  // pushes fail, metadata writes too (RocksDB sees ENOSPC), reads work.
  FillCompletely(filler_path);
  EXPECT_LT(FreeBytes(server.data_dir()), 4096u);
  std::vector<std::string> more;
  auto refused = client->Push(MakePush("full", 100, 1, 1 * kMiB, 100, &more),
                              PushOptions());
  EXPECT_FALSE(refused.ok()) << server.LogTail();
  EXPECT_EQ(ReasonOf(refused.status()), v1::DISK_FULL) << refused.status();
  EXPECT_TRUE(Eventually(only_acknowledged));
  EXPECT_EQ(FilesUnder(blobs_dir), wanted);
  // Reads keep working on the full disk.
  ExpectPullEquals(*client, "full", acknowledged.begin()->first,
                   acknowledged.begin()->second);

  client.reset();
  EXPECT_EQ(server.Stop(), 0) << "SIGTERM with a full disk; end of the log:\n"
                              << server.LogTail();
  EXPECT_THAT(server.LogTail(), HasSubstr("shutdown complete"));
  // The flush at close that made RocksDB abort on a full disk was skipped.
  EXPECT_THAT(server.LogTail(), HasSubstr("no flush on close"));

  // After freeing space, a restart serves every acknowledged version,
  // bit-identical, and takes new pushes.
  std::filesystem::remove(filler_path);
  ASSERT_TRUE(server.Start().ok()) << server.LogTail();
  client = Connect(server);
  ASSERT_NE(client, nullptr);
  for (const auto& [version, bytes] : acknowledged) {
    ExpectPullEquals(*client, "full", version, bytes);
  }
  auto last = client->GetVersion("full", "last", GetVersionOptions());
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->info.version(), acknowledged.rbegin()->first);
  std::vector<std::string> after_bytes;
  auto after = client->Push(
      MakePush("full", 200, 1, 1 * kMiB, 200, &after_bytes), PushOptions());
  EXPECT_TRUE(after.ok()) << after.status();
  client.reset();
  EXPECT_EQ(server.Stop(), 0);
}

// ---------------------------------------------------------------------------
// Flag validation

struct Exit {
  int code = -1;
  std::string output;
};

// Runs ckptd with `args`; it is expected to refuse them and exit.
Exit RunCkptd(const std::vector<std::string>& args) {
  const std::string dir = ServerProcess::MakeTempDir("ckptd-flags");
  const std::string out_path = dir + "/output";
  std::vector<std::string> argv_storage = {ServerProcess::BinaryPath(),
                                           "--listen=127.0.0.1:0",
                                           "--data_dir=" + dir + "/data"};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
    std::vector<char*> argv;
    for (auto& a : argv_storage) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  Exit out;
  int status = 0;
  // A ckptd that accepted the flags serves: stop it (the test then fails).
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(kRpcSeconds);
  while (::waitpid(pid, &status, WNOHANG) != pid) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  out.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(out_path);
  std::stringstream ss;
  ss << in.rdbuf();
  out.output = ss.str();
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return out;
}

TEST(ResourceFlagsTest, BadValuesStopCkptdNamingTheValueAndTheFix) {
  struct Case {
    std::string flag;
    std::vector<std::string> want;
  };
  const std::vector<Case> cases = {
      {"--min_free_disk=abc", {"--min_free_disk='abc'", "512M, 10G", "5%"}},
      {"--min_free_disk=-1", {"--min_free_disk='-1'", "negative"}},
      {"--min_free_disk=150%", {"--min_free_disk='150%'", "100% or more"}},
      {"--min_free_disk=10GB", {"unknown unit 'gb'"}},
      {"--max_inflight_bytes=0", {"--max_inflight_bytes=0", "17039360"}},
      {"--max_inflight_bytes=17039359", {"--max_inflight_bytes=17039359"}},
      {"--max_inflight_bytes=-5", {"max_inflight_bytes"}},
  };
  for (const Case& c : cases) {
    Exit r = RunCkptd({c.flag});
    EXPECT_NE(r.code, 0) << c.flag << " was accepted:\n" << r.output;
    for (const std::string& w : c.want) {
      EXPECT_THAT(r.output, HasSubstr(w)) << c.flag;
    }
  }
}

}  // namespace
}  // namespace ckptd
