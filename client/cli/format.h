// Text formatting for the `ckpt` CLI: aligned tables, human-readable sizes,
// UTC ISO-8601 times, unicode sparklines and a terminal progress bar.
//
// Everything here is pure (string in, string out) except ProgressBar, which
// writes to a stream; none of it talks to the server, so it is unit-testable.
//
// Thread safety: free functions are thread-safe; a Table or ProgressBar must
// not be used from several threads at once (ProgressBar::Update serializes
// itself, because transfer threads report progress concurrently).
#ifndef CKPTD_CLIENT_CLI_FORMAT_H_
#define CKPTD_CLIENT_CLI_FORMAT_H_

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "ckptd/client.h"

namespace ckptd::cli {

// Columns separated by two spaces, each as wide as its widest cell (widths
// count UTF-8 code points, so sparklines align). No trailing whitespace.
class Table {
 public:
  explicit Table(std::vector<std::string> headers);

  // Cells past the header count are dropped; missing cells are empty.
  void AddRow(std::vector<std::string> cells);
  // Numbers read better right-aligned.
  void AlignRight(size_t column);
  // Prefixes every line (e.g. "  " for a table nested under a heading).
  void SetIndent(std::string indent) { indent_ = std::move(indent); }

  size_t row_count() const { return rows_.size(); }
  std::string Render() const;

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
  std::vector<bool> right_;
  std::string indent_;
};

// Display width of UTF-8 text: the number of code points.
size_t DisplayWidth(absl::string_view text);

// 0 -> "0 B", 1536 -> "1.5 KiB", 3 << 30 -> "3.0 GiB".
std::string HumanBytes(uint64_t bytes);

// Unix nanoseconds -> "2024-05-01T12:34:56Z"; 0 (unset) -> "-".
std::string FormatTime(int64_t unix_nanos);

// A metric value, compact: 0.25, 1e-05, 1234567.
std::string FormatNumber(double value);

// One block character per value (▁▂▃▄▅▆▇█), scaled between the minimum and
// maximum; a flat series is drawn mid-height, non-finite values as a space.
// Longer series are averaged into `max_width` buckets.
std::string Sparkline(const std::vector<double>& values, size_t max_width = 60);

// The torch spelling of a dtype: "float32", "bfloat16", ...
std::string DTypeName(DType dtype);

// "[2, 3]"; a scalar is "[]".
std::string FormatShape(const std::vector<int64_t>& shape);

// A key path as the dotted name used by state_dict and safetensors:
// "model.layers.0.weight"; the root is "".
std::string DottedPath(
    const google::protobuf::RepeatedPtrField<v1::PathSegment>& path);

// One line of the progress bar (no '\r'):
// "[########------------]  40%  4.0 MiB / 10.0 MiB  12.3 MB/s".
std::string RenderProgress(uint64_t done, uint64_t total, double seconds,
                           int bar_width = 24);

// Redraws a progress line on a terminal with '\r', at most every
// kRedrawInterval; Finish() draws the final state and ends the line. When
// disabled (stderr is not a terminal) it prints nothing.
class ProgressBar {
 public:
  ProgressBar(std::ostream& out, std::string label, bool enabled);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void Update(uint64_t done, uint64_t total);
  // Ends the line, once; also called by the destructor.
  void Finish();

 private:
  static constexpr std::chrono::milliseconds kRedrawInterval{100};

  void DrawLocked(bool final) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::ostream& out_;
  const std::string label_;
  const bool enabled_;
  const std::chrono::steady_clock::time_point start_;
  absl::Mutex mu_;
  uint64_t done_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t total_ ABSL_GUARDED_BY(mu_) = 0;
  bool drawn_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::chrono::steady_clock::time_point last_draw_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ckptd::cli

#endif  // CKPTD_CLIENT_CLI_FORMAT_H_
