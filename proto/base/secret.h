// Bearer tokens and their digests: what `ckpt token new` prints and what
// ckptd's --auth_file stores (the SHA-256 of a token, never the token).
//
// Thread safety: all functions are thread-safe.
#ifndef CKPTD_PROTO_BASE_SECRET_H_
#define CKPTD_PROTO_BASE_SECRET_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ckptd {

// Bytes of randomness in a token made by NewBearerToken (256 bits).
inline constexpr size_t kBearerTokenBytes = 32;

// A fresh token: "ckptd_" and 43 characters of unpadded base64url over
// kBearerTokenBytes from the operating system's CSPRNG.
absl::StatusOr<std::string> NewBearerToken();

// SHA-256 of `data`, 64 lowercase hex digits.
std::string Sha256Hex(absl::string_view data);

// Equality whose running time depends on the sizes only, not on where the
// inputs differ.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

}  // namespace ckptd

#endif  // CKPTD_PROTO_BASE_SECRET_H_
