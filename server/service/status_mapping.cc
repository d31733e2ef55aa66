#include "server/service/status_mapping.h"

#include <algorithm>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/synchronization/mutex.h"
#include "proto/base/error_reason.h"
#include "spdlog/spdlog.h"

namespace ckptd::service {
namespace {

constexpr char kRedacted[] = "<data-dir>";

struct Redactions {
  absl::Mutex mu;
  // Longest first, so that a path is replaced before a prefix of it.
  std::vector<std::string> paths ABSL_GUARDED_BY(mu);
};

Redactions& GlobalRedactions() {
  static Redactions* r = new Redactions;
  return *r;
}

bool PathChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
         c == '_' || c == '-';
}

// Replaces `path` in `message` where it stands as a whole path: not inside
// a longer name ("data" in "metadata"), followed by '/' or a non-path
// character. True if anything was replaced.
bool ReplacePath(const std::string& path, std::string* message) {
  bool changed = false;
  size_t from = 0;
  for (;;) {
    const size_t at = message->find(path, from);
    if (at == std::string::npos) return changed;
    const size_t end = at + path.size();
    const bool starts =
        at == 0 || (!PathChar((*message)[at - 1]) && (*message)[at - 1] != '/');
    const bool ends = end == message->size() || (*message)[end] == '/' ||
                      !PathChar((*message)[end]);
    if (starts && ends) {
      message->replace(at, path.size(), kRedacted);
      from = at + sizeof(kRedacted) - 1;
      changed = true;
    } else {
      from = at + 1;
    }
  }
}

}  // namespace

void RedactPathInReplies(const std::string& path) {
  std::vector<std::string> forms;
  auto add = [&forms](std::string p) {
    while (p.size() > 1 && p.back() == '/') p.pop_back();
    // "." or "/" would redact far too much.
    if (p.size() > 1) forms.push_back(std::move(p));
  };
  add(path);
  std::error_code ec;
  const std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  if (!ec) add(absolute.lexically_normal().string());
  const std::filesystem::path canonical =
      std::filesystem::weakly_canonical(path, ec);
  if (!ec) add(canonical.string());
  Redactions& r = GlobalRedactions();
  absl::MutexLock lock(&r.mu);
  for (std::string& f : forms) {
    if (std::find(r.paths.begin(), r.paths.end(), f) == r.paths.end()) {
      r.paths.push_back(std::move(f));
    }
  }
  std::sort(r.paths.begin(), r.paths.end(),
            [](const std::string& a, const std::string& b) {
              return a.size() > b.size();
            });
}

absl::Status RedactPaths(const absl::Status& status) {
  if (status.ok()) return status;
  std::string message(status.message());
  bool changed = false;
  {
    Redactions& r = GlobalRedactions();
    absl::MutexLock lock(&r.mu);
    for (const std::string& p : r.paths) {
      changed |= ReplacePath(p, &message);
    }
  }
  if (!changed) return status;
  spdlog::warn("reply to a client (paths redacted): {}", status.ToString());
  absl::Status out(status.code(), message);
  status.ForEachPayload([&out](absl::string_view url, const absl::Cord& c) {
    out.SetPayload(url, c);
  });
  return out;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const absl::Status reply = RedactPaths(status);
  // absl and gRPC share the canonical code numbering. A typed reason
  // travels as google.rpc.Status details (grpc-status-details-bin).
  return grpc::Status(static_cast<grpc::StatusCode>(reply.code()),
                      std::string(reply.message()), EncodeStatusDetails(reply));
}

}  // namespace ckptd::service
