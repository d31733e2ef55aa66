// S3BlobStore: the BlobStore of an S3 bucket.
//
// Layout
// ------
//   PREFIX/blobs/<32 hex digest>   one object per committed blob: its stored
//                                  form (blob_format.h), the data followed
//                                  by per-chunk checksums and the footer
//
// Nothing else is written under PREFIX/blobs/. An object there exists only
// once complete: a single PUT, or a multipart upload that was completed.
//
// Writing
// -------
// A writer is opened for the digest it will commit (BlobStore::NewWriter),
// so its bytes go straight to the blob's own key. Appended data is hashed
// (digest, chunk checksums) and buffered; a blob that fits one part is sent
// at Commit with one PUT. Once a part's worth has arrived the writer starts
// a multipart upload to the key and hands the part to the store's upload
// threads, and keeps filling the next part meanwhile (one part in flight
// per writer, so a writer holds at most two parts of memory). Commit(expected):
//   1. digest != expected: INVALID_ARGUMENT, the upload is aborted.
//   2. HEAD of the key: a blob already stored there with a consistent size
//      keeps its object (our upload is aborted); CommitReplacing skips this.
//   3. the rest of the data plus the trailer goes up as the last part (or as
//      the whole object, with PUT), and the multipart upload is completed.
// An upload interrupted at any point (error, Abandon, a crash) never becomes
// a visible blob: parts of an uncompleted upload are not an object. Abandon
// aborts the upload; what a crash leaves is aborted by RemoveTemporaries at
// the next start (every multipart upload under PREFIX/blobs/).
//
// Sync() waits for the part in flight and returns size(): the bytes not yet
// sent stay in the writer, which the server keeps for the resumed stream
// (BlobStore::Sync). A writer of a store that was closed can no longer
// commit.
//
// Reading
// -------
// Open HEADs the object (its size gives the data size; an inconsistent size
// is DATA_LOSS), then GETs the trailer. ReadAt GETs the byte ranges of the
// chunks it needs and verifies each chunk before copying from it. Every GET
// carries If-Match with the ETag seen at Open: a blob replaced since (a
// heal) makes the reader fail with ABORTED instead of mixing two objects.
//
// Thread safety: as BlobStore.
#include "server/storage/s3_blob_store.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "proto/base/digest.h"
#include "proto/base/status.h"
#include "server/common/executor.h"
#include "server/storage/blob_format.h"
#include "server/storage/blob_store.h"
#include "server/storage/s3_client.h"
#include "spdlog/spdlog.h"

namespace ckptd::storage {
namespace {

constexpr size_t kMaxPrefixBytes = 512;

std::string BlobsPrefix(absl::string_view prefix) {
  return prefix.empty() ? std::string("blobs/")
                        : absl::StrCat(prefix, "/blobs/");
}

// Part buffers (capacity part_size) handed from one writer to the next. A
// fresh 8 MiB buffer costs a page fault per 4 KiB, which measured here as
// more CPU than the rest of ckptd's share of a push to radosgw. At most
// `max_buffers` are kept, and a buffer idle for kPartPoolIdle is freed at
// the next Take or Give.
class PartPool {
 public:
  PartPool(uint64_t part_size, size_t max_buffers)
      : part_size_(part_size), max_buffers_(max_buffers) {}

  // An empty buffer, with room for a part if the pool had one.
  std::string Take() {
    absl::MutexLock lock(&mu_);
    Expire();
    if (free_.empty()) return std::string();
    std::string buffer = std::move(free_.back().buffer);
    free_.pop_back();
    return buffer;
  }
  void Give(std::string buffer) {
    if (buffer.capacity() < part_size_) return;  // frees it
    buffer.clear();
    absl::MutexLock lock(&mu_);
    Expire();
    if (free_.size() < max_buffers_) {
      free_.push_back({std::move(buffer), absl::Now()});
    }
  }

 private:
  static constexpr absl::Duration kPartPoolIdle = absl::Seconds(5);
  struct Entry {
    std::string buffer;
    absl::Time given;
  };
  void Expire() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const absl::Time cutoff = absl::Now() - kPartPoolIdle;
    // Oldest first: Give appends.
    size_t n = 0;
    while (n < free_.size() && free_[n].given < cutoff) ++n;
    free_.erase(free_.begin(), free_.begin() + n);
  }

  const uint64_t part_size_;
  const size_t max_buffers_;
  absl::Mutex mu_;
  std::vector<Entry> free_ ABSL_GUARDED_BY(mu_);
};

// What the store's writers and readers share; it outlives the store while
// any of them lives.
struct Shared {
  std::unique_ptr<S3Client> client;
  std::string prefix;
  uint64_t part_size = 0;
  std::unique_ptr<Executor> uploads;
  std::unique_ptr<PartPool> parts;
  std::atomic<bool> closed{false};
  std::atomic<size_t> buffered_writers{0};
  bool read_only = false;
};

// One part being sent by an upload thread.
struct PartUpload {
  std::string data;
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  absl::StatusOr<std::string> etag ABSL_GUARDED_BY(mu);
};

class S3BlobWriter final : public BlobWriter {
 public:
  S3BlobWriter(std::shared_ptr<Shared> shared, const Digest& hint)
      : shared_(std::move(shared)),
        hint_(hint),
        hint_key_(S3BlobKey(shared_->prefix, hint)) {}
  ~S3BlobWriter() override { Abandon(); }

  absl::Status Append(std::string_view data) override;
  uint64_t size() const override { return hasher_.size(); }
  absl::StatusOr<uint64_t> Sync() override;
  absl::Status Commit(const Digest& expected) override {
    absl::Status st = CommitObject(expected, /*replace=*/false);
    Abandon();
    return st;
  }
  absl::Status CommitReplacing(const Digest& expected) override {
    absl::Status st = CommitObject(expected, /*replace=*/true);
    Abandon();
    return st;
  }
  void Abandon() override;

 private:
  absl::Status CheckUsable() const;
  // Sends buffer_ as the next part (starting the upload if needed).
  absl::Status StartPart();
  // Waits for the part in flight and records its ETag.
  absl::Status AwaitPart();
  absl::Status CommitObject(const Digest& expected, bool replace);
  // Keeps Shared::buffered_writers true to this writer's state.
  void Count();

  std::shared_ptr<Shared> shared_;
  const Digest hint_;
  const std::string hint_key_;
  BlobHasher hasher_;
  std::string buffer_;  // appended, not yet sent
  std::string upload_id_;
  std::vector<std::string> etags_;  // of the parts sent, in order
  std::shared_ptr<PartUpload> inflight_;
  std::string spare_;  // the last sent part's buffer, reused
  bool finished_ = false;
  bool counted_ = false;
  absl::Status error_;  // a failed part poisons the writer
};

absl::Status S3BlobWriter::CheckUsable() const {
  if (finished_) {
    return absl::FailedPreconditionError(
        "blob writer is finished (committed or abandoned)");
  }
  if (shared_->closed.load()) {
    return absl::FailedPreconditionError(
        "the S3 blob store this writer belongs to was closed");
  }
  return error_;
}

void S3BlobWriter::Count() {
  const bool buffered = !finished_ && upload_id_.empty() && !buffer_.empty();
  if (buffered != counted_) {
    if (buffered) {
      shared_->buffered_writers.fetch_add(1);
    } else {
      shared_->buffered_writers.fetch_sub(1);
    }
    counted_ = buffered;
  }
}

absl::Status S3BlobWriter::Append(std::string_view data) {
  CKPTD_RETURN_IF_ERROR(CheckUsable());
  hasher_.Update(data.data(), data.size());
  const uint64_t part = shared_->part_size;
  while (!data.empty()) {
    const size_t take = std::min<uint64_t>(data.size(), part - buffer_.size());
    // A blob past 1 MiB gets its part buffer in one allocation, not a
    // chain of doublings (each a fresh block to fault in and copy into).
    if (buffer_.size() + take > std::max<size_t>(buffer_.capacity(), 1 << 20)) {
      std::string room = shared_->parts->Take();
      room.reserve(part);
      room.append(buffer_);
      shared_->parts->Give(std::exchange(buffer_, std::move(room)));
    }
    buffer_.append(data.data(), take);
    data.remove_prefix(take);
    if (buffer_.size() == part) {
      if (absl::Status st = StartPart(); !st.ok()) {
        error_ = st;
        Count();
        return st;
      }
    }
  }
  Count();
  return absl::OkStatus();
}

absl::Status S3BlobWriter::AwaitPart() {
  if (inflight_ == nullptr) return absl::OkStatus();
  std::shared_ptr<PartUpload> part = std::move(inflight_);
  absl::StatusOr<std::string> etag;
  {
    absl::MutexLock lock(&part->mu);
    part->mu.Await(absl::Condition(&part->done));
    etag = std::move(part->etag);
  }
  spare_ = std::move(part->data);
  spare_.clear();
  if (!etag.ok()) return etag.status();
  etags_.push_back(*std::move(etag));
  return absl::OkStatus();
}

absl::Status S3BlobWriter::StartPart() {
  if (upload_id_.empty()) {
    CKPTD_ASSIGN_OR_RETURN(upload_id_,
                           shared_->client->CreateMultipartUpload(hint_key_));
  }
  CKPTD_RETURN_IF_ERROR(AwaitPart());
  auto part = std::make_shared<PartUpload>();
  part->data = std::move(buffer_);
  buffer_ = spare_.capacity() > 0 ? std::move(spare_) : shared_->parts->Take();
  spare_ = std::string();
  buffer_.clear();
  const int number = static_cast<int>(etags_.size()) + 1;
  inflight_ = part;
  S3Client* client = shared_->client.get();
  shared_->uploads->Submit(
      [client, part, key = hint_key_, id = upload_id_, number] {
        const absl::string_view body[] = {part->data};
        absl::StatusOr<std::string> etag =
            client->UploadPart(key, id, number, body);
        absl::MutexLock lock(&part->mu);
        part->etag = std::move(etag);
        part->done = true;
      });
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> S3BlobWriter::Sync() {
  CKPTD_RETURN_IF_ERROR(CheckUsable());
  if (absl::Status st = AwaitPart(); !st.ok()) {
    error_ = st;
    return st;
  }
  return hasher_.size();
}

absl::Status S3BlobWriter::CommitObject(const Digest& expected, bool replace) {
  CKPTD_RETURN_IF_ERROR(CheckUsable());
  const Digest actual = hasher_.digest();
  if (actual != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("blob digest mismatch: expected ", expected.Hex(),
                     " but the ", hasher_.size(), " bytes received hash to ",
                     actual.Hex(), "; the blob was discarded"));
  }
  if (!upload_id_.empty() && expected != hint_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "blob writer was opened for ", hint_.Hex(), " and its parts went to ",
        shared_->client->Describe(hint_key_), "; it cannot commit ",
        expected.Hex()));
  }
  S3Client& client = *shared_->client;
  const std::string key = S3BlobKey(shared_->prefix, expected);
  const uint64_t stored_size = StoredBlobSize(hasher_.size());
  if (!replace) {
    CKPTD_ASSIGN_OR_RETURN(std::optional<S3Client::ObjectInfo> existing,
                           client.Head(key));
    // A stored object of another size is damaged: ours replaces it.
    if (existing.has_value() && existing->size == stored_size) {
      return absl::OkStatus();  // Abandon() aborts our upload
    }
  }
  const std::string trailer = hasher_.Trailer();
  const absl::string_view last[] = {buffer_, trailer};
  if (upload_id_.empty()) {
    CKPTD_RETURN_IF_ERROR(client.Put(key, last));
  } else {
    CKPTD_RETURN_IF_ERROR(AwaitPart());
    CKPTD_ASSIGN_OR_RETURN(
        std::string etag,
        client.UploadPart(key, upload_id_, static_cast<int>(etags_.size()) + 1,
                          last));
    etags_.push_back(std::move(etag));
    absl::Status st = client.CompleteMultipartUpload(key, upload_id_, etags_);
    if (absl::IsNotFound(st)) {
      // A retried completion whose first attempt went through finds the
      // upload gone; the object tells.
      CKPTD_ASSIGN_OR_RETURN(std::optional<S3Client::ObjectInfo> now,
                             client.Head(key));
      if (now.has_value() && now->size == stored_size) st = absl::OkStatus();
    }
    CKPTD_RETURN_IF_ERROR(st);
    upload_id_.clear();  // completed: nothing to abort
  }
  return absl::OkStatus();
}

void S3BlobWriter::Abandon() {
  if (finished_) return;
  finished_ = true;
  AwaitPart().IgnoreError();
  if (!upload_id_.empty()) {
    absl::Status st =
        shared_->client->AbortMultipartUpload(hint_key_, upload_id_);
    if (!st.ok()) {
      spdlog::warn(
          "could not abort the multipart upload of {} ({}); the next start "
          "aborts it",
          hint_.Hex(), st.ToString());
    }
    upload_id_.clear();
  }
  shared_->parts->Give(std::exchange(buffer_, std::string()));
  shared_->parts->Give(std::exchange(spare_, std::string()));
  Count();
}

class S3BlobReader final : public BlobReader {
 public:
  S3BlobReader(std::shared_ptr<Shared> shared, std::string key, Digest digest,
               std::string etag, BlobFooter footer,
               std::vector<uint64_t> checksums)
      : shared_(std::move(shared)),
        key_(std::move(key)),
        digest_(digest),
        etag_(std::move(etag)),
        footer_(footer),
        checksums_(std::move(checksums)) {}

  uint64_t size() const override { return footer_.data_size; }
  absl::Status ReadAt(uint64_t offset, uint64_t length, char* out) override {
    return ReadVerifiedBlobRange(
        digest_, shared_->client->Describe(key_), footer_, checksums_, offset,
        length, out, scratch_,
        [this](uint64_t first, uint64_t last, char* dst) -> absl::Status {
          const uint64_t chunk = footer_.chunk_size;
          const uint64_t begin = first * chunk;
          const uint64_t end = std::min((last + 1) * chunk, footer_.data_size);
          absl::Status st =
              shared_->client->GetRange(key_, begin, end - begin, dst, etag_);
          if (absl::IsFailedPrecondition(st)) {
            return absl::AbortedError(absl::StrCat(
                "blob ", digest_.Hex(), " was replaced since it was opened (",
                st.message(), "); open it again"));
          }
          return st;
        });
  }

 private:
  const std::shared_ptr<Shared> shared_;
  const std::string key_;
  const Digest digest_;
  const std::string etag_;
  const BlobFooter footer_;
  const std::vector<uint64_t> checksums_;
  std::unique_ptr<char[]> scratch_;
};

class S3BlobStore final : public BlobStore {
 public:
  explicit S3BlobStore(std::shared_ptr<Shared> shared)
      : shared_(std::move(shared)) {}
  ~S3BlobStore() override { shared_->closed.store(true); }

  absl::StatusOr<std::unique_ptr<BlobWriter>> NewWriter(
      const Digest& expected) override {
    if (shared_->read_only) return ReadOnlyError("write", expected);
    return std::make_unique<S3BlobWriter>(shared_, expected);
  }

  absl::StatusOr<std::optional<uint64_t>> Stat(const Digest& digest) override {
    const std::string key = S3BlobKey(shared_->prefix, digest);
    CKPTD_ASSIGN_OR_RETURN(std::optional<S3Client::ObjectInfo> info,
                           shared_->client->Head(key));
    if (!info.has_value()) return std::nullopt;
    std::optional<uint64_t> size = DataSizeOfStoredBlob(info->size);
    if (!size.has_value()) return Damaged(digest, key, info->size, "its size");
    return *size;
  }

  absl::StatusOr<std::unique_ptr<BlobReader>> Open(
      const Digest& digest) override {
    S3Client& client = *shared_->client;
    std::string key = S3BlobKey(shared_->prefix, digest);
    CKPTD_ASSIGN_OR_RETURN(std::optional<S3Client::ObjectInfo> info,
                           client.Head(key));
    if (!info.has_value()) {
      return absl::NotFoundError(
          absl::StrCat("blob ", digest.Hex(), " is not stored"));
    }
    std::optional<uint64_t> data_size = DataSizeOfStoredBlob(info->size);
    if (!data_size.has_value()) {
      return Damaged(digest, key, info->size, "its size");
    }
    std::string trailer(info->size - *data_size, '\0');
    absl::Status st = client.GetRange(key, *data_size, trailer.size(),
                                      trailer.data(), info->etag);
    if (absl::IsFailedPrecondition(st)) {
      return absl::AbortedError(absl::StrCat(
          "blob ", digest.Hex(), " changed while it was opened; try again"));
    }
    CKPTD_RETURN_IF_ERROR(st);
    absl::StatusOr<BlobFooter> footer = DecodeBlobFooter(
        absl::string_view(trailer).substr(trailer.size() - kBlobFooterSize),
        info->size);
    if (!footer.ok()) {
      return Damaged(digest, key, info->size, footer.status().message());
    }
    std::vector<uint64_t> checksums = DecodeBlobChecksums(
        absl::string_view(trailer).substr(0, trailer.size() - kBlobFooterSize));
    return std::make_unique<S3BlobReader>(shared_, std::move(key), digest,
                                          std::move(info->etag), *footer,
                                          std::move(checksums));
  }

  absl::Status Delete(const Digest& digest) override {
    if (shared_->read_only) return ReadOnlyError("delete", digest);
    return shared_->client->Delete(S3BlobKey(shared_->prefix, digest));
  }

  absl::Status ForEach(
      absl::FunctionRef<void(const Digest& digest, uint64_t size)> fn)
      override {
    const std::string prefix = BlobsPrefix(shared_->prefix);
    return shared_->client->ListObjects(
        prefix, [&](const S3Client::ObjectEntry& e) {
          absl::StatusOr<Digest> d =
              DigestFromHex(absl::string_view(e.key).substr(prefix.size()));
          if (!d.ok()) return;  // not a blob of ours
          // A damaged blob is listed with its stored size (GC can remove
          // it); reading it gives DATA_LOSS.
          fn(*d, DataSizeOfStoredBlob(e.size).value_or(e.size));
        });
  }

  absl::Status RemoveTemporaries() override {
    // A replica's uploads in progress are the writer's.
    if (shared_->read_only) return absl::OkStatus();
    std::vector<S3Client::UploadEntry> uploads;
    CKPTD_RETURN_IF_ERROR(shared_->client->ListMultipartUploads(
        BlobsPrefix(shared_->prefix),
        [&](const S3Client::UploadEntry& u) { uploads.push_back(u); }));
    for (const S3Client::UploadEntry& u : uploads) {
      CKPTD_RETURN_IF_ERROR(
          shared_->client->AbortMultipartUpload(u.key, u.upload_id));
    }
    if (!uploads.empty()) {
      spdlog::info(
          "S3 blob store: aborted {} multipart uploads left by an "
          "earlier process",
          uploads.size());
    }
    return absl::OkStatus();
  }

  size_t buffered_writers() const { return shared_->buffered_writers.load(); }

 private:
  absl::Status ReadOnlyError(absl::string_view what, const Digest& digest) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the S3 blob store of a read replica does not ", what, " blobs (",
        shared_->client->Describe(S3BlobKey(shared_->prefix, digest)),
        "): the ckptd that writes the bucket prefix does"));
  }
  absl::Status Damaged(const Digest& digest, const std::string& key,
                       uint64_t size, absl::string_view why) {
    return absl::DataLossError(absl::StrCat(
        "blob ", digest.Hex(), " (", shared_->client->Describe(key), ", ", size,
        " bytes) is damaged: ", why, " is not that of a stored blob"));
  }

  const std::shared_ptr<Shared> shared_;
};

bool ValidSegmentChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

}  // namespace

std::string S3BlobKey(absl::string_view prefix, const Digest& digest) {
  return absl::StrCat(BlobsPrefix(prefix), digest.Hex());
}

size_t S3BufferedWriterCount(BlobStore& store) {
  auto* s3 = dynamic_cast<S3BlobStore*>(&store);
  return s3 == nullptr ? 0 : s3->buffered_writers();
}

absl::Status ParseS3Location(absl::string_view location, std::string& bucket,
                             std::string& prefix) {
  absl::string_view rest = location;
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad --blob_store '", location, "': ", why,
                     "; give it as s3://BUCKET or s3://BUCKET/PREFIX"));
  };
  if (!absl::ConsumePrefix(&rest, "s3://")) return bad("it is not s3://");
  absl::ConsumeSuffix(&rest, "/");
  const size_t slash = rest.find('/');
  const absl::string_view b = rest.substr(0, slash);
  const absl::string_view p =
      slash == absl::string_view::npos ? "" : rest.substr(slash + 1);
  if (absl::Status st = ValidateBucketName(b); !st.ok()) {
    return bad(st.message());
  }
  if (p.size() > kMaxPrefixBytes) {
    return bad(absl::StrCat("the prefix is ", p.size(), " bytes, more than ",
                            kMaxPrefixBytes));
  }
  if (!p.empty()) {
    for (absl::string_view seg : absl::StrSplit(p, '/')) {
      if (seg.empty() || seg == "." || seg == ".." ||
          !std::all_of(seg.begin(), seg.end(), ValidSegmentChar)) {
        return bad(absl::StrCat(
            "prefix segment '", seg,
            "' is not 1 or more of [A-Za-z0-9._-] (and not . or ..)"));
      }
    }
  }
  bucket = std::string(b);
  prefix = std::string(p);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BlobStore>> OpenS3BlobStore(
    S3BlobStoreOptions options) {
  if (options.part_size < kMinS3PartSize ||
      options.part_size > kMaxS3PartSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("S3 part size ", options.part_size, " is outside [",
                     kMinS3PartSize, ", ", kMaxS3PartSize,
                     "] (S3 itself wants at least ", kS3RequiredPartSize, ")"));
  }
  if (options.upload_threads < 1 || options.upload_threads > 256) {
    return absl::InvalidArgumentError(absl::StrCat(
        "S3 upload threads ", options.upload_threads, " is outside [1, 256]"));
  }
  std::string bucket, prefix;
  CKPTD_RETURN_IF_ERROR(ParseS3Location(
      absl::StrCat("s3://", options.s3.bucket, "/", options.prefix), bucket,
      prefix));
  auto shared = std::make_shared<Shared>();
  CKPTD_ASSIGN_OR_RETURN(shared->client,
                         S3Client::Create(std::move(options.s3)));
  CKPTD_RETURN_IF_ERROR(shared->client->CheckBucket());
  shared->prefix = std::move(prefix);
  shared->part_size = options.part_size;
  shared->read_only = options.read_only;
  shared->uploads = std::make_unique<Executor>(options.upload_threads,
                                               /*max_queue=*/0);
  // Enough for every upload thread's part and a filling one per stream of
  // a typical push.
  shared->parts = std::make_unique<PartPool>(
      options.part_size, static_cast<size_t>(options.upload_threads) + 4);
  return std::make_unique<S3BlobStore>(std::move(shared));
}

}  // namespace ckptd::storage
