#include "server/service/parse_error_interceptor.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "google/protobuf/descriptor.h"

namespace ckptd::service {
namespace {

using grpc::experimental::InterceptionHookPoints;

constexpr absl::string_view kServicePrefix = "/ckptd.v1.Checkpoint/";

class ParseErrorInterceptor : public grpc::experimental::Interceptor {
 public:
  ParseErrorInterceptor(std::string method, std::string input_type)
      : method_(std::move(method)), input_type_(std::move(input_type)) {}

  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status sent = methods->GetSendStatus();
      if (sent.error_code() == grpc::StatusCode::UNIMPLEMENTED &&
          sent.error_message().empty()) {
        methods->ModifySendStatus(grpc::Status(
            grpc::StatusCode::INVALID_ARGUMENT,
            absl::StrCat("a request message to ", method_,
                         " does not parse as ", input_type_,
                         "; send the message proto/ckptd/v1/checkpoint.proto "
                         "defines for it")));
      }
    }
    methods->Proceed();
  }

 private:
  const std::string method_;
  const std::string input_type_;
};

}  // namespace

grpc::experimental::Interceptor*
ParseErrorInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  absl::string_view method = info->method() ? info->method() : "";
  if (!absl::ConsumePrefix(&method, kServicePrefix)) return nullptr;
  const google::protobuf::ServiceDescriptor* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
          "ckptd.v1.Checkpoint");
  const google::protobuf::MethodDescriptor* m =
      service == nullptr ? nullptr
                         : service->FindMethodByName(std::string(method));
  if (m == nullptr) return nullptr;  // unknown: gRPC's UNIMPLEMENTED is right
  return new ParseErrorInterceptor(std::string(method),
                                   m->input_type()->full_name());
}

}  // namespace ckptd::service
