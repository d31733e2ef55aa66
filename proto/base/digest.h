// Content digests and chunk checksums.
//
// A blob is addressed by the XXH3-128 of its bytes, kept as 16 bytes in
// canonical (big-endian) order, which is also the wire form. Chunks on the
// wire carry an XXH3-64 checksum. All functions are thread-safe.
#ifndef CKPTD_PROTO_BASE_DIGEST_H_
#define CKPTD_PROTO_BASE_DIGEST_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ckptd {

struct Digest {
  std::array<uint8_t, 16> bytes{};

  absl::string_view AsBytes() const {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }
  std::string Hex() const;
  friend bool operator==(const Digest&, const Digest&) = default;
  friend auto operator<=>(const Digest&, const Digest&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const Digest& d) {
    return H::combine(std::move(h), d.AsBytes());
  }
};

// Parses the 16-byte wire form; INVALID_ARGUMENT names the bad length.
absl::StatusOr<Digest> DigestFromBytes(absl::string_view bytes);
// Parses 32 lowercase hex characters.
absl::StatusOr<Digest> DigestFromHex(absl::string_view hex);

Digest DigestOf(const void* data, size_t size);
uint64_t ChunkChecksum(const void* data, size_t size);

// Streaming XXH3-128. Not thread-safe; copyable.
class DigestBuilder {
 public:
  DigestBuilder();
  DigestBuilder(const DigestBuilder&);
  DigestBuilder& operator=(const DigestBuilder&);
  ~DigestBuilder();
  void Update(const void* data, size_t size);
  Digest Finish() const;

 private:
  void* state_;  // XXH3_state_t*
};

}  // namespace ckptd

#endif  // CKPTD_PROTO_BASE_DIGEST_H_
