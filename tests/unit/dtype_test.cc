// The one dtype table (proto/base/dtype.h): element sizes, safetensors and
// torch names, and that the table covers exactly the ckptd.v1.DType enum.
#include "proto/base/dtype.h"

#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"

namespace ckptd {
namespace {

struct Row {
  v1::DType dtype;
  uint64_t size;
  const char* safetensors;  // nullptr: none
  const char* torch;
};

// Written from torch's dtypes and the safetensors format, independently of
// the table under test.
const Row kExpected[] = {
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

TEST(DTypeTest, EveryRowHasItsSizeAndNames) {
  for (const Row& want : kExpected) {
    const std::string case_name = v1::DType_Name(want.dtype);
    const DTypeInfo* row = FindDType(want.dtype);
    ASSERT_NE(row, nullptr) << case_name;
    EXPECT_EQ(row->dtype, want.dtype) << case_name;
    EXPECT_EQ(row->size, want.size) << case_name;
    EXPECT_EQ(DTypeByteSize(want.dtype), want.size) << case_name;
    EXPECT_EQ(TorchDTypeName(want.dtype), want.torch) << case_name;
    if (want.safetensors == nullptr) {
      EXPECT_EQ(row->safetensors, nullptr) << case_name;
      continue;
    }
    ASSERT_NE(row->safetensors, nullptr) << case_name;
    EXPECT_STREQ(row->safetensors, want.safetensors) << case_name;
    const DTypeInfo* by_name = FindSafetensorsDType(want.safetensors);
    ASSERT_NE(by_name, nullptr) << case_name;
    EXPECT_EQ(by_name->dtype, want.dtype) << case_name;
  }
}

// A new enum value without a row (or a row twice) fails here, not in a
// user's safetensors export.
TEST(DTypeTest, TableCoversTheEnumExactlyOnce) {
  const auto* descriptor = v1::DType_descriptor();
  std::multiset<int> in_table;
  for (const DTypeInfo& row : DTypeTable()) in_table.insert(row.dtype);
  for (int i = 0; i < descriptor->value_count(); ++i) {
    const auto* value = descriptor->value(i);
    const int n = value->number();
    if (n == v1::DTYPE_UNSPECIFIED) {
      EXPECT_EQ(in_table.count(n), 0u) << value->name();
    } else {
      EXPECT_EQ(in_table.count(n), 1u) << value->name();
    }
  }
  EXPECT_EQ(DTypeTable().size(),
            static_cast<size_t>(descriptor->value_count() - 1));
  EXPECT_EQ(DTypeTable().size(), std::size(kExpected));
}

TEST(DTypeTest, RowsWithASafetensorsNameComeFirst) {
  bool seen_without = false;
  for (const DTypeInfo& row : DTypeTable()) {
    const std::string case_name = v1::DType_Name(row.dtype);
    if (row.safetensors == nullptr) {
      seen_without = true;
    } else {
      EXPECT_FALSE(seen_without) << case_name << " comes after a row without";
    }
  }
  EXPECT_EQ(SafetensorsDTypeNames(),
            "F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, U16, U32, U64, "
            "C64");
}

TEST(DTypeTest, ValuesOutsideTheTable) {
  struct Case {
    const char* case_name;
    int value;
    const char* torch;
  };
  const Case cases[] = {
      {"unspecified", v1::DTYPE_UNSPECIFIED, "dtype(0)"},
      {"one past the enum", 17, "dtype(17)"},
      {"large", 999, "dtype(999)"},
      {"negative", -1, "dtype(-1)"},
  };
  for (const Case& c : cases) {
    const auto dtype = static_cast<v1::DType>(c.value);
    EXPECT_EQ(FindDType(dtype), nullptr) << c.case_name;
    EXPECT_EQ(DTypeByteSize(dtype), 0u) << c.case_name;
    EXPECT_EQ(TorchDTypeName(dtype), c.torch) << c.case_name;
  }
}

TEST(DTypeTest, SafetensorsNamesAreExact) {
  const std::string unknown[] = {
      "",        "f32",  "F32 ", " F32",    "FLOAT32",
      "float32", "C32",  "C128", "F8_E4M3", "F8_E5M2",
      "Bf16",    "bool", "I128", "F6_E2M3", std::string("U8\0", 3),
  };
  for (const std::string& name : unknown) {
    EXPECT_EQ(FindSafetensorsDType(name), nullptr) << "'" << name << "'";
  }
}

TEST(DTypeTest, DottedKeyPath) {
  struct Segment {
    bool is_int;
    std::string key;
    int64_t int_key;
  };
  struct Case {
    const char* case_name;
    std::vector<Segment> path;
    const char* want;
  };
  const Case cases[] = {
      {"root", {}, ""},
      {"one key", {{false, "epoch", 0}}, "epoch"},
      {"nested keys", {{false, "model", 0}, {false, "w", 0}}, "model.w"},
      {"int key", {{true, "", 7}}, "7"},
      {"optimizer state",
       {{false, "opt", 0},
        {false, "state", 0},
        {true, "", 3},
        {false, "exp_avg", 0}},
       "opt.state.3.exp_avg"},
      {"negative int", {{false, "a", 0}, {true, "", -1}}, "a.-1"},
      {"empty string key", {{false, "a", 0}, {false, "", 0}}, "a."},
  };
  for (const Case& c : cases) {
    v1::ManifestEntry e;
    for (const Segment& s : c.path) {
      if (s.is_int) {
        e.add_path()->set_int_key(s.int_key);
      } else {
        e.add_path()->set_key(s.key);
      }
    }
    EXPECT_EQ(DottedKeyPath(e.path()), c.want) << c.case_name;
  }
}

}  // namespace
}  // namespace ckptd
