#include "server/service/blob_cursor.h"

#include "absl/strings/str_cat.h"
#include "proto/base/status.h"

namespace ckptd::service {

BlobCursor::BlobCursor(core::ReadLease* lease,
                       std::vector<core::BlobSlice> slices, uint64_t chunk_size)
    : lease_(lease), slices_(std::move(slices)), chunk_size_(chunk_size) {}

absl::Status BlobCursor::CheckIntact() {
  checked_ = true;
  std::vector<Digest> digests;
  digests.reserve(slices_.size());
  for (const core::BlobSlice& s : slices_) digests.push_back(s.digest);
  return lease_->CheckIntact(digests);
}

absl::StatusOr<std::optional<BlobCursor::Chunk>> BlobCursor::Next(
    std::string* out) {
  if (!checked_) CKPTD_RETURN_IF_ERROR(CheckIntact());
  while (slice_ < slices_.size()) {
    const core::BlobSlice& s = slices_[slice_];
    if (reader_ == nullptr) {
      CKPTD_ASSIGN_OR_RETURN(reader_, lease_->Open(s.digest));
      const uint64_t size = reader_->size();
      end_ = s.length == 0 ? size : s.offset + s.length;
      if (s.offset > size || end_ > size || end_ < s.offset) {
        return absl::OutOfRangeError(
            absl::StrCat("range [", s.offset, ", ", end_, ") of blob ",
                         s.digest.Hex(), " is outside its ", size, " bytes"));
      }
      offset_ = s.offset;
    }
    if (offset_ >= end_) {
      reader_.reset();
      ++slice_;
      continue;
    }
    const uint64_t n = std::min(chunk_size_, end_ - offset_);
    out->resize(n);
    CKPTD_RETURN_IF_ERROR(reader_->ReadAt(offset_, n, out->data()));
    Chunk chunk{slice_, offset_};
    offset_ += n;
    return chunk;
  }
  return std::nullopt;
}

}  // namespace ckptd::service
