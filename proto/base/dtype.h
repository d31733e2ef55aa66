// The one table of tensor dtypes: for each ckptd.v1.DType its element size,
// its safetensors name (when the format has one) and its torch name. Shared
// by the server (manifest validation, safetensors export), the C++ client,
// the CLI and the Python binding. Thread-safe (immutable data).
#ifndef CKPTD_PROTO_BASE_DTYPE_H_
#define CKPTD_PROTO_BASE_DTYPE_H_

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "ckptd/v1/checkpoint.pb.h"

namespace ckptd {

struct DTypeInfo {
  v1::DType dtype;
  uint64_t size;            // bytes per element
  const char* safetensors;  // nullptr: safetensors has no such dtype
  const char* torch;        // torch.<name>
};

// Every dtype ckptd stores; the rows with a safetensors name come first, in
// the order error messages list them.
absl::Span<const DTypeInfo> DTypeTable();
// nullptr for DTYPE_UNSPECIFIED and values outside the enum.
const DTypeInfo* FindDType(v1::DType dtype);
// Exact (case-sensitive) safetensors names: "F32", "BF16", ...
const DTypeInfo* FindSafetensorsDType(absl::string_view name);
// Bytes per element; 0 for a dtype not in the table.
uint64_t DTypeByteSize(v1::DType dtype);
// "float32"; "dtype(N)" for a value not in the table.
std::string TorchDTypeName(v1::DType dtype);
// "F64, F32, ...": the safetensors names ckptd accepts.
std::string SafetensorsDTypeNames();

// A key path as dotted text ("model.layers.0.weight"), for messages.
std::string DottedKeyPath(
    const google::protobuf::RepeatedPtrField<v1::PathSegment>& path);

}  // namespace ckptd

#endif  // CKPTD_PROTO_BASE_DTYPE_H_
