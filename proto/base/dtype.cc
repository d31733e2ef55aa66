#include "proto/base/dtype.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ckptd {
namespace {

constexpr DTypeInfo kDTypes[] = {
    {v1::FLOAT64, 8, "F64", "float64"},
    {v1::FLOAT32, 4, "F32", "float32"},
    {v1::FLOAT16, 2, "F16", "float16"},
    {v1::BFLOAT16, 2, "BF16", "bfloat16"},
    {v1::INT64, 8, "I64", "int64"},
    {v1::INT32, 4, "I32", "int32"},
    {v1::INT16, 2, "I16", "int16"},
    {v1::INT8, 1, "I8", "int8"},
    {v1::UINT8, 1, "U8", "uint8"},
    {v1::BOOL, 1, "BOOL", "bool"},
    {v1::UINT16, 2, "U16", "uint16"},
    {v1::UINT32, 4, "U32", "uint32"},
    {v1::UINT64, 8, "U64", "uint64"},
    {v1::COMPLEX64, 8, "C64", "complex64"},
    {v1::COMPLEX32, 4, nullptr, "complex32"},
    {v1::COMPLEX128, 16, nullptr, "complex128"},
};

}  // namespace

absl::Span<const DTypeInfo> DTypeTable() { return kDTypes; }

const DTypeInfo* FindDType(v1::DType dtype) {
  for (const DTypeInfo& row : kDTypes) {
    if (row.dtype == dtype) return &row;
  }
  return nullptr;
}

const DTypeInfo* FindSafetensorsDType(absl::string_view name) {
  for (const DTypeInfo& row : kDTypes) {
    if (row.safetensors != nullptr && name == row.safetensors) return &row;
  }
  return nullptr;
}

uint64_t DTypeByteSize(v1::DType dtype) {
  const DTypeInfo* row = FindDType(dtype);
  return row == nullptr ? 0 : row->size;
}

std::string TorchDTypeName(v1::DType dtype) {
  const DTypeInfo* row = FindDType(dtype);
  if (row == nullptr)
    return absl::StrCat("dtype(", static_cast<int>(dtype), ")");
  return row->torch;
}

std::string SafetensorsDTypeNames() {
  std::vector<absl::string_view> names;
  for (const DTypeInfo& row : kDTypes) {
    if (row.safetensors != nullptr) names.push_back(row.safetensors);
  }
  return absl::StrJoin(names, ", ");
}

std::string DottedKeyPath(
    const google::protobuf::RepeatedPtrField<v1::PathSegment>& path) {
  std::string out;
  for (const v1::PathSegment& seg : path) {
    if (!out.empty()) out += '.';
    if (seg.kind_case() == v1::PathSegment::kIntKey) {
      absl::StrAppend(&out, seg.int_key());
    } else {
      out += seg.key();
    }
  }
  return out;
}

}  // namespace ckptd
