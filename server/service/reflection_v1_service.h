// ReflectionV1Service: grpc.reflection.v1.ServerReflection over the
// process's generated descriptor pool — the same pool the v1alpha service of
// gRPC's reflection plugin answers from, so both versions give the same
// answers. Debian's gRPC 1.51 ships only v1alpha; tools that ask v1 first
// (grpcurl, grpc_cli, Postman) need this one.
//
// Each call is one bidirectional stream of request/answer pairs. A file
// answer carries the file and its transitive dependencies, each once, every
// time (as gRPC's v1alpha service does; the protocol would allow skipping
// files sent earlier on the stream, but then the versions would differ).
//
// Thread safety: the service and its streams are safe for concurrent use
// (the descriptor pool is immutable here; each stream has its own state).
#ifndef CKPTD_SERVER_SERVICE_REFLECTION_V1_SERVICE_H_
#define CKPTD_SERVER_SERVICE_REFLECTION_V1_SERVICE_H_

#include <string>
#include <vector>

#include "grpc/reflection/v1/reflection.grpc.pb.h"

namespace ckptd::service {

class ReflectionV1Service final
    : public grpc::reflection::v1::ServerReflection::CallbackService {
 public:
  // `services`: the full names list_services reports (those the server
  // registers, this one included).
  explicit ReflectionV1Service(std::vector<std::string> services);

  grpc::ServerBidiReactor<grpc::reflection::v1::ServerReflectionRequest,
                          grpc::reflection::v1::ServerReflectionResponse>*
  ServerReflectionInfo(grpc::CallbackServerContext* context) override;

  // The service names of a ckptd server: Checkpoint, health, both
  // reflection versions.
  static std::vector<std::string> CkptdServices();

 private:
  const std::vector<std::string> services_;
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_REFLECTION_V1_SERVICE_H_
