#include "server/storage/s3_client.h"

#include <curl/curl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "proto/base/status.h"

namespace ckptd::storage {
namespace {

// The most an error body is kept (S3 error documents are small).
constexpr size_t kMaxErrorBody = 64 << 10;
// The most a listing or other XML answer may be.
constexpr size_t kMaxXmlBody = 16 << 20;

void GlobalInitOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

// RFC 3986 unreserved characters stay; everything else is %XX (uppercase),
// as SigV4's canonical query string wants.
std::string UriEncode(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' ||
        c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppendFormat(&out, "%%%02X", c);
    }
  }
  return out;
}

// Sorted name=value pairs, encoded.
std::string Query(std::vector<std::pair<std::string, std::string>> params) {
  std::sort(params.begin(), params.end());
  std::vector<std::string> parts;
  parts.reserve(params.size());
  for (const auto& [k, v] : params) {
    parts.push_back(absl::StrCat(UriEncode(k), "=", UriEncode(v)));
  }
  return absl::StrJoin(parts, "&");
}

std::string XmlUnescape(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out.push_back(s[i]);
      continue;
    }
    static constexpr std::pair<absl::string_view, char> kEntities[] = {
        {"&amp;", '&'},
        {"&lt;", '<'},
        {"&gt;", '>'},
        {"&quot;", '"'},
        {"&apos;", '\''}};
    bool done = false;
    for (const auto& [name, c] : kEntities) {
      if (s.substr(i, name.size()) == name) {
        out.push_back(c);
        i += name.size() - 1;
        done = true;
        break;
      }
    }
    if (!done) out.push_back('&');
  }
  return out;
}

// The contents of each <tag>...</tag> in `xml`, in order (not nested tags
// of the same name, which S3's answers do not have).
std::vector<absl::string_view> XmlElements(absl::string_view xml,
                                           absl::string_view tag) {
  std::vector<absl::string_view> out;
  const std::string open = absl::StrCat("<", tag, ">");
  const std::string close = absl::StrCat("</", tag, ">");
  size_t pos = 0;
  while (true) {
    const size_t b = xml.find(open, pos);
    if (b == absl::string_view::npos) break;
    const size_t e = xml.find(close, b + open.size());
    if (e == absl::string_view::npos) break;
    out.push_back(xml.substr(b + open.size(), e - b - open.size()));
    pos = e + close.size();
  }
  return out;
}

std::string XmlFirst(absl::string_view xml, absl::string_view tag) {
  std::vector<absl::string_view> all = XmlElements(xml, tag);
  return all.empty() ? std::string() : XmlUnescape(all.front());
}

bool RetryableHttp(long code) {
  return code == 500 || code == 502 || code == 503 || code == 504 ||
         code == 429;
}

bool RetryableCurl(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return true;
    default:
      return false;
  }
}

std::string ToLower(absl::string_view s) { return absl::AsciiStrToLower(s); }

}  // namespace

struct S3Client::Request {
  std::string call;    // "PutObject", for messages and the fault hook
  std::string method;  // GET, PUT, POST, DELETE, HEAD
  std::string key;     // empty: the bucket itself
  std::string query;   // encoded, sorted; without '?'
  absl::Span<const absl::string_view> body;
  std::vector<std::string> headers;
  // GET into a caller's buffer of exactly this many bytes (else into
  // Response::body, up to max_body).
  char* out = nullptr;
  uint64_t out_size = 0;
  size_t max_body = kMaxXmlBody;
};

struct S3Client::Response {
  long code = 0;
  std::string body;
  std::string etag;
  uint64_t content_length = 0;
  bool has_content_length = false;
  uint64_t received = 0;  // bytes written to Request::out
};

absl::Status ValidateBucketName(absl::string_view bucket) {
  bool ok = bucket.size() >= 3 && bucket.size() <= 63;
  for (char c : bucket) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                c == '-');
  }
  ok = ok && absl::ascii_isalnum(bucket.front()) &&
       absl::ascii_isalnum(bucket.back());
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad S3 bucket name '", bucket,
        "': a bucket name is 3 to 63 lowercase letters, digits, '.' and '-', "
        "starting and ending with a letter or digit"));
  }
  return absl::OkStatus();
}

absl::Status ValidateS3Options(const S3Options& o) {
  absl::string_view rest = o.endpoint;
  if (!absl::ConsumePrefix(&rest, "http://") &&
      !absl::ConsumePrefix(&rest, "https://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad S3 endpoint '", o.endpoint,
                     "': give it as http://HOST[:PORT] or https://HOST[:PORT] "
                     "(--s3_endpoint)"));
  }
  absl::ConsumeSuffix(&rest, "/");
  if (rest.empty() || absl::StrContains(rest, "/") ||
      absl::StrContains(rest, "?") || absl::StrContains(rest, "@")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad S3 endpoint '", o.endpoint,
        "': only a scheme, a host and a port, no path, query or user "
        "(--s3_endpoint); the bucket goes in --blob_store s3://BUCKET/PREFIX"));
  }
  bool region_ok = !o.region.empty() && o.region.size() <= 64;
  for (char c : o.region) {
    region_ok = region_ok && (absl::ascii_isalnum(c) || c == '-' || c == '_');
  }
  if (!region_ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad S3 region '", o.region,
        "': letters, digits, '-' and '_', e.g. us-east-1 (--s3_region)"));
  }
  CKPTD_RETURN_IF_ERROR(ValidateBucketName(o.bucket));
  if (o.access_key_id.empty() || o.secret_access_key.empty()) {
    return absl::InvalidArgumentError(
        "S3 keys are missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "or give --s3_credentials_file");
  }
  for (absl::string_view k : {absl::string_view(o.access_key_id),
                              absl::string_view(o.secret_access_key)}) {
    for (char c : k) {
      if (static_cast<unsigned char>(c) <= ' ' || c == ':' || c == 0x7f) {
        return absl::InvalidArgumentError(
            "S3 keys may not hold spaces, control characters or ':'; check "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the credentials "
            "file");
      }
    }
  }
  if (o.max_attempts < 1 || o.max_attempts > 100) {
    return absl::InvalidArgumentError(absl::StrCat(
        "S3 max_attempts ", o.max_attempts, " is outside [1, 100]"));
  }
  return absl::OkStatus();
}

absl::Status ReadS3CredentialsFile(const std::string& path,
                                   S3Options& options) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("--s3_credentials_file ", path, ": ", why));
  };
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return ErrnoToStatus(errno, absl::StrCat("--s3_credentials_file ", path));
  }
  if (!S_ISREG(st.st_mode)) return bad("not a regular file");
  if ((st.st_mode & S_IRWXO) != 0) {
    return bad(
        absl::StrFormat("mode %04o lets every user read the keys; chmod 600 it",
                        st.st_mode & 07777));
  }
  if (st.st_size > (1 << 20)) return bad("larger than 1 MiB");
  std::ifstream in(path);
  if (!in) return bad("cannot be read");
  std::string line;
  std::string section;
  std::string key_id, secret;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    absl::string_view l = absl::StripAsciiWhitespace(line);
    if (l.empty() || l[0] == '#' || l[0] == ';') continue;
    if (l.front() == '[') {
      if (l.back() != ']') {
        return bad(absl::StrCat("line ", n, ": a section header is [NAME]"));
      }
      section =
          std::string(absl::StripAsciiWhitespace(l.substr(1, l.size() - 2)));
      continue;
    }
    const size_t eq = l.find('=');
    if (eq == absl::string_view::npos) {
      return bad(absl::StrCat("line ", n, ": expected NAME = VALUE"));
    }
    if (!section.empty() && section != "default") continue;
    const std::string name =
        absl::AsciiStrToLower(absl::StripAsciiWhitespace(l.substr(0, eq)));
    const std::string value(absl::StripAsciiWhitespace(l.substr(eq + 1)));
    if (name == "aws_access_key_id") key_id = value;
    if (name == "aws_secret_access_key") secret = value;
  }
  if (key_id.empty() || secret.empty()) {
    return bad(
        "no aws_access_key_id and aws_secret_access_key in its [default] "
        "section");
  }
  options.access_key_id = std::move(key_id);
  options.secret_access_key = std::move(secret);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<S3Client>> S3Client::Create(S3Options options) {
  CKPTD_RETURN_IF_ERROR(ValidateS3Options(options));
  GlobalInitOnce();
  while (absl::EndsWith(options.endpoint, "/")) options.endpoint.pop_back();
  return std::unique_ptr<S3Client>(new S3Client(std::move(options)));
}

S3Client::S3Client(S3Options options)
    : options_(std::move(options)),
      sigv4_(absl::StrCat("aws:amz:", options_.region, ":s3")),
      userpwd_(absl::StrCat(options_.access_key_id, ":",
                            options_.secret_access_key)) {}

S3Client::~S3Client() {
  absl::MutexLock lock(&mu_);
  for (void* h : idle_) curl_easy_cleanup(static_cast<CURL*>(h));
}

std::string S3Client::Describe(absl::string_view key) const {
  return absl::StrCat("s3://", options_.bucket, "/", key);
}

void* S3Client::AcquireHandle() {
  {
    absl::MutexLock lock(&mu_);
    if (!idle_.empty()) {
      void* h = idle_.back();
      idle_.pop_back();
      return h;
    }
  }
  return curl_easy_init();
}

void S3Client::ReleaseHandle(void* curl) {
  absl::MutexLock lock(&mu_);
  idle_.push_back(curl);
}

namespace {

struct Transfer {
  // Upload side.
  absl::Span<const absl::string_view> body;
  size_t piece = 0;
  size_t piece_off = 0;
  // Download side.
  char* out = nullptr;
  uint64_t out_size = 0;
  uint64_t received = 0;
  bool overflow = false;
  std::string* body_out = nullptr;
  size_t max_body = 0;
  // Headers.
  std::string etag;
};

size_t ReadBody(char* dst, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t want = size * n;
  size_t done = 0;
  while (done < want && t->piece < t->body.size()) {
    absl::string_view p = t->body[t->piece];
    const size_t take = std::min(want - done, p.size() - t->piece_off);
    std::memcpy(dst + done, p.data() + t->piece_off, take);
    done += take;
    t->piece_off += take;
    if (t->piece_off == p.size()) {
      ++t->piece;
      t->piece_off = 0;
    }
  }
  return done;
}

size_t WriteBody(char* src, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t len = size * n;
  if (t->out != nullptr) {
    if (t->received + len > t->out_size) {
      t->overflow = true;
      return 0;  // aborts the transfer
    }
    std::memcpy(t->out + t->received, src, len);
  } else if (t->body_out != nullptr) {
    if (t->body_out->size() + len > t->max_body) {
      t->overflow = true;
      return 0;
    }
    t->body_out->append(src, len);
  }
  t->received += len;
  return len;
}

size_t Header(char* src, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  absl::string_view line(src, size * n);
  const size_t colon = line.find(':');
  if (colon != absl::string_view::npos &&
      ToLower(line.substr(0, colon)) == "etag") {
    t->etag = std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
  }
  return size * n;
}

}  // namespace

absl::StatusOr<S3Client::Response> S3Client::Attempt(void* handle,
                                                     const Request& req,
                                                     bool& retryable) {
  retryable = false;
  CURL* curl = static_cast<CURL*>(handle);
  curl_easy_reset(curl);
  std::string url = absl::StrCat(options_.endpoint, "/", options_.bucket);
  if (!req.key.empty()) absl::StrAppend(&url, "/", req.key);
  if (!req.query.empty()) absl::StrAppend(&url, "?", req.query);

  Transfer t;
  t.body = req.body;
  std::string body_buf;
  Response resp;
  if (req.out != nullptr) {
    t.out = req.out;
    t.out_size = req.out_size;
  } else {
    t.body_out = &resp.body;
    t.max_body = req.max_body;
  }
  uint64_t body_size = 0;
  for (absl::string_view p : req.body) body_size += p.size();

  curl_slist* headers = nullptr;
  headers =
      curl_slist_append(headers, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
  for (const std::string& h : req.headers) {
    headers = curl_slist_append(headers, h.c_str());
  }

  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_AWS_SIGV4, sigv4_.c_str());
  curl_easy_setopt(curl, CURLOPT_USERPWD, userpwd_.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(
      curl, CURLOPT_CONNECTTIMEOUT_MS,
      static_cast<long>(absl::ToInt64Milliseconds(options_.connect_timeout)));
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME,
                   static_cast<long>(std::max<int64_t>(
                       1, absl::ToInt64Seconds(options_.stall_timeout))));
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &WriteBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &Header);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(curl, CURLOPT_TCP_NODELAY, 1L);
  // Bodies follow their headers at once, without waiting for a
  // "100 Continue". (Removing the Expect header instead would break the
  // signature: curl signs the empty header it then does not send.)
  curl_easy_setopt(curl, CURLOPT_EXPECT_100_TIMEOUT_MS, 0L);
  if (req.method == "PUT") {
    curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(curl, CURLOPT_READFUNCTION, &ReadBody);
    curl_easy_setopt(curl, CURLOPT_READDATA, &t);
    curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE,
                     static_cast<curl_off_t>(body_size));
  } else if (req.method == "POST") {
    for (absl::string_view p : req.body) body_buf.append(p.data(), p.size());
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                     static_cast<curl_off_t>(body_buf.size()));
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body_buf.c_str());
  } else if (req.method == "HEAD") {
    curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
  } else if (req.method != "GET") {
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  }

  const CURLcode rc = curl_easy_perform(curl);
  curl_slist_free_all(headers);
  if (rc != CURLE_OK) {
    // A body larger than asked for is not the network's fault.
    const bool overflow = t.overflow && rc == CURLE_WRITE_ERROR;
    retryable = !overflow && RetryableCurl(rc);
    return absl::UnavailableError(absl::StrCat(
        req.call, " ", Describe(req.key), " at ", options_.endpoint, ": ",
        overflow ? "the answer is larger than expected"
                 : curl_easy_strerror(rc),
        " (curl error ", static_cast<int>(rc), ")"));
  }
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp.code);
  curl_off_t length = -1;
  if (curl_easy_getinfo(curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length) ==
          CURLE_OK &&
      length >= 0) {
    resp.content_length = static_cast<uint64_t>(length);
    resp.has_content_length = true;
  }
  resp.etag = std::move(t.etag);
  resp.received = t.received;
  return resp;
}

absl::StatusOr<S3Client::Response> S3Client::Perform(const Request& req) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  absl::Duration backoff = options_.first_backoff;
  absl::Status last;
  for (int attempt = 1; attempt <= options_.max_attempts; ++attempt) {
    if (attempt > 1) {
      std::uniform_int_distribution<int64_t> jitter(
          0, std::max<int64_t>(1, absl::ToInt64Microseconds(backoff)));
      absl::SleepFor(absl::Microseconds(jitter(rng)));
      backoff = std::min(backoff * 2, options_.max_backoff);
    }
    if (options_.fault_hook) {
      bool retryable = false;
      absl::Status injected = options_.fault_hook(req.call, retryable);
      if (!injected.ok()) {
        last = absl::UnavailableError(absl::StrCat(
            req.call, " ", Describe(req.key), ": ", injected.message()));
        if (retryable) continue;
        return last;
      }
    }
    void* curl = AcquireHandle();
    if (curl == nullptr) return absl::ResourceExhaustedError("curl_easy_init");
    bool retryable = false;
    absl::StatusOr<Response> resp = Attempt(curl, req, retryable);
    ReleaseHandle(curl);
    if (!resp.ok()) {
      last = resp.status();
      if (retryable) continue;
      return last;
    }
    if (RetryableHttp(resp->code) && attempt < options_.max_attempts) {
      last = absl::UnavailableError(absl::StrCat(
          req.call, " ", Describe(req.key), ": HTTP ", resp->code));
      continue;
    }
    return resp;
  }
  return absl::UnavailableError(absl::StrCat(
      last.message(), " (gave up after ", options_.max_attempts, " attempts)"));
}

namespace {

// The error an S3 answer of a failed call stands for.
absl::Status HttpError(absl::string_view call, const std::string& where,
                       long code, absl::string_view body) {
  const std::string s3_code = XmlFirst(body, "Code");
  const std::string message = XmlFirst(body, "Message");
  std::string text = absl::StrCat(call, " ", where, ": HTTP ", code);
  if (!s3_code.empty()) absl::StrAppend(&text, " ", s3_code);
  if (!message.empty()) absl::StrAppend(&text, ": ", message);
  if (code == 403 || s3_code == "AccessDenied" ||
      s3_code == "SignatureDoesNotMatch" || s3_code == "InvalidAccessKeyId") {
    return absl::PermissionDeniedError(absl::StrCat(
        text,
        "; check the keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or "
        "--s3_credentials_file), --s3_region and the bucket's policy"));
  }
  if (s3_code == "NoSuchBucket") {
    return absl::FailedPreconditionError(
        absl::StrCat(text, "; create the bucket or fix --blob_store"));
  }
  if (code == 412) return absl::FailedPreconditionError(text);
  if (code == 404) return absl::NotFoundError(text);
  if (code >= 500) return absl::UnavailableError(text);
  return absl::InternalError(text);
}

std::string PartsXml(const std::vector<std::string>& etags) {
  std::string xml = "<CompleteMultipartUpload>";
  for (size_t i = 0; i < etags.size(); ++i) {
    absl::StrAppend(&xml, "<Part><PartNumber>", i + 1, "</PartNumber><ETag>",
                    etags[i], "</ETag></Part>");
  }
  absl::StrAppend(&xml, "</CompleteMultipartUpload>");
  return xml;
}

}  // namespace

absl::Status S3Client::CheckBucket() {
  Request req{.call = "HeadBucket", .method = "HEAD"};
  CKPTD_ASSIGN_OR_RETURN(Response resp, Perform(req));
  if (resp.code == 200) return absl::OkStatus();
  if (resp.code == 404) {
    return absl::FailedPreconditionError(absl::StrCat(
        "HeadBucket s3://", options_.bucket, " at ", options_.endpoint,
        ": the bucket does not exist; create it or fix --blob_store"));
  }
  return HttpError(req.call,
                   absl::StrCat(Describe(""), " at ", options_.endpoint),
                   resp.code, resp.body);
}

absl::StatusOr<std::optional<S3Client::ObjectInfo>> S3Client::Head(
    absl::string_view key) {
  Request req{.call = "HeadObject", .method = "HEAD", .key = std::string(key)};
  CKPTD_ASSIGN_OR_RETURN(Response resp, Perform(req));
  if (resp.code == 404) return std::nullopt;
  if (resp.code != 200) {
    return HttpError(req.call, Describe(key), resp.code, resp.body);
  }
  if (!resp.has_content_length) {
    return absl::InternalError(
        absl::StrCat("HeadObject ", Describe(key), ": no Content-Length"));
  }
  return ObjectInfo{.size = resp.content_length, .etag = resp.etag};
}

absl::Status S3Client::Put(absl::string_view key,
                           absl::Span<const absl::string_view> body) {
  Request req{.call = "PutObject",
              .method = "PUT",
              .key = std::string(key),
              .body = body};
  CKPTD_ASSIGN_OR_RETURN(Response resp, Perform(req));
  if (resp.code != 200) {
    return HttpError(req.call, Describe(key), resp.code, resp.body);
  }
  return absl::OkStatus();
}

absl::Status S3Client::GetRange(absl::string_view key, uint64_t offset,
                                uint64_t length, char* out,
                                absl::string_view if_match) {
  if (length == 0) return absl::OkStatus();
  Request req{.call = "GetObject", .method = "GET", .key = std::string(key)};
  req.headers.push_back(
      absl::StrCat("Range: bytes=", offset, "-", offset + length - 1));
  if (!if_match.empty()) {
    req.headers.push_back(absl::StrCat("If-Match: ", if_match));
  }
  // The error body of a failed GET goes to Response::body: only a 206 is
  // written into `out`. The buffer is filled by the last attempt alone.
  req.out = out;
  req.out_size = length;
  CKPTD_ASSIGN_OR_RETURN(Response resp, Perform(req));
  if (resp.code != 206 && resp.code != 200) {
    return HttpError(req.call, Describe(key), resp.code,
                     absl::string_view(out, std::min<uint64_t>(resp.received,
                                                               kMaxErrorBody)));
  }
  if (resp.received != length) {
    return absl::DataLossError(
        absl::StrCat("GetObject ", Describe(key), ": asked for ", length,
                     " bytes at offset ", offset, ", got ", resp.received));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> S3Client::Get(absl::string_view key) {
  Request req{.call = "GetObject", .method = "GET", .key = std::string(key)};
  req.max_body = size_t{1} << 40;
  CKPTD_ASSIGN_OR_RETURN(Response resp, Perform(req));
  if (resp.code != 200) {
    return HttpError(req.call, Describe(key), resp.code, resp.body);
  }
  return std::move(resp.body);
}

absl::Status S3Client::Delete(absl::string_view key) {
  Request req{
      .call = "DeleteObject", .method = "DELETE", .key = std::string(key)};
  CKPTD_ASSIGN_OR_RETURN(Response resp, Perform(req));
  if (resp.code != 204 && resp.code != 200 && resp.code != 404) {
    return HttpError(req.call, Describe(key), resp.code, resp.body);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> S3Client::CreateMultipartUpload(
    absl::string_view key) {
  Request req{.call = "CreateMultipartUpload",
              .method = "POST",
              .key = std::string(key),
              .query = Query({{"uploads", ""}})};
  CKPTD_ASSIGN_OR_RETURN(Response resp, Perform(req));
  if (resp.code != 200) {
    return HttpError(req.call, Describe(key), resp.code, resp.body);
  }
  std::string id = XmlFirst(resp.body, "UploadId");
  if (id.empty()) {
    return absl::InternalError(absl::StrCat("CreateMultipartUpload ",
                                            Describe(key),
                                            ": no UploadId in the answer"));
  }
  return id;
}

absl::StatusOr<std::string> S3Client::UploadPart(
    absl::string_view key, absl::string_view upload_id, int part_number,
    absl::Span<const absl::string_view> body) {
  Request req{.call = "UploadPart",
              .method = "PUT",
              .key = std::string(key),
              .query = Query({{"partNumber", absl::StrCat(part_number)},
                              {"uploadId", std::string(upload_id)}}),
              .body = body};
  CKPTD_ASSIGN_OR_RETURN(Response resp, Perform(req));
  if (resp.code != 200) {
    return HttpError(req.call, Describe(key), resp.code, resp.body);
  }
  if (resp.etag.empty()) {
    return absl::InternalError(absl::StrCat(
        "UploadPart ", Describe(key), " part ", part_number, ": no ETag"));
  }
  return resp.etag;
}

absl::Status S3Client::CompleteMultipartUpload(
    absl::string_view key, absl::string_view upload_id,
    const std::vector<std::string>& etags) {
  const std::string xml = PartsXml(etags);
  const absl::string_view body[] = {xml};
  Request req{.call = "CompleteMultipartUpload",
              .method = "POST",
              .key = std::string(key),
              .query = Query({{"uploadId", std::string(upload_id)}}),
              .body = body};
  CKPTD_ASSIGN_OR_RETURN(Response resp, Perform(req));
  // S3 may answer 200 with an <Error> document when completion fails late.
  if (resp.code != 200 || absl::StrContains(resp.body, "<Error>")) {
    return HttpError(req.call, Describe(key),
                     resp.code == 200 ? 500 : resp.code, resp.body);
  }
  return absl::OkStatus();
}

absl::Status S3Client::AbortMultipartUpload(absl::string_view key,
                                            absl::string_view upload_id) {
  Request req{.call = "AbortMultipartUpload",
              .method = "DELETE",
              .key = std::string(key),
              .query = Query({{"uploadId", std::string(upload_id)}})};
  CKPTD_ASSIGN_OR_RETURN(Response resp, Perform(req));
  if (resp.code != 204 && resp.code != 200 && resp.code != 404) {
    return HttpError(req.call, Describe(key), resp.code, resp.body);
  }
  return absl::OkStatus();
}

absl::Status S3Client::ListObjects(
    absl::string_view prefix, absl::FunctionRef<void(const ObjectEntry&)> fn,
    absl::string_view start_after) {
  std::string token;
  while (true) {
    std::vector<std::pair<std::string, std::string>> params = {
        {"list-type", "2"}, {"prefix", std::string(prefix)}};
    if (!token.empty()) {
      params.push_back({"continuation-token", token});
    } else if (!start_after.empty()) {
      params.push_back({"start-after", std::string(start_after)});
    }
    Request req{.call = "ListObjectsV2",
                .method = "GET",
                .query = Query(std::move(params))};
    CKPTD_ASSIGN_OR_RETURN(Response resp, Perform(req));
    if (resp.code != 200) {
      return HttpError(req.call, Describe(prefix), resp.code, resp.body);
    }
    for (absl::string_view c : XmlElements(resp.body, "Contents")) {
      ObjectEntry e{.key = XmlFirst(c, "Key")};
      if (!absl::SimpleAtoi(XmlFirst(c, "Size"), &e.size) || e.key.empty()) {
        return absl::InternalError(absl::StrCat("ListObjectsV2 ",
                                                Describe(prefix),
                                                ": an entry without a key or "
                                                "size"));
      }
      fn(e);
    }
    if (XmlFirst(resp.body, "IsTruncated") != "true") return absl::OkStatus();
    token = XmlFirst(resp.body, "NextContinuationToken");
    if (token.empty()) {
      return absl::InternalError(
          absl::StrCat("ListObjectsV2 ", Describe(prefix),
                       ": truncated listing without a continuation token"));
    }
  }
}

absl::Status S3Client::ListMultipartUploads(
    absl::string_view prefix, absl::FunctionRef<void(const UploadEntry&)> fn) {
  std::string key_marker, id_marker;
  while (true) {
    std::vector<std::pair<std::string, std::string>> params = {
        {"uploads", ""}, {"prefix", std::string(prefix)}};
    if (!key_marker.empty()) params.push_back({"key-marker", key_marker});
    if (!id_marker.empty()) params.push_back({"upload-id-marker", id_marker});
    Request req{.call = "ListMultipartUploads",
                .method = "GET",
                .query = Query(std::move(params))};
    CKPTD_ASSIGN_OR_RETURN(Response resp, Perform(req));
    if (resp.code != 200) {
      return HttpError(req.call, Describe(prefix), resp.code, resp.body);
    }
    for (absl::string_view u : XmlElements(resp.body, "Upload")) {
      fn(UploadEntry{.key = XmlFirst(u, "Key"),
                     .upload_id = XmlFirst(u, "UploadId")});
    }
    if (XmlFirst(resp.body, "IsTruncated") != "true") return absl::OkStatus();
    key_marker = XmlFirst(resp.body, "NextKeyMarker");
    id_marker = XmlFirst(resp.body, "NextUploadIdMarker");
    if (key_marker.empty() && id_marker.empty()) {
      return absl::InternalError(
          absl::StrCat("ListMultipartUploads ", Describe(prefix),
                       ": truncated listing without markers"));
    }
  }
}

}  // namespace ckptd::storage
