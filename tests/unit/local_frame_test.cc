// The frames of the co-located data plane (proto/base/local_frame.h) over a
// real Unix socket pair: messages with descriptors, a receiver that accepts
// none, frames over the limit, cut short or garbled, and statuses with
// their reason.
#include "proto/base/local_frame.h"

#include <dirent.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/base/error_reason.h"

namespace ckptd {
namespace {

using ::testing::HasSubstr;

struct Pair {
  Pair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    a.reset(fds[0]);
    b.reset(fds[1]);
  }
  UniqueFd a, b;
};

int OpenFdCount() {
  int n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  while (::readdir(d) != nullptr) ++n;
  ::closedir(d);
  return n;
}

v1::LocalRequest Stage(uint64_t bytes) {
  v1::LocalRequest req;
  req.set_token("t");
  req.mutable_stage()->set_run("run");
  req.mutable_stage()->set_bytes(bytes);
  return req;
}

TEST(LocalFrameTest, MessagesAndDescriptorsArrive) {
  Pair p;
  UniqueFd memfd(::memfd_create("x", MFD_CLOEXEC));
  ASSERT_EQ(::write(memfd.get(), "hello", 5), 5);
  const int fds[] = {memfd.get(), memfd.get()};
  ASSERT_TRUE(SendLocalFrame(p.a.get(), Stage(42), fds).ok());
  ASSERT_TRUE(SendLocalFrame(p.a.get(), Stage(43)).ok());
  v1::LocalRequest got;
  std::vector<UniqueFd> received;
  ASSERT_TRUE(RecvLocalFrame(p.b.get(), &got, &received).ok());
  EXPECT_EQ(got.stage().bytes(), 42u);
  ASSERT_EQ(received.size(), 2u);
  char buf[5];
  ASSERT_EQ(::pread(received[1].get(), buf, 5, 0), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
  ASSERT_TRUE(RecvLocalFrame(p.b.get(), &got, &received).ok());
  EXPECT_EQ(got.stage().bytes(), 43u);
  EXPECT_TRUE(received.empty());
}

TEST(LocalFrameTest, LargeFramesArriveWhole) {
  Pair p;
  v1::LocalRequest big;
  big.mutable_map()->set_run("run");
  for (int i = 0; i < 200000; ++i)
    big.mutable_map()->add_digests(std::string(16, 'a' + i % 26));
  std::thread sender([&] { EXPECT_TRUE(SendLocalFrame(p.a.get(), big).ok()); });
  v1::LocalRequest got;
  std::vector<UniqueFd> fds;
  ASSERT_TRUE(RecvLocalFrame(p.b.get(), &got, &fds).ok());
  sender.join();
  EXPECT_EQ(got.map().digests_size(), 200000);
  EXPECT_EQ(got.SerializeAsString(), big.SerializeAsString());
}

TEST(LocalFrameTest, AReceiverThatTakesNoDescriptorsInstallsNone) {
  Pair p;
  UniqueFd memfd(::memfd_create("x", MFD_CLOEXEC));
  std::vector<int> many(kMaxLocalFrameFds, memfd.get());
  ASSERT_TRUE(SendLocalFrame(p.a.get(), Stage(1), many).ok());
  const int before = OpenFdCount();
  v1::LocalRequest got;
  absl::Status st = RecvLocalFrame(p.b.get(), &got, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("carries no file descriptors"));
  EXPECT_EQ(OpenFdCount(), before);
  // More than a frame may carry is refused by the sender.
  many.push_back(memfd.get());
  EXPECT_EQ(SendLocalFrame(p.a.get(), Stage(1), many).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(LocalFrameTest, BadFramesAreErrors) {
  v1::LocalRequest got;
  std::vector<UniqueFd> fds;
  {
    Pair p;  // closed at a frame boundary
    p.a.reset();
    absl::Status st = RecvLocalFrame(p.b.get(), &got, &fds);
    EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(std::string(st.message()), HasSubstr("closed the socket"));
  }
  {
    Pair p;  // cut short inside a frame
    const char frame[6] = {100, 0, 0, 0, 1, 2};
    ASSERT_EQ(::write(p.a.get(), frame, 6), 6);
    p.a.reset();
    absl::Status st = RecvLocalFrame(p.b.get(), &got, &fds);
    EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(std::string(st.message()), HasSubstr("truncated"));
  }
  {
    Pair p;  // over the limit: refused before anything is read or reserved
    const uint32_t n = kMaxLocalFrameBytes + 1;
    const char frame[4] = {static_cast<char>(n), static_cast<char>(n >> 8),
                           static_cast<char>(n >> 16),
                           static_cast<char>(n >> 24)};
    ASSERT_EQ(::write(p.a.get(), frame, 4), 4);
    absl::Status st = RecvLocalFrame(p.b.get(), &got, &fds);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(st.message()), HasSubstr("over the limit"));
  }
  {
    Pair p;  // does not parse
    const char frame[7] = {3, 0, 0, 0, '\xff', '\xff', '\xff'};
    ASSERT_EQ(::write(p.a.get(), frame, 7), 7);
    EXPECT_EQ(RecvLocalFrame(p.b.get(), &got, &fds).code(),
              absl::StatusCode::kInvalidArgument);
  }
  {
    Pair p;  // the peer is gone: no SIGPIPE, UNAVAILABLE
    p.b.reset();
    EXPECT_EQ(SendLocalFrame(p.a.get(), Stage(1)).code(),
              absl::StatusCode::kUnavailable);
  }
}

TEST(LocalFrameTest, StatusesKeepCodeMessageAndReason) {
  const absl::Status st = WithReason(absl::ResourceExhaustedError("too big"),
                                     v1::STAGED_MEMORY_LIMIT);
  const absl::Status back = FromRpcStatus(ToRpcStatus(st));
  EXPECT_EQ(back.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(back.message(), "too big");
  EXPECT_EQ(ReasonOf(back), v1::STAGED_MEMORY_LIMIT);
  EXPECT_TRUE(FromRpcStatus(ToRpcStatus(absl::OkStatus())).ok());
  v1::RpcStatus odd;
  odd.set_code(99);
  odd.set_message("?");
  EXPECT_EQ(FromRpcStatus(odd).code(), absl::StatusCode::kUnknown);
}

}  // namespace
}  // namespace ckptd
