// Hand-framed data messages, so tensor bytes are copied once on each side
// instead of twice through protobuf objects (the streams that carry them
// are ByteStreams, byte_stream.h):
//
// - Push: an UploadChunk is serialized straight into the one grpc::Slice
//   that gRPC sends: the small header fields via protobuf, then the `data`
//   field (tag, length, bytes) copied from tensor memory.
// - Pull: a ReadChunk is decoded from the received grpc::ByteBuffer in two
//   passes: the first reads the scalar fields (skipping data), the second
//   positions a stream at the data bytes so the caller copies them straight
//   into their destination. Field order on the wire does not matter.
//
// Thread safety: none needed (no shared state).
#ifndef CKPTD_CLIENT_SRC_CHUNK_WIRE_H_
#define CKPTD_CLIENT_SRC_CHUNK_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "ckptd/v1/checkpoint.pb.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/message_lite.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/proto_buffer_reader.h"

namespace ckptd::internal {

// Full method names for the streams driven with grpc::ByteBuffer messages.
inline constexpr char kUploadBlobsMethod[] = "/ckptd.v1.Checkpoint/UploadBlobs";
inline constexpr char kReadBlobsMethod[] = "/ckptd.v1.Checkpoint/ReadBlobs";

// `message` serialized into one slice.
grpc::ByteBuffer SerializeToByteBuffer(
    const google::protobuf::MessageLite& message);

// `header` carries every field but data (which must be empty); the result
// is a valid serialized UploadChunk whose data is [data, data + size).
grpc::ByteBuffer EncodeUploadChunk(const v1::UploadChunk& header,
                                   const void* data, size_t size);

// Decodes one ReadChunk. Usage: Parse(); read the fields; BeginData(); then
// ReadData() until data_length() bytes are consumed.
class ReadChunkDecoder {
 public:
  // `buffer` must outlive the decoder.
  explicit ReadChunkDecoder(grpc::ByteBuffer* buffer) : buffer_(buffer) {}

  absl::Status Parse();
  uint32_t range_index() const { return range_index_; }
  uint64_t offset() const { return offset_; }
  uint64_t checksum() const { return checksum_; }
  uint64_t data_length() const { return data_length_; }

  absl::Status BeginData();
  // Copies the next `n` data bytes to `dst`.
  absl::Status ReadData(void* dst, size_t n);

 private:
  void Open();

  grpc::ByteBuffer* buffer_;
  // Declared before input_: input_ must be destroyed first.
  std::optional<grpc::ProtoBufferReader> reader_;
  std::optional<google::protobuf::io::CodedInputStream> input_;
  uint32_t range_index_ = 0;
  uint64_t offset_ = 0;
  uint64_t checksum_ = 0;
  uint64_t data_length_ = 0;
  uint64_t data_read_ = 0;
};

}  // namespace ckptd::internal

#endif  // CKPTD_CLIENT_SRC_CHUNK_WIRE_H_
