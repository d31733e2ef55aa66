#include "client/cli/format.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "proto/base/dtype.h"

namespace ckptd::cli {
namespace {

constexpr char kColumnGap[] = "  ";
constexpr std::array<const char*, 8> kSparkBlocks = {
    "\u2581", "\u2582", "\u2583", "\u2584",
    "\u2585", "\u2586", "\u2587", "\u2588"};

void Pad(std::string& line, size_t n) { line.append(n, ' '); }

}  // namespace

Table::Table(std::vector<std::string> headers)
    : headers_(std::move(headers)), right_(headers_.size(), false) {}

void Table::AddRow(std::vector<std::string> cells) {
  cells.resize(headers_.size());
  rows_.push_back(std::move(cells));
}

void Table::AlignRight(size_t column) {
  if (column < right_.size()) right_[column] = true;
}

std::string Table::Render() const {
  std::vector<size_t> widths(headers_.size(), 0);
  for (size_t c = 0; c < headers_.size(); ++c) {
    widths[c] = DisplayWidth(headers_[c]);
    for (const auto& row : rows_) {
      widths[c] = std::max(widths[c], DisplayWidth(row[c]));
    }
  }
  std::string out;
  auto render_row = [&](const std::vector<std::string>& cells) {
    std::string line = indent_;
    for (size_t c = 0; c < cells.size(); ++c) {
      if (c > 0) line += kColumnGap;
      const size_t fill = widths[c] - DisplayWidth(cells[c]);
      if (right_[c]) Pad(line, fill);
      line += cells[c];
      if (!right_[c]) Pad(line, fill);
    }
    line.erase(line.find_last_not_of(' ') + 1);
    out += line;
    out += '\n';
  };
  render_row(headers_);
  for (const auto& row : rows_) render_row(row);
  return out;
}

size_t DisplayWidth(absl::string_view text) {
  size_t n = 0;
  for (unsigned char c : text) {
    if ((c & 0xC0) != 0x80) ++n;  // count lead bytes, skip continuations
  }
  return n;
}

std::string HumanBytes(uint64_t bytes) {
  static constexpr std::array<const char*, 6> kUnits = {"KiB", "MiB", "GiB",
                                                        "TiB", "PiB", "EiB"};
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  double value = static_cast<double>(bytes) / 1024;
  size_t unit = 0;
  while (value >= 1024 && unit + 1 < kUnits.size()) {
    value /= 1024;
    ++unit;
  }
  return absl::StrFormat("%.1f %s", value, kUnits[unit]);
}

std::string FormatTime(int64_t unix_nanos) {
  if (unix_nanos == 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixNanos(unix_nanos),
                          absl::UTCTimeZone());
}

std::string FormatNumber(double value) {
  return absl::StrFormat("%.6g", value);
}

std::string Sparkline(const std::vector<double>& values, size_t max_width) {
  std::vector<double> series;
  if (max_width == 0) max_width = 1;
  if (values.size() <= max_width) {
    series = values;
  } else {
    // Average each bucket of consecutive points (non-finite ones skipped).
    for (size_t b = 0; b < max_width; ++b) {
      const size_t begin = b * values.size() / max_width;
      const size_t end = (b + 1) * values.size() / max_width;
      double sum = 0;
      size_t n = 0;
      for (size_t i = begin; i < end; ++i) {
        if (std::isfinite(values[i])) {
          sum += values[i];
          ++n;
        }
      }
      series.push_back(n == 0 ? NAN : sum / static_cast<double>(n));
    }
  }
  double lo = INFINITY;
  double hi = -INFINITY;
  for (double v : series) {
    if (!std::isfinite(v)) continue;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  std::string out;
  for (double v : series) {
    if (!std::isfinite(v)) {
      out += ' ';
      continue;
    }
    size_t level = kSparkBlocks.size() / 2 - 1;
    if (hi > lo) {
      const double t = (v - lo) / (hi - lo);
      level = static_cast<size_t>(std::lround(t * (kSparkBlocks.size() - 1)));
      level = std::min(level, kSparkBlocks.size() - 1);
    }
    out += kSparkBlocks[level];
  }
  return out;
}

std::string DTypeName(DType dtype) { return TorchDTypeName(dtype); }

std::string FormatShape(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string DottedPath(
    const google::protobuf::RepeatedPtrField<v1::PathSegment>& path) {
  return DottedKeyPath(path);
}

std::string RenderProgress(uint64_t done, uint64_t total, double seconds,
                           int bar_width) {
  const double fraction = total == 0
                              ? 1.0
                              : std::min(1.0, static_cast<double>(done) /
                                                  static_cast<double>(total));
  const int filled = static_cast<int>(fraction * bar_width);
  std::string bar(filled, '#');
  bar.append(bar_width - filled, '-');
  const double mb_per_s =
      seconds > 0 ? static_cast<double>(done) / 1e6 / seconds : 0.0;
  return absl::StrFormat("[%s] %3d%%  %s / %s  %.1f MB/s", bar,
                         static_cast<int>(fraction * 100), HumanBytes(done),
                         HumanBytes(total), mb_per_s);
}

ProgressBar::ProgressBar(std::ostream& out, std::string label, bool enabled)
    : out_(out),
      label_(std::move(label)),
      enabled_(enabled),
      start_(std::chrono::steady_clock::now()) {}

ProgressBar::~ProgressBar() { Finish(); }

void ProgressBar::Update(uint64_t done, uint64_t total) {
  if (!enabled_) return;
  absl::MutexLock lock(&mu_);
  if (finished_) return;
  done_ = done;
  total_ = total;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && now - last_draw_ < kRedrawInterval) return;
  last_draw_ = now;
  DrawLocked(/*final=*/false);
}

void ProgressBar::Finish() {
  if (!enabled_) return;
  absl::MutexLock lock(&mu_);
  if (finished_ || !drawn_) {
    finished_ = true;
    return;
  }
  DrawLocked(/*final=*/true);
  finished_ = true;
}

void ProgressBar::DrawLocked(bool final) {
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_)
          .count();
  // "\033[K" clears what a longer previous line left behind.
  out_ << '\r' << label_ << ' ' << RenderProgress(done_, total_, seconds)
       << "\033[K";
  if (final) out_ << '\n';
  out_.flush();
  drawn_ = true;
}

}  // namespace ckptd::cli
