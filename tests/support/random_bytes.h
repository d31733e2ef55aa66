// RandomBytes: deterministic test payloads (nothing dedups or compresses).
#ifndef CKPTD_TESTS_SUPPORT_RANDOM_BYTES_H_
#define CKPTD_TESTS_SUPPORT_RANDOM_BYTES_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>

namespace ckptd::testing {

// `n` bytes from a generator seeded with `seed`: the same call gives the
// same bytes, different seeds differ everywhere.
inline std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t v = rng();
    std::memcpy(&s[i], &v, std::min<size_t>(8, n - i));
  }
  return s;
}

}  // namespace ckptd::testing

#endif  // CKPTD_TESTS_SUPPORT_RANDOM_BYTES_H_
