// The client side of the co-located data plane (proto/ckptd/v1/
// checkpoint.proto, "Co-located data plane"; the daemon's side is
// server/service/local_data_plane.h), used by Client::StagePush and
// Client::MapBlobs when the address is unix:PATH.
//
// Staged layout (what server/core/staged_commit.h packs back into blobs):
// tensors under kStagedPackThreshold first, in entry order, in packs of at
// most kStagedPackSize at 64-byte aligned offsets; then the larger tensors,
// each at a 4 KiB aligned offset.
//
// Thread safety: the functions are thread-safe; a StagedPush is used by
// one thread at a time.
#ifndef CKPTD_CLIENT_SRC_LOCAL_PLANE_H_
#define CKPTD_CLIENT_SRC_LOCAL_PLANE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "ckptd/client.h"

namespace ckptd::internal {

// "PATH.data" for an address "unix:PATH"; "" for any other address.
std::string LocalDataSocketOf(const std::string& address);

// Where each tensor entry of `request` goes in the staged memory (entry
// index -> offset; -1 for entries that are not tensors), and the size.
struct StagedLayout {
  std::vector<int64_t> offsets;
  uint64_t bytes = 0;
};
StagedLayout LayOutStaged(const PushRequest& request);

// Stages and commits `request` through the data socket `socket_path`:
// returns once the daemon holds a sealed copy (StagedPush::version() is the
// pending version). UNIMPLEMENTED when nothing serves the data socket;
// FAILED_PRECONDITION for CUDA tensors (the caller copies them to the host).
absl::StatusOr<std::unique_ptr<StagedPush>> StageLocalPush(
    const std::string& socket_path, const std::string& token,
    const v1::BeginVersionRequest& begin, const PushRequest& request);

// Maps `digests` of run@version read-only copy-on-write and verifies each
// against its digest. UNIMPLEMENTED when nothing serves the data socket or
// the daemon keeps no blob files; DATA_LOSS when a mapped blob does not
// match its digest.
absl::StatusOr<std::vector<std::shared_ptr<MappedBlob>>> MapLocalBlobs(
    const std::string& socket_path, const std::string& token,
    const std::string& run, uint64_t version,
    const std::vector<std::string>& digests);

}  // namespace ckptd::internal

#endif  // CKPTD_CLIENT_SRC_LOCAL_PLANE_H_
