// S3Client: the few S3 API calls the S3 blob store needs, over libcurl with
// its built-in AWS SigV4 signing (CURLOPT_AWS_SIGV4), path-style URLs
// (ENDPOINT/BUCKET/KEY), so that it works against Ceph's radosgw, MinIO and
// AWS alike.
//
// Requests are signed with x-amz-content-sha256: UNSIGNED-PAYLOAD (the blob
// store checks its own checksums on every read). Query strings are built
// sorted and URI-encoded as SigV4's canonical form wants them; valueless
// parameters are sent as `name=` (radosgw refuses `?uploads` without it).
//
// Retries: a request that fails in transport (refused, reset, timed out,
// cut short) or answers 500, 502, 503 (SlowDown), 504 or 429 is retried up
// to max_attempts times in all, with exponential backoff and full jitter.
// Any other answer is returned to the caller as it is.
//
// Errors name the call, s3://BUCKET/KEY and S3's own error code and
// message: NOT_FOUND (NoSuchKey), FAILED_PRECONDITION (NoSuchBucket, a
// failed If-Match), PERMISSION_DENIED (AccessDenied, bad signature or
// keys), UNAVAILABLE (transport, or 5xx after the last retry), INTERNAL
// (anything else).
//
// Thread safety: all methods may be called concurrently. Connections are
// kept in a pool of curl handles and reused.
#ifndef CKPTD_SERVER_STORAGE_S3_CLIENT_H_
#define CKPTD_SERVER_STORAGE_S3_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace ckptd::storage {

struct S3Options {
  // http://HOST[:PORT] or https://HOST[:PORT]; no path.
  std::string endpoint;
  std::string region = "us-east-1";
  std::string bucket;
  std::string access_key_id;
  std::string secret_access_key;
  // Attempts per request, the first included.
  int max_attempts = 10;
  absl::Duration first_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(5);
  absl::Duration connect_timeout = absl::Seconds(10);
  // A transfer slower than 1 KiB/s for this long is abandoned (and retried).
  absl::Duration stall_timeout = absl::Seconds(60);
  // For fault tests: called before every attempt of every request with the
  // call's name ("PutObject", "UploadPart", ...); a non-OK result fails
  // that attempt as a transport error would (retried like one when
  // `retryable` is set on return).
  std::function<absl::Status(absl::string_view call, bool& retryable)>
      fault_hook;
};

// OK, or INVALID_ARGUMENT naming the field, the bad value and the rule.
absl::Status ValidateS3Options(const S3Options& options);
// S3's bucket naming rules: 3-63 of [a-z0-9.-], starting and ending with a
// letter or digit.
absl::Status ValidateBucketName(absl::string_view bucket);

// Reads keys from an AWS-style credentials file into `options`:
//
//   [default]
//   aws_access_key_id = AKIA...
//   aws_secret_access_key = ...
//
// The [default] section is used (or the keys outside any section). The file
// must not be readable by others (mode 0600 or 0640). INVALID_ARGUMENT
// naming the path, the line and the fix otherwise.
absl::Status ReadS3CredentialsFile(const std::string& path, S3Options& options);

class S3Client {
 public:
  struct ObjectEntry {
    std::string key;
    uint64_t size = 0;
  };
  struct UploadEntry {
    std::string key;
    std::string upload_id;
  };
  struct ObjectInfo {
    uint64_t size = 0;
    std::string etag;
  };

  static absl::StatusOr<std::unique_ptr<S3Client>> Create(S3Options options);
  ~S3Client();
  S3Client(const S3Client&) = delete;
  S3Client& operator=(const S3Client&) = delete;

  const S3Options& options() const { return options_; }
  // s3://BUCKET/KEY, for messages.
  std::string Describe(absl::string_view key) const;

  // HEAD of the bucket: checks endpoint, keys and bucket.
  absl::Status CheckBucket();
  // nullopt when the object does not exist.
  absl::StatusOr<std::optional<ObjectInfo>> Head(absl::string_view key);
  // PUT of the concatenation of `body`.
  absl::Status Put(absl::string_view key,
                   absl::Span<const absl::string_view> body);
  // GET of bytes [offset, offset + length) into `out`; FAILED_PRECONDITION
  // when `if_match` is set and the object's ETag is no longer it.
  absl::Status GetRange(absl::string_view key, uint64_t offset, uint64_t length,
                        char* out, absl::string_view if_match = "");
  absl::StatusOr<std::string> Get(absl::string_view key);
  // OK also when the object does not exist.
  absl::Status Delete(absl::string_view key);

  absl::StatusOr<std::string> CreateMultipartUpload(absl::string_view key);
  // Returns the part's ETag. `part_number` counts from 1.
  absl::StatusOr<std::string> UploadPart(
      absl::string_view key, absl::string_view upload_id, int part_number,
      absl::Span<const absl::string_view> body);
  absl::Status CompleteMultipartUpload(absl::string_view key,
                                       absl::string_view upload_id,
                                       const std::vector<std::string>& etags);
  // OK also when the upload is gone.
  absl::Status AbortMultipartUpload(absl::string_view key,
                                    absl::string_view upload_id);

  // Every object whose key starts with `prefix`, in key order; with
  // `start_after`, only those whose key sorts after it.
  absl::Status ListObjects(absl::string_view prefix,
                           absl::FunctionRef<void(const ObjectEntry&)> fn,
                           absl::string_view start_after = "");
  // Every multipart upload in progress whose key starts with `prefix`.
  absl::Status ListMultipartUploads(
      absl::string_view prefix, absl::FunctionRef<void(const UploadEntry&)> fn);

 private:
  struct Request;
  struct Response;

  explicit S3Client(S3Options options);
  // One request with retries. Transport failures after the last attempt are
  // UNAVAILABLE; any HTTP answer is returned.
  absl::StatusOr<Response> Perform(const Request& req);
  // One attempt; `retryable` says whether a failure may be tried again.
  absl::StatusOr<Response> Attempt(void* curl, const Request& req,
                                   bool& retryable);
  void* AcquireHandle();
  void ReleaseHandle(void* curl);

  const S3Options options_;
  const std::string sigv4_;    // "aws:amz:REGION:s3"
  const std::string userpwd_;  // "KEY:SECRET"
  absl::Mutex mu_;
  std::vector<void*> idle_ ABSL_GUARDED_BY(mu_);  // CURL*
};

}  // namespace ckptd::storage

#endif  // CKPTD_SERVER_STORAGE_S3_CLIENT_H_
