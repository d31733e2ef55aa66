#include "server/service/reflection_v1_service.h"

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "ckptd/v1/checkpoint.grpc.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"

namespace ckptd::service {
namespace {

using google::protobuf::DescriptorPool;
using google::protobuf::FileDescriptor;
using grpc::reflection::v1::ServerReflectionRequest;
using grpc::reflection::v1::ServerReflectionResponse;

void SetError(grpc::StatusCode code, const std::string& message,
              ServerReflectionResponse* response) {
  response->mutable_error_response()->set_error_code(code);
  response->mutable_error_response()->set_error_message(message);
}

// Answers one request. Pure descriptor lookups: nothing here blocks.
class ReflectionAnswerer {
 public:
  explicit ReflectionAnswerer(const std::vector<std::string>* services)
      : services_(services), pool_(DescriptorPool::generated_pool()) {}

  void Answer(const ServerReflectionRequest& request,
              ServerReflectionResponse* response) {
    response->set_valid_host(request.host());
    *response->mutable_original_request() = request;
    switch (request.message_request_case()) {
      case ServerReflectionRequest::kFileByFilename:
        AddFile(pool_->FindFileByName(request.file_by_filename()), "File",
                response);
        return;
      case ServerReflectionRequest::kFileContainingSymbol:
        AddFile(
            pool_->FindFileContainingSymbol(request.file_containing_symbol()),
            "Symbol", response);
        return;
      case ServerReflectionRequest::kFileContainingExtension: {
        const auto& ext = request.file_containing_extension();
        const auto* type = pool_->FindMessageTypeByName(ext.containing_type());
        if (type == nullptr) {
          SetError(grpc::StatusCode::NOT_FOUND, "Type not found.", response);
          return;
        }
        const auto* field =
            pool_->FindExtensionByNumber(type, ext.extension_number());
        if (field == nullptr) {
          SetError(grpc::StatusCode::NOT_FOUND, "Extension not found.",
                   response);
          return;
        }
        AddFile(field->file(), "Extension", response);
        return;
      }
      case ServerReflectionRequest::kAllExtensionNumbersOfType: {
        const auto* type = pool_->FindMessageTypeByName(
            request.all_extension_numbers_of_type());
        if (type == nullptr) {
          SetError(grpc::StatusCode::NOT_FOUND, "Type not found.", response);
          return;
        }
        std::vector<const google::protobuf::FieldDescriptor*> extensions;
        pool_->FindAllExtensions(type, &extensions);
        auto* out = response->mutable_all_extension_numbers_response();
        out->set_base_type_name(type->full_name());
        for (const auto* e : extensions) out->add_extension_number(e->number());
        return;
      }
      case ServerReflectionRequest::kListServices: {
        auto* out = response->mutable_list_services_response();
        for (const std::string& name : *services_) {
          out->add_service()->set_name(name);
        }
        return;
      }
      case ServerReflectionRequest::MESSAGE_REQUEST_NOT_SET:
        break;
    }
    SetError(grpc::StatusCode::UNIMPLEMENTED, "The request is not supported.",
             response);
  }

 private:
  // `file` first, then its transitive dependencies, each once per answer
  // (as gRPC's v1alpha service does).
  void AddFile(const FileDescriptor* file, const char* what,
               ServerReflectionResponse* response) {
    if (file == nullptr) {
      SetError(grpc::StatusCode::NOT_FOUND, std::string(what) + " not found.",
               response);
      return;
    }
    sent_.clear();
    AddFileTree(file, response->mutable_file_descriptor_response());
  }

  void AddFileTree(const FileDescriptor* file,
                   grpc::reflection::v1::FileDescriptorResponse* out) {
    if (!sent_.insert(file->name()).second) return;
    google::protobuf::FileDescriptorProto proto;
    file->CopyTo(&proto);
    proto.SerializeToString(out->add_file_descriptor_proto());
    for (int i = 0; i < file->dependency_count(); ++i) {
      AddFileTree(file->dependency(i), out);
    }
  }

  const std::vector<std::string>* services_;
  const DescriptorPool* pool_;
  absl::flat_hash_set<std::string> sent_;  // files in the current answer
};

// One ServerReflectionInfo stream: read a request, write its answer, repeat
// until the client half-closes.
class ReflectionReactor final
    : public grpc::ServerBidiReactor<ServerReflectionRequest,
                                     ServerReflectionResponse> {
 public:
  explicit ReflectionReactor(const std::vector<std::string>* services)
      : answerer_(services) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // half-close (or cancellation): the stream is over
      Finish(grpc::Status::OK);
      return;
    }
    response_.Clear();
    answerer_.Answer(request_, &response_);
    StartWrite(&response_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  ReflectionAnswerer answerer_;
  ServerReflectionRequest request_;
  ServerReflectionResponse response_;
};

}  // namespace

ReflectionV1Service::ReflectionV1Service(std::vector<std::string> services)
    : services_(std::move(services)) {}

grpc::ServerBidiReactor<ServerReflectionRequest, ServerReflectionResponse>*
ReflectionV1Service::ServerReflectionInfo(
    grpc::CallbackServerContext* /*context*/) {
  return new ReflectionReactor(&services_);
}

std::vector<std::string> ReflectionV1Service::CkptdServices() {
  return {v1::Checkpoint::service_full_name(), "grpc.health.v1.Health",
          "grpc.reflection.v1alpha.ServerReflection",
          grpc::reflection::v1::ServerReflection::service_full_name()};
}

}  // namespace ckptd::service
