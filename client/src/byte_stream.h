// ByteStream: one blocking client call of a streaming method whose messages
// are raw grpc::ByteBuffers, over gRPC's public generic API.
//
// The data streams (UploadBlobs, ReadBlobs) carry hand-framed messages
// (chunk_wire.h), so they cannot go through the generated stub. A ByteStream
// makes the call with grpc::GenericStub::PrepareCall on a CompletionQueue of
// its own and waits for each operation before returning, on the calling
// thread, as the synchronous API does: one operation (in particular one
// write) is in flight at a time, so a stream sends no faster than HTTP/2
// flow control lets it, and no gRPC callback thread is involved.
//
// A generic call is a bidi stream. A client-streaming or server-streaming
// method called this way looks the same on the wire and the server runs the
// same handler; the caller keeps to the method's shape:
//   client streaming: Write()..., WritesDone(), Read() the one response,
//                     Finish();
//   server streaming: WriteLast(request), Read() until false, Finish().
//
// Messages travel as reference-counted slices: Write() hands gRPC the
// caller's slices without copying them, Read() moves the received slices
// into the caller's buffer.
//
// Thread safety: one thread at a time drives a ByteStream. Meanwhile another
// thread may call TryCancel() on the ClientContext it runs in (a stall
// watchdog): the operation under way then fails, and Finish() reports
// CANCELLED.
#ifndef CKPTD_CLIENT_SRC_BYTE_STREAM_H_
#define CKPTD_CLIENT_SRC_BYTE_STREAM_H_

#include <memory>
#include <string>

#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/status.h"

namespace ckptd::internal {

class ByteStream {
 public:
  // Starts `method` ("/package.Service/Method") on `channel` in `ctx`, which
  // must outlive the ByteStream and not be used for another call. Blocks
  // until the call has started (its initial metadata is sent); when that
  // fails, every operation fails and Finish() says why.
  ByteStream(const std::shared_ptr<grpc::Channel>& channel,
             const std::string& method, grpc::ClientContext* ctx);
  // A call not finished yet is cancelled and finished.
  ~ByteStream();
  ByteStream(const ByteStream&) = delete;
  ByteStream& operator=(const ByteStream&) = delete;

  // Each returns false when the stream is broken; Finish() says why.
  bool Write(const grpc::ByteBuffer& message);
  // Write() and WritesDone() in one operation.
  bool WriteLast(const grpc::ByteBuffer& message);
  // Half-closes the call: no writes follow.
  bool WritesDone();

  // The next message from the server; false when there is none (the server
  // finished the call, or the stream broke).
  bool Read(grpc::ByteBuffer* message);

  // The status of the call: code, message and the error details
  // (grpc-status-details-bin). REQUIRES: no earlier Finish().
  grpc::Status Finish();

 private:
  enum class Op { kStart = 1, kWrite, kWritesDone, kRead, kFinish };

  static void* Tag(Op op);
  // Waits for the completion of `op`, the one operation in flight; its `ok`.
  bool Await(Op op);

  grpc::ClientContext* const ctx_;
  grpc::CompletionQueue cq_;
  // Null when gRPC could not create the call.
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call_;
  bool finished_ = false;
};

}  // namespace ckptd::internal

#endif  // CKPTD_CLIENT_SRC_BYTE_STREAM_H_
