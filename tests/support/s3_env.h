// The S3 endpoint the S3 tests run against: the throwaway Ceph cluster that
// tests/s3/ceph-cluster starts (the ctest fixture `s3` does, and points
// CKPTD_S3_ENV at its DIR/s3.env), or any endpoint given by the variables
// CKPTD_S3_ENDPOINT, CKPTD_S3_REGION, CKPTD_S3_BUCKET, AWS_ACCESS_KEY_ID
// and AWS_SECRET_ACCESS_KEY.
#ifndef CKPTD_TESTS_SUPPORT_S3_ENV_H_
#define CKPTD_TESTS_SUPPORT_S3_ENV_H_

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "server/storage/s3_client.h"

namespace ckptd::testing {

struct S3TestEnv {
  std::string endpoint;
  std::string region;
  std::string bucket;
  std::string access_key_id;
  std::string secret_access_key;
  // Why there is none (empty when found).
  std::string missing;
};

inline S3TestEnv LoadS3TestEnv() {
  std::map<std::string, std::string> vars;
  for (const char* name :
       {"CKPTD_S3_ENDPOINT", "CKPTD_S3_REGION", "CKPTD_S3_BUCKET",
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}) {
    if (const char* v = std::getenv(name)) vars[name] = v;
  }
  if (const char* file = std::getenv("CKPTD_S3_ENV")) {
    std::ifstream in(file);
    std::string line;
    while (std::getline(in, line)) {
      absl::string_view l = line;
      if (!absl::ConsumePrefix(&l, "export ")) continue;
      const size_t eq = l.find('=');
      if (eq == absl::string_view::npos) continue;
      vars.emplace(std::string(l.substr(0, eq)), std::string(l.substr(eq + 1)));
    }
  }
  S3TestEnv env;
  env.endpoint = vars["CKPTD_S3_ENDPOINT"];
  env.region =
      vars.count("CKPTD_S3_REGION") ? vars["CKPTD_S3_REGION"] : "us-east-1";
  env.bucket = vars["CKPTD_S3_BUCKET"];
  env.access_key_id = vars["AWS_ACCESS_KEY_ID"];
  env.secret_access_key = vars["AWS_SECRET_ACCESS_KEY"];
  if (env.endpoint.empty() || env.bucket.empty() || env.access_key_id.empty() ||
      env.secret_access_key.empty()) {
    env.missing =
        "no S3 endpoint: run through ctest (its fixture starts a Ceph "
        "cluster with tests/s3/ceph-cluster), or set CKPTD_S3_ENV to the "
        "s3.env that `tests/s3/ceph-cluster start DIR` wrote";
  }
  return env;
}

// Client options for `env`, with short backoffs for tests.
inline storage::S3Options S3OptionsOf(const S3TestEnv& env) {
  storage::S3Options o;
  o.endpoint = env.endpoint;
  o.region = env.region;
  o.bucket = env.bucket;
  o.access_key_id = env.access_key_id;
  o.secret_access_key = env.secret_access_key;
  o.first_backoff = absl::Milliseconds(5);
  return o;
}

// A prefix no other test (or run of this one) uses: test/WHAT-PID-RANDOM.
inline std::string UniqueS3Prefix(absl::string_view what) {
  std::random_device rd;
  return absl::StrCat("test/", what, "-", ::getpid(), "-",
                      absl::Hex(uint64_t{rd()} << 32 | rd()));
}

}  // namespace ckptd::testing

#endif  // CKPTD_TESTS_SUPPORT_S3_ENV_H_
