// ParseErrorInterceptorFactory: a request that does not parse as its
// method's message gets INVALID_ARGUMENT naming the method and the message
// type, instead of gRPC's bare UNIMPLEMENTED (the callback API answers a
// failed deserialisation as if the method did not exist). Only ckptd.v1
// methods are rewritten: every one is implemented, so an UNIMPLEMENTED with
// no message on one of them can only be that failure.
#ifndef CKPTD_SERVER_SERVICE_PARSE_ERROR_INTERCEPTOR_H_
#define CKPTD_SERVER_SERVICE_PARSE_ERROR_INTERCEPTOR_H_

#include <grpcpp/support/server_interceptor.h>

namespace ckptd::service {

class ParseErrorInterceptorFactory
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_PARSE_ERROR_INTERCEPTOR_H_
