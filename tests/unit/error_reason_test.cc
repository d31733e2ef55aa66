// Typed error reasons (proto/base/error_reason.h): attaching and reading a
// reason, and the round trip through the gRPC status details that the
// server sends and the client decodes. Details the client cannot use must
// be ignored, never turned into a wrong reason.
#include "proto/base/error_reason.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace ckptd {
namespace {

std::vector<v1::ErrorReason> AllReasons() {
  std::vector<v1::ErrorReason> out;
  const auto* descriptor = v1::ErrorReason_descriptor();
  for (int i = 0; i < descriptor->value_count(); ++i) {
    const int n = descriptor->value(i)->number();
    if (n != v1::ERROR_REASON_UNSPECIFIED) {
      out.push_back(static_cast<v1::ErrorReason>(n));
    }
  }
  return out;
}

std::string ErrorInfoBytes(const std::string& reason,
                           const std::string& domain) {
  v1::ErrorInfo info;
  info.set_reason(reason);
  info.set_domain(domain);
  return info.SerializeAsString();
}

// An RpcStatus with the given (type_url, value) details.
std::string Details(
    const std::vector<std::pair<std::string, std::string>>& details) {
  v1::RpcStatus rpc;
  rpc.set_code(static_cast<int>(absl::StatusCode::kFailedPrecondition));
  rpc.set_message("from the wire");
  for (const auto& [type_url, value] : details) {
    v1::AnyDetail* d = rpc.add_details();
    d->set_type_url(type_url);
    d->set_value(value);
  }
  return rpc.SerializeAsString();
}

const std::string kUrl(kErrorInfoTypeUrl);
const std::string kDomain(kErrorDomain);

TEST(ErrorReasonTest, EveryReasonRoundTripsThroughTheStatusDetails) {
  const std::vector<v1::ErrorReason> reasons = AllReasons();
  ASSERT_GE(reasons.size(), 6u);
  const absl::StatusCode codes[] = {absl::StatusCode::kFailedPrecondition,
                                    absl::StatusCode::kResourceExhausted,
                                    absl::StatusCode::kUnavailable,
                                    absl::StatusCode::kInvalidArgument};
  for (v1::ErrorReason reason : reasons) {
    for (absl::StatusCode code : codes) {
      const std::string case_name = absl::StrCat(
          v1::ErrorReason_Name(reason), " / ", absl::StatusCodeToString(code));
      const absl::Status server_side =
          WithReason(absl::Status(code, "blob abc is missing"), reason);
      ASSERT_EQ(server_side.code(), code) << case_name;
      ASSERT_EQ(server_side.message(), "blob abc is missing") << case_name;
      ASSERT_EQ(ReasonOf(server_side), reason) << case_name;

      const std::string details = EncodeStatusDetails(server_side);
      ASSERT_FALSE(details.empty()) << case_name;
      // What gRPC tools see: a google.rpc.Status with one ErrorInfo.
      v1::RpcStatus rpc;
      ASSERT_TRUE(rpc.ParseFromString(details)) << case_name;
      EXPECT_EQ(rpc.code(), static_cast<int>(code)) << case_name;
      EXPECT_EQ(rpc.message(), "blob abc is missing") << case_name;
      ASSERT_EQ(rpc.details_size(), 1) << case_name;
      EXPECT_EQ(rpc.details(0).type_url(), kUrl) << case_name;
      v1::ErrorInfo info;
      ASSERT_TRUE(info.ParseFromString(rpc.details(0).value())) << case_name;
      EXPECT_EQ(info.domain(), "ckptd.v1") << case_name;
      EXPECT_EQ(info.reason(), v1::ErrorReason_Name(reason)) << case_name;

      // The client rebuilds the status from code, message and details.
      const absl::Status client_side = DecodeStatusDetails(
          absl::Status(code, "blob abc is missing"), details);
      EXPECT_EQ(client_side.code(), code) << case_name;
      EXPECT_EQ(client_side.message(), "blob abc is missing") << case_name;
      EXPECT_EQ(ReasonOf(client_side), reason) << case_name;
    }
  }
}

TEST(ErrorReasonTest, NoDetailsWithoutAReason) {
  EXPECT_EQ(EncodeStatusDetails(WithReason(absl::InternalError("x"),
                                           v1::ERROR_REASON_UNSPECIFIED)),
            "");
  absl::Status foreign = absl::InternalError("x");
  foreign.SetPayload(kErrorInfoTypeUrl, absl::Cord("not an ErrorInfo"));
  EXPECT_EQ(EncodeStatusDetails(foreign), "");
  EXPECT_NE(EncodeStatusDetails(
                WithReason(absl::InternalError("x"), v1::BLOB_MISSING)),
            "");
}

TEST(ErrorReasonTest, WithReasonAndReasonOf) {
  struct Case {
    const char* case_name;
    absl::Status status;
    v1::ErrorReason want;
    bool ok;
  };
  const Case cases[] = {
      {"OK stays OK", WithReason(absl::OkStatus(), v1::BLOB_MISSING),
       v1::ERROR_REASON_UNSPECIFIED, true},
      {"plain error has no reason", absl::InternalError("x"),
       v1::ERROR_REASON_UNSPECIFIED, false},
      {"attached", WithReason(absl::InternalError("x"), v1::SERVER_BUSY),
       v1::SERVER_BUSY, false},
      {"a later reason replaces the earlier",
       WithReason(WithReason(absl::UnavailableError("x"), v1::SERVER_BUSY),
                  v1::SERVER_DRAINING),
       v1::SERVER_DRAINING, false},
      {"an unspecified reason removes the earlier",
       WithReason(WithReason(absl::UnavailableError("x"), v1::SERVER_BUSY),
                  v1::ERROR_REASON_UNSPECIFIED),
       v1::ERROR_REASON_UNSPECIFIED, false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(c.status.ok(), c.ok) << c.case_name;
    EXPECT_EQ(ReasonOf(c.status), c.want) << c.case_name;
  }
  EXPECT_FALSE(WithReason(absl::OkStatus(), v1::BLOB_MISSING)
                   .GetPayload(kErrorInfoTypeUrl)
                   .has_value());
}

// A payload under our type URL that is not ours reads as no reason.
TEST(ErrorReasonTest, ReasonOfIgnoresForeignPayloads) {
  struct Case {
    const char* case_name;
    std::string payload;
  };
  const Case cases[] = {
      {"garbage", "\xff\xff\xff\xff"},
      {"other domain", ErrorInfoBytes("BLOB_MISSING", "googleapis.com")},
      {"no domain", ErrorInfoBytes("BLOB_MISSING", "")},
      {"unknown reason name", ErrorInfoBytes("DISK_ON_FIRE", kDomain)},
      {"reason by number, not name", ErrorInfoBytes("1", kDomain)},
      {"lower-case reason", ErrorInfoBytes("blob_missing", kDomain)},
  };
  for (const Case& c : cases) {
    absl::Status st = absl::FailedPreconditionError("x");
    st.SetPayload(kErrorInfoTypeUrl, absl::Cord(c.payload));
    EXPECT_EQ(ReasonOf(st), v1::ERROR_REASON_UNSPECIFIED) << c.case_name;
  }
}

TEST(ErrorReasonTest, PlainErrorsCarryNoDetails) {
  const absl::Status cases[] = {
      absl::OkStatus(),
      absl::InternalError("x"),
      absl::NotFoundError("run 'a' not found"),
  };
  for (const absl::Status& st : cases) {
    EXPECT_EQ(EncodeStatusDetails(st), "") << st;
  }
}

TEST(ErrorReasonTest, DecodeIgnoresWhatItCannotUse) {
  struct Case {
    const char* case_name;
    std::string details;
    v1::ErrorReason want;
  };
  const Case cases[] = {
      {"empty", "", v1::ERROR_REASON_UNSPECIFIED},
      {"garbage", "\xff\xff\xff\xff\xff", v1::ERROR_REASON_UNSPECIFIED},
      {"truncated",
       Details({{kUrl, ErrorInfoBytes("BLOB_MISSING", kDomain)}}).substr(0, 9),
       v1::ERROR_REASON_UNSPECIFIED},
      {"no details", Details({}), v1::ERROR_REASON_UNSPECIFIED},
      {"other domain",
       Details({{kUrl, ErrorInfoBytes("BLOB_MISSING", "googleapis.com")}}),
       v1::ERROR_REASON_UNSPECIFIED},
      {"unknown reason name",
       Details({{kUrl, ErrorInfoBytes("DISK_ON_FIRE", kDomain)}}),
       v1::ERROR_REASON_UNSPECIFIED},
      {"other detail type",
       Details({{"type.googleapis.com/google.rpc.RetryInfo",
                 ErrorInfoBytes("BLOB_MISSING", kDomain)}}),
       v1::ERROR_REASON_UNSPECIFIED},
      {"ErrorInfo value that does not parse", Details({{kUrl, "\xff\xff"}}),
       v1::ERROR_REASON_UNSPECIFIED},
      {"ours", Details({{kUrl, ErrorInfoBytes("SERVER_BUSY", kDomain)}}),
       v1::SERVER_BUSY},
      {"ours after another domain's",
       Details({{kUrl, ErrorInfoBytes("QUOTA", "googleapis.com")},
                {kUrl, ErrorInfoBytes("RESUME_POINT_LOST", kDomain)}}),
       v1::RESUME_POINT_LOST},
      {"ours after another detail type",
       Details({{"type.googleapis.com/google.rpc.DebugInfo", "x"},
                {kUrl, ErrorInfoBytes("REQUEST_TOO_LARGE", kDomain)}}),
       v1::REQUEST_TOO_LARGE},
      {"the first of ours wins",
       Details({{kUrl, ErrorInfoBytes("BLOB_MISSING", kDomain)},
                {kUrl, ErrorInfoBytes("SERVER_BUSY", kDomain)}}),
       v1::BLOB_MISSING},
  };
  for (const Case& c : cases) {
    const absl::Status st =
        DecodeStatusDetails(absl::AbortedError("the message"), c.details);
    // Code and message come from the call, never from the details.
    EXPECT_EQ(st.code(), absl::StatusCode::kAborted) << c.case_name;
    EXPECT_EQ(st.message(), "the message") << c.case_name;
    EXPECT_EQ(ReasonOf(st), c.want) << c.case_name;
    if (c.want == v1::ERROR_REASON_UNSPECIFIED) {
      EXPECT_FALSE(st.GetPayload(kErrorInfoTypeUrl).has_value())
          << c.case_name << ": an unusable payload was kept";
    }
  }
}

TEST(ErrorReasonTest, DecodeLeavesOkAlone) {
  const std::string details =
      Details({{kUrl, ErrorInfoBytes("BLOB_MISSING", kDomain)}});
  const absl::Status st = DecodeStatusDetails(absl::OkStatus(), details);
  EXPECT_TRUE(st.ok());
  EXPECT_EQ(ReasonOf(st), v1::ERROR_REASON_UNSPECIFIED);
}

}  // namespace
}  // namespace ckptd
