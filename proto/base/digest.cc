#include "proto/base/digest.h"

#include <xxhash.h>

#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace ckptd {
namespace {

Digest FromHash(XXH128_hash_t h) {
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, h);
  Digest d;
  std::memcpy(d.bytes.data(), canonical.digest, 16);
  return d;
}

}  // namespace

std::string Digest::Hex() const { return absl::BytesToHexString(AsBytes()); }

absl::StatusOr<Digest> DigestFromBytes(absl::string_view bytes) {
  if (bytes.size() != 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("digest must be 16 bytes (XXH3-128), got ", bytes.size()));
  }
  Digest d;
  std::memcpy(d.bytes.data(), bytes.data(), 16);
  return d;
}

absl::StatusOr<Digest> DigestFromHex(absl::string_view hex) {
  if (hex.size() != 32 ||
      hex.find_first_not_of("0123456789abcdef") != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("digest must be 32 lowercase hex characters, got '",
                     absl::CHexEscape(hex), "'"));
  }
  return DigestFromBytes(absl::HexStringToBytes(hex));
}

Digest DigestOf(const void* data, size_t size) {
  return FromHash(XXH3_128bits(data, size));
}

uint64_t ChunkChecksum(const void* data, size_t size) {
  return XXH3_64bits(data, size);
}

DigestBuilder::DigestBuilder() : state_(XXH3_createState()) {
  XXH3_128bits_reset(static_cast<XXH3_state_t*>(state_));
}
DigestBuilder::DigestBuilder(const DigestBuilder& other)
    : state_(XXH3_createState()) {
  XXH3_copyState(static_cast<XXH3_state_t*>(state_),
                 static_cast<const XXH3_state_t*>(other.state_));
}
DigestBuilder& DigestBuilder::operator=(const DigestBuilder& other) {
  if (this != &other) {
    XXH3_copyState(static_cast<XXH3_state_t*>(state_),
                   static_cast<const XXH3_state_t*>(other.state_));
  }
  return *this;
}
DigestBuilder::~DigestBuilder() {
  XXH3_freeState(static_cast<XXH3_state_t*>(state_));
}
void DigestBuilder::Update(const void* data, size_t size) {
  XXH3_128bits_update(static_cast<XXH3_state_t*>(state_), data, size);
}
Digest DigestBuilder::Finish() const {
  return FromHash(XXH3_128bits_digest(static_cast<XXH3_state_t*>(state_)));
}

}  // namespace ckptd
