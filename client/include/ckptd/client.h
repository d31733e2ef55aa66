// The ckptd C++ client: push PyTorch-style state to a ckptd server and pull
// it back, plus the history/operator calls.
//
// State is a flattened tree (see Entry): containers, value leaves and tensor
// leaves in pre-order. Push sends tensor bytes straight from the caller's
// memory (no copies through protobuf objects where avoidable), packs small
// tensors into shared blobs, skips blobs the server already has, and uploads
// over several streams in parallel. Pull reads a manifest, then fills tensor
// bytes into caller-provided (or library-allocated) buffers.
//
// Errors are absl::Status values carrying the server's message.
//
// Thread safety: a Client is safe for concurrent use from many threads.
#ifndef CKPTD_CLIENT_INCLUDE_CKPTD_CLIENT_H_
#define CKPTD_CLIENT_INCLUDE_CKPTD_CLIENT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "ckptd/v1/checkpoint.pb.h"

namespace ckptd {

// Metadata types are the wire types.
using VersionInfo = ::ckptd::v1::VersionInfo;
using RunInfo = ::ckptd::v1::RunInfo;
using Policy = ::ckptd::v1::Policy;
using AliasInfo = ::ckptd::v1::AliasInfo;
using AliasEvent = ::ckptd::v1::AliasEvent;
using AuditEvent = ::ckptd::v1::AuditEvent;
using MetricPoint = ::ckptd::v1::MetricPoint;
using Environment = ::ckptd::v1::Environment;
using ManifestEntry = ::ckptd::v1::ManifestEntry;
using ShardManifest = ::ckptd::v1::ShardManifest;
using DType = ::ckptd::v1::DType;
using ListVersionsRequest = ::ckptd::v1::ListVersionsRequest;

// The server address every client defaults to: $CKPTD_SERVER, else
// 127.0.0.1:50051.
std::string DefaultServerAddress();

// A key path as one string, segments joined by '.': "model.layers.0.weight"
// (int keys in decimal); "" for the root.
std::string DottedKeyPath(
    const google::protobuf::RepeatedPtrField<v1::PathSegment>& path);

// Bytes per element of `dtype`; 0 for DTYPE_UNSPECIFIED or unknown values.
size_t DTypeSize(DType dtype);

enum class MemoryKind { kHost, kCuda };

// Where tensor bytes live (push) or go (pull).
struct Memory {
  MemoryKind kind = MemoryKind::kHost;
  int device = 0;  // CUDA device ordinal for kCuda
};

// One tensor leaf to push. `data` must stay valid and unchanged for the
// whole Push call. The bytes are contiguous, little-endian.
struct TensorData {
  const void* data = nullptr;
  uint64_t byte_length = 0;
  Memory memory;
};

// One leaf or container of the flattened state, in pre-order. `entry` holds
// the path and the kind; for a tensor entry, `entry.tensor()` must have dtype
// and shape set (the client fills byte_length, blob_digest, blob_offset) and
// `tensor` gives the bytes.
struct PushEntry {
  ManifestEntry entry;
  TensorData tensor;
};

struct PushRequest {
  std::string run;
  int64_t step = 0;
  int64_t epoch = 0;
  uint32_t rank = 0;
  uint32_t world_size = 1;
  std::map<std::string, double> metrics;
  Environment env;
  std::vector<PushEntry> entries;
};

struct PushOptions {
  // Parallel upload streams.
  int streams = 4;
  // Tensors smaller than this are packed together into shared blobs.
  uint64_t pack_threshold = 1 << 20;
  // Target size of one packed blob.
  uint64_t pack_size = 16 << 20;
  // Bytes per UploadChunk (1-4 MiB).
  uint64_t chunk_size = 4 << 20;
  // Attempts per RPC / upload before giving up (resume uses QueryUpload).
  // With the backoff (100 ms doubling to 2 s) the default rides out a
  // server that is back within about 10 s (a supervisor's restart).
  int max_attempts = 10;
  // Called with (bytes done, bytes total) as upload progresses; may be empty.
  // `total` counts the blobs the server is missing (after dedup; 0 when it
  // has everything); `done` may step back when a stream resumes. Called
  // from upload threads, one call at a time.
  std::function<void(uint64_t, uint64_t)> progress;
};

// A version's metadata and (optionally) manifests, as returned by GetVersion.
struct VersionManifest {
  VersionInfo info;
  std::vector<ShardManifest> shards;
};

// Where Pull writes one tensor: shard index and entry index into
// VersionManifest::shards[shard].entries(), and a buffer of at least the
// entry's byte_length.
struct TensorDestination {
  size_t shard = 0;
  size_t entry = 0;
  void* data = nullptr;
  Memory memory;
};

struct PullOptions {
  int streams = 4;
  // Attempts per ReadBlobs stream before giving up (a retry resumes where
  // each range stopped).
  int max_attempts = 10;
  // Called with (bytes done, bytes total); may be empty.
  std::function<void(uint64_t, uint64_t)> progress;
};

struct GetVersionOptions {
  bool include_manifest = true;
  // Empty: every shard.
  std::vector<uint32_t> ranks;
};

// A pulled tensor that owns its bytes.
struct OwnedTensor {
  size_t shard = 0;
  size_t entry = 0;
  std::string bytes;
};

// What RefWatch::Next found.
enum class WatchResult {
  kMoved,     // the ref names a new version (the first result: its current)
  kTimedOut,  // nothing within the timeout; the watch stays open
  kEnded,     // the stream is over (Cancel(), or the server ended it)
};

// An open WatchRef stream (Client::OpenWatch). A background thread reads the
// server's events into a queue; Next() takes them one at a time.
//
// Thread safety: Next() from one thread at a time; Cancel() from any thread,
// also while Next() waits (it then returns kEnded).
class RefWatch {
 public:
  // Cancels the stream and waits for the reader thread.
  virtual ~RefWatch() = default;
  // Waits at most `timeout` for the next move. On kMoved, `*version` is the
  // ref's new target. A stream error (NOT_FOUND run, a version number as
  // ref, UNAVAILABLE, ...) is returned once queued events are taken.
  virtual absl::StatusOr<WatchResult> Next(absl::Duration timeout,
                                           VersionInfo* version) = 0;
  // Ends the stream; idempotent.
  virtual void Cancel() = 0;
};

// A save staged in the daemon's memory over the co-located data plane
// (Client::StagePush). The daemon commits it whether or not this process
// lives on.
class StagedPush {
 public:
  virtual ~StagedPush() = default;
  // The pending version the shard goes into.
  virtual uint64_t version() const = 0;
  // Waits until the daemon has stored the bytes and committed the shard;
  // returns the version as CommitShard reports it. Call once.
  virtual absl::StatusOr<VersionInfo> Wait() = 0;
};

// Blob bytes mapped from the daemon's blob file: private (copy-on-write:
// writes stay in this process), verified against the digest when mapped.
// Unmapped when the last reference goes.
class MappedBlob {
 public:
  MappedBlob(char* data, uint64_t size) : data_(data), size_(size) {}
  ~MappedBlob();
  MappedBlob(const MappedBlob&) = delete;
  MappedBlob& operator=(const MappedBlob&) = delete;
  char* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  char* data_;
  uint64_t size_;
};

struct ClientOptions {
  std::string address;  // empty: DefaultServerAddress()
  std::string token;    // bearer token, sent as "authorization: Bearer ..."
  // TLS: any of these non-empty switches to TLS. root_certificates: PEM of
  // the CA(s) that signed the server's certificate (empty: the system's).
  // client_certificate and client_key: PEM of this client's certificate
  // chain and key, for servers that require mTLS (both or neither).
  std::string root_certificates;
  std::string client_certificate;
  std::string client_key;
  // Channels opened to the server (streams are spread over them).
  int channels = 4;
  // Deadline for unary calls, in seconds.
  double rpc_timeout_seconds = 60;
};

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      const ClientOptions& options);
  virtual ~Client() = default;

  // ---- Push ----
  // Begins (or joins) the pending version for (run, step), uploads missing
  // blobs, commits shard `rank`. Returns the version as the server reports
  // it after the commit (COMMITTED once every shard is in).
  virtual absl::StatusOr<VersionInfo> Push(const PushRequest& request,
                                           const PushOptions& options) = 0;
  virtual absl::Status AbortVersion(const std::string& run, uint64_t version,
                                    const std::string& reason) = 0;

  // ---- Co-located (address unix:PATH; README, Co-located clients) ----
  // Copies the request's tensors into memory the daemon owns and hands it
  // over; returns once the daemon holds that snapshot, so the caller may
  // change its tensors. StagedPush::Wait() then waits for the commit.
  // UNIMPLEMENTED when the address is not unix: or the daemon serves no
  // data plane (use Push); FAILED_PRECONDITION for CUDA tensors;
  // RESOURCE_EXHAUSTED for a state larger than the daemon's
  // --max_staged_bytes (it waits while others' saves fill it).
  virtual absl::StatusOr<std::unique_ptr<StagedPush>> StagePush(
      const PushRequest& request) = 0;
  // The blobs `digests` (16-byte wire form) of a committed version, mapped
  // from the daemon's files and verified. UNIMPLEMENTED when the address is
  // not unix:, the daemon serves no data plane or keeps no blob files (S3):
  // use ReadTensors. DATA_LOSS when a blob fails verification (ReadTensors
  // then tells the daemon, which quarantines it).
  virtual absl::StatusOr<std::vector<std::shared_ptr<MappedBlob>>> MapBlobs(
      const std::string& run, uint64_t version,
      const std::vector<std::string>& digests) = 0;

  // ---- Pull ----
  virtual absl::StatusOr<VersionManifest> GetVersion(
      const std::string& run, const std::string& ref,
      const GetVersionOptions& options) = 0;
  // Fills each destination with its tensor's bytes, verified against the
  // chunk checksums.
  virtual absl::Status ReadTensors(const VersionManifest& version,
                                   absl::Span<const TensorDestination> dests,
                                   const PullOptions& options) = 0;
  // Every tensor of `version` (or those selected by `select`, given shard and
  // entry index) into library-owned buffers.
  virtual absl::StatusOr<std::vector<OwnedTensor>> ReadAllTensors(
      const VersionManifest& version,
      const std::function<bool(size_t shard, size_t entry)>& select,
      const PullOptions& options) = 0;
  // Streams a .safetensors file of one shard; `sink` gets each piece in
  // order and `total` (the file size) with every call.
  virtual absl::Status ExportSafetensors(
      const std::string& run, const std::string& ref, uint32_t rank,
      const std::vector<std::string>& keys,
      const std::function<absl::Status(std::string_view piece, uint64_t total)>&
          sink) = 0;
  // Calls `on_move` each time `ref` moves, until it returns false, the
  // server ends the stream, or an error occurs.
  virtual absl::Status WatchRef(
      const std::string& run, const std::string& ref,
      const std::function<bool(const VersionInfo&)>& on_move) = 0;
  // Opens a WatchRef stream that the caller drains with RefWatch::Next
  // and may cancel from another thread (e.g. a Python iterator's close()).
  virtual absl::StatusOr<std::unique_ptr<RefWatch>> OpenWatch(
      const std::string& run, const std::string& ref) = 0;

  // ---- History ----
  virtual absl::StatusOr<std::vector<RunInfo>> ListRuns() = 0;
  // Every matching version, oldest first (pages are followed).
  virtual absl::StatusOr<std::vector<VersionInfo>> ListVersions(
      const ListVersionsRequest& request) = 0;
  virtual absl::StatusOr<std::vector<MetricPoint>> GetMetricHistory(
      const std::string& run, const std::string& metric) = 0;
  virtual absl::StatusOr<AliasInfo> SetAlias(const std::string& run,
                                             const std::string& name,
                                             const std::string& ref) = 0;
  virtual absl::Status DeleteAlias(const std::string& run,
                                   const std::string& name) = 0;
  virtual absl::StatusOr<std::vector<AliasEvent>> GetAliasHistory(
      const std::string& run, const std::string& alias) = 0;
  virtual absl::StatusOr<VersionInfo> Pin(const std::string& run,
                                          const std::string& ref) = 0;
  virtual absl::StatusOr<VersionInfo> Unpin(const std::string& run,
                                            const std::string& ref) = 0;
  // Deletes a version (admin). `force` also deletes one that `last` or
  // `best` names: `last` moves to the previous committed version, `best`
  // to the best remaining one under the run's policy.
  virtual absl::Status DeleteVersion(const std::string& run,
                                     const std::string& ref, bool force) = 0;
  absl::Status DeleteVersion(const std::string& run, const std::string& ref) {
    return DeleteVersion(run, ref, /*force=*/false);
  }
  virtual absl::StatusOr<Policy> SetPolicy(const std::string& run,
                                           const Policy& policy) = 0;
  virtual absl::StatusOr<Policy> GetPolicy(const std::string& run) = 0;
  virtual absl::StatusOr<::ckptd::v1::CollectGarbageResponse>
  CollectGarbage() = 0;
  virtual absl::StatusOr<::ckptd::v1::VerifyResponse> Verify(
      const std::string& run, const std::string& ref) = 0;
  // Alias moves and destructive or policy operations with the identity that
  // made them, oldest first; `run` empty: every run (admin only). `limit`
  // newest events (0: the server's default, 1000).
  virtual absl::StatusOr<std::vector<AuditEvent>> GetAuditLog(
      const std::string& run, uint32_t limit) = 0;

  // ---- Operations ----
  // An online backup of the whole server into `dir`, an absolute path on
  // the SERVER's filesystem that does not exist yet (its parent does) or is
  // an empty directory (admin only; README, Backup and restore). Waits up
  // to `timeout` (infinite: no deadline); a cancelled or timed-out call
  // stops the backup, and the server removes what it wrote.
  virtual absl::StatusOr<::ckptd::v1::BackupResponse> Backup(
      const std::string& dir,
      absl::Duration timeout = absl::InfiniteDuration()) = 0;
};

// True when this build has CUDA support and a CUDA device is present.
bool CudaAvailable();

// ---- Health (grpc.health.v1) ----

// grpc.health.v1.HealthCheckResponse.ServingStatus, same values.
enum class ServingStatus {
  kUnknown = 0,
  kServing = 1,
  kNotServing = 2,
  kServiceUnknown = 3,
};
// "SERVING", "NOT_SERVING", ... as the proto spells them.
std::string ServingStatusName(ServingStatus status);

// One grpc.health.v1.Health/Check call to `options.address` for `service`
// ("": the server as a whole), over one channel with the options' TLS
// settings, fail-fast, with `options.rpc_timeout_seconds` as its deadline.
// ckptd answers it without credentials (probes), on its main address and on
// --health_listen. Errors are the call's: UNAVAILABLE (nothing listens, or
// a TLS mismatch), DEADLINE_EXCEEDED (no answer in time), NOT_FOUND (a
// service the server does not report on).
absl::StatusOr<ServingStatus> CheckHealth(const ClientOptions& options,
                                          const std::string& service);

}  // namespace ckptd

#endif  // CKPTD_CLIENT_INCLUDE_CKPTD_CLIENT_H_
