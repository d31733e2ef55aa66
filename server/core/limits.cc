#include "server/core/limits.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "proto/base/error_reason.h"
#include "proto/base/status.h"

namespace ckptd::core {
namespace {

// CHexEscape of at most `budget` output bytes of `s`; sets *cut when some of
// `s` did not fit.
std::string EscapeWithin(absl::string_view s, size_t budget, bool* cut) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const std::string one = absl::CHexEscape(s.substr(i, 1));
    if (out.size() + one.size() > budget) {
      *cut = true;
      return out;
    }
    out += one;
  }
  return out;
}

}  // namespace

std::string Excerpt(absl::string_view s) {
  bool cut = false;
  std::string shown = EscapeWithin(s, kMaxEchoBytes, &cut);
  return cut ? absl::StrCat("'", shown, "'... (", s.size(), " bytes)")
             : absl::StrCat("'", shown, "'");
}

std::string KeyPathExcerpt(
    const google::protobuf::RepeatedPtrField<v1::PathSegment>& path) {
  std::string out;
  bool cut = false;
  for (const v1::PathSegment& seg : path) {
    std::string part = seg.kind_case() == v1::PathSegment::kIntKey
                           ? absl::StrCat(seg.int_key())
                           : seg.key();
    if (!out.empty()) part.insert(part.begin(), '.');
    out += EscapeWithin(part, kMaxEchoBytes - out.size(), &cut);
    if (cut) break;
  }
  return cut ? absl::StrCat(out, "... (", path.size(), " segments)") : out;
}

absl::Status OverLimit(absl::string_view what, uint64_t actual,
                       absl::string_view unit, uint64_t limit,
                       absl::string_view flag) {
  return WithReason(absl::InvalidArgumentError(absl::StrCat(
                        what, " is ", actual, " ", unit, "; the limit is ",
                        limit, " (--", flag, ")")),
                    v1::REQUEST_TOO_LARGE);
}

absl::Status CheckEnvironment(const v1::Environment& env,
                              const Limits& limits) {
  const std::pair<const char*, const std::string*> fields[] = {
      {"torch_version", &env.torch_version()},
      {"cuda_version", &env.cuda_version()},
      {"python_version", &env.python_version()},
      {"hostname", &env.hostname()},
      {"client_version", &env.client_version()}};
  for (const auto& [name, value] : fields) {
    if (value->size() > limits.label_value_bytes) {
      return OverLimit(absl::StrCat("environment field ", name), value->size(),
                       "bytes", limits.label_value_bytes,
                       "max_label_value_bytes");
    }
  }
  if (static_cast<size_t>(env.labels_size()) > limits.labels) {
    return OverLimit("the number of labels", env.labels_size(), "labels",
                     limits.labels, "max_labels");
  }
  for (const auto& [k, v] : env.labels()) {
    if (k.empty()) {
      return absl::InvalidArgumentError(
          "a label has an empty key; give every label a key of 1 or more "
          "bytes");
    }
    if (k.size() > limits.label_key_bytes) {
      return OverLimit(absl::StrCat("label key ", Excerpt(k)), k.size(),
                       "bytes", limits.label_key_bytes, "max_label_key_bytes");
    }
    if (v.size() > limits.label_value_bytes) {
      return OverLimit(absl::StrCat("the value of label ", Excerpt(k)),
                       v.size(), "bytes", limits.label_value_bytes,
                       "max_label_value_bytes");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckMetrics(const google::protobuf::Map<std::string, double>& m,
                          const Limits& limits) {
  if (static_cast<size_t>(m.size()) > limits.metrics) {
    return OverLimit("the number of metrics", m.size(), "metrics",
                     limits.metrics, "max_metrics");
  }
  for (const auto& [name, value] : m) {
    if (name.size() > limits.metric_name_bytes) {
      return OverLimit(absl::StrCat("metric name ", Excerpt(name)), name.size(),
                       "bytes", limits.metric_name_bytes,
                       "max_metric_name_bytes");
    }
    CKPTD_RETURN_IF_ERROR(ValidateMetricName(name));
  }
  return absl::OkStatus();
}

}  // namespace ckptd::core
