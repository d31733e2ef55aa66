#include "client/src/byte_stream.h"

#include <cassert>
#include <cstdint>

namespace ckptd::internal {

ByteStream::ByteStream(const std::shared_ptr<grpc::Channel>& channel,
                       const std::string& method, grpc::ClientContext* ctx)
    : ctx_(ctx) {
  grpc::GenericStub stub(channel);
  call_ = stub.PrepareCall(ctx_, method, &cq_);
  if (call_ == nullptr) return;
  call_->StartCall(Tag(Op::kStart));
  Await(Op::kStart);
}

ByteStream::~ByteStream() {
  if (!finished_) {
    ctx_->TryCancel();
    Finish();
  }
  cq_.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq_.Next(&tag, &ok)) {
  }
}

bool ByteStream::Write(const grpc::ByteBuffer& message) {
  if (call_ == nullptr) return false;
  call_->Write(message, Tag(Op::kWrite));
  return Await(Op::kWrite);
}

bool ByteStream::WriteLast(const grpc::ByteBuffer& message) {
  if (call_ == nullptr) return false;
  call_->WriteLast(message, grpc::WriteOptions(), Tag(Op::kWrite));
  return Await(Op::kWrite);
}

bool ByteStream::WritesDone() {
  if (call_ == nullptr) return false;
  call_->WritesDone(Tag(Op::kWritesDone));
  return Await(Op::kWritesDone);
}

bool ByteStream::Read(grpc::ByteBuffer* message) {
  if (call_ == nullptr) return false;
  call_->Read(message, Tag(Op::kRead));
  return Await(Op::kRead);
}

grpc::Status ByteStream::Finish() {
  assert(!finished_);
  finished_ = true;
  if (call_ == nullptr) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        "gRPC could not create the call");
  }
  grpc::Status status;
  call_->Finish(&status, Tag(Op::kFinish));
  Await(Op::kFinish);
  return status;
}

void* ByteStream::Tag(Op op) {
  return reinterpret_cast<void*>(static_cast<intptr_t>(op));
}

bool ByteStream::Await(Op op) {
  void* tag = nullptr;
  bool ok = false;
  // The queue is shut down only in the destructor, so Next() returns an
  // event; with one operation in flight, it is that operation's.
  const bool got = cq_.Next(&tag, &ok);
  assert(got && tag == Tag(op));
  (void)got;
  (void)op;
  return ok;
}

}  // namespace ckptd::internal
