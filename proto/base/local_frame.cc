#include "proto/base/local_frame.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "proto/base/error_reason.h"
#include "proto/base/status.h"

namespace ckptd {
namespace {

void StoreU32(uint32_t v, char* p) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>(v >> (8 * i));
}

uint32_t LoadU32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) {
    v |= static_cast<uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
  }
  return v;
}

absl::Status SendAll(int sock, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(sock, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) {
        return absl::UnavailableError("the co-located peer closed the socket");
      }
      return ErrnoToStatus(errno, "send on the co-located data socket");
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

// Reads exactly n bytes (n > 0), collecting any descriptors that arrive;
// with `fds` null none are accepted (the kernel discards them) and one
// sent is an error.
absl::Status RecvAll(int sock, char* p, size_t n, bool frame_start,
                     std::vector<UniqueFd>* fds) {
  size_t got = 0;
  while (got < n) {
    alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * 253)];
    iovec iov{p + got, n - got};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fds != nullptr) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
    }
    ssize_t r = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == ECONNRESET)
        r = 0;
      else
        return ErrnoToStatus(errno, "recv on the co-located data socket");
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr;
         c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        if (fds != nullptr) fds->emplace_back(fd);
      }
    }
    if (msg.msg_flags & MSG_CTRUNC) {
      return absl::InvalidArgumentError(
          fds == nullptr
              ? "a co-located request carries no file descriptors"
              : "a co-located frame carried more descriptors than allowed");
    }
    if (r == 0) {
      return absl::UnavailableError(
          frame_start && got == 0
              ? "the co-located peer closed the socket"
              : "the co-located peer closed the socket inside a frame "
                "(truncated)");
    }
    got += static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) reset(other.release());
  return *this;
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

absl::Status SendLocalFrame(int sock,
                            const google::protobuf::MessageLite& message,
                            absl::Span<const int> fds) {
  if (fds.size() > kMaxLocalFrameFds) {
    return absl::InvalidArgumentError(
        absl::StrCat("a co-located frame carries at most ", kMaxLocalFrameFds,
                     " descriptors, not ", fds.size()));
  }
  const size_t size = message.ByteSizeLong();
  if (size > kMaxLocalFrameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a co-located frame of ", size,
                     " bytes is over the limit of ", kMaxLocalFrameBytes));
  }
  std::string frame(4 + size, '\0');
  StoreU32(static_cast<uint32_t>(size), frame.data());
  if (!message.SerializeToArray(frame.data() + 4, static_cast<int>(size))) {
    return absl::InternalError("could not serialize a co-located frame");
  }
  if (fds.empty()) return SendAll(sock, frame.data(), frame.size());
  // The descriptors ride on the first byte; the rest follows as plain data.
  alignas(struct cmsghdr) char
      control[CMSG_SPACE(sizeof(int) * kMaxLocalFrameFds)] = {};
  iovec iov{frame.data(), 1};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  for (;;) {
    ssize_t w = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (w == 1) break;
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EPIPE || errno == ECONNRESET)) {
      return absl::UnavailableError("the co-located peer closed the socket");
    }
    return ErrnoToStatus(w < 0 ? errno : EIO,
                         "sendmsg on the co-located data socket");
  }
  return SendAll(sock, frame.data() + 1, frame.size() - 1);
}

absl::Status RecvLocalFrame(int sock, google::protobuf::MessageLite* message,
                            std::vector<UniqueFd>* fds) {
  if (fds != nullptr) fds->clear();
  char header[4];
  if (absl::Status st = RecvAll(sock, header, 4, true, fds); !st.ok()) {
    return st;
  }
  const uint32_t size = LoadU32(header);
  if (size > kMaxLocalFrameBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("a co-located frame of ", size,
                     " bytes is over the limit of ", kMaxLocalFrameBytes));
  }
  // Grown as bytes arrive: a length alone reserves nothing.
  std::string body;
  constexpr size_t kStep = 1 << 20;
  while (body.size() < size) {
    const size_t at = body.size();
    body.resize(std::min<size_t>(size, at + kStep));
    if (absl::Status st =
            RecvAll(sock, body.data() + at, body.size() - at, false, fds);
        !st.ok()) {
      return st;
    }
  }
  if (!message->ParseFromString(body)) {
    return absl::InvalidArgumentError(
        "a co-located frame does not parse as the expected message");
  }
  return absl::OkStatus();
}

v1::RpcStatus ToRpcStatus(const absl::Status& status) {
  v1::RpcStatus rpc;
  rpc.set_code(static_cast<int32_t>(status.code()));
  rpc.set_message(std::string(status.message()));
  if (auto payload = status.GetPayload(kErrorInfoTypeUrl)) {
    v1::AnyDetail* detail = rpc.add_details();
    detail->set_type_url(std::string(kErrorInfoTypeUrl));
    detail->set_value(std::string(*payload));
  }
  return rpc;
}

absl::Status FromRpcStatus(const v1::RpcStatus& rpc) {
  if (rpc.code() == 0) return absl::OkStatus();
  const auto code = rpc.code() > 0 && rpc.code() <= 16
                        ? static_cast<absl::StatusCode>(rpc.code())
                        : absl::StatusCode::kUnknown;
  absl::Status status(code, rpc.message());
  for (const v1::AnyDetail& detail : rpc.details()) {
    if (detail.type_url() == kErrorInfoTypeUrl) {
      status.SetPayload(kErrorInfoTypeUrl, absl::Cord(detail.value()));
    }
  }
  return status;
}

}  // namespace ckptd
