#include "client/python/native/conversions.h"

#include <Python.h>

#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"

namespace ckptd::python {
namespace {

using PathField = google::protobuf::RepeatedPtrField<v1::PathSegment>;

// "model.layers.0.weight"; the root is "<root>".
std::string PathString(const PathField& path) {
  return path.empty() ? "<root>" : DottedKeyPath(path);
}

[[noreturn]] void ThrowInvalid(std::string message) {
  throw StatusError(absl::InvalidArgumentError(std::move(message)));
}

std::string TypeName(PyObject* obj) { return Py_TYPE(obj)->tp_name; }

// Python's int, not bool (a subclass of int).
bool IsInt(PyObject* obj) { return PyLong_Check(obj) && !PyBool_Check(obj); }

std::string_view Utf8Of(PyObject* str, const std::string& where) {
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(str, &size);
  if (data == nullptr) {
    PyErr_Clear();
    ThrowInvalid(absl::StrCat(where, ": string is not encodable as UTF-8"));
  }
  return std::string_view(data, static_cast<size_t>(size));
}

int64_t Int64Of(PyObject* obj, const std::string& where) {
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
  if (overflow != 0 || (v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    ThrowInvalid(absl::StrCat(where, ": integer does not fit in 64 bits"));
  }
  return static_cast<int64_t>(v);
}

uint64_t Uint64Of(PyObject* obj, const std::string& where) {
  if (!IsInt(obj)) {
    ThrowInvalid(absl::StrCat(where, ": expected an int, got ", TypeName(obj)));
  }
  const unsigned long long v = PyLong_AsUnsignedLongLong(obj);
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    ThrowInvalid(
        absl::StrCat(where, ": expected a non-negative 64-bit integer"));
  }
  return static_cast<uint64_t>(v);
}

void PathFromPython(PyObject* path, PathField* out, int entry_index) {
  if (!PyTuple_Check(path)) {
    ThrowInvalid(absl::StrCat("entry ", entry_index,
                              ": path must be a tuple, got ", TypeName(path)));
  }
  const Py_ssize_t n = PyTuple_GET_SIZE(path);
  out->Reserve(static_cast<int>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* seg = PyTuple_GET_ITEM(path, i);
    if (PyUnicode_Check(seg)) {
      out->Add()->set_key(std::string(
          Utf8Of(seg, absl::StrCat("key path of entry ", entry_index))));
    } else if (IsInt(seg)) {
      out->Add()->set_int_key(
          Int64Of(seg, absl::StrCat("key path of entry ", entry_index)));
    } else {
      ThrowInvalid(absl::StrCat("key path of entry ", entry_index,
                                ": segment of type ", TypeName(seg),
                                "; keys must be str or int"));
    }
  }
}

void ValueFromPython(PyObject* obj, v1::Value* out, int depth,
                     const std::string& where) {
  if (obj == Py_None) {
    out->set_none(true);
  } else if (PyBool_Check(obj)) {
    out->set_bool_value(obj == Py_True);
  } else if (PyLong_Check(obj)) {
    out->set_int_value(Int64Of(obj, where));
  } else if (PyFloat_Check(obj)) {
    out->set_float_value(PyFloat_AS_DOUBLE(obj));
  } else if (PyUnicode_Check(obj)) {
    out->set_string_value(std::string(Utf8Of(obj, where)));
  } else if (PyList_Check(obj) || PyTuple_Check(obj)) {
    if (depth >= kMaxValueDepth) {
      ThrowInvalid(absl::StrCat(where, ": value lists nest deeper than ",
                                kMaxValueDepth));
    }
    v1::ValueList* list = out->mutable_list_value();
    list->set_is_tuple(PyTuple_Check(obj));
    py::list items = py::reinterpret_steal<py::list>(PySequence_List(obj));
    for (size_t i = 0; i < items.size(); ++i) {
      ValueFromPython(items[i].ptr(), list->add_items(), depth + 1,
                      absl::StrCat(where, "[", i, "]"));
    }
  } else {
    ThrowInvalid(
        absl::StrCat(where, ": unsupported value of type ", TypeName(obj)));
  }
}

py::object ValueToPython(const v1::Value& v) {
  switch (v.kind_case()) {
    case v1::Value::kIntValue:
      return py::int_(v.int_value());
    case v1::Value::kFloatValue:
      return py::float_(v.float_value());
    case v1::Value::kBoolValue:
      return py::bool_(v.bool_value());
    case v1::Value::kStringValue:
      return DecodeUtf8(v.string_value());
    case v1::Value::kListValue: {
      const auto& items = v.list_value().items();
      if (v.list_value().is_tuple()) {
        py::tuple out(items.size());
        for (int i = 0; i < items.size(); ++i) out[i] = ValueToPython(items[i]);
        return out;
      }
      py::list out(items.size());
      for (int i = 0; i < items.size(); ++i) out[i] = ValueToPython(items[i]);
      return out;
    }
    case v1::Value::kNone:
    default:
      return py::none();
  }
}

py::tuple PathToPython(const PathField& path) {
  py::tuple out(path.size());
  for (int i = 0; i < path.size(); ++i) {
    const auto& seg = path[i];
    if (seg.kind_case() == v1::PathSegment::kIntKey) {
      out[i] = py::int_(seg.int_key());
    } else {
      out[i] = DecodeUtf8(seg.key());
    }
  }
  return out;
}

template <typename Map>
py::dict StringMapToPython(const Map& map) {
  py::dict out;
  for (const auto& [k, v] : map) out[DecodeUtf8(k)] = DecodeUtf8(v);
  return out;
}

py::object OptionalUint(bool has, uint64_t value) {
  if (!has) return py::none();
  return py::int_(value);
}

}  // namespace

py::str DecodeUtf8(std::string_view bytes) {
  PyObject* s = PyUnicode_DecodeUTF8(
      bytes.data(), static_cast<Py_ssize_t>(bytes.size()), "replace");
  if (s == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(s);
}

Memory MemoryFromDevice(int device) {
  Memory memory;
  if (device != kHostDevice) {
    memory.kind = MemoryKind::kCuda;
    memory.device = device;
  }
  return memory;
}

std::vector<PushEntry> EntriesFromPython(const py::list& entries) {
  std::vector<PushEntry> out(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    PyObject* item = PyList_GET_ITEM(entries.ptr(), static_cast<Py_ssize_t>(i));
    const int index = static_cast<int>(i);
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 3) {
      ThrowInvalid(absl::StrCat("entry ", i,
                                " must be a tuple (path, kind, ...), got ",
                                TypeName(item)));
    }
    PushEntry& e = out[i];
    PathFromPython(PyTuple_GET_ITEM(item, 0), e.entry.mutable_path(), index);
    const std::string where = PathString(e.entry.path());
    PyObject* kind = PyTuple_GET_ITEM(item, 1);
    const int64_t k = IsInt(kind) ? Int64Of(kind, where) : -1;
    const Py_ssize_t size = PyTuple_GET_SIZE(item);
    if (k == kEntryContainer && size == 3) {
      const int64_t c = Int64Of(PyTuple_GET_ITEM(item, 2), where);
      if (c <= 0 || !v1::ContainerInfo::Kind_IsValid(static_cast<int>(c))) {
        ThrowInvalid(absl::StrCat(where, ": unknown container kind ", c));
      }
      e.entry.mutable_container()->set_kind(
          static_cast<v1::ContainerInfo::Kind>(c));
    } else if (k == kEntryValue && size == 3) {
      ValueFromPython(PyTuple_GET_ITEM(item, 2), e.entry.mutable_value(), 0,
                      where);
    } else if (k == kEntryTensor && size == 7) {
      v1::TensorInfo* t = e.entry.mutable_tensor();
      const int64_t dtype = Int64Of(PyTuple_GET_ITEM(item, 2), where);
      if (dtype <= 0 || !v1::DType_IsValid(static_cast<int>(dtype))) {
        ThrowInvalid(absl::StrCat(where, ": unknown dtype ", dtype));
      }
      t->set_dtype(static_cast<v1::DType>(dtype));
      PyObject* shape = PyTuple_GET_ITEM(item, 3);
      if (!PyTuple_Check(shape)) {
        ThrowInvalid(absl::StrCat(where, ": shape must be a tuple"));
      }
      for (Py_ssize_t d = 0; d < PyTuple_GET_SIZE(shape); ++d) {
        PyObject* dim = PyTuple_GET_ITEM(shape, d);
        if (!IsInt(dim)) {
          ThrowInvalid(absl::StrCat(where, ": shape has a non-int dimension"));
        }
        t->add_shape(Int64Of(dim, where));
      }
      const uint64_t ptr = Uint64Of(PyTuple_GET_ITEM(item, 4), where);
      e.tensor.data =
          reinterpret_cast<const void*>(static_cast<uintptr_t>(ptr));
      e.tensor.byte_length = Uint64Of(PyTuple_GET_ITEM(item, 5), where);
      const int64_t device = Int64Of(PyTuple_GET_ITEM(item, 6), where);
      if (device < kHostDevice || device > std::numeric_limits<int>::max()) {
        ThrowInvalid(absl::StrCat(where, ": bad device ", device));
      }
      e.tensor.memory = MemoryFromDevice(static_cast<int>(device));
    } else {
      ThrowInvalid(absl::StrCat(where, ": malformed entry (kind ", k, ", ",
                                size, " fields)"));
    }
  }
  return out;
}

py::list EntriesToPython(const ShardManifest& shard) {
  py::list out(shard.entries_size());
  for (int i = 0; i < shard.entries_size(); ++i) {
    const v1::ManifestEntry& e = shard.entries(i);
    py::tuple path = PathToPython(e.path());
    switch (e.kind_case()) {
      case v1::ManifestEntry::kContainer:
        out[i] = py::make_tuple(path, kEntryContainer,
                                static_cast<int>(e.container().kind()));
        break;
      case v1::ManifestEntry::kValue:
        out[i] = py::make_tuple(path, kEntryValue, ValueToPython(e.value()));
        break;
      case v1::ManifestEntry::kTensor: {
        const v1::TensorInfo& t = e.tensor();
        py::tuple shape(t.shape_size());
        for (int d = 0; d < t.shape_size(); ++d)
          shape[d] = py::int_(t.shape(d));
        out[i] = py::make_tuple(path, kEntryTensor, static_cast<int>(t.dtype()),
                                shape, t.byte_length());
        break;
      }
      default:
        throw StatusError(absl::DataLossError(
            absl::StrCat("manifest entry ", i, " ('", PathString(e.path()),
                         "') has no kind")));
    }
  }
  return out;
}

py::dict VersionInfoToPython(const VersionInfo& info) {
  py::dict d;
  d["run"] = DecodeUtf8(info.run());
  d["version"] = info.version();
  d["step"] = info.step();
  d["epoch"] = info.epoch();
  d["state"] = v1::VersionState_Name(info.state());
  d["world_size"] = info.world_size();
  py::dict metrics;
  for (const auto& [k, v] : info.metrics()) metrics[DecodeUtf8(k)] = v;
  d["metrics"] = metrics;
  const Environment& env = info.env();
  d["torch_version"] = DecodeUtf8(env.torch_version());
  d["cuda_version"] = DecodeUtf8(env.cuda_version());
  d["python_version"] = DecodeUtf8(env.python_version());
  d["hostname"] = DecodeUtf8(env.hostname());
  d["client_version"] = DecodeUtf8(env.client_version());
  d["labels"] = StringMapToPython(env.labels());
  d["created_at"] = info.created_at();
  d["committed_at"] = info.committed_at();
  d["total_bytes"] = info.total_bytes();
  d["uploaded_bytes"] = info.uploaded_bytes();
  py::list aliases;
  for (const auto& a : info.aliases()) aliases.append(DecodeUtf8(a));
  d["aliases"] = aliases;
  d["pinned"] = info.pinned();
  py::list shards;
  for (const auto& s : info.shards()) {
    py::dict sd;
    sd["rank"] = s.rank();
    sd["total_bytes"] = s.total_bytes();
    sd["tensor_count"] = s.tensor_count();
    sd["committed_at"] = s.committed_at();
    shards.append(sd);
  }
  d["shards"] = shards;
  d["abort_reason"] = DecodeUtf8(info.abort_reason());
  return d;
}

py::dict PolicyToPython(const Policy& policy) {
  py::dict d;
  d["monitor"] = DecodeUtf8(policy.monitor());
  switch (policy.mode()) {
    case v1::MIN:
      d["mode"] = "min";
      break;
    case v1::MAX:
      d["mode"] = "max";
      break;
    default:
      d["mode"] = "";
  }
  d["keep_last"] = OptionalUint(policy.has_keep_last(), policy.keep_last());
  d["keep_best"] = OptionalUint(policy.has_keep_best(), policy.keep_best());
  d["keep_every_n_steps"] = OptionalUint(policy.has_keep_every_n_steps(),
                                         policy.keep_every_n_steps());
  return d;
}

py::dict RunInfoToPython(const RunInfo& info) {
  py::dict d;
  d["name"] = DecodeUtf8(info.name());
  d["version_count"] = info.version_count();
  d["total_bytes"] = info.total_bytes();
  d["created_at"] = info.created_at();
  d["last_commit_at"] = info.last_commit_at();
  d["last_version"] = info.last_version();
  d["best_version"] = info.best_version();
  d["policy"] = PolicyToPython(info.policy());
  return d;
}

py::dict AliasInfoToPython(const AliasInfo& info) {
  py::dict d;
  d["run"] = DecodeUtf8(info.run());
  d["name"] = DecodeUtf8(info.name());
  d["version"] = info.version();
  d["updated_at"] = info.updated_at();
  return d;
}

py::dict AliasEventToPython(const AliasEvent& event) {
  py::dict d;
  d["run"] = DecodeUtf8(event.run());
  d["alias"] = DecodeUtf8(event.alias());
  d["from_version"] = event.from_version();
  d["to_version"] = event.to_version();
  d["at"] = event.at();
  d["actor"] = DecodeUtf8(event.actor());
  return d;
}

py::dict MetricPointToPython(const MetricPoint& point) {
  py::dict d;
  d["version"] = point.version();
  d["step"] = point.step();
  d["metric"] = DecodeUtf8(point.metric());
  d["value"] = point.value();
  d["committed_at"] = point.committed_at();
  return d;
}

}  // namespace ckptd::python
