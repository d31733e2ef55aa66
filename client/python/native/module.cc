// ckptd._native: the pybind11 binding of the C++ client (ckptd/client.h).
//
// Only plain Python types cross this boundary: entry tuples (format in
// conversions.h), ints for data pointers, dicts and lists for metadata. The
// Python package (ckptd/) flattens torch state into entries and rebuilds it;
// everything wire-related (packing, digests, dedup, streams, retries) is the
// C++ client's.
//
// The GIL is released around every call that touches the network or copies
// tensor bytes. Callers must keep the tensors whose pointers they pass alive
// for the whole call (the Python layer holds references).
//
// A non-OK status becomes the matching ckptd.errors exception (looked up by
// ckptd.errors.error_from_status), carrying the status code and the server's
// message.
//
// Thread safety: a Client may be used from several Python threads at once
// (the C++ client is thread-safe; each call holds no Python state while the
// GIL is released).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "ckptd/client.h"
#include "client/python/native/conversions.h"

namespace ckptd::python {
namespace {

// One (dst, src, n) host memcpy, see CopyMemory.
struct CopyJob {
  char* dst;
  const char* src;
  size_t n;
};

// Calls between two progress reports to Python, at most: the C++ client
// reports every chunk, a Python callable (a redrawn bar) need not see them.
constexpr std::chrono::milliseconds kProgressInterval{100};

// Forwards the C++ client's (done, total) reports to a Python callable, with
// the GIL held, at most every kProgressInterval (the first and the final
// report always). The C++ client makes one call at a time. An exception
// from the callable stops further calls and is raised by Rethrow() after
// the transfer. Lives on the stack of the call it reports on; the
// std::function the client copies holds only a pointer to it, so no
// py::object is copied or destroyed without the GIL.
class PythonProgress {
 public:
  explicit PythonProgress(py::object callback)
      : callback_(std::move(callback)) {}

  std::function<void(uint64_t, uint64_t)> Function() {
    if (callback_.is_none()) return nullptr;
    return [this](uint64_t done, uint64_t total) { Report(done, total); };
  }

  // REQUIRES: the GIL is held.
  void Rethrow() {
    if (error_) {
      std::unique_ptr<py::error_already_set> error = std::move(error_);
      throw std::move(*error);
    }
  }

 private:
  void Report(uint64_t done, uint64_t total) {
    const auto now = std::chrono::steady_clock::now();
    const bool final = done == total;
    if (final && reported_final_) return;
    if (!final && reported_ && now - last_ < kProgressInterval) return;
    reported_ = true;
    reported_final_ = final;
    last_ = now;
    py::gil_scoped_acquire gil;
    if (error_) return;
    try {
      callback_(done, total);
    } catch (py::error_already_set& e) {
      error_ = std::make_unique<py::error_already_set>(std::move(e));
    }
  }

  py::object callback_;
  std::chrono::steady_clock::time_point last_;
  bool reported_ = false;
  bool reported_final_ = false;
  std::unique_ptr<py::error_already_set> error_;
};

// The Python side of Client::OpenWatch: next() waits with the GIL released.
// close() may come from another Python thread while one waits in next():
// each call holds its own reference to the RefWatch, so the last one to
// finish destroys it (joining its reader thread, which never takes the GIL).
class NativeWatch {
 public:
  explicit NativeWatch(std::unique_ptr<RefWatch> watch)
      : watch_(std::move(watch)) {}

  // ("moved", version dict), ("timeout", None) or ("ended", None).
  py::tuple Next(double timeout_seconds) {
    std::shared_ptr<RefWatch> watch = watch_;
    if (watch == nullptr) return py::make_tuple("ended", py::none());
    VersionInfo version;
    absl::StatusOr<WatchResult> result;
    {
      py::gil_scoped_release release;
      result = watch->Next(absl::Seconds(timeout_seconds), &version);
    }
    switch (ValueOrThrow(std::move(result))) {
      case WatchResult::kMoved:
        return py::make_tuple("moved", VersionInfoToPython(version));
      case WatchResult::kTimedOut:
        return py::make_tuple("timeout", py::none());
      case WatchResult::kEnded:
        break;
    }
    return py::make_tuple("ended", py::none());
  }

  // Cancels the stream; a waiting next() returns ("ended", None).
  void Cancel() {
    if (std::shared_ptr<RefWatch> watch = watch_; watch != nullptr) {
      watch->Cancel();
    }
  }

  // Cancels and drops this object's reference (the stream's resources go
  // once no next() uses them).
  void Close() {
    std::shared_ptr<RefWatch> watch = std::move(watch_);
    watch_ = nullptr;
    if (watch == nullptr) return;
    watch->Cancel();
    py::gil_scoped_release release;
    watch.reset();
  }

 private:
  std::shared_ptr<RefWatch> watch_;
};

PushRequest RequestFromPython(const std::string& run, int64_t step,
                              int64_t epoch, uint32_t rank, uint32_t world_size,
                              const std::map<std::string, double>& metrics,
                              const std::map<std::string, std::string>& env,
                              const std::map<std::string, std::string>& labels,
                              const py::list& entries) {
  PushRequest request;
  request.run = run;
  request.step = step;
  request.epoch = epoch;
  request.rank = rank;
  request.world_size = world_size;
  request.metrics = metrics;
  for (const auto& [k, v] : env) {
    if (k == "torch_version") {
      request.env.set_torch_version(v);
    } else if (k == "cuda_version") {
      request.env.set_cuda_version(v);
    } else if (k == "python_version") {
      request.env.set_python_version(v);
    } else if (k == "hostname") {
      request.env.set_hostname(v);
    } else if (k == "client_version") {
      request.env.set_client_version(v);
    } else {
      throw StatusError(absl::InvalidArgumentError(
          absl::StrCat("unknown environment field '", k, "'")));
    }
  }
  request.env.mutable_labels()->insert(labels.begin(), labels.end());
  request.entries = EntriesFromPython(entries);
  return request;
}

// A co-located save the daemon holds (Client.stage_push): wait() releases
// the GIL until the daemon reports the commit.
class NativeStagedPush {
 public:
  explicit NativeStagedPush(std::unique_ptr<StagedPush> staged)
      : staged_(std::move(staged)) {}
  uint64_t version() const { return staged_->version(); }
  py::dict Wait() {
    absl::StatusOr<VersionInfo> info;
    {
      py::gil_scoped_release release;
      info = staged_->Wait();
    }
    return VersionInfoToPython(ValueOrThrow(std::move(info)));
  }

 private:
  std::unique_ptr<StagedPush> staged_;
};

// The Python-facing client: a ckptd::Client plus the push/pull options every
// call uses.
class NativeClient {
 public:
  NativeClient(const std::string& address, const std::string& token,
               const std::string& root_certificates, int channels,
               double rpc_timeout_seconds, int streams, int max_attempts,
               const std::string& client_certificate,
               const std::string& client_key) {
    ClientOptions options;
    options.address = address;
    options.token = token;
    options.root_certificates = root_certificates;
    options.client_certificate = client_certificate;
    options.client_key = client_key;
    options.channels = channels;
    options.rpc_timeout_seconds = rpc_timeout_seconds;
    push_options_.streams = streams;
    push_options_.max_attempts = max_attempts;
    pull_options_.streams = streams;
    absl::StatusOr<std::unique_ptr<Client>> client;
    {
      py::gil_scoped_release release;
      client = Client::Connect(options);
    }
    client_ = ValueOrThrow(std::move(client));
  }

  py::dict Push(const std::string& run, int64_t step, int64_t epoch,
                uint32_t rank, uint32_t world_size,
                const std::map<std::string, double>& metrics,
                const std::map<std::string, std::string>& env,
                const std::map<std::string, std::string>& labels,
                const py::list& entries, py::object progress) {
    PushRequest request = RequestFromPython(run, step, epoch, rank, world_size,
                                            metrics, env, labels, entries);
    PythonProgress reporter(std::move(progress));
    PushOptions options = push_options_;
    options.progress = reporter.Function();
    absl::StatusOr<VersionInfo> info;
    {
      py::gil_scoped_release release;
      info = client_->Push(request, options);
    }
    py::dict out = VersionInfoToPython(ValueOrThrow(std::move(info)));
    reporter.Rethrow();
    return out;
  }

  // The co-located save: returns once the daemon holds the snapshot.
  std::unique_ptr<NativeStagedPush> StagePush(
      const std::string& run, int64_t step, int64_t epoch, uint32_t rank,
      uint32_t world_size, const std::map<std::string, double>& metrics,
      const std::map<std::string, std::string>& env,
      const std::map<std::string, std::string>& labels,
      const py::list& entries) {
    PushRequest request = RequestFromPython(run, step, epoch, rank, world_size,
                                            metrics, env, labels, entries);
    absl::StatusOr<std::unique_ptr<StagedPush>> staged;
    {
      py::gil_scoped_release release;
      staged = client_->StagePush(request);
    }
    return std::make_unique<NativeStagedPush>(ValueOrThrow(std::move(staged)));
  }

  // The co-located pull: for each (shard, entry) of `dests`, the mapped,
  // verified blob holding it and the tensor's offset in it.
  py::list MapTensors(const VersionManifest& version, const py::list& dests) {
    std::vector<std::pair<size_t, size_t>> wanted;
    std::vector<std::string> digests;
    std::map<std::string, size_t> index;  // digest -> position in digests
    for (const py::handle item : dests) {
      auto [shard, entry] = item.cast<std::pair<size_t, size_t>>();
      if (shard >= version.shards.size() ||
          entry >= static_cast<size_t>(version.shards[shard].entries_size()) ||
          !version.shards[shard].entries(entry).has_tensor()) {
        throw StatusError(absl::InvalidArgumentError(
            absl::StrCat("(shard ", shard, ", entry ", entry,
                         ") is not a tensor entry of the manifest")));
      }
      const std::string& d =
          version.shards[shard].entries(entry).tensor().blob_digest();
      if (index.emplace(d, digests.size()).second) digests.push_back(d);
      wanted.emplace_back(shard, entry);
    }
    absl::StatusOr<std::vector<std::shared_ptr<MappedBlob>>> blobs;
    {
      py::gil_scoped_release release;
      blobs = client_->MapBlobs(version.info.run(), version.info.version(),
                                digests);
    }
    std::vector<std::shared_ptr<MappedBlob>> mapped =
        ValueOrThrow(std::move(blobs));
    py::list out;
    for (const auto& [shard, entry] : wanted) {
      const v1::TensorInfo& t = version.shards[shard].entries(entry).tensor();
      const std::shared_ptr<MappedBlob>& blob = mapped[index[t.blob_digest()]];
      if (t.blob_offset() > blob->size() ||
          t.byte_length() > blob->size() - t.blob_offset()) {
        throw StatusError(absl::DataLossError(absl::StrCat(
            "tensor '",
            DottedKeyPath(version.shards[shard].entries(entry).path()),
            "' lies outside its mapped blob")));
      }
      out.append(py::make_tuple(blob, t.blob_offset()));
    }
    return out;
  }

  void AbortVersion(const std::string& run, uint64_t version,
                    const std::string& reason) {
    absl::Status st;
    {
      py::gil_scoped_release release;
      st = client_->AbortVersion(run, version, reason);
    }
    ThrowIfError(st);
  }

  std::shared_ptr<VersionManifest> GetVersion(const std::string& run,
                                              const std::string& ref,
                                              bool include_manifest,
                                              std::vector<uint32_t> ranks) {
    GetVersionOptions options;
    options.include_manifest = include_manifest;
    options.ranks = std::move(ranks);
    absl::StatusOr<VersionManifest> m;
    {
      py::gil_scoped_release release;
      m = client_->GetVersion(run, ref, options);
    }
    return std::make_shared<VersionManifest>(ValueOrThrow(std::move(m)));
  }

  // `dests`: (shard index, entry index, data_ptr, device) tuples.
  void ReadTensors(const VersionManifest& version, const py::list& dests,
                   py::object progress) {
    std::vector<TensorDestination> out;
    out.reserve(dests.size());
    for (const py::handle item : dests) {
      auto t = item.cast<std::tuple<size_t, size_t, uintptr_t, int>>();
      TensorDestination d;
      d.shard = std::get<0>(t);
      d.entry = std::get<1>(t);
      if (d.shard >= version.shards.size() ||
          d.entry >=
              static_cast<size_t>(version.shards[d.shard].entries_size()) ||
          !version.shards[d.shard].entries(d.entry).has_tensor()) {
        throw StatusError(absl::InvalidArgumentError(
            absl::StrCat("destination (shard ", d.shard, ", entry ", d.entry,
                         ") is not a tensor entry of the manifest")));
      }
      d.data = reinterpret_cast<void*>(std::get<2>(t));
      d.memory = MemoryFromDevice(std::get<3>(t));
      out.push_back(d);
    }
    PythonProgress reporter(std::move(progress));
    PullOptions options = pull_options_;
    options.progress = reporter.Function();
    absl::Status st;
    {
      py::gil_scoped_release release;
      st = client_->ReadTensors(version, out, options);
    }
    ThrowIfError(st);
    reporter.Rethrow();
  }

  py::list ListRuns() {
    absl::StatusOr<std::vector<RunInfo>> runs;
    {
      py::gil_scoped_release release;
      runs = client_->ListRuns();
    }
    py::list out;
    for (const auto& r : ValueOrThrow(std::move(runs))) {
      out.append(RunInfoToPython(r));
    }
    return out;
  }

  py::list ListVersions(const std::string& run, std::optional<int64_t> min_step,
                        std::optional<int64_t> max_step,
                        const std::string& metric_present,
                        const std::map<std::string, std::string>& label_equals,
                        bool include_aborted) {
    ListVersionsRequest request;
    request.set_run(run);
    if (min_step) request.set_min_step(*min_step);
    if (max_step) request.set_max_step(*max_step);
    request.set_metric_present(metric_present);
    request.mutable_label_equals()->insert(label_equals.begin(),
                                           label_equals.end());
    request.set_include_aborted(include_aborted);
    absl::StatusOr<std::vector<VersionInfo>> versions;
    {
      py::gil_scoped_release release;
      versions = client_->ListVersions(request);
    }
    py::list out;
    for (const auto& v : ValueOrThrow(std::move(versions))) {
      out.append(VersionInfoToPython(v));
    }
    return out;
  }

  py::list GetMetricHistory(const std::string& run, const std::string& metric) {
    absl::StatusOr<std::vector<MetricPoint>> points;
    {
      py::gil_scoped_release release;
      points = client_->GetMetricHistory(run, metric);
    }
    py::list out;
    for (const auto& p : ValueOrThrow(std::move(points))) {
      out.append(MetricPointToPython(p));
    }
    return out;
  }

  py::dict SetAlias(const std::string& run, const std::string& name,
                    const std::string& ref) {
    absl::StatusOr<AliasInfo> alias;
    {
      py::gil_scoped_release release;
      alias = client_->SetAlias(run, name, ref);
    }
    return AliasInfoToPython(ValueOrThrow(std::move(alias)));
  }

  std::unique_ptr<NativeWatch> Watch(const std::string& run,
                                     const std::string& ref) {
    absl::StatusOr<std::unique_ptr<RefWatch>> watch;
    {
      py::gil_scoped_release release;
      watch = client_->OpenWatch(run, ref);
    }
    return std::make_unique<NativeWatch>(ValueOrThrow(std::move(watch)));
  }

  py::list GetAliasHistory(const std::string& run, const std::string& alias) {
    absl::StatusOr<std::vector<AliasEvent>> events;
    {
      py::gil_scoped_release release;
      events = client_->GetAliasHistory(run, alias);
    }
    py::list out;
    for (const auto& e : ValueOrThrow(std::move(events))) {
      out.append(AliasEventToPython(e));
    }
    return out;
  }

  void DeleteAlias(const std::string& run, const std::string& name) {
    absl::Status st;
    {
      py::gil_scoped_release release;
      st = client_->DeleteAlias(run, name);
    }
    ThrowIfError(st);
  }

  py::dict SetPinned(const std::string& run, const std::string& ref,
                     bool pinned) {
    absl::StatusOr<VersionInfo> info;
    {
      py::gil_scoped_release release;
      info = pinned ? client_->Pin(run, ref) : client_->Unpin(run, ref);
    }
    return VersionInfoToPython(ValueOrThrow(std::move(info)));
  }

  void DeleteVersion(const std::string& run, const std::string& ref,
                     bool force) {
    absl::Status st;
    {
      py::gil_scoped_release release;
      st = client_->DeleteVersion(run, ref, force);
    }
    ThrowIfError(st);
  }

  py::dict SetPolicy(const std::string& run, const std::string& monitor,
                     const std::string& mode, std::optional<uint32_t> keep_last,
                     std::optional<uint32_t> keep_best,
                     std::optional<uint64_t> keep_every_n_steps) {
    Policy policy;
    policy.set_monitor(monitor);
    if (mode == "min") {
      policy.set_mode(v1::MIN);
    } else if (mode == "max") {
      policy.set_mode(v1::MAX);
    } else if (!mode.empty()) {
      throw StatusError(absl::InvalidArgumentError(
          absl::StrCat("mode is '", mode, "'; use 'min' or 'max'")));
    }
    if (keep_last) policy.set_keep_last(*keep_last);
    if (keep_best) policy.set_keep_best(*keep_best);
    if (keep_every_n_steps) policy.set_keep_every_n_steps(*keep_every_n_steps);
    absl::StatusOr<Policy> result;
    {
      py::gil_scoped_release release;
      result = client_->SetPolicy(run, policy);
    }
    return PolicyToPython(ValueOrThrow(std::move(result)));
  }

  py::dict GetPolicy(const std::string& run) {
    absl::StatusOr<Policy> result;
    {
      py::gil_scoped_release release;
      result = client_->GetPolicy(run);
    }
    return PolicyToPython(ValueOrThrow(std::move(result)));
  }

 private:
  std::unique_ptr<Client> client_;
  PushOptions push_options_;
  PullOptions pull_options_;
};

// Host memcpy of (dst_ptr, src_ptr, nbytes) triples with the GIL released:
// the snapshot copy of save_async.
void CopyMemory(const py::list& jobs) {
  std::vector<CopyJob> copies;
  copies.reserve(jobs.size());
  for (const py::handle item : jobs) {
    auto t = item.cast<std::tuple<uintptr_t, uintptr_t, size_t>>();
    copies.push_back(CopyJob{reinterpret_cast<char*>(std::get<0>(t)),
                             reinterpret_cast<const char*>(std::get<1>(t)),
                             std::get<2>(t)});
  }
  py::gil_scoped_release release;
  for (const CopyJob& c : copies) {
    if (c.n > 0) std::memcpy(c.dst, c.src, c.n);
  }
}

// name -> number for a proto enum, without the UNSPECIFIED value.
py::dict EnumValues(const google::protobuf::EnumDescriptor* descriptor) {
  py::dict out;
  for (int i = 0; i < descriptor->value_count(); ++i) {
    const auto* v = descriptor->value(i);
    if (v->number() != 0) out[py::str(v->name())] = v->number();
  }
  return out;
}

void TranslateStatusError(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const StatusError& e) {
    const absl::Status& st = e.status();
    try {
      py::object make =
          py::module_::import("ckptd.errors").attr("error_from_status");
      py::object exc = make(static_cast<int>(st.code()),
                            py::str(absl::StatusCodeToString(st.code())),
                            DecodeUtf8(std::string_view(st.message().data(),
                                                        st.message().size())));
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())),
                      exc.ptr());
    } catch (py::error_already_set& import_error) {
      // ckptd.errors unavailable (the extension imported on its own): a
      // RuntimeError still carries the code name and the message.
      PyErr_SetString(PyExc_RuntimeError, st.ToString().c_str());
    }
  }
}

}  // namespace
}  // namespace ckptd::python

PYBIND11_MODULE(_native, m) {
  using namespace ckptd;          // NOLINT(build/namespaces)
  using namespace ckptd::python;  // NOLINT(build/namespaces)
  m.doc() =
      "Native core of the ckptd Python package (pybind11 over the C++ "
      "client). Internal: use the ckptd package API.";
  py::register_exception_translator(&TranslateStatusError);

  m.attr("ENTRY_CONTAINER") = kEntryContainer;
  m.attr("ENTRY_VALUE") = kEntryValue;
  m.attr("ENTRY_TENSOR") = kEntryTensor;
  m.attr("HOST_DEVICE") = kHostDevice;
  m.attr("DTYPES") = EnumValues(v1::DType_descriptor());
  m.attr("CONTAINER_KINDS") = EnumValues(v1::ContainerInfo::Kind_descriptor());

  m.def("default_server_address", &DefaultServerAddress,
        "$CKPTD_SERVER, else 127.0.0.1:50051.");
  m.def(
      "cuda_available", [] { return CudaAvailable(); },
      "True when this build has CUDA support and a CUDA device is present.");
  m.def(
      "dtype_size",
      [](int dtype) { return DTypeSize(static_cast<DType>(dtype)); },
      py::arg("dtype"), "Bytes per element of a DType number (0: unknown).");
  m.def("copy_memory", &CopyMemory, py::arg("jobs"),
        "memcpy of (dst_ptr, src_ptr, nbytes) triples, GIL released.");

  py::class_<VersionManifest, std::shared_ptr<VersionManifest>>(m, "Manifest")
      .def("info",
           [](const VersionManifest& v) { return VersionInfoToPython(v.info); })
      .def_property_readonly(
          "shard_count",
          [](const VersionManifest& v) { return v.shards.size(); })
      .def(
          "shard_rank",
          [](const VersionManifest& v, size_t i) {
            if (i >= v.shards.size()) throw py::index_error("shard index");
            return v.shards[i].rank();
          },
          py::arg("shard"))
      .def(
          "entries",
          [](const VersionManifest& v, size_t i) {
            if (i >= v.shards.size()) throw py::index_error("shard index");
            return EntriesToPython(v.shards[i]);
          },
          py::arg("shard"),
          "The shard's manifest as entry tuples (pull format).");

  py::class_<NativeWatch>(m, "Watch")
      .def("next", &NativeWatch::Next, py::arg("timeout_seconds"),
           "(\"moved\", version) | (\"timeout\", None) | (\"ended\", None)")
      .def("cancel", &NativeWatch::Cancel)
      .def("close", &NativeWatch::Close);

  py::class_<MappedBlob, std::shared_ptr<MappedBlob>>(m, "MappedBlob",
                                                      py::buffer_protocol())
      .def_buffer([](MappedBlob& b) {
        return py::buffer_info(b.data(), 1,
                               py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.size())}, {1},
                               /*readonly=*/false);
      })
      .def("__len__", [](const MappedBlob& b) { return b.size(); });

  py::class_<NativeStagedPush>(m, "StagedPush")
      .def_property_readonly("version", &NativeStagedPush::version)
      .def("wait", &NativeStagedPush::Wait,
           "Waits (GIL released) for the daemon's commit; the version info.");

  py::class_<NativeClient>(m, "Client")
      .def(py::init<const std::string&, const std::string&, const std::string&,
                    int, double, int, int, const std::string&,
                    const std::string&>(),
           py::arg("address"), py::arg("token"), py::arg("root_certificates"),
           py::arg("channels"), py::arg("rpc_timeout_seconds"),
           py::arg("streams"), py::arg("max_attempts"),
           py::arg("client_certificate") = "", py::arg("client_key") = "")
      .def("push", &NativeClient::Push, py::arg("run"), py::arg("step"),
           py::arg("epoch"), py::arg("rank"), py::arg("world_size"),
           py::arg("metrics"), py::arg("env"), py::arg("labels"),
           py::arg("entries"), py::arg("progress") = py::none())
      .def("stage_push", &NativeClient::StagePush, py::arg("run"),
           py::arg("step"), py::arg("epoch"), py::arg("rank"),
           py::arg("world_size"), py::arg("metrics"), py::arg("env"),
           py::arg("labels"), py::arg("entries"))
      .def("map_tensors", &NativeClient::MapTensors, py::arg("manifest"),
           py::arg("dests"))
      .def("abort_version", &NativeClient::AbortVersion, py::arg("run"),
           py::arg("version"), py::arg("reason"))
      .def("get_version", &NativeClient::GetVersion, py::arg("run"),
           py::arg("ref"), py::arg("include_manifest"), py::arg("ranks"))
      .def("read_tensors", &NativeClient::ReadTensors, py::arg("manifest"),
           py::arg("dests"), py::arg("progress") = py::none())
      .def("list_runs", &NativeClient::ListRuns)
      .def("list_versions", &NativeClient::ListVersions, py::arg("run"),
           py::arg("min_step"), py::arg("max_step"), py::arg("metric_present"),
           py::arg("label_equals"), py::arg("include_aborted"))
      .def("metric_history", &NativeClient::GetMetricHistory, py::arg("run"),
           py::arg("metric"))
      .def("set_alias", &NativeClient::SetAlias, py::arg("run"),
           py::arg("name"), py::arg("ref"))
      .def("delete_alias", &NativeClient::DeleteAlias, py::arg("run"),
           py::arg("name"))
      .def("watch", &NativeClient::Watch, py::arg("run"), py::arg("ref"))
      .def("alias_history", &NativeClient::GetAliasHistory, py::arg("run"),
           py::arg("alias"))
      .def("set_pinned", &NativeClient::SetPinned, py::arg("run"),
           py::arg("ref"), py::arg("pinned"))
      .def("delete_version", &NativeClient::DeleteVersion, py::arg("run"),
           py::arg("ref"), py::arg("force") = false)
      .def("set_policy", &NativeClient::SetPolicy, py::arg("run"),
           py::arg("monitor"), py::arg("mode"), py::arg("keep_last"),
           py::arg("keep_best"), py::arg("keep_every_n_steps"))
      .def("get_policy", &NativeClient::GetPolicy, py::arg("run"));
}
