// The stored form of a blob, shared by every BlobStore that keeps bytes in
// files or objects (file_blob_store.cc, s3_blob_store.cc):
//
//   data            data_size bytes
//   checksums       chunk_count x u64 LE: XXH3-64 of each chunk_size
//                   (kBlobChecksumChunk, 1 MiB) chunk of data; the last chunk
//                   may be short; an empty blob has no chunks
//   footer          24 bytes: magic "CKPTBLB1", data_size u64 LE,
//                   chunk_size u32 LE, chunk_count u32 LE
//
// The footer is self-checking: chunk_count == ceil(data_size / chunk_size)
// and stored size == data_size + 8 * chunk_count + 24. Readers read whole
// chunks and verify each against its checksum before returning any of its
// bytes.
//
// Thread safety: BlobHasher is used by one thread at a time; the functions
// are pure.
#ifndef CKPTD_SERVER_STORAGE_BLOB_FORMAT_H_
#define CKPTD_SERVER_STORAGE_BLOB_FORMAT_H_

#include <xxhash.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/base/digest.h"

namespace ckptd::storage {

inline constexpr size_t kBlobFooterSize = 24;
inline constexpr size_t kBlobChecksumSize = 8;
// Footers claiming chunks larger than this are refused: a reader allocates
// one chunk of scratch space.
inline constexpr uint64_t kMaxBlobChunkSize = 64 << 20;

struct BlobFooter {
  uint64_t data_size = 0;
  uint32_t chunk_size = 0;
  uint32_t chunk_count = 0;
};

// Little-endian 64-bit integers, as the stored forms (blobs, records) hold
// them.
void StoreLE64(uint64_t v, char* p);
uint64_t LoadLE64(const char* p);

uint64_t BlobChunkCount(uint64_t data_size, uint64_t chunk_size);
// Bytes the stored form of `data_size` data bytes takes (1 MiB chunks).
uint64_t StoredBlobSize(uint64_t data_size);
// The data size whose stored form is `stored_size` bytes, or nullopt when no
// data size gives it (not a blob).
std::optional<uint64_t> DataSizeOfStoredBlob(uint64_t stored_size);

// Decodes the last kBlobFooterSize bytes of a stored blob of `stored_size`
// bytes. On failure the message says what is wrong ("bad footer magic
// (truncated?)", "inconsistent footer (...)"); the caller names the blob.
absl::StatusOr<BlobFooter> DecodeBlobFooter(absl::string_view footer,
                                            uint64_t stored_size);

// Streams data in: the blob's digest, its chunk checksums and, at the end,
// the trailer (checksums + footer) to store after the data.
class BlobHasher {
 public:
  BlobHasher();
  void Update(const char* p, size_t n);
  uint64_t size() const { return size_; }
  // The digest of the bytes so far (the hasher goes on).
  Digest digest() const { return digest_.Finish(); }
  // Closes the last chunk and returns checksums + footer. Call once, after
  // the last Update.
  std::string Trailer();

 private:
  struct XxhStateFree {
    void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
  };

  uint64_t size_ = 0;
  DigestBuilder digest_;
  std::unique_ptr<XXH3_state_t, XxhStateFree> chunk_state_;
  uint64_t chunk_fill_ = 0;          // bytes of the current, open chunk
  std::vector<uint64_t> checksums_;  // of the completed chunks
};

// Decodes `raw`, footer.chunk_count checksums of 8 bytes.
std::vector<uint64_t> DecodeBlobChecksums(absl::string_view raw);

// Reads [offset, offset + length) of a blob's data into `out`, chunk-wise:
// `read_chunks(first, last, dst)` must fill dst with the stored bytes of
// chunks first..last (it is not asked for anything else). Partly requested
// chunks go through `scratch` (allocated on first use, one chunk); every
// chunk is verified against `checksums` before its bytes are copied.
// OUT_OF_RANGE past the end; DATA_LOSS naming `digest`, the chunk's offset
// and `where` (e.g. "file PATH") on a checksum mismatch.
absl::Status ReadVerifiedBlobRange(
    const Digest& digest, absl::string_view where, const BlobFooter& footer,
    const std::vector<uint64_t>& checksums, uint64_t offset, uint64_t length,
    char* out, std::unique_ptr<char[]>& scratch,
    absl::FunctionRef<absl::Status(uint64_t first, uint64_t last, char* dst)>
        read_chunks);

}  // namespace ckptd::storage

#endif  // CKPTD_SERVER_STORAGE_BLOB_FORMAT_H_
