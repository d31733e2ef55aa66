#include "server/service/web_view.h"

#include <civetweb.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"
#include "proto/base/dtype.h"
#include "proto/base/names.h"
#include "proto/base/status.h"
#include "server/service/http_listen.h"
#include "server/service/server.h"
#include "server/service/web_assets.h"
#include "spdlog/spdlog.h"

namespace ckptd::service {
namespace {

using Json = nlohmann::ordered_json;

// Bounds of the JSON answers. A page bigger than the maximum is refused
// (400), not silently cut, so a caller learns the limit.
constexpr uint32_t kDefaultRunsPage = 100;
constexpr uint32_t kMaxRunsPage = 1000;
constexpr uint32_t kDefaultVersionsPage = 100;
constexpr uint32_t kMaxVersionsPage = 1000;
// Metric points of one run (newest kept): one chart point per version and
// metric, so 10 metrics of 2,000 versions.
constexpr uint32_t kDefaultMetricPoints = 20000;
constexpr uint32_t kMaxMetricPoints = 20000;
constexpr uint32_t kDefaultHistoryEvents = 200;
constexpr uint32_t kMaxHistoryEvents = 1000;
constexpr uint32_t kDefaultTensorsPage = 500;
constexpr uint32_t kMaxTensorsPage = 5000;
// A request that has not sent its headers within this long is dropped.
constexpr char kRequestTimeoutMs[] = "30000";
constexpr char kKeepAliveTimeoutMs[] = "5000";
// A user-supplied value echoed in an error: at most this many bytes of it.
constexpr size_t kShown = 200;

constexpr absl::string_view kContentSecurityPolicy =
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'";

// ---------------------------------------------------------------------------
// Replies

struct Reply {
  int status = 200;
  std::string content_type;
  std::string body;
  // JSON answers change with the data; the assets only with the binary.
  bool no_store = true;
  bool www_authenticate = false;
};

int HttpStatusOf(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kAborted:
      return 409;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
      return 503;
    default:
      return 500;
  }
}

std::string DumpJson(const Json& json) {
  // Invalid UTF-8 in user data becomes U+FFFD instead of an exception.
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Reply JsonReply(const Json& json) {
  return Reply{200, "application/json; charset=utf-8", DumpJson(json)};
}

// `http_status` 0: the one that matches the status code.
Reply ErrorReply(const absl::Status& status, int http_status = 0) {
  Reply reply;
  reply.status = http_status != 0 ? http_status : HttpStatusOf(status.code());
  reply.content_type = "application/json; charset=utf-8";
  reply.www_authenticate = reply.status == 401;
  Json error;
  error["code"] = absl::StatusCodeToString(status.code());
  error["http_status"] = reply.status;
  error["message"] = std::string(status.message());
  reply.body = DumpJson(Json{{"error", std::move(error)}});
  return reply;
}

void Send(mg_connection* conn, const Reply& reply, bool head) {
  mg_response_header_start(conn, reply.status);
  auto add = [conn](const char* name, absl::string_view value) {
    mg_response_header_add(conn, name, value.data(),
                           static_cast<int>(value.size()));
  };
  add("Content-Type", reply.content_type);
  add("Content-Length", absl::StrCat(reply.body.size()));
  add("Cache-Control", reply.no_store ? "no-store" : "no-cache");
  add("Content-Security-Policy", kContentSecurityPolicy);
  add("X-Content-Type-Options", "nosniff");
  add("X-Frame-Options", "DENY");
  add("Referrer-Policy", "no-referrer");
  if (reply.www_authenticate) add("WWW-Authenticate", "Bearer realm=\"ckptd\"");
  if (reply.status == 405) add("Allow", "GET, HEAD");
  mg_response_header_send(conn);
  if (!head && !reply.body.empty()) {
    mg_write(conn, reply.body.data(), reply.body.size());
  }
}

// ---------------------------------------------------------------------------
// Requests

std::string Shown(absl::string_view value) {
  return absl::CHexEscape(value.substr(0, kShown));
}

// The query string's parameters, each at most once, each one the endpoint
// takes.
class Query {
 public:
  static absl::StatusOr<Query> Parse(
      const char* query_string, absl::string_view endpoint,
      std::initializer_list<absl::string_view> allowed) {
    Query query;
    if (query_string == nullptr || *query_string == '\0') return query;
    for (absl::string_view part : absl::StrSplit(query_string, '&')) {
      if (part.empty()) continue;
      const size_t eq = part.find('=');
      const absl::string_view raw_key = part.substr(0, eq);
      const absl::string_view raw_value =
          eq == absl::string_view::npos ? "" : part.substr(eq + 1);
      std::string key, value;
      if (!Decode(raw_key, &key) || !Decode(raw_value, &value)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "query parameter '", Shown(part), "' is not valid URL encoding"));
      }
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "unknown query parameter '", Shown(key), "' for ", endpoint,
            allowed.size() == 0
                ? std::string("; it takes none")
                : absl::StrCat("; it takes ", absl::StrJoin(allowed, ", "))));
      }
      if (!query.values_.emplace(key, std::move(value)).second) {
        return absl::InvalidArgumentError(absl::StrCat(
            "query parameter '", Shown(key), "' is given more than once"));
      }
    }
    return query;
  }

  std::optional<std::string> Get(absl::string_view key) const {
    auto it = values_.find(key);
    if (it == values_.end()) return std::nullopt;
    return it->second;
  }

  // A whole number in [min, max]; `fallback` when absent.
  absl::StatusOr<uint32_t> Number(absl::string_view key, uint32_t fallback,
                                  uint32_t min, uint32_t max) const {
    const std::optional<std::string> text = Get(key);
    if (!text.has_value()) return fallback;
    uint32_t n = 0;
    if (text->empty() ||
        text->find_first_not_of("0123456789") != std::string::npos ||
        !absl::SimpleAtoi(*text, &n) || n < min || n > max) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, "='", Shown(*text), "' is not a whole number in ",
                       min, "-", max));
    }
    return n;
  }

 private:
  static bool Decode(absl::string_view in, std::string* out) {
    out->assign(in.size() + 1, '\0');
    const int n = mg_url_decode(in.data(), static_cast<int>(in.size()),
                                out->data(), static_cast<int>(out->size()),
                                /*is_form_url_encoded=*/1);
    if (n < 0) return false;
    out->resize(static_cast<size_t>(n));
    // mg_url_decode copies a '%' it cannot decode; refuse those.
    for (size_t i = 0; i < in.size(); ++i) {
      if (in[i] == '%' &&
          (i + 2 >= in.size() || !absl::ascii_isxdigit(in[i + 1]) ||
           !absl::ascii_isxdigit(in[i + 2]))) {
        return false;
      }
    }
    return true;
  }

  absl::flat_hash_map<std::string, std::string> values_;
};

// Nanoseconds since the epoch as milliseconds (what JavaScript's Date
// takes); 0 stays 0 (never happened).
int64_t Millis(int64_t nanos) { return nanos / 1000000; }

Json MetricsJson(const google::protobuf::Map<std::string, double>& metrics) {
  std::vector<std::pair<std::string, double>> sorted(metrics.begin(),
                                                     metrics.end());
  std::sort(sorted.begin(), sorted.end());
  Json out = Json::object();
  // JSON has no NaN or infinity: those become null.
  for (const auto& [name, value] : sorted) {
    out[name] = std::isfinite(value) ? Json(value) : Json(nullptr);
  }
  return out;
}

Json LabelsJson(const google::protobuf::Map<std::string, std::string>& labels) {
  std::vector<std::pair<std::string, std::string>> sorted(labels.begin(),
                                                          labels.end());
  std::sort(sorted.begin(), sorted.end());
  Json out = Json::object();
  for (const auto& [k, v] : sorted) out[k] = v;
  return out;
}

Json PolicyJson(const v1::Policy& p) {
  Json out;
  out["monitor"] = p.monitor();
  out["mode"] = p.mode() == v1::MIN ? "min" : p.mode() == v1::MAX ? "max" : "";
  out["keep_last"] = p.has_keep_last() ? Json(p.keep_last()) : Json(nullptr);
  out["keep_best"] = p.has_keep_best() ? Json(p.keep_best()) : Json(nullptr);
  out["keep_every_n_steps"] =
      p.has_keep_every_n_steps() ? Json(p.keep_every_n_steps()) : Json(nullptr);
  return out;
}

Json VersionJson(const v1::VersionInfo& v) {
  Json out;
  out["version"] = v.version();
  out["step"] = v.step();
  out["epoch"] = v.epoch();
  out["state"] = v1::VersionState_Name(v.state());
  out["world_size"] = v.world_size();
  out["metrics"] = MetricsJson(v.metrics());
  Json aliases = Json::array();
  for (const std::string& a : v.aliases()) aliases.push_back(a);
  out["aliases"] = std::move(aliases);
  out["pinned"] = v.pinned();
  out["total_bytes"] = v.total_bytes();
  out["uploaded_bytes"] = v.uploaded_bytes();
  out["created_at_ms"] = Millis(v.created_at());
  out["committed_at_ms"] = Millis(v.committed_at());
  out["labels"] = LabelsJson(v.env().labels());
  return out;
}

Json RunJson(const v1::RunInfo& r) {
  Json out;
  out["name"] = r.name();
  out["version_count"] = r.version_count();
  out["total_bytes"] = r.total_bytes();
  out["created_at_ms"] = Millis(r.created_at());
  out["last_commit_at_ms"] = Millis(r.last_commit_at());
  out["last_version"] = r.last_version();
  out["best_version"] = r.best_version();
  out["policy"] = PolicyJson(r.policy());
  return out;
}

Json PathJson(const google::protobuf::RepeatedPtrField<v1::PathSegment>& path) {
  Json out = Json::array();
  for (const v1::PathSegment& s : path) {
    if (s.kind_case() == v1::PathSegment::kIntKey) {
      out.push_back(s.int_key());
    } else {
      out.push_back(s.key());
    }
  }
  return out;
}

// Keeps the newest `limit` of `events` (oldest first); true if any were
// dropped.
template <typename T>
bool KeepNewest(std::vector<T>& events, size_t limit) {
  if (events.size() <= limit) return false;
  events.erase(events.begin(), events.end() - static_cast<ptrdiff_t>(limit));
  return true;
}

// One JSON request, decoded: the path below /api/v1/ and the caller's
// Authorization header.
struct ApiRequest {
  std::vector<absl::string_view> segments;
  const char* query_string = nullptr;
  std::optional<absl::string_view> authorization;
};

}  // namespace

// ---------------------------------------------------------------------------
// The JSON API. Each endpoint validates its path and query, then asks the
// access table with the method whose rule it follows, then the repository.

namespace {

class Api {
 public:
  Api(core::Repository* repo, const AccessPolicy* access)
      : repo_(repo), access_(access) {}

  absl::StatusOr<Json> Serve(const ApiRequest& req) const {
    const auto& s = req.segments;
    if (s.size() == 1 && s[0] == "runs") return Runs(req);
    if (s.size() >= 2 && s[0] == "runs") {
      const std::string run(s[1]);
      CKPTD_RETURN_IF_ERROR(ValidateRunName(run));
      if (s.size() == 2) return Run(req, run);
      if (s.size() == 3 && s[2] == "versions") return Versions(req, run);
      if (s.size() == 4 && s[2] == "versions") return Version(req, run, s[3]);
      if (s.size() == 3 && s[2] == "metrics") return Metrics(req, run);
      if (s.size() == 3 && s[2] == "aliases") return Aliases(req, run);
      if (s.size() == 3 && s[2] == "audit") return Audit(req, run);
    }
    return absl::NotFoundError(absl::StrCat(
        "no endpoint /api/v1/", Shown(absl::StrJoin(s, "/")),
        "; there are /api/v1/runs, /api/v1/runs/RUN, and /versions, "
        "/versions/REF, /metrics, /aliases, /audit under it"));
  }

 private:
  absl::StatusOr<Principal> Authorize(const ApiRequest& req, Method method,
                                      absl::string_view run) const {
    return access_->Authorize(req.authorization, /*transport=*/nullptr, method,
                              run);
  }

  // GET /api/v1/runs?page_size=N&page_token=RUN
  absl::StatusOr<Json> Runs(const ApiRequest& req) const {
    CKPTD_ASSIGN_OR_RETURN(Query q,
                           Query::Parse(req.query_string, "/api/v1/runs",
                                        {"page_size", "page_token"}));
    CKPTD_ASSIGN_OR_RETURN(
        uint32_t page_size,
        q.Number("page_size", kDefaultRunsPage, 1, kMaxRunsPage));
    const std::string after = q.Get("page_token").value_or("");
    if (!after.empty() && !ValidateRunName(after).ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_token '", Shown(after),
                       "' is not one this server returned (a run name)"));
    }
    CKPTD_ASSIGN_OR_RETURN(Principal caller,
                           Authorize(req, Method::kListRuns, ""));
    CKPTD_ASSIGN_OR_RETURN(v1::ListRunsResponse all, repo_->ListRuns());
    Json runs = Json::array();
    std::string next;
    for (const v1::RunInfo& run : all.runs()) {
      // Only the runs the caller may read, in name order.
      if (!caller.MayTouchRun(run.name())) continue;
      if (!after.empty() && run.name() <= after) continue;
      if (runs.size() == page_size) {
        next = runs.back()["name"].get<std::string>();
        break;
      }
      runs.push_back(RunJson(run));
    }
    Json out;
    out["identity"] = caller.identity;
    out["runs"] = std::move(runs);
    out["next_page_token"] = next;
    return out;
  }

  // GET /api/v1/runs/RUN: the policy, `last` and `best`.
  absl::StatusOr<Json> Run(const ApiRequest& req,
                           const std::string& run) const {
    CKPTD_RETURN_IF_ERROR(
        Query::Parse(req.query_string, "/api/v1/runs/RUN", {}).status());
    CKPTD_ASSIGN_OR_RETURN(Principal caller,
                           Authorize(req, Method::kGetPolicy, run));
    v1::GetPolicyRequest policy_req;
    policy_req.set_run(run);
    CKPTD_ASSIGN_OR_RETURN(v1::Policy policy, repo_->GetPolicy(policy_req));
    Json out;
    out["identity"] = caller.identity;
    out["name"] = run;
    out["policy"] = PolicyJson(policy);
    for (const char* alias : {"last", "best"}) {
      v1::GetVersionRequest get;
      get.set_run(run);
      get.set_ref(alias);
      absl::StatusOr<v1::GetVersionResponse> v = repo_->GetVersion(get);
      if (v.ok()) {
        out[alias] = v->info().version();
      } else if (absl::IsNotFound(v.status())) {
        out[alias] = nullptr;  // no such alias (yet)
      } else {
        return v.status();
      }
    }
    return out;
  }

  // GET /api/v1/runs/RUN/versions?page_size=N&page_token=T
  absl::StatusOr<Json> Versions(const ApiRequest& req,
                                const std::string& run) const {
    CKPTD_ASSIGN_OR_RETURN(
        Query q, Query::Parse(req.query_string, "/api/v1/runs/RUN/versions",
                              {"page_size", "page_token"}));
    v1::ListVersionsRequest list;
    list.set_run(run);
    CKPTD_ASSIGN_OR_RETURN(
        uint32_t page_size,
        q.Number("page_size", kDefaultVersionsPage, 1, kMaxVersionsPage));
    list.set_page_size(page_size);
    list.set_page_token(q.Get("page_token").value_or(""));
    CKPTD_RETURN_IF_ERROR(Authorize(req, Method::kListVersions, run).status());
    CKPTD_ASSIGN_OR_RETURN(v1::ListVersionsResponse resp,
                           repo_->ListVersions(list));
    Json versions = Json::array();
    for (const v1::VersionInfo& v : resp.versions()) {
      versions.push_back(VersionJson(v));
    }
    Json out;
    out["versions"] = std::move(versions);
    out["next_page_token"] = resp.next_page_token();
    return out;
  }

  // GET /api/v1/runs/RUN/versions/REF?tensor_offset=N&tensor_limit=M
  absl::StatusOr<Json> Version(const ApiRequest& req, const std::string& run,
                               absl::string_view ref) const {
    CKPTD_ASSIGN_OR_RETURN(
        Query q, Query::Parse(req.query_string, "/api/v1/runs/RUN/versions/REF",
                              {"tensor_offset", "tensor_limit"}));
    CKPTD_RETURN_IF_ERROR(ParseRef(ref).status());
    CKPTD_ASSIGN_OR_RETURN(uint32_t offset,
                           q.Number("tensor_offset", 0, 0, UINT32_MAX));
    CKPTD_ASSIGN_OR_RETURN(
        uint32_t limit,
        q.Number("tensor_limit", kDefaultTensorsPage, 1, kMaxTensorsPage));
    CKPTD_RETURN_IF_ERROR(Authorize(req, Method::kGetVersion, run).status());
    v1::GetVersionRequest get;
    get.set_run(run);
    get.set_ref(std::string(ref));
    get.set_include_manifest(true);
    CKPTD_ASSIGN_OR_RETURN(v1::GetVersionResponse resp, repo_->GetVersion(get));
    const v1::VersionInfo& info = resp.info();
    Json version = VersionJson(info);
    const v1::Environment& env = info.env();
    version["env"] = Json{{"torch_version", env.torch_version()},
                          {"cuda_version", env.cuda_version()},
                          {"python_version", env.python_version()},
                          {"hostname", env.hostname()},
                          {"client_version", env.client_version()}};
    Json shards = Json::array();
    for (const v1::ShardInfo& s : info.shards()) {
      shards.push_back(Json{{"rank", s.rank()},
                            {"total_bytes", s.total_bytes()},
                            {"tensor_count", s.tensor_count()},
                            {"committed_at_ms", Millis(s.committed_at())}});
    }
    version["shards"] = std::move(shards);
    Json tensors = Json::array();
    uint64_t tensor_count = 0, value_count = 0;
    for (const v1::ShardManifest& shard : resp.shards()) {
      for (const v1::ManifestEntry& e : shard.entries()) {
        if (e.has_value()) ++value_count;
        if (!e.has_tensor()) continue;
        const uint64_t index = tensor_count++;
        if (index < offset || index >= uint64_t{offset} + limit) continue;
        Json shape = Json::array();
        for (int64_t d : e.tensor().shape()) shape.push_back(d);
        tensors.push_back(Json{{"rank", shard.rank()},
                               {"key", DottedKeyPath(e.path())},
                               {"path", PathJson(e.path())},
                               {"dtype", TorchDTypeName(e.tensor().dtype())},
                               {"shape", std::move(shape)},
                               {"byte_length", e.tensor().byte_length()}});
      }
    }
    Json out;
    out["run"] = run;
    out["version"] = std::move(version);
    out["tensor_count"] = tensor_count;
    out["value_count"] = value_count;
    out["tensor_offset"] = offset;
    out["tensors"] = std::move(tensors);
    const uint64_t end = uint64_t{offset} + limit;
    out["next_tensor_offset"] = end < tensor_count ? Json(end) : Json(nullptr);
    return out;
  }

  // GET /api/v1/runs/RUN/metrics?metric=NAME&limit=N
  absl::StatusOr<Json> Metrics(const ApiRequest& req,
                               const std::string& run) const {
    CKPTD_ASSIGN_OR_RETURN(
        Query q, Query::Parse(req.query_string, "/api/v1/runs/RUN/metrics",
                              {"metric", "limit"}));
    v1::GetMetricHistoryRequest get;
    get.set_run(run);
    if (std::optional<std::string> m = q.Get("metric"); m.has_value()) {
      CKPTD_RETURN_IF_ERROR(ValidateMetricName(*m));
      get.set_metric(*m);
    }
    CKPTD_ASSIGN_OR_RETURN(
        uint32_t limit,
        q.Number("limit", kDefaultMetricPoints, 1, kMaxMetricPoints));
    CKPTD_RETURN_IF_ERROR(
        Authorize(req, Method::kGetMetricHistory, run).status());
    CKPTD_ASSIGN_OR_RETURN(v1::GetMetricHistoryResponse resp,
                           repo_->GetMetricHistory(get));
    std::vector<v1::MetricPoint> points(resp.points().begin(),
                                        resp.points().end());
    const bool truncated = KeepNewest(points, limit);
    Json out_points = Json::array();
    for (const v1::MetricPoint& p : points) {
      out_points.push_back(Json{
          {"version", p.version()},
          {"step", p.step()},
          {"metric", p.metric()},
          {"value", std::isfinite(p.value()) ? Json(p.value()) : Json(nullptr)},
          {"committed_at_ms", Millis(p.committed_at())}});
    }
    Json out;
    out["points"] = std::move(out_points);
    out["truncated"] = truncated;
    return out;
  }

  // GET /api/v1/runs/RUN/aliases?limit=N: alias moves, oldest first.
  absl::StatusOr<Json> Aliases(const ApiRequest& req,
                               const std::string& run) const {
    CKPTD_ASSIGN_OR_RETURN(
        Query q,
        Query::Parse(req.query_string, "/api/v1/runs/RUN/aliases", {"limit"}));
    CKPTD_ASSIGN_OR_RETURN(
        uint32_t limit,
        q.Number("limit", kDefaultHistoryEvents, 1, kMaxHistoryEvents));
    CKPTD_RETURN_IF_ERROR(
        Authorize(req, Method::kGetAliasHistory, run).status());
    v1::GetAliasHistoryRequest get;
    get.set_run(run);
    CKPTD_ASSIGN_OR_RETURN(v1::GetAliasHistoryResponse resp,
                           repo_->GetAliasHistory(get));
    std::vector<v1::AliasEvent> events(resp.events().begin(),
                                       resp.events().end());
    const bool truncated = KeepNewest(events, limit);
    Json out_events = Json::array();
    for (const v1::AliasEvent& e : events) {
      out_events.push_back(Json{{"alias", e.alias()},
                                {"from_version", e.from_version()},
                                {"to_version", e.to_version()},
                                {"at_ms", Millis(e.at())},
                                {"actor", e.actor()}});
    }
    Json out;
    out["events"] = std::move(out_events);
    out["truncated"] = truncated;
    return out;
  }

  // GET /api/v1/runs/RUN/audit?limit=N: the run's audit log, oldest first.
  absl::StatusOr<Json> Audit(const ApiRequest& req,
                             const std::string& run) const {
    CKPTD_ASSIGN_OR_RETURN(
        Query q,
        Query::Parse(req.query_string, "/api/v1/runs/RUN/audit", {"limit"}));
    CKPTD_ASSIGN_OR_RETURN(
        uint32_t limit,
        q.Number("limit", kDefaultHistoryEvents, 1, kMaxHistoryEvents));
    CKPTD_RETURN_IF_ERROR(Authorize(req, Method::kGetAuditLog, run).status());
    v1::GetAuditLogRequest get;
    get.set_run(run);
    get.set_limit(limit + 1);  // one more tells whether older ones exist
    CKPTD_ASSIGN_OR_RETURN(v1::GetAuditLogResponse resp,
                           repo_->GetAuditLog(get));
    std::vector<v1::AuditEvent> events(resp.events().begin(),
                                       resp.events().end());
    const bool truncated = KeepNewest(events, limit);
    Json out_events = Json::array();
    for (const v1::AuditEvent& e : events) {
      out_events.push_back(Json{{"at_ms", Millis(e.at())},
                                {"identity", e.identity()},
                                {"action", e.action()},
                                {"version", e.version()},
                                {"detail", e.detail()}});
    }
    Json out;
    out["events"] = std::move(out_events);
    out["truncated"] = truncated;
    return out;
  }

  core::Repository* const repo_;
  const AccessPolicy* const access_;
};

// The page routes: /, /runs/RUN, /runs/RUN/versions/REF (with or without a
// trailing slash). The page itself validates nothing; the API does.
bool IsPageRoute(const std::vector<absl::string_view>& s) {
  return s.empty() || (s.size() == 2 && s[0] == "runs") ||
         (s.size() == 4 && s[0] == "runs" && s[2] == "versions");
}

const WebAsset* FindAsset(absl::string_view name) {
  for (const WebAsset& a : WebAssets()) {
    if (a.name == name) return &a;
  }
  return nullptr;
}

absl::string_view ContentTypeOf(absl::string_view name) {
  if (absl::EndsWith(name, ".html")) return "text/html; charset=utf-8";
  if (absl::EndsWith(name, ".js")) return "text/javascript; charset=utf-8";
  if (absl::EndsWith(name, ".css")) return "text/css; charset=utf-8";
  if (absl::EndsWith(name, ".svg")) return "image/svg+xml";
  if (absl::EndsWith(name, ".png")) return "image/png";
  return "application/octet-stream";
}

Reply AssetReply(const WebAsset& asset) {
  Reply reply{200, std::string(ContentTypeOf(asset.name)),
              std::string(asset.body)};
  reply.no_store = false;
  return reply;
}

Reply NotFoundPage(absl::string_view path) {
  Reply reply{404, "text/plain; charset=utf-8",
              absl::StrCat("ckptd: nothing at ", Shown(path),
                           "; the web view starts at /\n")};
  return reply;
}

// True when a Host header names a loopback address (or is absent, as in
// HTTP/1.0 requests, which browsers do not make).
bool IsLoopbackHost(const char* host) {
  if (host == nullptr) return true;
  std::string h(host);
  // IsLoopbackListenAddress takes HOST:PORT.
  const bool bracketed = absl::StartsWith(h, "[");
  if ((bracketed && absl::EndsWith(h, "]")) ||
      (!bracketed && h.find(':') == std::string::npos)) {
    absl::StrAppend(&h, ":0");
  }
  return IsLoopbackListenAddress(h);
}

int HandleRequest(mg_connection* conn, void* cbdata) {
  return static_cast<WebView*>(cbdata)->Handle(conn);
}

int LogMessage(const mg_connection* /*conn*/, const char* message) {
  spdlog::warn("web view: {}", message);
  return 1;
}

std::once_flag civetweb_init;

}  // namespace

// ---------------------------------------------------------------------------
// WebView

absl::StatusOr<std::string> ParseHttpListenAddress(absl::string_view listen) {
  return ParseHttpListen("http_listen", listen, 8080);
}

WebView::WebView(const WebViewOptions& options, core::Repository* repo,
                 const AccessPolicy* access)
    : options_(options), repo_(repo), access_(access) {}

WebView::~WebView() {
  if (ctx_ != nullptr) mg_stop(ctx_);
}

absl::Status CheckWebViewOptions(const WebViewOptions& options) {
  CKPTD_RETURN_IF_ERROR(ParseHttpListenAddress(options.listen).status());
  const bool loopback = IsLoopbackListenAddress(options.listen);
  if (!loopback && options.authentication) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--http_listen '", Shown(options.listen),
        "' is not a loopback address: the web view speaks plain HTTP, so "
        "bearer tokens would cross the network in clear text. Serve it on "
        "127.0.0.1 and put a TLS-terminating proxy in front"));
  }
  if (!loopback && !options.insecure_no_auth) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--http_listen '", Shown(options.listen),
        "' is not a loopback address and there is no --auth_file: anyone who "
        "reaches the port could read every run's history. Serve it on "
        "127.0.0.1, or give --insecure_no_auth to serve it anyway"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<WebView>> WebView::Start(
    const WebViewOptions& options, core::Repository* repo,
    const AccessPolicy* access) {
  CKPTD_RETURN_IF_ERROR(CheckWebViewOptions(options));
  CKPTD_ASSIGN_OR_RETURN(const std::string ports,
                         ParseHttpListenAddress(options.listen));
  const bool loopback = IsLoopbackListenAddress(options.listen);
  std::unique_ptr<WebView> view(new WebView(options, repo, access));
  view->loopback_hosts_only_ = loopback && !options.authentication;

  std::call_once(civetweb_init, [] { mg_init_library(0); });
  // Paths are matched as sent (decode_url no): a %-escape in a run name is
  // refused, never decoded into a '/'. No document_root: no file is served.
  const std::pair<const char*, std::string> settings[] = {
      {"listening_ports", ports},
      {"num_threads", absl::StrCat(kWebViewThreads)},
      {"request_timeout_ms", kRequestTimeoutMs},
      {"keep_alive_timeout_ms", kKeepAliveTimeoutMs},
      {"enable_keep_alive", "yes"},
      {"decode_url", "no"},
      {"enable_directory_listing", "no"},
  };
  std::vector<const char*> config;
  for (const auto& [name, value] : settings) {
    config.push_back(name);
    config.push_back(value.c_str());
  }
  config.push_back(nullptr);
  mg_callbacks callbacks{};
  callbacks.log_message = LogMessage;
  mg_init_data init{};
  init.callbacks = &callbacks;
  init.user_data = view.get();
  init.configuration_options = config.data();
  char error_text[256] = "";
  unsigned error_code = 0;
  mg_error_data error{};
  error.code = &error_code;
  error.text = error_text;
  error.text_buffer_size = sizeof(error_text);
  view->ctx_ = mg_start2(&init, &error);
  if (view->ctx_ == nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "cannot serve the web view on --http_listen '", Shown(options.listen),
        "': ", error_text[0] != '\0' ? error_text : "civetweb failed to start",
        " (address in use, or not an address of this host?)"));
  }
  mg_set_request_handler(view->ctx_, "/", HandleRequest, view.get());
  mg_server_port bound[4] = {};
  const int n = mg_get_server_ports(view->ctx_, 4, bound);
  if (n < 1 || bound[0].port <= 0) {
    return absl::InternalError(
        absl::StrCat("the web view on --http_listen '", Shown(options.listen),
                     "' started but reports no listening port"));
  }
  view->port_ = bound[0].port;
  spdlog::info("web view on http://{}:{}/ ({})",
               options.listen.substr(0, options.listen.rfind(':')), view->port_,
               options.authentication
                   ? "bearer tokens from --auth_file"
                   : (loopback ? "no authentication: loopback only"
                               : "no authentication (--insecure_no_auth)"));
  return view;
}

int WebView::Handle(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  const absl::string_view method =
      info->request_method != nullptr ? info->request_method : "";
  const bool head = method == "HEAD";
  Reply reply;
  const absl::string_view path =
      info->local_uri_raw != nullptr ? info->local_uri_raw : "";
  std::vector<absl::string_view> segments =
      absl::StrSplit(path, '/', absl::SkipEmpty());
  if (method != "GET" && !head) {
    reply = ErrorReply(absl::UnimplementedError(absl::StrCat(
                           "the web view is read-only: ", Shown(method),
                           " is not allowed, only GET and HEAD")),
                       405);
  } else if (loopback_hosts_only_ &&
             !IsLoopbackHost(mg_get_header(conn, "Host"))) {
    reply = ErrorReply(absl::PermissionDeniedError(absl::StrCat(
        "Host '", Shown(mg_get_header(conn, "Host")),
        "' is not a loopback name: without --auth_file the web view answers "
        "only requests for localhost or 127.0.0.1")));
  } else if (segments.size() >= 2 && segments[0] == "api" &&
             segments[1] == "v1") {
    ApiRequest req;
    req.segments.assign(segments.begin() + 2, segments.end());
    req.query_string = info->query_string;
    if (const char* auth = mg_get_header(conn, "Authorization")) {
      req.authorization = auth;
    }
    absl::StatusOr<Json> json = Api(repo_, access_).Serve(req);
    reply = json.ok() ? JsonReply(*json) : ErrorReply(json.status());
    if (!json.ok() && reply.status >= 500) {
      spdlog::warn("web view: {} {}: {}", std::string(method), Shown(path),
                   json.status().ToString());
    }
  } else if (segments.size() == 2 && segments[0] == "assets") {
    const WebAsset* asset = FindAsset(segments[1]);
    reply = asset != nullptr && segments[1] != "index.html"
                ? AssetReply(*asset)
                : NotFoundPage(path);
  } else if (IsPageRoute(segments)) {
    const WebAsset* index = FindAsset("index.html");
    reply = index != nullptr ? AssetReply(*index)
                             : Reply{500, "text/plain; charset=utf-8",
                                     "ckptd: built without index.html\n"};
    reply.no_store = true;
  } else {
    reply = NotFoundPage(path);
  }
  Send(conn, reply, head);
  return reply.status;
}

}  // namespace ckptd::service
