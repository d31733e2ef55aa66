#include "client/cli/commands.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string_view>

#include "CLI/CLI.hpp"
#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cli/format.h"
#include "client/cli/mapped_file.h"
#include "client/cli/safetensors.h"
#include "nlohmann/json.hpp"
#include "proto/base/digest.h"
#include "proto/base/names.h"
#include "proto/base/secret.h"
#include "proto/base/status.h"

namespace ckptd::cli {
namespace {

using Json = nlohmann::ordered_json;

constexpr char kUsagePayload[] = "type.googleapis.com/ckpt.UsageError";
constexpr char kRefExample[] =
    "expected RUN@REF such as llama@best or llama@12";
constexpr char kTokenEnv[] = "CKPTD_TOKEN";
constexpr char kTlsCaEnv[] = "CKPTD_TLS_CA";
constexpr char kTlsCertEnv[] = "CKPTD_TLS_CERT";
constexpr char kTlsKeyEnv[] = "CKPTD_TLS_KEY";

// ---------------------------------------------------------------------------
// Parsed arguments of every command (CLI11 binds into these).

struct Args {
  std::string server;
  bool json = false;
  std::string token;     // --token (else $CKPTD_TOKEN)
  std::string tls_ca;    // --tls_ca FILE (else $CKPTD_TLS_CA)
  std::string tls_cert;  // --tls_cert FILE (else $CKPTD_TLS_CERT)
  std::string tls_key;   // --tls_key FILE (else $CKPTD_TLS_KEY)
  // token new IDENTITY ROLE PATTERNS
  std::string identity;
  std::string role;
  std::string patterns;
  uint32_t limit = 0;          // audit --limit
  std::string service;         // health --service
  std::string timeout = "5s";  // health --timeout

  std::string run;     // RUN positional
  std::string target;  // RUN[@REF] positional
  std::string name;    // alias NAME, metrics METRIC, history ALIAS
  std::string ref;     // alias REF
  std::string output;  // pull -o
  std::string file;    // push FILE
  std::vector<std::string> keys;
  uint32_t rank = 0;
  int64_t step = 0;
  int64_t epoch = 0;
  std::vector<std::string> metrics;
  std::vector<std::string> labels;

  // ls filters (--metric NAME, --label K=V reuse `labels`)
  std::string metric_present;
  int64_t min_step_value = 0;
  int64_t max_step_value = 0;
  std::optional<int64_t> min_step;  // filled after parsing, when given
  std::optional<int64_t> max_step;

  std::string monitor;
  std::string mode;
  uint32_t keep_last = 0;
  uint32_t keep_best = 0;
  uint64_t keep_every_n_steps = 0;
  bool clear_retention = false;
  PolicyEdit policy;   // filled from the fields above after parsing
  bool force = false;  // rm --force

  // admin SUBCOMMAND (set by the subcommand's callback)
  std::string admin_command;
  std::string backup_dir;      // admin backup DIR
  std::string backup_timeout;  // admin backup --timeout (empty: none)
};

// ---------------------------------------------------------------------------
// The state one command runs with.

class Session {
 public:
  Session(const CliContext& context, const Args& args)
      : context_(context), args_(args) {}

  std::ostream& out() { return *context_.out; }
  std::ostream& err() { return *context_.err; }
  bool json() const { return args_.json; }
  bool progress() const { return context_.progress; }
  const Args& args() const { return args_; }

  absl::StatusOr<Client*> client() {
    if (client_ != nullptr) return client_.get();
    CKPTD_ASSIGN_OR_RETURN(ClientOptions options, client_options());
    absl::StatusOr<std::unique_ptr<Client>> client =
        context_.connect ? context_.connect(options) : Client::Connect(options);
    if (!client.ok()) return client.status();
    client_ = *std::move(client);
    return client_.get();
  }

  // Address, token and TLS files from the flags and the environment.
  absl::StatusOr<ClientOptions> client_options() const {
    ClientOptions options;
    options.address =
        args_.server.empty() ? DefaultServerAddress() : args_.server;
    options.token = FlagOrEnv(args_.token, kTokenEnv);
    CKPTD_ASSIGN_OR_RETURN(options.root_certificates,
                           ReadPem("--tls_ca", kTlsCaEnv, args_.tls_ca));
    CKPTD_ASSIGN_OR_RETURN(options.client_certificate,
                           ReadPem("--tls_cert", kTlsCertEnv, args_.tls_cert));
    CKPTD_ASSIGN_OR_RETURN(options.client_key,
                           ReadPem("--tls_key", kTlsKeyEnv, args_.tls_key));
    if (options.client_certificate.empty() != options.client_key.empty()) {
      return UsageError(
          "a client certificate needs its key: give both --tls_cert and "
          "--tls_key (or $CKPTD_TLS_CERT and $CKPTD_TLS_KEY)");
    }
    return options;
  }

  void PrintJson(const Json& j) {
    out() << j.dump(2, ' ', false, Json::error_handler_t::replace) << "\n";
  }

 private:
  static std::string FlagOrEnv(const std::string& flag, const char* env) {
    if (!flag.empty()) return flag;
    const char* value = std::getenv(env);
    return value == nullptr ? "" : value;
  }
  // The PEM text of the file named by `flag` (else $env); "" when neither.
  static absl::StatusOr<std::string> ReadPem(absl::string_view flag_name,
                                             const char* env,
                                             const std::string& flag) {
    const std::string path = FlagOrEnv(flag, env);
    if (path.empty()) return std::string();
    const std::string source =
        flag.empty() ? absl::StrCat("$", env) : std::string(flag_name);
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      return UsageError(absl::StrCat(source, " ", path,
                                     ": cannot read the file (",
                                     std::strerror(errno), ")"));
    }
    std::ostringstream text;
    text << in.rdbuf();
    if (text.str().find("-----BEGIN ") == std::string::npos) {
      return UsageError(absl::StrCat(
          source, " ", path, " is not a PEM file (no -----BEGIN line)"));
    }
    return text.str();
  }

  const CliContext& context_;
  const Args& args_;
  std::unique_ptr<Client> client_;
};

// ---------------------------------------------------------------------------
// Name rules: the server's own (proto/base/names.h), checked here so typos
// fail before a round trip, reported as usage errors.

absl::Status AsUsageError(const absl::Status& status) {
  return status.ok() ? status : UsageError(status.message());
}

// ---------------------------------------------------------------------------
// Rendering helpers.

std::string OrDash(const std::string& s) { return s.empty() ? "-" : s; }

// The hex form of a digest in wire form ("?" if it is not 16 bytes).
std::string DigestHex(const std::string& bytes) {
  absl::StatusOr<Digest> d = DigestFromBytes(bytes);
  return d.ok() ? d->Hex() : "?";
}

// "1 tensor", "3 tensors".
std::string Count(uint64_t n, absl::string_view noun) {
  return absl::StrCat(n, " ", noun, n == 1 ? "" : "s");
}

std::map<std::string, double> SortedMetrics(
    const google::protobuf::Map<std::string, double>& metrics) {
  return std::map<std::string, double>(metrics.begin(), metrics.end());
}

std::string MetricsText(
    const google::protobuf::Map<std::string, double>& metrics) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : SortedMetrics(metrics)) {
    parts.push_back(absl::StrCat(k, "=", FormatNumber(v)));
  }
  return absl::StrJoin(parts, " ");
}

std::string StateName(v1::VersionState state) {
  return v1::VersionState_Name(state);
}

std::string ModeName(v1::Mode mode) {
  switch (mode) {
    case v1::MIN:
      return "min";
    case v1::MAX:
      return "max";
    default:
      return "";
  }
}

std::string VersionOrDash(uint64_t version) {
  return version == 0 ? "-" : absl::StrCat(version);
}

// "key:  value" lines with the values aligned.
std::string RenderFields(
    const std::vector<std::pair<std::string, std::string>>& fields,
    absl::string_view indent = "") {
  size_t width = 0;
  for (const auto& [k, v] : fields) width = std::max(width, DisplayWidth(k));
  std::string out;
  for (const auto& [k, v] : fields) {
    absl::StrAppend(&out, indent, k, ":",
                    std::string(width - DisplayWidth(k) + 2, ' '), v);
    out.erase(out.find_last_not_of(' ') + 1);
    out += '\n';
  }
  return out;
}

Json TimeJson(int64_t unix_nanos) {
  if (unix_nanos == 0) return nullptr;
  return FormatTime(unix_nanos);
}

Json MetricsJson(const google::protobuf::Map<std::string, double>& metrics) {
  Json j = Json::object();
  for (const auto& [k, v] : SortedMetrics(metrics)) j[k] = v;
  return j;
}

Json EnvJson(const Environment& env) {
  Json labels = Json::object();
  for (const auto& [k, v] : std::map<std::string, std::string>(
           env.labels().begin(), env.labels().end())) {
    labels[k] = v;
  }
  return Json{{"torch_version", env.torch_version()},
              {"cuda_version", env.cuda_version()},
              {"python_version", env.python_version()},
              {"hostname", env.hostname()},
              {"client_version", env.client_version()},
              {"labels", labels}};
}

Json VersionJson(const VersionInfo& v) {
  Json shards = Json::array();
  for (const v1::ShardInfo& s : v.shards()) {
    shards.push_back({{"rank", s.rank()},
                      {"total_bytes", s.total_bytes()},
                      {"tensor_count", s.tensor_count()},
                      {"committed_at", TimeJson(s.committed_at())}});
  }
  Json j = {{"run", v.run()},
            {"version", v.version()},
            {"step", v.step()},
            {"epoch", v.epoch()},
            {"state", StateName(v.state())},
            {"world_size", v.world_size()},
            {"metrics", MetricsJson(v.metrics())},
            {"env", EnvJson(v.env())},
            {"created_at", TimeJson(v.created_at())},
            {"committed_at", TimeJson(v.committed_at())},
            {"total_bytes", v.total_bytes()},
            {"uploaded_bytes", v.uploaded_bytes()},
            {"aliases", Json(std::vector<std::string>(v.aliases().begin(),
                                                      v.aliases().end()))},
            {"pinned", v.pinned()},
            {"shards", shards}};
  if (!v.abort_reason().empty()) j["abort_reason"] = v.abort_reason();
  return j;
}

Json PolicyJson(const std::string& run, const Policy& p) {
  Json j = {{"run", run}, {"monitor", p.monitor()}};
  j["mode"] =
      ModeName(p.mode()).empty() ? Json(nullptr) : Json(ModeName(p.mode()));
  j["keep_last"] = p.has_keep_last() ? Json(p.keep_last()) : Json(nullptr);
  j["keep_best"] = p.has_keep_best() ? Json(p.keep_best()) : Json(nullptr);
  j["keep_every_n_steps"] =
      p.has_keep_every_n_steps() ? Json(p.keep_every_n_steps()) : Json(nullptr);
  return j;
}

Json ValueJson(const v1::Value& v) {
  switch (v.kind_case()) {
    case v1::Value::kIntValue:
      return v.int_value();
    case v1::Value::kFloatValue:
      return v.float_value();
    case v1::Value::kBoolValue:
      return v.bool_value();
    case v1::Value::kStringValue:
      return v.string_value();
    case v1::Value::kListValue: {
      Json items = Json::array();
      for (const v1::Value& item : v.list_value().items()) {
        items.push_back(ValueJson(item));
      }
      return items;
    }
    default:
      return nullptr;
  }
}

// Python-like rendering of a value leaf: None, True, 3, 0.1, 'adam', [1, 2].
std::string ValueText(const v1::Value& v) {
  switch (v.kind_case()) {
    case v1::Value::kIntValue:
      return absl::StrCat(v.int_value());
    case v1::Value::kFloatValue:
      return FormatNumber(v.float_value());
    case v1::Value::kBoolValue:
      return v.bool_value() ? "True" : "False";
    case v1::Value::kStringValue:
      return absl::StrCat("'", v.string_value(), "'");
    case v1::Value::kListValue: {
      std::vector<std::string> items;
      for (const v1::Value& item : v.list_value().items()) {
        items.push_back(ValueText(item));
      }
      const bool tuple = v.list_value().is_tuple();
      std::string body = absl::StrJoin(items, ", ");
      if (tuple && items.size() == 1) body += ",";
      return tuple ? absl::StrCat("(", body, ")")
                   : absl::StrCat("[", body, "]");
    }
    default:
      return "None";
  }
}

std::vector<int64_t> ShapeOf(const v1::TensorInfo& t) {
  return std::vector<int64_t>(t.shape().begin(), t.shape().end());
}

// ---------------------------------------------------------------------------
// Commands.

absl::Status CmdRuns(Session& s) {
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  CKPTD_ASSIGN_OR_RETURN(std::vector<RunInfo> runs, client->ListRuns());
  if (s.json()) {
    Json j = Json::array();
    for (const RunInfo& r : runs) {
      j.push_back({{"name", r.name()},
                   {"version_count", r.version_count()},
                   {"total_bytes", r.total_bytes()},
                   {"created_at", TimeJson(r.created_at())},
                   {"last_commit_at", TimeJson(r.last_commit_at())},
                   {"last_version", r.last_version()},
                   {"best_version", r.best_version()},
                   {"policy", PolicyJson(r.name(), r.policy())}});
    }
    s.PrintJson(j);
    return absl::OkStatus();
  }
  Table table(
      {"RUN", "VERSIONS", "SIZE", "LAST", "BEST", "MONITOR", "LAST COMMIT"});
  for (size_t c : {1, 2, 3, 4}) table.AlignRight(c);
  for (const RunInfo& r : runs) {
    const std::string monitor =
        r.policy().monitor().empty()
            ? "-"
            : absl::StrCat(r.policy().monitor(), " (",
                           ModeName(r.policy().mode()), ")");
    table.AddRow({r.name(), absl::StrCat(r.version_count()),
                  HumanBytes(r.total_bytes()), VersionOrDash(r.last_version()),
                  VersionOrDash(r.best_version()), monitor,
                  FormatTime(r.last_commit_at())});
  }
  s.out() << table.Render();
  return absl::OkStatus();
}

absl::Status CmdLs(Session& s) {
  const std::string& run = s.args().run;
  CKPTD_RETURN_IF_ERROR(CheckRunArgument(run));
  const Args& a = s.args();
  ListVersionsRequest request;
  request.set_run(run);
  if (a.min_step && a.max_step && *a.min_step > *a.max_step) {
    return UsageError(absl::StrCat("--min-step ", *a.min_step,
                                   " is above --max-step ", *a.max_step,
                                   "; no version could match"));
  }
  if (a.min_step) request.set_min_step(*a.min_step);
  if (a.max_step) request.set_max_step(*a.max_step);
  request.set_metric_present(a.metric_present);
  for (const std::string& l : a.labels) {
    CKPTD_ASSIGN_OR_RETURN(auto kv, ParseKeyValue(l, "--label"));
    auto [it, inserted] =
        request.mutable_label_equals()->insert({kv.first, kv.second});
    if (!inserted && it->second != kv.second) {
      return UsageError(absl::StrCat(
          "--label ", kv.first, " is given twice with different values ('",
          it->second, "' and '", kv.second, "'); no version could match"));
    }
  }
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  CKPTD_ASSIGN_OR_RETURN(std::vector<VersionInfo> versions,
                         client->ListVersions(request));
  if (s.json()) {
    Json j = Json::array();
    for (const VersionInfo& v : versions) j.push_back(VersionJson(v));
    s.PrintJson(j);
    return absl::OkStatus();
  }
  Table table({"VERSION", "STEP", "EPOCH", "STATE", "COMMITTED", "SIZE",
               "PINNED", "ALIASES", "METRICS"});
  for (size_t c : {0, 1, 2, 5}) table.AlignRight(c);
  for (const VersionInfo& v : versions) {
    std::vector<std::string> aliases(v.aliases().begin(), v.aliases().end());
    std::sort(aliases.begin(), aliases.end());
    table.AddRow({absl::StrCat(v.version()), absl::StrCat(v.step()),
                  absl::StrCat(v.epoch()), StateName(v.state()),
                  FormatTime(v.committed_at()), HumanBytes(v.total_bytes()),
                  v.pinned() ? "yes" : "", absl::StrJoin(aliases, ","),
                  MetricsText(v.metrics())});
  }
  s.out() << table.Render();
  return absl::OkStatus();
}

absl::Status CmdShow(Session& s) {
  CKPTD_ASSIGN_OR_RETURN(
      VersionRef vr, ParseVersionRef(s.args().target, RefRule::kDefaultLast));
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  GetVersionOptions options;
  options.include_manifest = true;
  CKPTD_ASSIGN_OR_RETURN(VersionManifest vm,
                         client->GetVersion(vr.run, vr.ref, options));
  const VersionInfo& v = vm.info;
  const bool sharded = vm.shards.size() > 1;

  if (s.json()) {
    Json j = VersionJson(v);
    Json tensors = Json::array();
    Json values = Json::array();
    for (const ShardManifest& shard : vm.shards) {
      for (const ManifestEntry& e : shard.entries()) {
        if (e.has_tensor()) {
          tensors.push_back({{"rank", shard.rank()},
                             {"key", DottedPath(e.path())},
                             {"dtype", DTypeName(e.tensor().dtype())},
                             {"shape", ShapeOf(e.tensor())},
                             {"bytes", e.tensor().byte_length()}});
        } else if (e.has_value()) {
          values.push_back({{"rank", shard.rank()},
                            {"key", DottedPath(e.path())},
                            {"value", ValueJson(e.value())}});
        }
      }
    }
    j["tensors"] = tensors;
    j["values"] = values;
    s.PrintJson(j);
    return absl::OkStatus();
  }

  std::vector<std::string> aliases(v.aliases().begin(), v.aliases().end());
  std::sort(aliases.begin(), aliases.end());
  std::vector<std::pair<std::string, std::string>> fields = {
      {"run", v.run()},
      {"version", absl::StrCat(v.version())},
      {"state", StateName(v.state())},
      {"step", absl::StrCat(v.step())},
      {"epoch", absl::StrCat(v.epoch())},
      {"world size", absl::StrCat(v.world_size())},
      {"created", FormatTime(v.created_at())},
      {"committed", FormatTime(v.committed_at())},
      {"size", absl::StrCat(HumanBytes(v.total_bytes()), " (uploaded ",
                            HumanBytes(v.uploaded_bytes()), ")")},
      {"pinned", v.pinned() ? "yes" : "no"},
      {"aliases", aliases.empty() ? "-" : absl::StrJoin(aliases, ", ")},
  };
  if (!v.abort_reason().empty()) {
    fields.emplace_back("abort reason", v.abort_reason());
  }
  s.out() << RenderFields(fields);

  const Environment& env = v.env();
  std::vector<std::string> labels;
  for (const auto& [k, val] : std::map<std::string, std::string>(
           env.labels().begin(), env.labels().end())) {
    labels.push_back(absl::StrCat(k, "=", val));
  }
  s.out() << "\nenvironment:\n"
          << RenderFields(
                 {{"torch", OrDash(env.torch_version())},
                  {"cuda", OrDash(env.cuda_version())},
                  {"python", OrDash(env.python_version())},
                  {"hostname", OrDash(env.hostname())},
                  {"client", OrDash(env.client_version())},
                  {"labels",
                   labels.empty() ? "-" : absl::StrJoin(labels, ", ")}},
                 "  ");

  s.out() << "\nmetrics:\n";
  if (v.metrics().empty()) {
    s.out() << "  -\n";
  } else {
    std::vector<std::pair<std::string, std::string>> metric_fields;
    for (const auto& [k, val] : SortedMetrics(v.metrics())) {
      metric_fields.emplace_back(k, FormatNumber(val));
    }
    s.out() << RenderFields(metric_fields, "  ");
  }

  s.out() << "\nshards:\n";
  Table shards({"RANK", "TENSORS", "SIZE", "COMMITTED"});
  shards.SetIndent("  ");
  for (size_t c : {0, 1, 2}) shards.AlignRight(c);
  for (const v1::ShardInfo& sh : v.shards()) {
    shards.AddRow({absl::StrCat(sh.rank()), absl::StrCat(sh.tensor_count()),
                   HumanBytes(sh.total_bytes()),
                   FormatTime(sh.committed_at())});
  }
  s.out() << shards.Render();

  std::vector<std::string> tensor_headers = {"KEY", "DTYPE", "SHAPE", "SIZE"};
  if (sharded) tensor_headers.insert(tensor_headers.begin(), "RANK");
  Table tensors(tensor_headers);
  tensors.SetIndent("  ");
  tensors.AlignRight(tensor_headers.size() - 1);
  Table values(sharded ? std::vector<std::string>{"RANK", "KEY", "VALUE"}
                       : std::vector<std::string>{"KEY", "VALUE"});
  values.SetIndent("  ");
  for (const ShardManifest& shard : vm.shards) {
    for (const ManifestEntry& e : shard.entries()) {
      std::vector<std::string> row;
      if (sharded) row.push_back(absl::StrCat(shard.rank()));
      row.push_back(DottedPath(e.path()));
      if (e.has_tensor()) {
        row.push_back(DTypeName(e.tensor().dtype()));
        row.push_back(FormatShape(ShapeOf(e.tensor())));
        row.push_back(HumanBytes(e.tensor().byte_length()));
        tensors.AddRow(std::move(row));
      } else if (e.has_value()) {
        row.push_back(ValueText(e.value()));
        values.AddRow(std::move(row));
      }
    }
  }
  s.out() << "\ntensors (" << tensors.row_count() << "):\n" << tensors.Render();
  if (values.row_count() > 0) {
    s.out() << "\nvalues (" << values.row_count() << "):\n" << values.Render();
  }
  return absl::OkStatus();
}

absl::Status CmdMetrics(Session& s) {
  const std::string& run = s.args().run;
  CKPTD_RETURN_IF_ERROR(CheckRunArgument(run));
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  CKPTD_ASSIGN_OR_RETURN(std::vector<MetricPoint> points,
                         client->GetMetricHistory(run, s.args().name));

  // metric -> points, in the server's (version) order.
  std::map<std::string, std::vector<const MetricPoint*>> by_metric;
  // version -> (step, committed_at, metric -> value)
  struct Row {
    int64_t step = 0;
    int64_t committed_at = 0;
    std::map<std::string, double> values;
  };
  std::map<uint64_t, Row> rows;
  for (const MetricPoint& p : points) {
    by_metric[p.metric()].push_back(&p);
    Row& row = rows[p.version()];
    row.step = p.step();
    row.committed_at = p.committed_at();
    row.values[p.metric()] = p.value();
  }

  if (s.json()) {
    Json metrics = Json::object();
    for (const auto& [name, series] : by_metric) {
      Json arr = Json::array();
      for (const MetricPoint* p : series) {
        arr.push_back({{"version", p->version()},
                       {"step", p->step()},
                       {"value", p->value()},
                       {"committed_at", TimeJson(p->committed_at())}});
      }
      metrics[name] = arr;
    }
    s.PrintJson(Json{{"run", run}, {"metrics", metrics}});
    return absl::OkStatus();
  }
  if (points.empty()) {
    s.out() << (s.args().name.empty()
                    ? absl::StrCat("run '", run, "' has no metrics\n")
                    : absl::StrCat("run '", run, "' has no metric '",
                                   s.args().name, "'\n"));
    return absl::OkStatus();
  }

  std::vector<std::string> headers = {"VERSION", "STEP", "COMMITTED"};
  for (const auto& [name, series] : by_metric) headers.push_back(name);
  Table table(headers);
  for (size_t c = 0; c < headers.size(); ++c) {
    if (c != 2) table.AlignRight(c);
  }
  for (const auto& [version, row] : rows) {
    std::vector<std::string> cells = {absl::StrCat(version),
                                      absl::StrCat(row.step),
                                      FormatTime(row.committed_at)};
    for (const auto& [name, series] : by_metric) {
      auto it = row.values.find(name);
      cells.push_back(it == row.values.end() ? "-" : FormatNumber(it->second));
    }
    table.AddRow(std::move(cells));
  }
  s.out() << table.Render() << "\n";

  Table sparks({"METRIC", "POINTS", "MIN", "MAX", "LAST", "TREND"});
  for (size_t c : {1, 2, 3, 4}) sparks.AlignRight(c);
  for (const auto& [name, series] : by_metric) {
    std::vector<double> values;
    for (const MetricPoint* p : series) values.push_back(p->value());
    const auto [lo, hi] = std::minmax_element(values.begin(), values.end());
    sparks.AddRow({name, absl::StrCat(values.size()), FormatNumber(*lo),
                   FormatNumber(*hi), FormatNumber(values.back()),
                   Sparkline(values)});
  }
  s.out() << sparks.Render();
  return absl::OkStatus();
}

absl::Status CmdPull(Session& s) {
  CKPTD_ASSIGN_OR_RETURN(
      VersionRef vr, ParseVersionRef(s.args().target, RefRule::kDefaultLast));
  const std::string& path = s.args().output;
  if (path.empty()) return UsageError("pull needs -o FILE.safetensors");
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  CKPTD_ASSIGN_OR_RETURN(AtomicFileWriter writer,
                         AtomicFileWriter::Create(path));

  ProgressBar bar(s.err(), absl::StrCat("pull ", vr.run, "@", vr.ref),
                  s.progress());
  uint64_t announced = 0;  // the file size the server promised
  CKPTD_RETURN_IF_ERROR(client->ExportSafetensors(
      vr.run, vr.ref, s.args().rank, s.args().keys,
      [&](std::string_view piece, uint64_t total) -> absl::Status {
        announced = total;
        CKPTD_RETURN_IF_ERROR(
            writer.Append(absl::string_view(piece.data(), piece.size())));
        if (announced != 0 && writer.bytes_written() > announced) {
          return absl::DataLossError(
              absl::StrCat("the server sent more than the ", announced,
                           " bytes it announced for ", vr.run, "@", vr.ref,
                           "; nothing was written to ", path));
        }
        bar.Update(writer.bytes_written(), total);
        return absl::OkStatus();
      }));
  bar.Finish();

  // Check what arrived before it replaces anything at `path`. A well-formed
  // header over shifted bytes would still parse, so the size must match the
  // announced one and the tensors must cover the data section exactly (the
  // server writes them back to back).
  const auto invalid = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat(
        "the server sent an invalid .safetensors file for ", vr.run, "@",
        vr.ref, ": ", why, "; nothing was written to ", path));
  };
  if (announced != 0 && writer.bytes_written() != announced) {
    return invalid(absl::StrCat(writer.bytes_written(), " bytes arrived but ",
                                announced, " were announced"));
  }
  size_t tensor_count = 0;
  {
    CKPTD_ASSIGN_OR_RETURN(MappedFile mapped,
                           MappedFile::Open(writer.temp_path()));
    absl::StatusOr<SafetensorsFile> parsed = ParseSafetensors(mapped.view());
    if (!parsed.ok()) return invalid(parsed.status().message());
    uint64_t covered = 0;
    for (const SafetensorsTensor& t : parsed->tensors) {
      covered = std::max(covered, t.end);
    }
    if (covered != parsed->data.size()) {
      return invalid(absl::StrCat("the data section has ", parsed->data.size(),
                                  " bytes but the tensors cover ", covered));
    }
    tensor_count = parsed->tensors.size();
  }
  const uint64_t bytes = writer.bytes_written();
  CKPTD_RETURN_IF_ERROR(writer.Commit());

  if (s.json()) {
    s.PrintJson({{"run", vr.run},
                 {"ref", vr.ref},
                 {"rank", s.args().rank},
                 {"file", path},
                 {"bytes", bytes},
                 {"tensors", tensor_count}});
  } else {
    s.out() << "wrote " << path << ": " << Count(tensor_count, "tensor") << ", "
            << HumanBytes(bytes) << " from " << vr.run << "@" << vr.ref << "\n";
  }
  return absl::OkStatus();
}

absl::Status CmdPush(Session& s) {
  const Args& a = s.args();
  CKPTD_RETURN_IF_ERROR(CheckRunArgument(a.run));
  PushRequest request;
  request.run = a.run;
  request.step = a.step;
  request.epoch = a.epoch;
  for (const std::string& m : a.metrics) {
    CKPTD_ASSIGN_OR_RETURN(auto kv, ParseKeyValue(m, "--metric"));
    double value = 0;
    if (!absl::SimpleAtod(kv.second, &value)) {
      return UsageError(absl::StrCat("bad --metric '", m, "': '", kv.second,
                                     "' is not a number"));
    }
    request.metrics[kv.first] = value;
  }
  for (const std::string& l : a.labels) {
    CKPTD_ASSIGN_OR_RETURN(auto kv, ParseKeyValue(l, "--label"));
    (*request.env.mutable_labels())[kv.first] = kv.second;
  }

  // Validate the whole file before anything goes to the server.
  CKPTD_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::Open(a.file));
  absl::StatusOr<SafetensorsFile> file = ParseSafetensors(mapped.view());
  if (!file.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(a.file, ": ", file.status().message()));
  }
  absl::StatusOr<std::vector<PushEntry>> entries = BuildPushEntries(*file);
  if (!entries.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(a.file, ": ", entries.status().message()));
  }
  request.entries = *std::move(entries);

  uint64_t file_bytes = 0;
  for (const PushEntry& e : request.entries) {
    file_bytes += e.tensor.byte_length;
  }

  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  const std::string label = absl::StrCat("push ", a.run);
  ProgressBar bar(s.err(), label, s.progress());
  PushOptions options;
  // `total` is what the server is missing; 0 (everything already stored)
  // is said in words after the push instead of a bar of "0 B / 0 B".
  std::atomic<bool> anything_to_send{false};
  options.progress = [&bar, &anything_to_send](uint64_t done, uint64_t total) {
    if (total == 0) return;
    anything_to_send.store(true, std::memory_order_relaxed);
    bar.Update(done, total);
  };
  // On unix:PATH, Push sends what the daemon lacks through its data plane.
  CKPTD_ASSIGN_OR_RETURN(VersionInfo v, client->Push(request, options));
  bar.Finish();
  if (s.progress() && !anything_to_send.load(std::memory_order_relaxed)) {
    s.err() << label << ": 0 B to send, " << HumanBytes(file_bytes)
            << " already stored\n";
  }
  if (s.json()) {
    s.PrintJson(VersionJson(v));
  } else {
    const std::string uploaded =
        v.uploaded_bytes() == 0 && v.total_bytes() > 0
            ? absl::StrCat("0 B to send, ", HumanBytes(v.total_bytes()),
                           " already stored")
            : absl::StrCat("uploaded ", HumanBytes(v.uploaded_bytes()));
    s.out() << "pushed " << v.run() << "@" << v.version() << ": step "
            << v.step() << ", " << Count(file->tensors.size(), "tensor") << ", "
            << HumanBytes(v.total_bytes()) << " (" << uploaded << "), "
            << StateName(v.state()) << "\n";
  }
  return absl::OkStatus();
}

// `ckpt alias RUN@REF NAME`, or the older `ckpt alias RUN NAME REF`.
absl::Status CmdAlias(Session& s) {
  const Args& a = s.args();
  VersionRef target;
  if (a.run.find('@') != std::string::npos) {
    CKPTD_ASSIGN_OR_RETURN(target, ParseVersionRef(a.run, RefRule::kRequired));
    if (!a.ref.empty()) {
      return UsageError(
          absl::StrCat("the version is given twice ('", a.run, "' and '", a.ref,
                       "'); use ckpt alias RUN@REF NAME, e.g. ckpt alias ",
                       target.run, "@", target.ref, " ", a.name));
    }
  } else {
    CKPTD_RETURN_IF_ERROR(CheckRunArgument(a.run));
    if (a.ref.empty()) {
      return UsageError(absl::StrCat(
          "which version should '", a.name, "' name? use ckpt alias RUN@REF ",
          "NAME, e.g. ckpt alias ", a.run, "@best ", a.name));
    }
    CKPTD_RETURN_IF_ERROR(CheckRef(a.ref));
    target = VersionRef{a.run, a.ref};
  }
  CKPTD_RETURN_IF_ERROR(CheckAliasName(a.name));
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  CKPTD_ASSIGN_OR_RETURN(AliasInfo info,
                         client->SetAlias(target.run, a.name, target.ref));
  if (s.json()) {
    s.PrintJson({{"run", info.run()},
                 {"name", info.name()},
                 {"version", info.version()},
                 {"updated_at", TimeJson(info.updated_at())}});
  } else {
    s.out() << info.run() << "@" << info.name() << " -> " << info.version()
            << "\n";
  }
  return absl::OkStatus();
}

absl::Status CmdUnalias(Session& s) {
  const Args& a = s.args();
  CKPTD_RETURN_IF_ERROR(CheckRunArgument(a.run));
  CKPTD_RETURN_IF_ERROR(CheckAliasName(a.name));
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  CKPTD_RETURN_IF_ERROR(client->DeleteAlias(a.run, a.name));
  if (s.json()) {
    s.PrintJson({{"run", a.run}, {"name", a.name}, {"deleted", true}});
  } else {
    s.out() << "removed alias " << a.run << "@" << a.name << "\n";
  }
  return absl::OkStatus();
}

absl::Status CmdPin(Session& s, bool pin) {
  CKPTD_ASSIGN_OR_RETURN(VersionRef vr,
                         ParseVersionRef(s.args().target, RefRule::kRequired));
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  CKPTD_ASSIGN_OR_RETURN(VersionInfo v, pin ? client->Pin(vr.run, vr.ref)
                                            : client->Unpin(vr.run, vr.ref));
  if (s.json()) {
    s.PrintJson(VersionJson(v));
  } else {
    s.out() << (pin ? "pinned " : "unpinned ") << v.run() << "@" << v.version()
            << "\n";
  }
  return absl::OkStatus();
}

absl::Status CmdRm(Session& s) {
  CKPTD_ASSIGN_OR_RETURN(VersionRef vr,
                         ParseVersionRef(s.args().target, RefRule::kRequired));
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  const bool force = s.args().force;
  CKPTD_RETURN_IF_ERROR(client->DeleteVersion(vr.run, vr.ref, force));
  // With --force, say where last and best went (0: nowhere).
  std::vector<std::pair<std::string, uint64_t>> aliases;
  if (force) {
    GetVersionOptions meta_only;
    meta_only.include_manifest = false;
    for (const char* alias : {"last", "best"}) {
      absl::StatusOr<VersionManifest> v =
          client->GetVersion(vr.run, alias, meta_only);
      if (v.ok()) {
        aliases.emplace_back(alias, v->info.version());
      } else if (absl::IsNotFound(v.status())) {
        aliases.emplace_back(alias, 0);
      }
    }
  }
  if (s.json()) {
    Json j = {{"run", vr.run}, {"ref", vr.ref}, {"deleted", true}};
    for (const auto& [alias, version] : aliases) {
      j[alias] = version == 0 ? Json(nullptr) : Json(version);
    }
    s.PrintJson(j);
  } else {
    s.out() << "deleted " << vr.run << "@" << vr.ref << "\n";
    for (const auto& [alias, version] : aliases) {
      s.out() << "  " << alias << " -> "
              << (version == 0 ? std::string("none")
                               : absl::StrCat(vr.run, "@", version))
              << "\n";
    }
  }
  return absl::OkStatus();
}

void PrintPolicy(Session& s, const std::string& run, const Policy& p) {
  if (s.json()) {
    s.PrintJson(PolicyJson(run, p));
    return;
  }
  const std::string monitor =
      p.monitor().empty()
          ? "- (no best)"
          : absl::StrCat(
                p.monitor(), " (",
                ModeName(p.mode()).empty() ? "mode unset" : ModeName(p.mode()),
                ")");
  constexpr char kKeepAll[] = "- (keep all)";
  s.out() << RenderFields(
      {{"run", run},
       {"monitor", monitor},
       {"keep last",
        p.has_keep_last() ? absl::StrCat(p.keep_last()) : kKeepAll},
       {"keep best",
        p.has_keep_best() ? absl::StrCat(p.keep_best()) : kKeepAll},
       {"keep every n steps", p.has_keep_every_n_steps()
                                  ? absl::StrCat(p.keep_every_n_steps())
                                  : "-"}});
}

absl::Status CmdPolicy(Session& s) {
  const Args& a = s.args();
  CKPTD_RETURN_IF_ERROR(CheckRunArgument(a.run));
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  absl::StatusOr<Policy> current = client->GetPolicy(a.run);
  if (a.policy.empty()) {
    if (!current.ok()) return current.status();
    PrintPolicy(s, a.run, *current);
    return absl::OkStatus();
  }
  // Setting a policy before the first push is how `best` and retention are
  // in force from version 1 on: the server's SetPolicy creates the run, so
  // an unknown run starts from the defaults (keep everything, no best).
  if (!current.ok() && !absl::IsNotFound(current.status())) {
    return current.status();
  }
  const Policy base = current.ok() ? *current : Policy();
  CKPTD_ASSIGN_OR_RETURN(
      Policy updated,
      client->SetPolicy(a.run, ApplyPolicyEdit(base, a.policy)));
  PrintPolicy(s, a.run, updated);
  return absl::OkStatus();
}

absl::Status CmdGc(Session& s) {
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  CKPTD_ASSIGN_OR_RETURN(v1::CollectGarbageResponse r,
                         client->CollectGarbage());
  if (s.json()) {
    s.PrintJson({{"blobs_deleted", r.blobs_deleted()},
                 {"bytes_freed", r.bytes_freed()}});
  } else {
    s.out() << "deleted " << Count(r.blobs_deleted(), "blob") << ", freed "
            << HumanBytes(r.bytes_freed()) << "\n";
  }
  return absl::OkStatus();
}

absl::Status CmdWatch(Session& s) {
  CKPTD_ASSIGN_OR_RETURN(
      VersionRef vr, ParseVersionRef(s.args().target, RefRule::kDefaultLast));
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  if (!s.json()) {
    s.err() << "watching " << vr.run << "@" << vr.ref << " (Ctrl-C to stop)\n";
  }
  return client->WatchRef(vr.run, vr.ref, [&](const VersionInfo& v) {
    const std::string now = FormatTime(absl::ToUnixNanos(absl::Now()));
    if (s.json()) {
      Json j = VersionJson(v);
      j["ref"] = vr.ref;
      j["seen_at"] = now;
      s.out() << j.dump(-1, ' ', false, Json::error_handler_t::replace)
              << std::endl;
    } else {
      s.out() << now << "  " << vr.run << "@" << vr.ref << " -> " << v.version()
              << "  step " << v.step();
      if (!v.metrics().empty()) s.out() << "  " << MetricsText(v.metrics());
      s.out() << std::endl;
    }
    return true;
  });
}

// ckpt token new IDENTITY ROLE PATTERNS: a fresh bearer token and the
// --auth_file line that admits it. Needs no server.
absl::Status CmdTokenNew(Session& s) {
  const Args& a = s.args();
  // The line must parse as ckptd parses it (server/service/auth.h).
  CKPTD_RETURN_IF_ERROR(AsUsageError(ValidateIdentity(a.identity)));
  CKPTD_RETURN_IF_ERROR(AsUsageError(ValidateRoleName(a.role)));
  for (absl::string_view p : absl::StrSplit(a.patterns, ',')) {
    CKPTD_RETURN_IF_ERROR(AsUsageError(ValidateRunPattern(p)));
  }
  CKPTD_ASSIGN_OR_RETURN(std::string token, NewBearerToken());
  const std::string line = absl::StrCat(
      a.identity, " ", a.role, " ", a.patterns, " sha256:", Sha256Hex(token));
  if (s.json()) {
    s.PrintJson({{"token", token}, {"auth_file_line", line}});
    return absl::OkStatus();
  }
  s.out() << "token:  " << token << "\n"
          << "line:   " << line << "\n\n"
          << "Append the line to ckptd's --auth_file and send it SIGHUP. Give "
             "the token to its user (ckpt --token, $CKPTD_TOKEN, or "
             "ckptd.Client(token=...)); it is not stored anywhere and cannot "
             "be shown again.\n";
  return absl::OkStatus();
}

absl::Status CmdAudit(Session& s) {
  const Args& a = s.args();
  if (!a.run.empty()) CKPTD_RETURN_IF_ERROR(CheckRunArgument(a.run));
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  CKPTD_ASSIGN_OR_RETURN(std::vector<AuditEvent> events,
                         client->GetAuditLog(a.run, a.limit));
  if (s.json()) {
    Json j = Json::array();
    for (const AuditEvent& e : events) {
      j.push_back(
          {{"at", TimeJson(e.at())},
           {"identity", e.identity()},
           {"run", e.run()},
           {"action", e.action()},
           {"version", e.version() == 0 ? Json(nullptr) : Json(e.version())},
           {"detail", e.detail()}});
    }
    s.PrintJson(j);
    return absl::OkStatus();
  }
  Table table({"TIME", "IDENTITY", "RUN", "ACTION", "VERSION", "DETAIL"});
  for (const AuditEvent& e : events) {
    table.AddRow({FormatTime(e.at()), e.identity(), OrDash(e.run()), e.action(),
                  VersionOrDash(e.version()), OrDash(e.detail())});
  }
  s.out() << table.Render();
  return absl::OkStatus();
}

absl::Status CmdHistory(Session& s) {
  const Args& a = s.args();
  CKPTD_RETURN_IF_ERROR(CheckRunArgument(a.run));
  if (!a.name.empty()) {
    CKPTD_RETURN_IF_ERROR(AsUsageError(ValidateAliasName(a.name)));
  }
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  CKPTD_ASSIGN_OR_RETURN(std::vector<AliasEvent> events,
                         client->GetAliasHistory(a.run, a.name));
  if (s.json()) {
    Json j = Json::array();
    for (const AliasEvent& e : events) {
      j.push_back(
          {{"run", e.run()},
           {"alias", e.alias()},
           {"from_version",
            e.from_version() == 0 ? Json(nullptr) : Json(e.from_version())},
           {"to_version",
            e.to_version() == 0 ? Json(nullptr) : Json(e.to_version())},
           {"at", TimeJson(e.at())},
           {"actor", e.actor()}});
    }
    s.PrintJson(j);
    return absl::OkStatus();
  }
  Table table({"TIME", "ALIAS", "CHANGE", "ACTOR"});
  for (const AliasEvent& e : events) {
    const std::string from =
        e.from_version() == 0 ? "(none)" : absl::StrCat(e.from_version());
    const std::string to =
        e.to_version() == 0 ? "(deleted)" : absl::StrCat(e.to_version());
    table.AddRow({FormatTime(e.at()), e.alias(), absl::StrCat(from, " -> ", to),
                  OrDash(e.actor())});
  }
  s.out() << table.Render();
  return absl::OkStatus();
}

absl::Status CmdVerify(Session& s) {
  CKPTD_ASSIGN_OR_RETURN(VersionRef vr,
                         ParseVersionRef(s.args().target, RefRule::kOptional));
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  CKPTD_ASSIGN_OR_RETURN(v1::VerifyResponse r, client->Verify(vr.run, vr.ref));
  const std::string what = vr.ref.empty()
                               ? absl::StrCat(vr.run, " (every version)")
                               : absl::StrCat(vr.run, "@", vr.ref);
  std::vector<std::string> damaged_names;
  for (const v1::DamagedVersion& d : r.damaged()) {
    damaged_names.push_back(absl::StrCat(d.run(), "@", d.version()));
  }
  if (s.json()) {
    Json damaged = Json::array();
    for (const v1::DamagedVersion& d : r.damaged()) {
      Json tensors = Json::array();
      for (const v1::DamagedTensor& t : d.tensors()) {
        tensors.push_back({{"rank", t.rank()},
                           {"key", t.key()},
                           {"blob", DigestHex(t.blob_digest())}});
      }
      damaged.push_back(
          {{"run", d.run()},
           {"version", d.version()},
           {"aliases",
            std::vector<std::string>(d.aliases().begin(), d.aliases().end())},
           {"tensors", tensors}});
    }
    s.PrintJson({{"run", vr.run},
                 {"ref", vr.ref},
                 {"blobs_checked", r.blobs_checked()},
                 {"bytes_checked", r.bytes_checked()},
                 {"errors", std::vector<std::string>(r.errors().begin(),
                                                     r.errors().end())},
                 {"damaged", damaged},
                 {"ok", r.errors().empty()}});
  } else {
    s.out() << "verified " << what << ": " << Count(r.blobs_checked(), "blob")
            << ", " << HumanBytes(r.bytes_checked()) << ", "
            << Count(r.errors_size(), "error") << "\n";
    for (const std::string& e : r.errors()) s.out() << "  " << e << "\n";
    if (!r.damaged().empty()) {
      s.out() << "damaged versions:\n";
      Table table({"VERSION", "ALIASES", "TENSOR", "RANK", "BLOB"});
      for (const v1::DamagedVersion& d : r.damaged()) {
        const std::string name = absl::StrCat(d.run(), "@", d.version());
        const std::string aliases =
            d.aliases().empty() ? "-" : absl::StrJoin(d.aliases(), ",");
        for (const v1::DamagedTensor& t : d.tensors()) {
          table.AddRow({name, aliases, t.key(), absl::StrCat(t.rank()),
                        DigestHex(t.blob_digest())});
        }
        if (d.tensors().empty()) table.AddRow({name, aliases, "-", "-", "-"});
      }
      s.out() << table.Render();
      s.out() << "re-save the same state to heal them (the next push uploads "
                 "the damaged bytes again), or delete them: ckpt rm --force "
                 "RUN@N\n";
    }
  }
  if (!r.errors().empty()) {
    std::string message = absl::StrCat("verify found ", r.errors_size(),
                                       " bad blob(s) in ", what);
    if (!damaged_names.empty()) {
      absl::StrAppend(&message,
                      "; damaged: ", absl::StrJoin(damaged_names, ", "));
    }
    return absl::DataLossError(message);
  }
  return absl::OkStatus();
}

// `ckpt admin backup DIR`: DIR is on the server's filesystem, so only an
// absolute path means the same there as here.
absl::Status CmdAdminBackup(Session& s) {
  const std::string& dir = s.args().backup_dir;
  if (dir.empty() || dir[0] != '/') {
    return UsageError(absl::StrCat(
        "backup DIR '", dir,
        "' must be an absolute path: it names a directory on the server's "
        "filesystem (ckptd writes it), e.g. /var/backups/ckptd-2024-06-01"));
  }
  absl::Duration timeout = absl::InfiniteDuration();
  if (!s.args().backup_timeout.empty() &&
      (!absl::ParseDuration(s.args().backup_timeout, &timeout) ||
       timeout <= absl::ZeroDuration())) {
    return UsageError(absl::StrCat("bad --timeout '", s.args().backup_timeout,
                                   "': give a positive duration such as 90m "
                                   "or 2h"));
  }
  CKPTD_ASSIGN_OR_RETURN(Client * client, s.client());
  CKPTD_ASSIGN_OR_RETURN(v1::BackupResponse r, client->Backup(dir, timeout));
  const double seconds = static_cast<double>(r.elapsed_nanos()) / 1e9;
  if (s.json()) {
    s.PrintJson({{"dir", r.dir()},
                 {"snapshot_at", FormatTime(r.snapshot_at())},
                 {"runs", r.runs()},
                 {"versions", r.versions()},
                 {"pending_left_out", r.pending_left_out()},
                 {"blobs", r.blobs()},
                 {"bytes", r.bytes()},
                 {"blobs_linked", r.blobs_linked()},
                 {"blobs_copied", r.blobs_copied()},
                 {"bytes_copied", r.bytes_copied()},
                 {"seconds", seconds}});
    return absl::OkStatus();
  }
  s.out()
      << "backed up to " << r.dir() << "\n"
      << RenderFields({
             {"snapshot", FormatTime(r.snapshot_at())},
             {"versions",
              absl::StrCat(r.versions(), " in ", Count(r.runs(), "run"), " (",
                           r.pending_left_out(), " pending left out)")},
             {"blobs", absl::StrCat(r.blobs(), " (", r.blobs_linked(),
                                    " linked, ", r.blobs_copied(), " copied)")},
             {"bytes", absl::StrCat(HumanBytes(r.bytes()), " (",
                                    HumanBytes(r.bytes_copied()), " copied)")},
             {"time", absl::StrFormat("%.2f s", seconds)},
             {"restore", absl::StrCat("ckptd --data_dir ", r.dir())},
         });
  return absl::OkStatus();
}

// `ckpt admin SUBCOMMAND`: one handler per subcommand.
absl::Status CmdAdmin(Session& s) {
  static const auto* const kHandlers =
      new std::map<std::string, std::function<absl::Status(Session&)>>{
          {"backup", CmdAdminBackup},
      };
  auto it = kHandlers->find(s.args().admin_command);
  if (it == kHandlers->end()) {
    return UsageError("admin needs a subcommand: backup");
  }
  return it->second(s);
}

// A gRPC service name as grpc.health.v1 takes it: ckptd.v1.Checkpoint.
absl::Status CheckServiceName(absl::string_view name) {
  const bool ok = !name.empty() && name.front() != '.' && name.back() != '.' &&
                  std::all_of(name.begin(), name.end(), [](char c) {
                    return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
                           c == '_' || c == '.';
                  });
  if (ok) return absl::OkStatus();
  return UsageError(absl::StrCat(
      "--service '", name,
      "' is not a gRPC service name such as ckptd.v1.Checkpoint (letters, "
      "digits, '_' and '.'); leave it out to ask about the whole server"));
}

// gRPC messages may span lines; a health check reports one.
std::string OneLine(absl::string_view text) {
  std::string out(text);
  std::replace(out.begin(), out.end(), '\n', ' ');
  return out;
}

// ckpt health [--service NAME] [--timeout 5s]: one grpc.health.v1 Check.
// OK only for SERVING; every other outcome is an error whose message is the
// one line a probe log shows.
absl::Status CmdHealth(Session& s) {
  const Args& a = s.args();
  absl::Duration timeout;
  if (!absl::ParseDuration(a.timeout, &timeout) ||
      timeout <= absl::ZeroDuration() || timeout == absl::InfiniteDuration()) {
    return UsageError(absl::StrCat(
        "--timeout '", a.timeout,
        "' is not a positive duration: give a number and a unit, e.g. 5s or "
        "500ms"));
  }
  if (!a.service.empty()) CKPTD_RETURN_IF_ERROR(CheckServiceName(a.service));
  CKPTD_ASSIGN_OR_RETURN(ClientOptions options, s.client_options());
  options.rpc_timeout_seconds = absl::ToDoubleSeconds(timeout);
  const std::string what =
      a.service.empty()
          ? options.address
          : absl::StrCat(options.address, " (service ", a.service, ")");

  const absl::StatusOr<ServingStatus> serving = CheckHealth(options, a.service);
  absl::Status result;
  if (!serving.ok()) {
    const std::string why = OneLine(serving.status().message());
    switch (serving.status().code()) {
      case absl::StatusCode::kUnavailable:
        result = absl::UnavailableError(
            absl::StrCat(what, " is unreachable: ", why));
        break;
      case absl::StatusCode::kDeadlineExceeded:
        result = absl::DeadlineExceededError(
            absl::StrCat(what, " did not answer within ",
                         absl::FormatDuration(timeout), " (--timeout)"));
        break;
      case absl::StatusCode::kNotFound:
        result = absl::NotFoundError(absl::StrCat(
            options.address, " does not report on service '", a.service,
            "'; leave out --service to ask about the whole server"));
        break;
      default:
        result = absl::Status(serving.status().code(),
                              absl::StrCat(what, ": ", why));
    }
  } else if (*serving != ServingStatus::kServing) {
    result = absl::UnavailableError(
        absl::StrCat(what, " is ", ServingStatusName(*serving),
                     *serving == ServingStatus::kNotServing
                         ? " (starting up or shutting down)"
                         : ""));
  }
  const std::string state = serving.ok()
                                ? ServingStatusName(*serving)
                                : absl::StatusCodeToString(result.code());
  if (s.json()) {
    Json j = {{"address", options.address},
              {"service", a.service},
              {"status", state},
              {"serving", result.ok()}};
    if (!result.ok()) j["error"] = std::string(result.message());
    s.PrintJson(j);
  } else if (result.ok()) {
    s.out() << what << ": SERVING\n";
  }
  return result;
}

// ---------------------------------------------------------------------------
// CLI11 wiring.

using Handler = std::function<absl::Status(Session&)>;

CLI::App* AddCommand(CLI::App& app, std::map<std::string, Handler>& handlers,
                     const std::string& name, const std::string& description,
                     const std::string& example, Handler handler) {
  CLI::App* cmd = app.add_subcommand(name, description);
  cmd->footer(absl::StrCat("Example:\n  ", example, "\n"));
  handlers[name] = std::move(handler);
  return cmd;
}

// Everything CLI11 needs is bound to `args`; returns the handlers by name.
std::map<std::string, Handler> DefineCommands(CLI::App& app, Args& args) {
  std::map<std::string, Handler> h;
  app.fallthrough();  // global flags may also follow the command
  app.require_subcommand(1);
  app.add_option("--server", args.server,
                 "ckptd address: HOST:PORT, or unix:PATH for the "
                 "co-located socket (ckptd --local_socket) (default: "
                 "$CKPTD_SERVER, else 127.0.0.1:50051)");
  app.add_flag("--json", args.json, "Print JSON for scripts");
  app.add_option("--token", args.token,
                 "Bearer token for a server with --auth_file (default: "
                 "$CKPTD_TOKEN)");
  app.add_option("--tls_ca", args.tls_ca,
                 "PEM file of the CA that signed the server's certificate; "
                 "switches to TLS (default: $CKPTD_TLS_CA)");
  app.add_option("--tls_cert", args.tls_cert,
                 "PEM file of this client's certificate, for mTLS (default: "
                 "$CKPTD_TLS_CERT)");
  app.add_option("--tls_key", args.tls_key,
                 "PEM file of the client certificate's key (default: "
                 "$CKPTD_TLS_KEY)");
  app.footer(
      "REF is a version number, last, best or an alias; RUN alone means "
      "RUN@last where that makes sense.\nEnvironment: CKPTD_SERVER "
      "(address), "
      "CKPTD_TOKEN (bearer token), CKPTD_TLS_CA, CKPTD_TLS_CERT, "
      "CKPTD_TLS_KEY (PEM files).\nExample:\n  ckpt --server "
      "ckptd:50051 show llama@best\n");

  AddCommand(app, h, "runs", "List runs", "ckpt runs", CmdRuns);

  CLI::App* token =
      AddCommand(app, h, "token", "Make credentials for ckptd's --auth_file",
                 "ckpt token new alice writer 'llama-*'", CmdTokenNew);
  token->require_subcommand(1);
  CLI::App* token_new = token->add_subcommand(
      "new",
      "Print a fresh random bearer token (256 bits) and the --auth_file line "
      "that admits it");
  token_new->add_option("IDENTITY", args.identity, "Who the token is for")
      ->required();
  token_new->add_option("ROLE", args.role, "reader, writer or admin")
      ->required();
  token_new
      ->add_option("PATTERNS", args.patterns,
                   "Comma list of run-name globs, e.g. 'llama-*,bert' "
                   "or '*'")
      ->required();

  CLI::App* health = AddCommand(
      app, h, "health",
      "Ask the server's grpc.health.v1 service whether it serves: exit 0 "
      "when SERVING, 1 otherwise (one line says why)",
      "ckpt health --server 127.0.0.1:50052 --timeout 3s", CmdHealth);
  health->add_option("--service", args.service,
                     "Service to ask about (default: the server as a whole)");
  health->add_option(
      "--timeout", args.timeout,
      "How long to wait for the answer, e.g. 3s or 500ms (default "
      "5s)");

  CLI::App* audit = AddCommand(
      app, h, "audit",
      "Who moved aliases, changed policies and deleted versions, and when",
      "ckpt audit llama", CmdAudit);
  audit->add_option("RUN", args.run, "Run name (default: every run; admin)");
  audit->add_option("--limit", args.limit,
                    "Newest events to show (default 1000)");

  CLI::App* c = AddCommand(
      app, h, "ls", "List the versions of a run (filters combine with AND)",
      "ckpt ls llama --metric val_loss --min-step 1000 --label "
      "git_sha=abc123",
      CmdLs);
  c->add_option("RUN", args.run, "Run name")->required();
  c->add_option("--metric", args.metric_present,
                "Only versions that report this metric");
  CLI::Option* min_step = c->add_option("--min-step", args.min_step_value,
                                        "Only versions with step >= N");
  CLI::Option* max_step = c->add_option("--max-step", args.max_step_value,
                                        "Only versions with step <= N");
  c->add_option("--label", args.labels,
                "Only versions with label K=V (repeatable)");
  c->callback([&args, min_step, max_step] {
    if (min_step->count() > 0) args.min_step = args.min_step_value;
    if (max_step->count() > 0) args.max_step = args.max_step_value;
  });

  c = AddCommand(app, h, "show",
                 "Show a version: metadata, env, metrics, aliases, shards, "
                 "tensors",
                 "ckpt show llama@best", CmdShow);
  c->add_option("RUN[@REF]", args.target, "Version (default RUN@last)")
      ->required();

  c = AddCommand(app, h, "metrics",
                 "Metric history of a run as a table and sparklines",
                 "ckpt metrics llama val_loss", CmdMetrics);
  c->add_option("RUN", args.run, "Run name")->required();
  c->add_option("METRIC", args.name, "Only this metric");

  c = AddCommand(app, h, "pull", "Download a version as a .safetensors file",
                 "ckpt pull llama@best -o model.safetensors --keys model",
                 CmdPull);
  c->add_option("RUN[@REF]", args.target, "Version (default RUN@last)")
      ->required();
  c->add_option("-o,--output", args.output, "Output FILE.safetensors")
      ->required();
  c->add_option("--keys", args.keys,
                "Dotted key prefixes to export, e.g. model (default: all)");
  c->add_option("--rank", args.rank, "Shard to export (default 0)");

  c = AddCommand(app, h, "push",
                 "Upload a .safetensors file as a new version of a run",
                 "ckpt push llama model.safetensors --step 1000 --metric "
                 "val_loss=1.9 --label git_sha=abc123",
                 CmdPush);
  c->add_option("RUN", args.run, "Run name")->required();
  c->add_option("FILE", args.file, "FILE.safetensors to upload")->required();
  c->add_option("--step", args.step, "Training step")->required();
  c->add_option("--epoch", args.epoch, "Epoch (default 0)");
  c->add_option("--metric", args.metrics, "Metric k=v (repeatable)");
  c->add_option("--label", args.labels, "Label k=v (repeatable)");

  c = AddCommand(app, h, "alias",
                 "Point an alias at a version (also: ckpt alias RUN NAME REF)",
                 "ckpt alias llama@12 prod", CmdAlias);
  c->add_option("RUN@REF", args.run, "Version: N, last, best or an alias")
      ->required();
  c->add_option("NAME", args.name, "Alias name")->required();
  c->add_option("REF", args.ref,
                "Version, when the first argument is a plain RUN (old order)");

  c = AddCommand(app, h, "unalias", "Remove an alias",
                 "ckpt unalias llama prod", CmdUnalias);
  c->add_option("RUN", args.run, "Run name")->required();
  c->add_option("NAME", args.name, "Alias name")->required();

  c = AddCommand(app, h, "pin", "Pin a version so retention never deletes it",
                 "ckpt pin llama@12",
                 [](Session& s) { return CmdPin(s, /*pin=*/true); });
  c->add_option("RUN@REF", args.target, "Version")->required();

  c = AddCommand(app, h, "unpin", "Unpin a version", "ckpt unpin llama@12",
                 [](Session& s) { return CmdPin(s, /*pin=*/false); });
  c->add_option("RUN@REF", args.target, "Version")->required();

  c = AddCommand(app, h, "rm",
                 "Delete a version (pinned versions refuse; last/best need "
                 "--force)",
                 "ckpt rm llama@3   ckpt rm --force llama@best", CmdRm);
  c->add_option("RUN@REF", args.target, "Version")->required();
  c->add_flag("--force", args.force,
              "Also delete a version that last or best names (e.g. a "
              "damaged one): last moves to the previous committed version, "
              "best to the best remaining one under the policy (admin)");

  c = AddCommand(
      app, h, "policy",
      "Show a run's best/retention policy, or change it with flags (also "
      "before the run's first push)",
      "ckpt policy llama --monitor val_loss --mode min --keep-last 3",
      CmdPolicy);
  c->add_option("RUN", args.run, "Run name")->required();
  CLI::Option* monitor = c->add_option(
      "--monitor", args.monitor, "Metric that defines best (\"\" for none)");
  CLI::Option* mode = c->add_option("--mode", args.mode, "min or max")
                          ->check(CLI::IsMember({"min", "max"}));
  CLI::Option* keep_last =
      c->add_option("--keep-last", args.keep_last, "Keep the N newest");
  CLI::Option* keep_best =
      c->add_option("--keep-best", args.keep_best, "Keep the N best");
  CLI::Option* keep_every =
      c->add_option("--keep-every-n-steps", args.keep_every_n_steps,
                    "Keep versions whose step is a multiple of N");
  c->add_flag("--clear-retention", args.clear_retention,
              "Unset keep-last/keep-best/keep-every-n-steps first");
  c->callback([&args, monitor, mode, keep_last, keep_best, keep_every] {
    PolicyEdit& e = args.policy;
    if (monitor->count() > 0) e.monitor = args.monitor;
    if (mode->count() > 0) e.mode = args.mode;
    if (keep_last->count() > 0) e.keep_last = args.keep_last;
    if (keep_best->count() > 0) e.keep_best = args.keep_best;
    if (keep_every->count() > 0) e.keep_every_n_steps = args.keep_every_n_steps;
    e.clear_retention = args.clear_retention;
  });

  AddCommand(app, h, "gc", "Delete blobs no version references", "ckpt gc",
             CmdGc);

  c = AddCommand(app, h, "watch",
                 "Print a line each time a ref moves (until Ctrl-C)",
                 "ckpt watch llama@best", CmdWatch);
  c->add_option("RUN[@REF]", args.target, "Ref to watch (default RUN@last)")
      ->required();

  c = AddCommand(app, h, "history",
                 "Alias audit log: time, alias, from -> to, actor",
                 "ckpt history llama prod", CmdHistory);
  c->add_option("RUN", args.run, "Run name")->required();
  c->add_option("ALIAS", args.name, "Only this alias");

  c = AddCommand(app, h, "verify",
                 "Re-check stored bytes against their digests",
                 "ckpt verify llama@best", CmdVerify);
  c->add_option("RUN[@REF]", args.target,
                "Version (default: every version of RUN)")
      ->required();

  CLI::App* admin =
      AddCommand(app, h, "admin", "Server operations (admin)",
                 "ckpt admin backup /var/backups/ckptd-1", CmdAdmin);
  admin->require_subcommand(1);
  CLI::App* backup = admin->add_subcommand(
      "backup",
      "Online backup of every committed version into DIR on the server "
      "(pushes go on); restore: ckptd --data_dir DIR");
  backup->footer(
      "DIR is a path on the server's filesystem: absolute, not existing yet "
      "(its parent must) or empty. Hard links where DIR is on the data dir's "
      "filesystem, verified copies elsewhere.\nExample:\n  ckpt admin "
      "backup /var/backups/ckptd-$(date +%F)\n");
  backup->add_option("DIR", args.backup_dir, "Absolute path on the server")
      ->required();
  backup->add_option("--timeout", args.backup_timeout,
                     "Give up after this long, e.g. 2h (default: no limit); "
                     "the server then removes the partial backup");
  backup->callback([&args] { args.admin_command = "backup"; });
  return h;
}

int Fail(const CliContext& context, const absl::Status& status) {
  if (IsUsageError(status)) {
    *context.err << "ckpt: " << status.message() << "\n";
    return kExitUsage;
  }
  *context.err << "ckpt: " << absl::StatusCodeToString(status.code()) << ": "
               << status.message() << "\n";
  return kExitFailure;
}

}  // namespace

absl::Status UsageError(absl::string_view message) {
  absl::Status status = absl::InvalidArgumentError(message);
  status.SetPayload(kUsagePayload, absl::Cord("1"));
  return status;
}

bool IsUsageError(const absl::Status& status) {
  return status.GetPayload(kUsagePayload).has_value();
}

absl::Status CheckRunName(absl::string_view name) {
  return AsUsageError(ValidateRunName(name));
}

absl::Status CheckRunArgument(absl::string_view arg) {
  if (arg.find('@') != absl::string_view::npos) {
    return UsageError(
        absl::StrCat("expected a run name, not the version "
                     "reference '",
                     arg, "'"));
  }
  return CheckRunName(arg);
}

absl::Status CheckAliasName(absl::string_view name) {
  return AsUsageError(ValidateUserAliasName(name));
}

absl::Status CheckRef(absl::string_view ref) {
  return AsUsageError(ParseRef(ref).status());
}

absl::StatusOr<VersionRef> ParseVersionRef(absl::string_view arg,
                                           RefRule rule) {
  const size_t at = arg.find('@');
  VersionRef out;
  if (at == absl::string_view::npos) {
    if (rule == RefRule::kRequired) {
      return UsageError(
          absl::StrCat("missing version in '", arg, "': ", kRefExample));
    }
    out.run = std::string(arg);
    if (rule == RefRule::kDefaultLast) out.ref = "last";
  } else {
    const absl::string_view run = arg.substr(0, at);
    const absl::string_view ref = arg.substr(at + 1);
    if (run.empty() || ref.empty() ||
        ref.find('@') != absl::string_view::npos) {
      return UsageError(
          absl::StrCat("bad version reference '", arg, "': ", kRefExample));
    }
    out.run = std::string(run);
    out.ref = std::string(ref);
  }
  CKPTD_RETURN_IF_ERROR(CheckRunName(out.run));
  if (!out.ref.empty()) CKPTD_RETURN_IF_ERROR(CheckRef(out.ref));
  return out;
}

absl::StatusOr<std::pair<std::string, std::string>> ParseKeyValue(
    absl::string_view arg, absl::string_view flag) {
  const size_t eq = arg.find('=');
  if (eq == absl::string_view::npos || eq == 0) {
    return UsageError(
        absl::StrCat("bad ", flag, " '", arg, "': expected KEY=VALUE such as ",
                     flag == "--metric" ? "val_loss=1.93" : "git_sha=abc123"));
  }
  return std::make_pair(std::string(arg.substr(0, eq)),
                        std::string(arg.substr(eq + 1)));
}

Policy ApplyPolicyEdit(Policy current, const PolicyEdit& edit) {
  if (edit.clear_retention) {
    current.clear_keep_last();
    current.clear_keep_best();
    current.clear_keep_every_n_steps();
  }
  if (edit.monitor) current.set_monitor(*edit.monitor);
  if (edit.mode) current.set_mode(*edit.mode == "max" ? v1::MAX : v1::MIN);
  if (edit.keep_last) current.set_keep_last(*edit.keep_last);
  if (edit.keep_best) current.set_keep_best(*edit.keep_best);
  if (edit.keep_every_n_steps) {
    current.set_keep_every_n_steps(*edit.keep_every_n_steps);
  }
  return current;
}

int RunCli(const std::vector<std::string>& argv, const CliContext& context) {
  Args args;
  CLI::App app("ckpt: operator CLI for the ckptd checkpoint server", "ckpt");
  std::map<std::string, Handler> handlers = DefineCommands(app, args);

  std::vector<const char*> raw;
  for (const std::string& a : argv) raw.push_back(a.c_str());
  try {
    app.parse(static_cast<int>(raw.size()), raw.data());
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) {
      return app.exit(e, *context.out, *context.err);  // --help
    }
    const std::vector<CLI::App*> partial = app.get_subcommands();
    const std::string help_for =
        partial.empty()
            ? "ckpt --help"
            : absl::StrCat("ckpt ", partial.front()->get_name(), " --help");
    *context.err << "ckpt: " << e.what() << "\n"
                 << "Run '" << help_for << "' for usage.\n";
    return kExitUsage;
  }

  const std::vector<CLI::App*> selected = app.get_subcommands();
  if (selected.empty()) return Fail(context, UsageError("no command given"));
  auto handler = handlers.find(selected.front()->get_name());
  if (handler == handlers.end()) {
    return Fail(context, absl::InternalError("command without a handler"));
  }
  Session session(context, args);
  absl::Status status;
  try {
    status = handler->second(session);
  } catch (const std::exception& e) {
    // Only library code throws (CLI11, nlohmann, std); keep it an error.
    status = absl::InternalError(e.what());
  }
  context.out->flush();
  if (!status.ok()) return Fail(context, status);
  return kExitOk;
}

}  // namespace ckptd::cli
