// Limits: the sizes of what one request may carry, each settable by a ckptd
// flag (server/main.cc) and named, with that flag, in the error a request
// over it gets: INVALID_ARGUMENT with reason REQUEST_TOO_LARGE, echoing at
// most kMaxEchoBytes of the offending input. A bounded request bounds what
// the server parses, stores and later returns (a version's metadata is sent
// back in every ListVersions page).
#ifndef CKPTD_SERVER_CORE_LIMITS_H_
#define CKPTD_SERVER_CORE_LIMITS_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "ckptd/v1/checkpoint.pb.h"
#include "proto/base/limits.h"
#include "proto/base/names.h"

namespace ckptd::core {

// Bytes of client input an error message may quote.
inline constexpr size_t kMaxEchoBytes = 200;

// A ListVersions page ends before its versions pass this many bytes (the
// client follows next_page_token), so a run's history is always readable.
inline constexpr size_t kMaxListReplyBytes = 8 << 20;

struct Limits {
  // Entries (containers, values, tensors) in one shard manifest.
  size_t manifest_entries = 2'000'000;  // --max_manifest_entries
  // Serialized bytes of one shard manifest.
  uint64_t manifest_bytes = 192 << 20;  // --max_manifest_bytes
  // Segments in one key path ("model.layers.0.weight" has 4).
  int key_depth = 64;  // --max_key_depth
  // Bytes in one string key segment.
  size_t key_segment_bytes = 1024;  // --max_key_segment_bytes
  // Nesting of lists inside a value leaf.
  int value_depth = 32;  // --max_value_depth
  // Items in one list value.
  size_t list_length = 1'000'000;  // --max_list_length
  // Metrics per shard commit, and their names' bytes.
  size_t metrics = 1024;                            // --max_metrics
  size_t metric_name_bytes = kMaxMetricNameLength;  // --max_metric_name_bytes
  // Labels per version, their keys' and values' bytes (also the bytes of
  // each environment field: versions, hostname).
  size_t labels = 256;                            // --max_labels
  size_t label_key_bytes = kMaxMetricNameLength;  // --max_label_key_bytes
  size_t label_value_bytes = kMaxLabelLength;     // --max_label_value_bytes
  // Digests per FindMissingBlobs request.
  size_t find_missing_digests =
      kMaxFindMissingDigests;  // --max_find_missing_digests
};

// `s` for an error message: at most kMaxEchoBytes, C-escaped, quoted, with
// "... (N bytes)" when cut.
std::string Excerpt(absl::string_view s);

// A key path as dotted text for an error message: at most kMaxEchoBytes,
// then "... (N segments)".
std::string KeyPathExcerpt(
    const google::protobuf::RepeatedPtrField<v1::PathSegment>& path);

// INVALID_ARGUMENT + REQUEST_TOO_LARGE: "<what> is <actual> <unit>; the
// limit is <limit> (--<flag>)".
absl::Status OverLimit(absl::string_view what, uint64_t actual,
                       absl::string_view unit, uint64_t limit,
                       absl::string_view flag);

// Environment and labels of a BeginVersion; metrics of a CommitShard.
absl::Status CheckEnvironment(const v1::Environment& env, const Limits& limits);
absl::Status CheckMetrics(const google::protobuf::Map<std::string, double>& m,
                          const Limits& limits);

}  // namespace ckptd::core

#endif  // CKPTD_SERVER_CORE_LIMITS_H_
