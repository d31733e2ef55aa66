// proto/base/status.h: ErrnoToStatus (the code for each errno and the
// call-site context in the message) and the CKPTD_ status macros.
#include "proto/base/status.h"

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace ckptd {
namespace {

TEST(StatusTest, ErrnoToStatusCodes) {
  struct Case {
    const char* case_name;
    int errnum;
    absl::StatusCode code;
  };
  const Case cases[] = {
      {"ENOENT", ENOENT, absl::StatusCode::kNotFound},
      {"ENOTDIR", ENOTDIR, absl::StatusCode::kNotFound},
      {"EEXIST", EEXIST, absl::StatusCode::kAlreadyExists},
      {"ENOSPC", ENOSPC, absl::StatusCode::kResourceExhausted},
      {"EDQUOT", EDQUOT, absl::StatusCode::kResourceExhausted},
      {"EMFILE", EMFILE, absl::StatusCode::kResourceExhausted},
      {"ENFILE", ENFILE, absl::StatusCode::kResourceExhausted},
      {"ENOMEM", ENOMEM, absl::StatusCode::kResourceExhausted},
      {"EACCES", EACCES, absl::StatusCode::kPermissionDenied},
      {"EPERM", EPERM, absl::StatusCode::kPermissionDenied},
      {"EROFS", EROFS, absl::StatusCode::kPermissionDenied},
      {"EISDIR", EISDIR, absl::StatusCode::kInvalidArgument},
      {"EINVAL", EINVAL, absl::StatusCode::kInvalidArgument},
      {"ENAMETOOLONG", ENAMETOOLONG, absl::StatusCode::kInvalidArgument},
      {"EIO", EIO, absl::StatusCode::kDataLoss},
      {"EAGAIN", EAGAIN, absl::StatusCode::kUnavailable},
      {"EWOULDBLOCK", EWOULDBLOCK, absl::StatusCode::kUnavailable},
      {"EINTR", EINTR, absl::StatusCode::kUnavailable},
      {"EBADF", EBADF, absl::StatusCode::kInternal},
      {"EXDEV", EXDEV, absl::StatusCode::kInternal},
      {"EFAULT", EFAULT, absl::StatusCode::kInternal},
      {"not an errno", 100000, absl::StatusCode::kInternal},
  };
  for (const Case& c : cases) {
    const absl::Status st =
        ErrnoToStatus(c.errnum, "open blob tmp file /x/blob-1.tmp");
    EXPECT_EQ(st.code(), c.code) << c.case_name << ": " << st;
    // The call site's context, then the OS's words.
    EXPECT_EQ(st.message(), absl::StrCat("open blob tmp file /x/blob-1.tmp: ",
                                         std::strerror(c.errnum)))
        << c.case_name;
  }
}

TEST(StatusTest, ErrnoToStatusKeepsTheContextVerbatim) {
  const std::string contexts[] = {"", "fsync dir /data/blobs/ab",
                                  "rename a -> b: 'quoted'"};
  for (const std::string& context : contexts) {
    const absl::Status st = ErrnoToStatus(ENOSPC, context);
    EXPECT_EQ(st.message(), absl::StrCat(context, ": ", std::strerror(ENOSPC)))
        << "'" << context << "'";
  }
}

absl::Status Step(int* calls, absl::Status result) {
  ++*calls;
  return result;
}

absl::Status TwoSteps(int* calls, absl::Status first, absl::Status second) {
  CKPTD_RETURN_IF_ERROR(Step(calls, first));
  CKPTD_RETURN_IF_ERROR(Step(calls, second));
  return absl::OkStatus();
}

absl::StatusOr<int> Half(int n) {
  if (n % 2 != 0) return absl::InvalidArgumentError(absl::StrCat(n, " is odd"));
  return n / 2;
}

absl::StatusOr<int> Quarter(int n) {
  CKPTD_ASSIGN_OR_RETURN(int half, Half(n));
  CKPTD_ASSIGN_OR_RETURN(int quarter, Half(half));
  return quarter;
}

TEST(StatusTest, ReturnIfErrorStopsAtTheFirstError) {
  struct Case {
    const char* case_name;
    absl::Status first;
    absl::Status second;
    int calls;
    absl::StatusCode code;
  };
  const Case cases[] = {
      {"both ok", absl::OkStatus(), absl::OkStatus(), 2, absl::StatusCode::kOk},
      {"first fails", absl::NotFoundError("a"), absl::OkStatus(), 1,
       absl::StatusCode::kNotFound},
      {"second fails", absl::OkStatus(), absl::DataLossError("b"), 2,
       absl::StatusCode::kDataLoss},
  };
  for (const Case& c : cases) {
    int calls = 0;
    const absl::Status st = TwoSteps(&calls, c.first, c.second);
    EXPECT_EQ(st.code(), c.code) << c.case_name;
    EXPECT_EQ(calls, c.calls) << c.case_name;
  }
}

TEST(StatusTest, AssignOrReturn) {
  struct Case {
    const char* case_name;
    int n;
    absl::StatusOr<int> want;
  };
  const Case cases[] = {
      {"divisible", 12, 3},
      {"odd at once", 7, absl::InvalidArgumentError("7 is odd")},
      {"odd after halving", 6, absl::InvalidArgumentError("3 is odd")},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(Quarter(c.n), c.want) << c.case_name;
  }
}

}  // namespace
}  // namespace ckptd
