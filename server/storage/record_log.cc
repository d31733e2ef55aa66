#include "server/storage/record_log.h"

#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "proto/base/status.h"
#include "server/storage/blob_format.h"
#include "spdlog/spdlog.h"

namespace ckptd::storage {
namespace {

// Frame of a record object, little-endian:
//   "CKPTREC1"  8 bytes
//   seq         8
//   length      8   of the batch
//   xxh3        8   XXH3-64 of the batch
//   batch       length bytes
constexpr absl::string_view kMagic = "CKPTREC1";
constexpr size_t kHeaderBytes = 32;

void PutU64(std::string& out, uint64_t v) {
  char buf[8];
  StoreLE64(v, buf);
  out.append(buf, 8);
}

uint64_t GetU64(const char* p) { return LoadLE64(p); }

}  // namespace

std::string EncodeRecord(uint64_t seq, absl::string_view batch) {
  std::string out;
  out.reserve(kHeaderBytes + batch.size());
  out.append(kMagic.data(), kMagic.size());
  PutU64(out, seq);
  PutU64(out, batch.size());
  PutU64(out, XXH3_64bits(batch.data(), batch.size()));
  out.append(batch.data(), batch.size());
  return out;
}

absl::StatusOr<absl::string_view> DecodeRecord(absl::string_view key,
                                               uint64_t seq,
                                               absl::string_view bytes) {
  auto bad = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat(
        "record ", key, " is damaged (", why,
        "); restore the object from a bucket backup, or rebuild from the "
        "records before it"));
  };
  if (bytes.size() < kHeaderBytes || !absl::StartsWith(bytes, kMagic)) {
    return bad("no record header");
  }
  const uint64_t stored_seq = GetU64(bytes.data() + 8);
  const uint64_t length = GetU64(bytes.data() + 16);
  const uint64_t hash = GetU64(bytes.data() + 24);
  if (stored_seq != seq) {
    return bad(absl::StrCat("it holds record ", stored_seq));
  }
  if (length != bytes.size() - kHeaderBytes) {
    return bad(absl::StrCat("length ", length, " but ",
                            bytes.size() - kHeaderBytes, " bytes follow"));
  }
  absl::string_view batch = bytes.substr(kHeaderBytes);
  if (XXH3_64bits(batch.data(), batch.size()) != hash) {
    return bad("checksum mismatch");
  }
  return batch;
}

absl::StatusOr<std::unique_ptr<RecordLog>> RecordLog::Open(S3Options s3,
                                                           std::string prefix) {
  CKPTD_ASSIGN_OR_RETURN(std::unique_ptr<S3Client> client,
                         S3Client::Create(std::move(s3)));
  CKPTD_RETURN_IF_ERROR(client->CheckBucket());
  return std::unique_ptr<RecordLog>(
      new RecordLog(std::move(client), std::move(prefix)));
}

RecordLog::RecordLog(std::unique_ptr<S3Client> client, std::string prefix)
    : client_(std::move(client)),
      records_prefix_(prefix.empty() ? std::string("record/")
                                     : absl::StrCat(prefix, "/record/")),
      writer_key_(prefix.empty() ? std::string("writer")
                                 : absl::StrCat(prefix, "/writer")) {}

std::string RecordLog::KeyOf(uint64_t seq) const {
  return absl::StrCat(records_prefix_, absl::StrFormat("%016x", seq));
}

std::string RecordLog::Describe() const {
  return client_->Describe(records_prefix_);
}

absl::Status RecordLog::Put(uint64_t seq, absl::string_view batch) {
  const std::string frame = EncodeRecord(seq, batch);
  const absl::string_view body[] = {frame};
  return client_->Put(KeyOf(seq), body);
}

absl::StatusOr<std::vector<uint64_t>> RecordLog::ListSeqs(uint64_t after) {
  std::vector<uint64_t> seqs;
  std::vector<std::string> strays;
  CKPTD_RETURN_IF_ERROR(client_->ListObjects(
      records_prefix_,
      [&](const S3Client::ObjectEntry& e) {
        absl::string_view name(e.key);
        name.remove_prefix(records_prefix_.size());
        uint64_t seq = 0;
        if (name.size() == 16 && absl::SimpleHexAtoi(name, &seq) && seq > 0) {
          seqs.push_back(seq);
        } else {
          strays.push_back(e.key);
        }
      },
      after == 0 ? "" : KeyOf(after)));
  for (const std::string& key : strays) {
    spdlog::warn("record: ignoring {}, which is not a record",
                 client_->Describe(key));
  }
  std::sort(seqs.begin(), seqs.end());
  return seqs;
}

absl::StatusOr<uint64_t> RecordLog::LastSeq() {
  CKPTD_ASSIGN_OR_RETURN(std::vector<uint64_t> seqs, ListSeqs(0));
  return seqs.empty() ? 0 : seqs.back();
}

absl::Status RecordLog::PutWriter(absl::string_view text) {
  const absl::string_view body[] = {text};
  return client_->Put(writer_key_, body);
}

absl::StatusOr<std::string> RecordLog::GetWriter() {
  CKPTD_ASSIGN_OR_RETURN(std::optional<S3Client::ObjectInfo> info,
                         client_->Head(writer_key_));
  if (!info.has_value()) return std::string();
  if (info->size > kMaxWriterBytes) {
    return absl::DataLossError(absl::StrCat(
        client_->Describe(writer_key_), " is ", info->size,
        " bytes, more than a writer's address (", kMaxWriterBytes, ")"));
  }
  CKPTD_ASSIGN_OR_RETURN(std::string text, client_->Get(writer_key_));
  // It goes into messages to clients: one line of printable ASCII.
  const absl::string_view line = absl::StripAsciiWhitespace(text);
  if (!std::all_of(line.begin(), line.end(),
                   [](char c) { return c >= 0x20 && c < 0x7f; })) {
    return absl::DataLossError(
        absl::StrCat(client_->Describe(writer_key_),
                     " is not one line of printable text (a writer's "
                     "address, e.g. host:50051)"));
  }
  return std::string(line);
}

absl::StatusOr<uint64_t> RecordLog::Replay(
    uint64_t after, int fetch_threads,
    absl::FunctionRef<absl::Status(uint64_t, absl::string_view)> fn) {
  CKPTD_ASSIGN_OR_RETURN(std::vector<uint64_t> all, ListSeqs(after));
  // The unbroken run after+1, after+2, ...
  std::vector<uint64_t> seqs;
  for (uint64_t seq : all) {
    if (seq <= after) continue;
    if (seq != after + seqs.size() + 1) {
      spdlog::warn(
          "record: {} is missing, so {} later record(s) from {} on are not "
          "applied (written by a ckptd that stopped before acknowledging "
          "them)",
          client_->Describe(KeyOf(after + seqs.size() + 1)),
          all.end() - std::find(all.begin(), all.end(), seq),
          client_->Describe(KeyOf(seq)));
      break;
    }
    seqs.push_back(seq);
  }
  if (seqs.empty()) return after;

  // Fetched in windows by `fetch_threads` threads, applied in order.
  const size_t threads = static_cast<size_t>(std::max(1, fetch_threads));
  const size_t window = threads * 16;
  for (size_t begin = 0; begin < seqs.size(); begin += window) {
    const size_t end = std::min(seqs.size(), begin + window);
    std::vector<absl::StatusOr<std::string>> fetched(
        end - begin, absl::UnknownError("not fetched"));
    std::atomic<size_t> next{begin};
    std::vector<std::thread> pool;
    for (size_t t = 0; t < std::min(threads, end - begin); ++t) {
      pool.emplace_back([&] {
        for (size_t i = next++; i < end; i = next++) {
          fetched[i - begin] = client_->Get(KeyOf(seqs[i]));
        }
      });
    }
    for (std::thread& t : pool) t.join();
    for (size_t i = begin; i < end; ++i) {
      absl::StatusOr<std::string>& bytes = fetched[i - begin];
      if (!bytes.ok()) return bytes.status();
      CKPTD_ASSIGN_OR_RETURN(
          absl::string_view batch,
          DecodeRecord(client_->Describe(KeyOf(seqs[i])), seqs[i], *bytes));
      CKPTD_RETURN_IF_ERROR(fn(seqs[i], batch));
    }
  }
  return seqs.back();
}

}  // namespace ckptd::storage
