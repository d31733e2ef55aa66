#include "client/src/chunk_wire.h"

#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpcpp/support/slice.h"

namespace ckptd::internal {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;
using google::protobuf::io::CodedOutputStream;

constexpr int kUploadDataField = v1::UploadChunk::kDataFieldNumber;
constexpr int kReadRangeIndexField = v1::ReadChunk::kRangeIndexFieldNumber;
constexpr int kReadOffsetField = v1::ReadChunk::kOffsetFieldNumber;
constexpr int kReadDataField = v1::ReadChunk::kDataFieldNumber;
constexpr int kReadChecksumField = v1::ReadChunk::kChecksumFieldNumber;

absl::Status Malformed(const char* what) {
  return absl::InternalError(
      absl::StrCat("malformed ReadChunk from the server: ", what));
}

}  // namespace

grpc::ByteBuffer SerializeToByteBuffer(
    const google::protobuf::MessageLite& message) {
  grpc::Slice slice(message.ByteSizeLong());
  message.SerializeWithCachedSizesToArray(const_cast<uint8_t*>(slice.begin()));
  return grpc::ByteBuffer(&slice, 1);
}

grpc::ByteBuffer EncodeUploadChunk(const v1::UploadChunk& header,
                                   const void* data, size_t size) {
  const size_t header_size = header.ByteSizeLong();
  const uint32_t tag = WireFormatLite::MakeTag(
      kUploadDataField, WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
  const size_t total = header_size + CodedOutputStream::VarintSize32(tag) +
                       CodedOutputStream::VarintSize64(size) + size;
  grpc::Slice slice(total);
  uint8_t* p = const_cast<uint8_t*>(slice.begin());
  p = header.SerializeWithCachedSizesToArray(p);
  p = CodedOutputStream::WriteVarint32ToArray(tag, p);
  p = CodedOutputStream::WriteVarint64ToArray(size, p);
  if (size > 0) std::memcpy(p, data, size);
  return grpc::ByteBuffer(&slice, 1);
}

void ReadChunkDecoder::Open() {
  input_.reset();
  reader_.reset();
  reader_.emplace(buffer_);
  input_.emplace(&*reader_);
}

absl::Status ReadChunkDecoder::Parse() {
  Open();
  if (!reader_->status().ok()) return Malformed("unreadable buffer");
  bool seen_data = false;
  while (uint32_t tag = input_->ReadTag()) {
    const bool varint =
        WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_VARINT;
    // A scalar field read as a varint whatever its wire type would take a
    // length or fixed-width bytes for the value and misread the rest.
    switch (WireFormatLite::GetTagFieldNumber(tag)) {
      case kReadRangeIndexField: {
        if (!varint || !input_->ReadVarint32(&range_index_)) {
          return Malformed("range_index");
        }
        continue;
      }
      case kReadOffsetField:
        if (!varint || !input_->ReadVarint64(&offset_)) {
          return Malformed("offset");
        }
        continue;
      case kReadChecksumField:
        if (!varint || !input_->ReadVarint64(&checksum_)) {
          return Malformed("checksum");
        }
        continue;
      case kReadDataField: {
        if (WireFormatLite::GetTagWireType(tag) !=
            WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
          return Malformed("data wire type");
        }
        if (seen_data) return Malformed("data field repeated");
        seen_data = true;
        uint32_t length = 0;
        if (!input_->ReadVarint32(&length) ||
            length > static_cast<uint32_t>(std::numeric_limits<int>::max()) ||
            !input_->Skip(static_cast<int>(length))) {
          return Malformed("data length");
        }
        data_length_ = length;
        continue;
      }
      default:
        if (!WireFormatLite::SkipField(&*input_, tag)) {
          return Malformed("unknown field");
        }
    }
  }
  if (!input_->ConsumedEntireMessage()) return Malformed("truncated");
  return absl::OkStatus();
}

absl::Status ReadChunkDecoder::BeginData() {
  Open();
  data_read_ = 0;
  if (data_length_ == 0) return absl::OkStatus();
  while (uint32_t tag = input_->ReadTag()) {
    if (WireFormatLite::GetTagFieldNumber(tag) == kReadDataField) {
      uint32_t length = 0;
      if (!input_->ReadVarint32(&length) || length != data_length_) {
        return Malformed("data length changed between passes");
      }
      return absl::OkStatus();
    }
    if (!WireFormatLite::SkipField(&*input_, tag)) {
      return Malformed("unknown field");
    }
  }
  return Malformed("no data field");
}

absl::Status ReadChunkDecoder::ReadData(void* dst, size_t n) {
  if (n > data_length_ - data_read_) return Malformed("read past data");
  if (n == 0) return absl::OkStatus();
  if (!input_->ReadRaw(dst, static_cast<int>(n))) {
    return Malformed("data shorter than its length");
  }
  data_read_ += n;
  return absl::OkStatus();
}

}  // namespace ckptd::internal
