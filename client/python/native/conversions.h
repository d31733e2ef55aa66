// Conversions between plain Python objects and the ckptd wire / client types
// for the `ckptd._native` extension.
//
// The Python layer (ckptd/_tree.py) and this file share one entry format, a
// tuple per manifest entry in pre-order:
//   (path, ENTRY_CONTAINER, container_kind)
//   (path, ENTRY_VALUE, value)             value: None/bool/int/float/str or
//                                          list/tuple of those (nested)
//   (path, ENTRY_TENSOR, dtype, shape, data_ptr, nbytes, device)   push
//   (path, ENTRY_TENSOR, dtype, shape, nbytes)                     pull
// `path` is a tuple of str (dict key) and int (int dict key or list index)
// segments; `dtype` and `container_kind` are the proto enum numbers;
// `device` is kHostDevice for host memory, else a CUDA device ordinal.
//
// Errors are thrown as StatusError (see module.cc for the translation into
// ckptd.errors exceptions). Every function here needs the GIL.
#ifndef CKPTD_CLIENT_PYTHON_NATIVE_CONVERSIONS_H_
#define CKPTD_CLIENT_PYTHON_NATIVE_CONVERSIONS_H_

#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "ckptd/client.h"

namespace ckptd::python {

namespace py = pybind11;

inline constexpr int kEntryContainer = 0;
inline constexpr int kEntryValue = 1;
inline constexpr int kEntryTensor = 2;
// `device` of an entry or destination in host memory.
inline constexpr int kHostDevice = -1;
// Value lists nest at most this deep (the server accepts 32).
inline constexpr int kMaxValueDepth = 16;

// A non-OK absl::Status on its way to Python.
class StatusError : public std::runtime_error {
 public:
  explicit StatusError(absl::Status status)
      : std::runtime_error(status.ToString()), status_(std::move(status)) {}
  const absl::Status& status() const { return status_; }

 private:
  absl::Status status_;
};

inline void ThrowIfError(const absl::Status& status) {
  if (!status.ok()) throw StatusError(status);
}

template <typename T>
T ValueOrThrow(absl::StatusOr<T> value) {
  if (!value.ok()) throw StatusError(std::move(value).status());
  return *std::move(value);
}

// A str from UTF-8 bytes; invalid bytes become U+FFFD instead of failing
// (server messages and keys written by other clients are not trusted).
py::str DecodeUtf8(std::string_view bytes);

// Where the memory behind a data pointer lives.
Memory MemoryFromDevice(int device);

// Python entry tuples (push format) -> PushEntry list. INVALID_ARGUMENT
// naming the entry's key path for anything malformed.
std::vector<PushEntry> EntriesFromPython(const py::list& entries);

// One shard's manifest -> Python entry tuples (pull format).
py::list EntriesToPython(const ShardManifest& shard);

// Metadata messages -> dicts whose keys are the proto field names. Times stay
// Unix nanoseconds (0: unset); enums become their names.
py::dict VersionInfoToPython(const VersionInfo& info);
py::dict RunInfoToPython(const RunInfo& info);
py::dict PolicyToPython(const Policy& policy);
py::dict AliasInfoToPython(const AliasInfo& info);
py::dict AliasEventToPython(const AliasEvent& event);
py::dict MetricPointToPython(const MetricPoint& point);

}  // namespace ckptd::python

#endif  // CKPTD_CLIENT_PYTHON_NATIVE_CONVERSIONS_H_
