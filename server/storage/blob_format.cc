#include "server/storage/blob_format.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "proto/base/status.h"
#include "server/storage/blob_store.h"

namespace ckptd::storage {
namespace {

constexpr char kFooterMagic[8] = {'C', 'K', 'P', 'T', 'B', 'L', 'B', '1'};
// Appends are hashed twice (digest, chunk checksum) slice by slice so that
// the second pass reads from cache.
constexpr size_t kHashSlice = 256 << 10;

void StoreLE32(uint32_t v, char* p) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
uint32_t LoadLE32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

}  // namespace

void StoreLE64(uint64_t v, char* p) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>(v >> (8 * i));
}
uint64_t LoadLE64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

uint64_t BlobChunkCount(uint64_t data_size, uint64_t chunk_size) {
  return data_size / chunk_size + (data_size % chunk_size != 0 ? 1 : 0);
}

uint64_t StoredBlobSize(uint64_t data_size) {
  return data_size +
         kBlobChecksumSize * BlobChunkCount(data_size, kBlobChecksumChunk) +
         kBlobFooterSize;
}

std::optional<uint64_t> DataSizeOfStoredBlob(uint64_t stored_size) {
  if (stored_size < kBlobFooterSize) return std::nullopt;
  const uint64_t body = stored_size - kBlobFooterSize;
  // Each chunk takes chunk + 8 stored bytes; the last may be short.
  const uint64_t chunks =
      BlobChunkCount(body, kBlobChecksumChunk + kBlobChecksumSize);
  if (body < kBlobChecksumSize * chunks) return std::nullopt;
  const uint64_t data = body - kBlobChecksumSize * chunks;
  if (StoredBlobSize(data) != stored_size) return std::nullopt;
  return data;
}

absl::StatusOr<BlobFooter> DecodeBlobFooter(absl::string_view footer,
                                            uint64_t stored_size) {
  if (stored_size < kBlobFooterSize || footer.size() != kBlobFooterSize) {
    return absl::DataLossError("too short for its footer");
  }
  if (std::memcmp(footer.data(), kFooterMagic, sizeof(kFooterMagic)) != 0) {
    return absl::DataLossError("bad footer magic (truncated?)");
  }
  BlobFooter f;
  f.data_size = LoadLE64(footer.data() + 8);
  f.chunk_size = LoadLE32(footer.data() + 16);
  f.chunk_count = LoadLE32(footer.data() + 20);
  if (f.chunk_size == 0 || f.chunk_size > kMaxBlobChunkSize ||
      f.chunk_count != BlobChunkCount(f.data_size, f.chunk_size) ||
      f.data_size > stored_size ||
      stored_size - f.data_size !=
          kBlobChecksumSize * uint64_t{f.chunk_count} + kBlobFooterSize) {
    return absl::DataLossError(absl::StrCat(
        "inconsistent footer (data_size ", f.data_size, ", chunk_size ",
        f.chunk_size, ", chunk_count ", f.chunk_count, ")"));
  }
  return f;
}

BlobHasher::BlobHasher() : chunk_state_(XXH3_createState()) {
  XXH3_64bits_reset(chunk_state_.get());
}

void BlobHasher::Update(const char* p, size_t n) {
  size_ += n;
  while (n > 0) {
    const size_t slice = static_cast<size_t>(
        std::min<uint64_t>({n, kHashSlice, kBlobChecksumChunk - chunk_fill_}));
    digest_.Update(p, slice);
    XXH3_64bits_update(chunk_state_.get(), p, slice);
    chunk_fill_ += slice;
    if (chunk_fill_ == kBlobChecksumChunk) {
      checksums_.push_back(XXH3_64bits_digest(chunk_state_.get()));
      XXH3_64bits_reset(chunk_state_.get());
      chunk_fill_ = 0;
    }
    p += slice;
    n -= slice;
  }
}

std::string BlobHasher::Trailer() {
  if (chunk_fill_ > 0) {
    checksums_.push_back(XXH3_64bits_digest(chunk_state_.get()));
    chunk_fill_ = 0;
  }
  std::string trailer(checksums_.size() * kBlobChecksumSize + kBlobFooterSize,
                      '\0');
  for (size_t i = 0; i < checksums_.size(); ++i) {
    StoreLE64(checksums_[i], &trailer[i * kBlobChecksumSize]);
  }
  char* footer = &trailer[checksums_.size() * kBlobChecksumSize];
  std::memcpy(footer, kFooterMagic, sizeof(kFooterMagic));
  StoreLE64(size_, footer + 8);
  StoreLE32(static_cast<uint32_t>(kBlobChecksumChunk), footer + 16);
  StoreLE32(static_cast<uint32_t>(checksums_.size()), footer + 20);
  return trailer;
}

std::vector<uint64_t> DecodeBlobChecksums(absl::string_view raw) {
  std::vector<uint64_t> checksums(raw.size() / kBlobChecksumSize);
  for (size_t i = 0; i < checksums.size(); ++i) {
    checksums[i] = LoadLE64(raw.data() + i * kBlobChecksumSize);
  }
  return checksums;
}

absl::Status ReadVerifiedBlobRange(
    const Digest& digest, absl::string_view where, const BlobFooter& footer,
    const std::vector<uint64_t>& checksums, uint64_t offset, uint64_t length,
    char* out, std::unique_ptr<char[]>& scratch,
    absl::FunctionRef<absl::Status(uint64_t first, uint64_t last, char* dst)>
        read_chunks) {
  const uint64_t size = footer.data_size;
  if (offset > size || length > size - offset) {
    return absl::OutOfRangeError(absl::StrCat(
        "read of ", length, " bytes at offset ", offset, " is past the end of ",
        "blob ", digest.Hex(), " (", size, " bytes)"));
  }
  if (length == 0) return absl::OkStatus();
  const uint64_t chunk = footer.chunk_size;
  const uint64_t end = offset + length;
  const uint64_t first = offset / chunk;
  const uint64_t last = (end - 1) / chunk;
  // Reads chunks a..b into dst and verifies each.
  auto read = [&](uint64_t a, uint64_t b, char* dst) -> absl::Status {
    CKPTD_RETURN_IF_ERROR(read_chunks(a, b, dst));
    const uint64_t begin = a * chunk;
    for (uint64_t c = a; c <= b; ++c) {
      const uint64_t cb = c * chunk;
      const uint64_t ce = std::min(cb + chunk, size);
      if (XXH3_64bits(dst + (cb - begin), ce - cb) != checksums[c]) {
        return absl::DataLossError(
            absl::StrCat("blob ", digest.Hex(), " is corrupt at offset ", cb,
                         ": bytes [", cb, ", ", ce,
                         ") do not match their stored checksum (", where, ")"));
      }
    }
    return absl::OkStatus();
  };
  auto covered = [&](uint64_t c) {
    return c * chunk >= offset && std::min((c + 1) * chunk, size) <= end;
  };
  // Partly requested chunks go through scratch space; the run of wholly
  // requested chunks between them is read straight into `out`.
  auto read_partial = [&](uint64_t c) -> absl::Status {
    if (scratch == nullptr) scratch.reset(new char[chunk]);
    CKPTD_RETURN_IF_ERROR(read(c, c, scratch.get()));
    const uint64_t cb = c * chunk;
    const uint64_t from = std::max(cb, offset);
    const uint64_t to = std::min({cb + chunk, size, end});
    std::memcpy(out + (from - offset), scratch.get() + (from - cb), to - from);
    return absl::OkStatus();
  };
  uint64_t whole_begin = first;  // [whole_begin, whole_end): chunk indexes
  uint64_t whole_end = last + 1;
  if (!covered(first)) {
    CKPTD_RETURN_IF_ERROR(read_partial(first));
    whole_begin = first + 1;
  }
  if (last >= whole_begin && !covered(last)) {
    CKPTD_RETURN_IF_ERROR(read_partial(last));
    whole_end = last;
  }
  if (whole_begin < whole_end) {
    CKPTD_RETURN_IF_ERROR(
        read(whole_begin, whole_end - 1, out + (whole_begin * chunk - offset)));
  }
  return absl::OkStatus();
}

}  // namespace ckptd::storage
