// ckptd: the checkpoint server daemon. Flags -> Options -> Start -> Wait.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "grpc/support/log.h"
#include "server/common/flag_file.h"
#include "server/common/structured_log.h"
#include "server/service/health_listener.h"
#include "server/service/inflight_budget.h"
#include "server/service/server.h"
#include "server/storage/s3_blob_store.h"
#include "server/storage/s3_client.h"
#include "spdlog/spdlog.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "Address to serve gRPC on, HOST:PORT. Port 0 picks a free port "
          "(printed in the log, and written to --port_file).");
ABSL_FLAG(std::string, port_file, "",
          "Once the server listens, write the port it bound (decimal and a "
          "newline) to this file, atomically (a temp file in the same "
          "directory, fsynced, renamed over it): with --listen HOST:0, a "
          "supervisor or test learns the port without a race. Empty: no "
          "file.");
ABSL_FLAG(std::string, data_dir, "./ckptd-data",
          "Directory for the RocksDB metadata (meta/) and blob files "
          "(blobs/). Created if missing; one ckptd per directory.");
ABSL_FLAG(std::string, local_socket, "<data_dir>/ckptd.sock",
          "Also serve the same gRPC services on this Unix socket (mode "
          "0660: the owner and group of the file may connect), for clients "
          "on this host: they connect to unix:PATH. The same credentials "
          "and roles apply as on --listen. A stale socket left by a killed "
          "ckptd is replaced; a path that is not a socket is refused, never "
          "deleted. At most 107 bytes (sun_path): an explicit longer path is "
          "refused, the default one (under a deep --data_dir) is skipped "
          "with a warning. Empty (--local_socket=): no socket. Beside it, "
          "PATH.data serves the zero-copy data plane of co-located clients "
          "(pulls map blob files, saves hand over a memfd; README, "
          "Co-located clients), with the same tokens and roles.");
ABSL_FLAG(std::string, blob_store, "file",
          "Where blob bytes live: `file` (files under --data_dir) or "
          "s3://BUCKET[/PREFIX] (an S3 bucket: Ceph radosgw, MinIO, AWS; "
          "needs --s3_endpoint, and keys from AWS_ACCESS_KEY_ID / "
          "AWS_SECRET_ACCESS_KEY or --s3_credentials_file). RocksDB stays "
          "in --data_dir either way.");
ABSL_FLAG(std::string, s3_endpoint, "",
          "The S3 endpoint for --blob_store s3://..., as http://HOST[:PORT] "
          "or https://HOST[:PORT] (path-style requests).");
ABSL_FLAG(std::string, s3_region, "us-east-1",
          "The region requests are signed for (SigV4).");
ABSL_FLAG(std::string, s3_credentials_file, "",
          "An AWS-style credentials file ([default] aws_access_key_id, "
          "aws_secret_access_key), mode 0600; instead of the AWS_* "
          "environment variables.");
ABSL_FLAG(uint64_t, s3_part_size, 8 << 20,
          "Blobs larger than this are uploaded in parts of this many bytes, "
          "each sent while the next arrives (S3 wants at least 5 MiB).");
ABSL_FLAG(int, s3_upload_threads, 4,
          "Threads that send multipart parts, for all uploads together.");
ABSL_FLAG(std::string, cache_dir, "",
          "With an S3 store (--blob_store s3://... or --replica_of): keep "
          "whole copies of the blobs read in this local directory, verified "
          "as they are fetched and on every read, so that pulls of the same "
          "version read a local disk; needs --cache_bytes. The least "
          "recently read go first.");
ABSL_FLAG(uint64_t, cache_bytes, 0,
          "Bytes of blobs --cache_dir may hold, e.g. 10737418240 (10 GiB). "
          "A blob larger than this is always read from the bucket.");
constexpr absl::Duration kDefaultFollowInterval = absl::Seconds(2);
ABSL_FLAG(std::string, replica_of, "",
          "Serve as a read replica of s3://BUCKET[/PREFIX], the prefix "
          "another ckptd writes (--blob_store): GetVersion, ReadBlobs, "
          "export, WatchRef and the history calls are served from the "
          "bucket; changes are refused with FAILED_PRECONDITION naming the "
          "writer. The data dir keeps the replica's own copy of the index. "
          "Uses the --s3_* flags. Several replicas may follow one prefix.");
ABSL_FLAG(absl::Duration, follow_interval, kDefaultFollowInterval,
          "How often a replica (--replica_of) looks for new records in the "
          "bucket, e.g. 2s, 500ms; in [10ms, 1h]. A version the writer "
          "commits is served by the replica within about this long.");
ABSL_FLAG(bool, rebuild_index, false,
          "Rebuild this node's index (RocksDB in --data_dir) from the "
          "record in the S3 bucket of --blob_store, then serve: every "
          "version, alias and policy is back. The data dir must hold no "
          "index. Done without the flag too when the data dir is empty and "
          "the bucket's record is not.");
ABSL_FLAG(std::string, log_level, "info",
          "Log verbosity: trace, debug, info, warn, error or off.");
ABSL_FLAG(absl::Duration, pending_timeout, absl::Hours(6),
          "A pending version on which no rank made progress (began, "
          "uploaded or committed a shard) for this long (e.g. 90s, 30m, 6h) "
          "is aborted and the blobs only it held are deleted; interrupted "
          "uploads older than this are dropped.");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(10),
          "On SIGTERM/SIGINT, how long in-flight calls may run before they "
          "are cancelled.");
ABSL_FLAG(int, io_threads, 16, "Threads for blocking disk and RocksDB work.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM file of the server's TLS certificate chain; with --tls_key, "
          "ckptd serves TLS only.");
ABSL_FLAG(std::string, tls_key, "", "PEM file of the TLS certificate's key.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM file of the CA that signs client certificates: clients must "
          "present one (mTLS), and its subject CN may be a `cert:CN` "
          "credential in --auth_file.");
ABSL_FLAG(std::string, auth_file, "",
          "Credential table, one line per credential: IDENTITY ROLE "
          "RUN_PATTERNS CREDENTIAL (README, Security). ROLE is reader, "
          "writer or admin; RUN_PATTERNS a comma list of globs; CREDENTIAL "
          "sha256:HEX (of a token from `ckpt token new`) or cert:CN. "
          "Re-read on SIGHUP. Empty: no authentication, loopback only.");
// Resources (README: Operations, Memory and disk).
ABSL_FLAG(uint64_t, max_inflight_bytes, 256 << 20,
          "Blob bytes held in memory at once, server-wide (uploads being "
          "received and written, reads being sent): each stream moving a "
          "chunk holds 8.1 MiB of it (a 4 MiB chunk held twice), and "
          "streams beyond it wait their turn. Default 256 MiB; at least "
          "17039360 (two streams).");
ABSL_FLAG(uint64_t, max_staged_bytes, uint64_t{4} << 30,
          "Bytes of co-located saves (save_async over unix:PATH) staged in "
          "the daemon's memory at once, waiting to be stored: a further "
          "save waits until one is committed; a single save larger than "
          "this is refused. Default 4 GiB.");
ABSL_FLAG(std::string, min_free_disk, "256M",
          "Free space of --data_dir under which pushes (BeginVersion, blob "
          "uploads) are refused with RESOURCE_EXHAUSTED before anything is "
          "written; reads keep working. Bytes, binary units (512M, 10G) or "
          "a percentage of the disk (5%). Default 256M: room for RocksDB to "
          "commit, flush and recover. 0: no floor.");
ABSL_FLAG(bool, insecure_no_auth, false,
          "Allow a non-loopback --listen without --auth_file: every caller "
          "can read, overwrite and delete everything. For isolated networks "
          "only.");
// The web view (server/service/web_view.h).
ABSL_FLAG(std::string, http_listen, "",
          "Serve the read-only web view (runs, versions, metric charts, "
          "alias and audit history) over HTTP on HOST:PORT, HOST an IPv4 "
          "address or localhost; port 0 picks a free port (written to "
          "--http_port_file). Loopback only; with --auth_file the page asks "
          "for a bearer token. Empty: no web view.");
ABSL_FLAG(std::string, http_port_file, "",
          "Once the web view listens, write its port to this file, as "
          "--port_file does for --listen. Needs --http_listen. Empty: no "
          "file.");
// Integrity (README, Operations > Integrity).
ABSL_FLAG(absl::Duration, scrub_interval, absl::Hours(24),
          "Background scrub: every this long (counted from the end of the "
          "previous pass, across restarts) re-read every stored blob and "
          "check it against its digest; a corrupt blob is quarantined, so "
          "the next push of its bytes uploads them again and heals every "
          "version that uses it. 0 turns the scrub off.");
ABSL_FLAG(int64_t, scrub_bytes_per_sec, int64_t{64} << 20,
          "Read rate of a scrub pass, at most, in bytes per second (default "
          "67108864 = 64 MiB/s). Must be positive; --scrub_interval=0 turns "
          "the scrub off.");

ABSL_FLAG(uint64_t, run_quota_bytes, 0,
          "Stored bytes one run may hold (each blob its versions reference "
          "counted once, plus its pending uploads); a new version or an "
          "upload that would cross it gets RESOURCE_EXHAUSTED before "
          "anything is written. 0: no quota.");
ABSL_FLAG(uint64_t, identity_quota_bytes, 0,
          "Stored bytes of all the runs one identity (--auth_file) may "
          "write, together; enforced like --run_quota_bytes. Needs "
          "--auth_file. 0: no quota.");

// Limits on what one request may carry (server/core/limits.h). A request
// over one gets INVALID_ARGUMENT naming the limit and its flag.
ABSL_FLAG(int, max_message_bytes, 256 << 20,
          "Largest gRPC message received or sent, in bytes (a manifest of "
          "100k tensors is ~10 MiB).");
ABSL_FLAG(uint64_t, max_manifest_entries, 2'000'000,
          "Entries (containers, values, tensors) in one shard manifest.");
ABSL_FLAG(uint64_t, max_manifest_bytes, 192 << 20,
          "Serialized bytes of one shard manifest.");
ABSL_FLAG(int, max_key_depth, 64,
          "Segments in one key path (model.layers.0.weight has 4).");
ABSL_FLAG(uint64_t, max_key_segment_bytes, 1024,
          "Bytes in one string segment of a key path.");
ABSL_FLAG(int, max_value_depth, 32,
          "Nesting of lists in a value leaf (e.g. optimizer param_groups).");
ABSL_FLAG(uint64_t, max_list_length, 1'000'000, "Items in one list value.");
ABSL_FLAG(uint64_t, max_metrics, 1024, "Metrics in one shard commit.");
ABSL_FLAG(uint64_t, max_metric_name_bytes, 256,
          "Bytes in a metric name (clients refuse more than 256).");
ABSL_FLAG(uint64_t, max_labels, 256, "Labels on one version.");
ABSL_FLAG(uint64_t, max_label_key_bytes, 256, "Bytes in a label key.");
ABSL_FLAG(uint64_t, max_label_value_bytes, 4096,
          "Bytes in a label value, and in each environment field (torch, "
          "CUDA and Python versions, hostname).");
ABSL_FLAG(uint64_t, max_find_missing_digests, 100'000,
          "Digests in one FindMissingBlobs request (clients send at most "
          "100,000 and halve a batch the server refuses).");
// Deployment: a plaintext health port for probes (--flagfile: see
// server/common/flag_file.h and PrintHelp).
ABSL_FLAG(std::string, health_listen, "",
          "Also serve grpc.health.v1, and nothing else, in plaintext and "
          "without credentials on this HOST:PORT (e.g. 0.0.0.0:50052): for "
          "probes that cannot do TLS or send a token (Kubernetes gRPC probes, "
          "`ckpt health` in a container HEALTHCHECK). It reports what the "
          "main port's health reports. Empty: not served.");

namespace {

// --local_socket's default: the socket in --data_dir.
constexpr absl::string_view kDefaultLocalSocket = "<data_dir>/ckptd.sock";

// What ExpandFlagfiles needs to check a flag file's lines.
ckptd::FlagKind LookupFlag(absl::string_view name) {
  const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  if (flag == nullptr) return ckptd::FlagKind::kUnknown;
  return flag->IsOfType<bool>() ? ckptd::FlagKind::kBool
                                : ckptd::FlagKind::kValue;
}

}  // namespace

// Metrics and logs (README: Operations, Metrics and logs).
ABSL_FLAG(std::string, metrics_listen, "",
          "Serve Prometheus metrics over HTTP at http://HOST:PORT/metrics, "
          "HOST an IPv4 address or localhost. Port 0 picks a free port "
          "(written to --metrics_port_file). Loopback only unless "
          "--auth_file or --insecure_no_auth is given (the endpoint itself "
          "has no authentication and no TLS). Empty (the default): no "
          "metrics endpoint.");
ABSL_FLAG(std::string, metrics_port_file, "",
          "Once the metrics endpoint listens, write its port to this file, "
          "as --port_file does for gRPC (written before --port_file). Needs "
          "--metrics_listen. Empty: no file.");
ABSL_FLAG(std::string, log_format, "text",
          "Log line format on stderr: text (the default) or json (one JSON "
          "object per line: time, level, msg and, for the line each RPC "
          "writes, its fields).");

namespace {

// With --log_format json, gRPC's own log lines go through spdlog too, so
// that every line on stderr is JSON.
void GrpcLogToSpdlog(gpr_log_func_args* args) {
  const spdlog::level::level_enum level =
      args->severity == GPR_LOG_SEVERITY_ERROR  ? spdlog::level::err
      : args->severity == GPR_LOG_SEVERITY_INFO ? spdlog::level::info
                                                : spdlog::level::debug;
  spdlog::log(level, "grpc {}:{}: {}", args->file, args->line, args->message);
}

// Accepts --data-dir as well as --data_dir (Abseil flag names use '_').
std::vector<char*> NormalizeFlagNames(int argc, char** argv,
                                      std::vector<std::string>* storage) {
  storage->reserve(argc);
  std::vector<char*> out;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (i > 0 && arg.rfind("--", 0) == 0) {
      size_t end = arg.find('=');
      if (end == std::string::npos) end = arg.size();
      for (size_t j = 2; j < end; ++j) {
        if (arg[j] == '-') arg[j] = '_';
      }
    }
    storage->push_back(std::move(arg));
  }
  for (auto& s : *storage) out.push_back(s.data());
  return out;
}

bool WantsHelp(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h" || arg == "-help") return true;
  }
  return false;
}

// Copies the resource flags into `options`; "" or what is wrong with one.
std::string ReadResourceFlags(ckptd::service::ServerOptions* options) {
  options->max_inflight_bytes = absl::GetFlag(FLAGS_max_inflight_bytes);
  options->max_staged_bytes = absl::GetFlag(FLAGS_max_staged_bytes);
  if (options->max_staged_bytes == 0) {
    return "--max_staged_bytes=0: must be positive (bytes of co-located "
           "saves staged at once)";
  }
  if (options->max_inflight_bytes < ckptd::service::kMinInflightBytes) {
    return absl::StrCat("--max_inflight_bytes=", options->max_inflight_bytes,
                        " is below the minimum ",
                        ckptd::service::kMinInflightBytes,
                        " (two streams, each holding a 4 MiB chunk twice)");
  }
  auto floor =
      ckptd::service::ParseMinFreeDisk(absl::GetFlag(FLAGS_min_free_disk));
  if (!floor.ok()) return std::string(floor.status().message());
  options->min_free_disk = *floor;
  return "";
}

// The S3 options of `location` (given as --`flag`) from the --s3_* flags.
std::string ReadS3Flags(const std::string& flag, const std::string& location,
                        ckptd::storage::S3BlobStoreOptions& o) {
  if (absl::Status st =
          ckptd::storage::ParseS3Location(location, o.s3.bucket, o.prefix);
      !st.ok()) {
    return absl::StrCat("--", flag, ": ", st.message());
  }
  o.s3.endpoint = absl::GetFlag(FLAGS_s3_endpoint);
  if (o.s3.endpoint.empty()) {
    return absl::StrCat("--", flag, " ", location,
                        " needs --s3_endpoint (e.g. "
                        "--s3_endpoint=http://127.0.0.1:7480)");
  }
  o.s3.region = absl::GetFlag(FLAGS_s3_region);
  if (const std::string file = absl::GetFlag(FLAGS_s3_credentials_file);
      !file.empty()) {
    if (absl::Status st = ckptd::storage::ReadS3CredentialsFile(file, o.s3);
        !st.ok()) {
      return std::string(st.message());
    }
  } else {
    const char* id = std::getenv("AWS_ACCESS_KEY_ID");
    const char* secret = std::getenv("AWS_SECRET_ACCESS_KEY");
    o.s3.access_key_id = id != nullptr ? id : "";
    o.s3.secret_access_key = secret != nullptr ? secret : "";
  }
  if (absl::Status st = ckptd::storage::ValidateS3Options(o.s3); !st.ok()) {
    return std::string(st.message());
  }
  o.part_size = absl::GetFlag(FLAGS_s3_part_size);
  if (o.part_size < ckptd::storage::kMinS3PartSize ||
      o.part_size > ckptd::storage::kMaxS3PartSize) {
    return absl::StrCat("--s3_part_size=", o.part_size, " is outside [",
                        ckptd::storage::kMinS3PartSize, ", ",
                        ckptd::storage::kMaxS3PartSize,
                        "]; S3 wants at least 5 MiB (5242880)");
  }
  o.upload_threads = absl::GetFlag(FLAGS_s3_upload_threads);
  if (o.upload_threads < 1 || o.upload_threads > 256) {
    return absl::StrCat("--s3_upload_threads=", o.upload_threads,
                        " is outside [1, 256]");
  }
  return "";
}

// --cache_dir and --cache_bytes (the store checks the values).
std::string ReadCacheFlags(ckptd::service::ServerOptions* options) {
  const std::string dir = absl::GetFlag(FLAGS_cache_dir);
  const uint64_t bytes = absl::GetFlag(FLAGS_cache_bytes);
  if (dir.empty()) {
    return bytes == 0 ? ""
                      : "--cache_bytes is the size of --cache_dir: give "
                        "--cache_dir DIR too, or drop it";
  }
  options->repository.cache =
      ckptd::storage::BlobCacheOptions{.dir = dir, .max_bytes = bytes};
  return "";
}

// --blob_store, --replica_of, --follow_interval, the cache and the --s3_*
// flags.
std::string ReadBlobStoreFlags(ckptd::service::ServerOptions* options) {
  const std::string store = absl::GetFlag(FLAGS_blob_store);
  const std::string replica_of = absl::GetFlag(FLAGS_replica_of);
  const bool s3 = absl::StartsWith(store, "s3://");
  if (!s3 && store != "file") {
    return absl::StrCat("--blob_store '", store,
                        "' is neither `file` nor s3://BUCKET[/PREFIX]");
  }
  const bool follow_set =
      absl::GetFlag(FLAGS_follow_interval) != kDefaultFollowInterval;
  if (replica_of.empty() && follow_set) {
    return "--follow_interval is for a read replica: give --replica_of "
           "s3://BUCKET[/PREFIX] too, or drop it";
  }
  if (!replica_of.empty()) {
    // The repository checks the interval and what a replica excludes.
    const absl::Duration every = absl::GetFlag(FLAGS_follow_interval);
    ckptd::storage::S3BlobStoreOptions o;
    if (std::string err = ReadS3Flags("replica_of", replica_of, o);
        !err.empty()) {
      return err;
    }
    options->repository.replica_of = std::move(o);
    options->repository.follow_interval = every;
    options->repository.rebuild_index = absl::GetFlag(FLAGS_rebuild_index);
    if (std::string err = ReadCacheFlags(options); !err.empty()) return err;
    if (!s3) return "";
  }
  if (!s3) {
    for (const auto& [flag, set] :
         {std::pair<const char*, bool>{
              "s3_endpoint", !absl::GetFlag(FLAGS_s3_endpoint).empty()},
          {"rebuild_index", absl::GetFlag(FLAGS_rebuild_index)},
          {"cache_dir", !absl::GetFlag(FLAGS_cache_dir).empty()},
          {"cache_bytes", absl::GetFlag(FLAGS_cache_bytes) != 0},
          {"s3_credentials_file",
           !absl::GetFlag(FLAGS_s3_credentials_file).empty()}}) {
      if (set) {
        return absl::StrCat("--", flag,
                            " is for an S3 blob store: give --blob_store "
                            "s3://BUCKET[/PREFIX] (or --replica_of) too, or "
                            "drop it");
      }
    }
    return "";
  }
  ckptd::storage::S3BlobStoreOptions o;
  if (std::string err = ReadS3Flags("blob_store", store, o); !err.empty()) {
    return err;
  }
  options->repository.s3 = std::move(o);
  options->repository.rebuild_index = absl::GetFlag(FLAGS_rebuild_index);
  return ReadCacheFlags(options);
}

// --help: the usage message and ckptd's own flags, exit 0. (Abseil's --help
// lists flags of a file named after the program only, and exits 1.)
void PrintHelp() {
  std::string out = absl::StrCat(absl::ProgramUsageMessage(), "\nFlags:\n");
  std::vector<const absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (absl::EndsWith(flag->Filename(), "server/main.cc")) {
      flags.push_back(flag);
    }
  }
  std::sort(flags.begin(), flags.end(),
            [](const auto* a, const auto* b) { return a->Name() < b->Name(); });
  for (const auto* flag : flags) {
    absl::StrAppend(&out, "  --", flag->Name(), "  (default: \"",
                    flag->DefaultValue(), "\")\n      ", flag->Help(), "\n");
  }
  absl::StrAppend(&out,
                  "\nFlag names take '-' or '_' (--data-dir = --data_dir). "
                  "--flagfile=FILE reads flags from FILE: one --name=value "
                  "per line, '#' starts a comment line (deploy/ckptd.flags "
                  "is an example); a flag after --flagfile overrides the "
                  "file's, one before it is overridden. --helpfull lists "
                  "every flag, also gRPC's and Abseil's.\n");
  std::fputs(out.c_str(), stdout);
}

// Writes "<port>\n" to `path` so that a reader sees no file or the whole
// port, never a part: a temp file in the same directory, fsynced, renamed
// over `path`, then the directory fsynced. Returns "" or the error.
std::string WritePortFile(const std::string& path, int port) {
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  const std::string text = absl::StrCat(port, "\n");
  auto fail = [&](const char* what, const std::string& file) {
    const std::string err =
        absl::StrCat(what, " ", file, ": ", std::strerror(errno));
    ::unlink(tmp.c_str());
    return err;
  };
  const int fd =
      ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return fail("create", tmp);
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      return fail("write", tmp);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    return fail("fsync", tmp);
  }
  if (::close(fd) != 0) return fail("close", tmp);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("rename to", path);
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : path.substr(0, slash);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);  // best effort: the file is complete either way
    ::close(dir_fd);
  }
  return "";
}

// Copies the limit flags into `options`; "" or what is wrong with one.
std::string ReadLimitFlags(ckptd::service::ServerOptions* options) {
  ckptd::core::Limits& l = options->repository.limits;
  const int message = absl::GetFlag(FLAGS_max_message_bytes);
  if (message < (8 << 20)) {
    return absl::StrCat("--max_message_bytes=", message,
                        " is below 8 MiB (8388608): an upload message "
                        "carries a chunk of up to 4 MiB");
  }
  options->max_message_bytes = message;
  // Each flag read once into its limit; the first bad one is reported.
  std::string err;
  auto take = [&err](const char* name, const auto& flag, auto* limit) {
    const auto value = absl::GetFlag(flag);
    if (value < 1 && err.empty()) {
      err = absl::StrCat("--", name, "=", value, " must be at least 1");
    }
    *limit = value;
  };
  take("max_manifest_entries", FLAGS_max_manifest_entries, &l.manifest_entries);
  take("max_manifest_bytes", FLAGS_max_manifest_bytes, &l.manifest_bytes);
  take("max_key_segment_bytes", FLAGS_max_key_segment_bytes,
       &l.key_segment_bytes);
  take("max_list_length", FLAGS_max_list_length, &l.list_length);
  take("max_metrics", FLAGS_max_metrics, &l.metrics);
  take("max_metric_name_bytes", FLAGS_max_metric_name_bytes,
       &l.metric_name_bytes);
  take("max_labels", FLAGS_max_labels, &l.labels);
  take("max_label_key_bytes", FLAGS_max_label_key_bytes, &l.label_key_bytes);
  take("max_label_value_bytes", FLAGS_max_label_value_bytes,
       &l.label_value_bytes);
  take("max_find_missing_digests", FLAGS_max_find_missing_digests,
       &l.find_missing_digests);
  take("max_key_depth", FLAGS_max_key_depth, &l.key_depth);
  take("max_value_depth", FLAGS_max_value_depth, &l.value_depth);
  return err;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "ckptd: checkpoint server for PyTorch training.\n\n"
      "Training ranks push state_dict shards over gRPC; ckptd stores them as "
      "immutable, versioned checkpoints in --data_dir and keeps `last` and "
      "`best` per run.\n\nExample:\n  ckptd --listen 127.0.0.1:50051 "
      "--data_dir ./ckptd-data\n");
  if (WantsHelp(argc, argv)) {
    PrintHelp();
    return 0;
  }
  absl::StatusOr<std::vector<std::string>> expanded = ckptd::ExpandFlagfiles(
      std::vector<std::string>(argv, argv + argc), LookupFlag);
  if (!expanded.ok()) {
    std::fprintf(stderr, "ckptd: %s\n",
                 std::string(expanded.status().message()).c_str());
    return 2;
  }
  std::vector<char*> expanded_argv;
  for (std::string& arg : *expanded) expanded_argv.push_back(arg.data());
  std::vector<std::string> storage;
  std::vector<char*> args = NormalizeFlagNames(
      static_cast<int>(expanded_argv.size()), expanded_argv.data(), &storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());

  const auto log_format =
      ckptd::ParseLogFormat(absl::GetFlag(FLAGS_log_format));
  if (!log_format.ok()) {
    std::fprintf(stderr, "ckptd: %s\n",
                 std::string(log_format.status().message()).c_str());
    return 2;
  }
  ckptd::InstallStderrLogger(*log_format);
  if (*log_format == ckptd::LogFormat::kJson) {
    gpr_set_log_function(&GrpcLogToSpdlog);
  }
  if (absl::GetFlag(FLAGS_metrics_listen).empty() &&
      !absl::GetFlag(FLAGS_metrics_port_file).empty()) {
    std::fprintf(stderr,
                 "ckptd: --metrics_port_file needs --metrics_listen (the "
                 "metrics endpoint is off without it)\n");
    return 2;
  }
  const std::string level_name = absl::GetFlag(FLAGS_log_level);
  const spdlog::level::level_enum level = spdlog::level::from_str(level_name);
  if (level == spdlog::level::off && level_name != "off") {
    std::fprintf(stderr,
                 "ckptd: --log_level=%s is not a level; use trace, debug, "
                 "info, warn, error or off\n",
                 level_name.c_str());
    return 2;
  }
  spdlog::set_level(level);
  if (absl::GetFlag(FLAGS_io_threads) < 1) {
    std::fprintf(stderr, "ckptd: --io_threads must be at least 1\n");
    return 2;
  }
  if (absl::GetFlag(FLAGS_pending_timeout) <= absl::ZeroDuration()) {
    std::fprintf(stderr, "ckptd: --pending_timeout must be positive\n");
    return 2;
  }
  if (absl::GetFlag(FLAGS_scrub_interval) < absl::ZeroDuration()) {
    std::fprintf(
        stderr,
        "ckptd: --scrub_interval=%s is negative; give a duration "
        "such as 24h, or 0 to turn the scrub off\n",
        absl::FormatDuration(absl::GetFlag(FLAGS_scrub_interval)).c_str());
    return 2;
  }
  if (absl::GetFlag(FLAGS_scrub_bytes_per_sec) <= 0) {
    std::fprintf(
        stderr,
        "ckptd: --scrub_bytes_per_sec=%lld must be positive (e.g. "
        "67108864 for 64 MiB/s); to turn the scrub off use "
        "--scrub_interval=0\n",
        static_cast<long long>(absl::GetFlag(FLAGS_scrub_bytes_per_sec)));
    return 2;
  }

  if (!absl::GetFlag(FLAGS_http_port_file).empty() &&
      absl::GetFlag(FLAGS_http_listen).empty()) {
    std::fprintf(stderr,
                 "ckptd: --http_port_file needs --http_listen (e.g. "
                 "--http_listen=127.0.0.1:0)\n");
    return 2;
  }

  // Signals are taken by one thread with sigwait, before gRPC starts any.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  ckptd::service::ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.local_socket = absl::GetFlag(FLAGS_local_socket);
  if (options.local_socket == kDefaultLocalSocket) {
    options.local_socket_is_default = true;
    options.local_socket =
        absl::StrCat(absl::StripSuffix(options.data_dir, "/"), "/ckptd.sock");
  }
  options.io_threads = absl::GetFlag(FLAGS_io_threads);
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  options.auth_file = absl::GetFlag(FLAGS_auth_file);
  options.insecure_no_auth = absl::GetFlag(FLAGS_insecure_no_auth);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.http_listen = absl::GetFlag(FLAGS_http_listen);
  if (const std::string err = ReadResourceFlags(&options); !err.empty()) {
    std::fprintf(stderr, "ckptd: %s\n", err.c_str());
    return 2;
  }
  options.repository.pending_timeout = absl::GetFlag(FLAGS_pending_timeout);
  options.repository.scrub_interval = absl::GetFlag(FLAGS_scrub_interval);
  options.repository.scrub_bytes_per_sec =
      static_cast<uint64_t>(absl::GetFlag(FLAGS_scrub_bytes_per_sec));
  options.repository.run_quota_bytes = absl::GetFlag(FLAGS_run_quota_bytes);
  options.repository.identity_quota_bytes =
      absl::GetFlag(FLAGS_identity_quota_bytes);
  if (options.repository.identity_quota_bytes > 0 &&
      options.auth_file.empty()) {
    std::fprintf(stderr,
                 "ckptd: --identity_quota_bytes needs --auth_file: without "
                 "it there are no identities to count against\n");
    return 2;
  }
  if (const std::string err = ReadBlobStoreFlags(&options); !err.empty()) {
    std::fprintf(stderr, "ckptd: %s\n", err.c_str());
    return 2;
  }
  if (const std::string err = ReadLimitFlags(&options); !err.empty()) {
    std::fprintf(stderr, "ckptd: %s\n", err.c_str());
    return 2;
  }
  // Sweep often enough that a timed-out version aborts within ~25% of it.
  options.maintenance_interval = std::min(
      options.maintenance_interval, options.repository.pending_timeout / 4);
  auto server = ckptd::service::Server::Start(options);
  if (!server.ok()) {
    spdlog::critical("cannot start: {}", server.status().ToString());
    return 1;
  }
  const absl::Duration grace = absl::GetFlag(FLAGS_shutdown_grace);
  ckptd::service::Server* raw = server->get();
  // Started before --port_file is written: once the file exists, so does it.
  std::unique_ptr<ckptd::service::HealthListener> health;
  if (const std::string listen = absl::GetFlag(FLAGS_health_listen);
      !listen.empty()) {
    auto started = ckptd::service::HealthListener::Start(listen);
    if (!started.ok()) {
      spdlog::critical("cannot start: {}", started.status().ToString());
      raw->Shutdown(absl::ZeroDuration());
      raw->Wait();
      return 1;
    }
    health = *std::move(started);
  }
  // The other ports' files first: once --port_file exists, they do too.
  const std::pair<const char*, int> port_files[] = {
      {"metrics_port_file", raw->metrics_port()},
      {"http_port_file", raw->http_port()},
      {"port_file", raw->port()},
  };
  for (const auto& [flag, port] : port_files) {
    const std::string path = flag == std::string("metrics_port_file")
                                 ? absl::GetFlag(FLAGS_metrics_port_file)
                             : flag == std::string("http_port_file")
                                 ? absl::GetFlag(FLAGS_http_port_file)
                                 : absl::GetFlag(FLAGS_port_file);
    if (path.empty()) continue;
    if (const std::string err = WritePortFile(path, port); !err.empty()) {
      spdlog::critical("cannot write --{}: {}", flag, err);
      if (health != nullptr) health->Shutdown();
      raw->Shutdown(absl::ZeroDuration());
      raw->Wait();
      return 1;
    }
  }
  ckptd::service::HealthListener* health_raw = health.get();
  std::thread signal_thread([&signals, raw, health_raw, grace] {
    for (;;) {
      int sig = 0;
      sigwait(&signals, &sig);
      if (sig == SIGHUP) {
        // A file that does not parse keeps the table in force.
        if (absl::Status st = raw->ReloadAuth(); !st.ok()) {
          spdlog::error("SIGHUP: kept the previous credentials: {}",
                        std::string(st.message()));
        }
        continue;
      }
      spdlog::info("received signal {}", sig);
      if (health_raw != nullptr) health_raw->SetServing(false);
      raw->Shutdown(grace);
      return;
    }
  });
  (*server)->Wait();
  signal_thread.join();
  if (health != nullptr) health->Shutdown();
  server->reset();
  return 0;
}
