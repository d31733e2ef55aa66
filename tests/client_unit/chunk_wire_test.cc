// client/src/chunk_wire.h: the hand-framed UploadChunk must be a message the
// generated protobuf parser reads back field for field (so the server, which
// parses with protobuf, sees what the client meant), and ReadChunkDecoder
// must read what protobuf writes, however gRPC slices it, and refuse what is
// malformed.
#include "client/src/chunk_wire.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/support/slice.h"
#include "gtest/gtest.h"
#include "tests/support/random_bytes.h"

namespace ckptd::internal {
namespace {

using ::ckptd::testing::RandomBytes;
using ::testing::HasSubstr;

constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();
constexpr size_t kMiB = size_t{1} << 20;

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

// `bytes` as a ByteBuffer of slices of at most `slice_size` bytes (0: one
// slice), as gRPC may hand a received message over.
grpc::ByteBuffer Sliced(const std::string& bytes, size_t slice_size) {
  std::vector<grpc::Slice> slices;
  if (slice_size == 0) slice_size = std::max<size_t>(bytes.size(), 1);
  for (size_t at = 0; at < bytes.size(); at += slice_size) {
    const size_t n = std::min(slice_size, bytes.size() - at);
    slices.emplace_back(bytes.data() + at, n);
  }
  if (slices.empty()) slices.emplace_back(bytes.data(), 0);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

// Hand-encoded protobuf pieces, for wire orders protobuf itself never
// writes.
std::string Varint(uint64_t v) {
  std::string out;
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
  return out;
}
std::string VarintField(int field, uint64_t v) {
  return Varint(static_cast<uint64_t>(field) << 3) + Varint(v);
}
std::string BytesField(int field, const std::string& bytes) {
  return Varint((static_cast<uint64_t>(field) << 3) | 2) +
         Varint(bytes.size()) + bytes;
}

TEST(ChunkWireTest, UploadChunkParsesBackWithProtobuf) {
  struct Case {
    const char* case_name;
    std::string run;
    uint64_t version;
    std::string digest;
    uint64_t blob_size;
    uint64_t offset;
    uint64_t checksum;
    size_t data_size;
  };
  const std::string digest =
      std::string("\x00\xff\x10", 3) + std::string(13, '\x7f');
  const Case cases[] = {
      {"empty data", "run", 1, digest, 0, 0, 0, 0},
      {"empty everything", "", 0, "", 0, 0, 0, 0},
      {"one byte", "run", 2, digest, 1, 0, 9, 1},
      {"no header fields", "", 0, "", 0, 0, 0, 100},
      {"later chunk (no run or version)", "", 0, digest, 0, 4 * kMiB, 5, 4096},
      {"length 127 (1-byte varint)", "r", 3, digest, 127, 0, 1, 127},
      {"length 128 (2-byte varint)", "r", 3, digest, 128, 0, 1, 128},
      {"length 16383", "r", 3, digest, 16383, 0, 1, 16383},
      {"length 16384 (3-byte varint)", "r", 3, digest, 16384, 0, 1, 16384},
      {"1 MiB", "r", 3, digest, kMiB, 0, 1, kMiB},
      {"4 MiB chunk", "llama-7b-sft", 12, digest, 64 * kMiB, 8 * kMiB,
       0x0123456789abcdef, 4 * kMiB},
      {"offset above 2^32", "r", 4, digest, uint64_t{1} << 40,
       (uint64_t{1} << 32) + 4096, 77, 4096},
      {"offset at 2^32", "r", 4, digest, uint64_t{1} << 33, uint64_t{1} << 32,
       77, 1},
      {"largest numbers", std::string(128, 'r'), kU64Max, digest, kU64Max,
       kU64Max - 1, kU64Max, 10},
  };
  for (const Case& c : cases) {
    v1::UploadChunk header;
    header.set_run(c.run);
    header.set_version(c.version);
    header.set_digest(c.digest);
    header.set_blob_size(c.blob_size);
    header.set_offset(c.offset);
    header.set_checksum(c.checksum);
    std::string data = RandomBytes(c.data_size, c.data_size + 1);

    const grpc::ByteBuffer buffer =
        EncodeUploadChunk(header, data.data(), data.size());
    const std::string wire = Flatten(buffer);

    v1::UploadChunk want = header;
    want.set_data(data);
    // Same fields, so the same size; an empty data field costs its tag and
    // length (2 bytes) where protobuf would leave it out.
    EXPECT_EQ(wire.size(), want.ByteSizeLong() + (data.empty() ? 2 : 0))
        << c.case_name;
    EXPECT_EQ(buffer.Length(), wire.size()) << c.case_name;

    v1::UploadChunk parsed;
    ASSERT_TRUE(parsed.ParseFromString(wire)) << c.case_name;
    EXPECT_EQ(parsed.run(), c.run) << c.case_name;
    EXPECT_EQ(parsed.version(), c.version) << c.case_name;
    EXPECT_EQ(parsed.digest(), c.digest) << c.case_name;
    EXPECT_EQ(parsed.blob_size(), c.blob_size) << c.case_name;
    EXPECT_EQ(parsed.offset(), c.offset) << c.case_name;
    EXPECT_EQ(parsed.checksum(), c.checksum) << c.case_name;
    EXPECT_TRUE(parsed.data() == data)
        << c.case_name << ": data differs (" << parsed.data().size() << " vs "
        << data.size() << " bytes)";
    EXPECT_EQ(parsed.SerializeAsString(), want.SerializeAsString())
        << c.case_name;

    // The buffer holds a copy: the caller may reuse its memory at once.
    if (!data.empty()) {
      data.assign(data.size(), '\0');
      v1::UploadChunk again;
      ASSERT_TRUE(again.ParseFromString(Flatten(buffer))) << c.case_name;
      EXPECT_EQ(again.data(), RandomBytes(c.data_size, c.data_size + 1))
          << c.case_name;
    }
  }
}

struct ReadCase {
  const char* case_name;
  uint32_t range_index;
  uint64_t offset;
  uint64_t checksum;
  size_t data_size;
  size_t slice_size;  // 0: one slice
  size_t read_piece;  // ReadData in pieces of this many bytes
};

TEST(ChunkWireTest, ReadChunkDecodesWhatProtobufWrites) {
  const ReadCase cases[] = {
      {"small, one slice", 3, 100, 42, 1000, 0, 1000},
      {"4 MiB, one slice, one read", 0, 0, 1, 4 * kMiB, 0, 4 * kMiB},
      {"4 MiB in 64 KiB slices, odd reads", 7, 8 * kMiB, 2, 4 * kMiB, 64 << 10,
       100003},
      {"3-byte slices", 1, 5, 6, 777, 3, 10},
      {"1-byte slices, 1-byte reads", 2, 1, 2, 300, 1, 1},
      {"offset above 2^32", 9, (uint64_t{1} << 32) + 1, kU64Max, 64, 0, 64},
      {"largest numbers", std::numeric_limits<uint32_t>::max(), kU64Max,
       kU64Max, 16, 5, 3},
      {"empty data (protobuf leaves the field out)", 4, 4096, 9, 0, 0, 1},
      {"all defaults (an empty message)", 0, 0, 0, 0, 0, 1},
  };
  for (const ReadCase& c : cases) {
    v1::ReadChunk chunk;
    chunk.set_range_index(c.range_index);
    chunk.set_offset(c.offset);
    chunk.set_checksum(c.checksum);
    const std::string data = RandomBytes(c.data_size, c.data_size + 7);
    chunk.set_data(data);
    grpc::ByteBuffer buffer = Sliced(chunk.SerializeAsString(), c.slice_size);

    ReadChunkDecoder decoder(&buffer);
    ASSERT_TRUE(decoder.Parse().ok()) << c.case_name;
    EXPECT_EQ(decoder.range_index(), c.range_index) << c.case_name;
    EXPECT_EQ(decoder.offset(), c.offset) << c.case_name;
    EXPECT_EQ(decoder.checksum(), c.checksum) << c.case_name;
    ASSERT_EQ(decoder.data_length(), c.data_size) << c.case_name;
    ASSERT_TRUE(decoder.BeginData().ok()) << c.case_name;
    std::string got(c.data_size, '\0');
    for (size_t at = 0; at < c.data_size; at += c.read_piece) {
      const size_t n = std::min(c.read_piece, c.data_size - at);
      ASSERT_TRUE(decoder.ReadData(&got[at], n).ok())
          << c.case_name << " at " << at;
    }
    EXPECT_TRUE(got == data) << c.case_name << ": data differs";
    char extra;
    EXPECT_FALSE(decoder.ReadData(&extra, 1).ok())
        << c.case_name << ": read past the data";
    EXPECT_TRUE(decoder.ReadData(&extra, 0).ok()) << c.case_name;
  }
}

// Field order on the wire does not matter, unknown fields are skipped, and a
// repeated scalar keeps its last value, as protobuf's own parser does.
TEST(ChunkWireTest, ReadChunkAcceptsAnyValidWireOrder) {
  const std::string data = RandomBytes(5000, 11);
  struct Case {
    const char* case_name;
    std::string wire;
  };
  const Case cases[] = {
      {"data first", BytesField(3, data) + VarintField(4, 77) +
                         VarintField(2, 1 << 20) + VarintField(1, 5)},
      {"data in the middle", VarintField(1, 5) + BytesField(3, data) +
                                 VarintField(4, 77) + VarintField(2, 1 << 20)},
      {"unknown fields around the data",
       VarintField(1, 5) + VarintField(9, 123) + BytesField(10, "skip me") +
           BytesField(3, data) + BytesField(11, std::string(300, 'u')) +
           VarintField(2, 1 << 20) + VarintField(4, 77)},
      {"repeated scalars: the last wins",
       VarintField(1, 1) + VarintField(2, 3) + VarintField(4, 1) +
           BytesField(3, data) + VarintField(1, 5) + VarintField(2, 1 << 20) +
           VarintField(4, 77)},
  };
  for (const Case& c : cases) {
    // The reference: protobuf reads the same bytes the same way.
    v1::ReadChunk reference;
    ASSERT_TRUE(reference.ParseFromString(c.wire)) << c.case_name;
    ASSERT_EQ(reference.range_index(), 5u) << c.case_name;
    ASSERT_EQ(reference.offset(), 1u << 20) << c.case_name;
    ASSERT_EQ(reference.checksum(), 77u) << c.case_name;
    for (size_t slice_size : {size_t{0}, size_t{7}}) {
      grpc::ByteBuffer buffer = Sliced(c.wire, slice_size);
      ReadChunkDecoder decoder(&buffer);
      ASSERT_TRUE(decoder.Parse().ok()) << c.case_name;
      EXPECT_EQ(decoder.range_index(), 5u) << c.case_name;
      EXPECT_EQ(decoder.offset(), 1u << 20) << c.case_name;
      EXPECT_EQ(decoder.checksum(), 77u) << c.case_name;
      ASSERT_EQ(decoder.data_length(), data.size()) << c.case_name;
      ASSERT_TRUE(decoder.BeginData().ok()) << c.case_name;
      std::string got(data.size(), '\0');
      ASSERT_TRUE(decoder.ReadData(got.data(), got.size()).ok()) << c.case_name;
      EXPECT_TRUE(got == data) << c.case_name;
    }
  }
}

TEST(ChunkWireTest, ReadChunkRefusesMalformedMessages) {
  const std::string data = RandomBytes(1000, 3);
  v1::ReadChunk chunk;
  chunk.set_range_index(1);
  chunk.set_offset(2);
  chunk.set_data(data);
  chunk.set_checksum(3);
  const std::string good = chunk.SerializeAsString();
  const std::string data_field = BytesField(3, data);
  struct Case {
    const char* case_name;
    std::string wire;
    const char* error;
  };
  const Case cases[] = {
      {"cut inside the data", good.substr(0, good.size() - 20), "data length"},
      {"cut inside a varint", VarintField(1, 1) + "\x10\xff", "offset"},
      {"cut after a tag", VarintField(1, 1) + "\x20", "checksum"},
      {"data length beyond the message",
       VarintField(1, 1) + "\x1a\x90\x4e" + std::string(100, 'd'),
       "data length"},
      {"data field twice", data_field + data_field, "data field repeated"},
      {"data as a varint", VarintField(3, 5), "data wire type"},
      // Found by tests/fuzz/chunk_wire_fuzzer: scalar fields were read as
      // varints whatever their wire type.
      {"range_index as bytes", BytesField(1, "\x05") + BytesField(3, "ab"),
       "range_index"},
      {"offset as fixed64", "\x11" + std::string(8, '\x01'), "offset"},
      {"checksum as fixed32", "\x25" + std::string(4, '\x02'), "checksum"},
      {"a zero tag",
       VarintField(1, 1) + std::string(1, '\0') + VarintField(2, 2),
       "truncated"},
      {"garbage", std::string(12, '\xff'), "malformed ReadChunk"},
      {"unknown field with a bad wire type", VarintField(1, 1) + "\x4f\x01",
       "unknown field"},
  };
  for (const Case& c : cases) {
    grpc::ByteBuffer buffer = Sliced(c.wire, 0);
    ReadChunkDecoder decoder(&buffer);
    const absl::Status st = decoder.Parse();
    EXPECT_EQ(st.code(), absl::StatusCode::kInternal)
        << c.case_name << ": " << st;
    EXPECT_THAT(st.message(), HasSubstr("malformed ReadChunk from the server"))
        << c.case_name;
    EXPECT_THAT(st.message(), HasSubstr(c.error)) << c.case_name;
  }
}

}  // namespace
}  // namespace ckptd::internal
