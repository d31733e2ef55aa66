// Frames of the co-located data plane (proto/ckptd/v1/checkpoint.proto,
// "Co-located data plane"): a u32 little-endian length, then that many bytes
// of one message; file descriptors travel as SCM_RIGHTS with the frame's
// first byte. Shared by the daemon and the C++ client.
//
// Thread safety: the functions are thread-safe; one socket is read by one
// thread at a time and written by one thread at a time.
#ifndef CKPTD_PROTO_BASE_LOCAL_FRAME_H_
#define CKPTD_PROTO_BASE_LOCAL_FRAME_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "ckptd/v1/checkpoint.pb.h"
#include "google/protobuf/message_lite.h"

namespace ckptd {

// Frames larger than this are refused, on both sides.
inline constexpr uint32_t kMaxLocalFrameBytes = 64 << 20;
// Descriptors one frame may carry (the kernel's SCM_MAX_FD is 253).
inline constexpr size_t kMaxLocalFrameFds = 250;

// An owned file descriptor, closed on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// Writes one frame of `message` with `fds` attached (at most
// kMaxLocalFrameFds). Never raises SIGPIPE: a closed peer is UNAVAILABLE.
absl::Status SendLocalFrame(int sock,
                            const google::protobuf::MessageLite& message,
                            absl::Span<const int> fds = {});

// Reads one frame into `message`, and its descriptors into `fds` (replacing
// what was there); with `fds` null descriptors are refused without ever
// being installed (INVALID_ARGUMENT). UNAVAILABLE when the peer closed the
// connection (at a frame boundary: "closed"; inside one: "truncated");
// INVALID_ARGUMENT for a frame over kMaxLocalFrameBytes or one that does
// not parse; DEADLINE_EXCEEDED when the socket's SO_RCVTIMEO passed. The
// buffer grows as bytes arrive, so a declared length reserves nothing.
absl::Status RecvLocalFrame(int sock, google::protobuf::MessageLite* message,
                            std::vector<UniqueFd>* fds);

// The status as a frame carries it, and back (the ErrorInfo reason, if
// any, travels in `details`).
v1::RpcStatus ToRpcStatus(const absl::Status& status);
absl::Status FromRpcStatus(const v1::RpcStatus& status);

}  // namespace ckptd

#endif  // CKPTD_PROTO_BASE_LOCAL_FRAME_H_
