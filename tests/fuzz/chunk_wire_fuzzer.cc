// Fuzzes the hand-framed data messages of client/src/chunk_wire.h against
// the generated protobuf code:
// - ReadChunkDecoder over arbitrary bytes, sliced as gRPC might hand them
//   over: whatever it accepts and protobuf parses has the same range_index,
//   offset, checksum and data in both, and the data reads back in arbitrary
//   steps, never past its length.
// - EncodeUploadChunk of arbitrary header fields and data: protobuf parses
//   the result back field for field.
//
// Input: byte 0 picks the slicing, byte 1 the read step; the rest is the
// ReadChunk to decode, and also the UploadChunk fields and data to encode.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ckptd/v1/checkpoint.pb.h"
#include "client/src/chunk_wire.h"
#include "fuzzer/FuzzedDataProvider.h"
#include "grpcpp/support/slice.h"
#include "tests/fuzz/fuzz_check.h"

namespace ckptd::internal {
namespace {

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  FUZZ_CHECK(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

// `bytes` in slices of `slice_size` bytes (0: one slice).
grpc::ByteBuffer Sliced(const std::string& bytes, size_t slice_size) {
  std::vector<grpc::Slice> slices;
  if (slice_size == 0) slice_size = std::max<size_t>(bytes.size(), 1);
  for (size_t at = 0; at < bytes.size(); at += slice_size) {
    slices.emplace_back(bytes.data() + at,
                        std::min(slice_size, bytes.size() - at));
  }
  if (slices.empty()) slices.emplace_back(bytes.data(), 0);
  return grpc::ByteBuffer(slices.data(), slices.size());
}

void FuzzDecode(const std::string& message, size_t slice_size,
                size_t read_step) {
  grpc::ByteBuffer buffer = Sliced(message, slice_size);
  ReadChunkDecoder decoder(&buffer);
  if (!decoder.Parse().ok()) return;

  // Protobuf refuses some garbage the decoder skips as an unknown field (a
  // tag over 5 bytes, which CodedInputStream truncates to 32 bits): compare
  // where protobuf parses.
  v1::ReadChunk parsed;
  const bool protobuf_parses = parsed.ParseFromString(message);
  if (protobuf_parses) {
    FUZZ_CHECK(decoder.range_index() == parsed.range_index());
    FUZZ_CHECK(decoder.offset() == parsed.offset());
    FUZZ_CHECK(decoder.checksum() == parsed.checksum());
    FUZZ_CHECK(decoder.data_length() == parsed.data().size());
  }

  FUZZ_CHECK(decoder.BeginData().ok());
  std::string data(decoder.data_length(), '\0');
  size_t at = 0;
  while (at < data.size()) {
    const size_t n = std::min(read_step, data.size() - at);
    FUZZ_CHECK(decoder.ReadData(data.data() + at, n).ok());
    at += n;
  }
  if (protobuf_parses) FUZZ_CHECK(data == parsed.data());
  char past = 0;
  FUZZ_CHECK(!decoder.ReadData(&past, 1).ok());
}

void FuzzEncode(FuzzedDataProvider& in) {
  v1::UploadChunk header;
  const uint8_t fields = in.ConsumeIntegral<uint8_t>();
  if (fields & 1) {
    // A proto3 string must be UTF-8 or protobuf refuses the message: ASCII.
    std::string run = in.ConsumeRandomLengthString(64);
    for (char& c : run) c = static_cast<char>(c & 0x7f);
    header.set_run(run);
  }
  if (fields & 2) header.set_version(in.ConsumeIntegral<uint64_t>());
  if (fields & 4) header.set_digest(in.ConsumeRandomLengthString(32));
  if (fields & 8) header.set_blob_size(in.ConsumeIntegral<uint64_t>());
  if (fields & 16) header.set_offset(in.ConsumeIntegral<uint64_t>());
  if (fields & 32) header.set_checksum(in.ConsumeIntegral<uint64_t>());
  const std::string data = in.ConsumeRemainingBytesAsString();

  const std::string wire =
      Flatten(EncodeUploadChunk(header, data.data(), data.size()));
  v1::UploadChunk parsed;
  FUZZ_CHECK(parsed.ParseFromString(wire));
  FUZZ_CHECK(parsed.run() == header.run());
  FUZZ_CHECK(parsed.version() == header.version());
  FUZZ_CHECK(parsed.digest() == header.digest());
  FUZZ_CHECK(parsed.blob_size() == header.blob_size());
  FUZZ_CHECK(parsed.offset() == header.offset());
  FUZZ_CHECK(parsed.checksum() == header.checksum());
  FUZZ_CHECK(parsed.data() == data);
}

}  // namespace
}  // namespace ckptd::internal

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  // Slices of 1-127 bytes, or one slice.
  const size_t slice_size = data[0] & 0x7f;
  const size_t read_step = 1 + data[1];
  const std::string message(reinterpret_cast<const char*>(data) + 2, size - 2);
  ckptd::internal::FuzzDecode(message, slice_size, read_step);
  FuzzedDataProvider encode_input(data + 2, size - 2);
  ckptd::internal::FuzzEncode(encode_input);
  return 0;
}
