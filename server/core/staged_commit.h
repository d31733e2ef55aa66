// The co-located save's commit (server/service/local_data_plane.h): one
// shard whose tensor bytes are already in memory the daemon owns (a sealed
// memfd). This packs, hashes, deduplicates and stores them the way a TCP
// push of the same state would, then commits the shard.
//
// Layout rule (the client follows it, the daemon checks nothing of it but
// bounds; the constants are in proto/base/limits.h, shared with the client):
// each tensor entry's blob_offset is its place in the staged bytes.
// A tensor of kStagedPackThreshold bytes or more is one blob of its own.
// Smaller tensors, in entry order, share packed blobs of at most
// kStagedPackSize bytes: a tensor continues the current pack when it starts
// exactly at the pack's end rounded up to kStagedPackAlignment (zero-length
// ones: at the end) and the pack stays within kStagedPackSize; otherwise it
// begins a new pack. A client that lays small tensors out that way (as
// StagedLayout in client/src/local_plane.cc does) gets the packs, and so
// the digests, a TCP push of the same state gets when no two small tensors
// are equal; any other layout is accepted and only packs less well.
//
// Thread safety: the function is thread-safe (the repository is).
#ifndef CKPTD_SERVER_CORE_STAGED_COMMIT_H_
#define CKPTD_SERVER_CORE_STAGED_COMMIT_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "ckptd/v1/checkpoint.pb.h"
#include "proto/base/limits.h"
#include "server/core/repository.h"

namespace ckptd::core {

// OK when every tensor entry of `manifest` lies inside `staged_bytes` and
// names no digest; else INVALID_ARGUMENT naming the key path. Cheap: check
// it before acknowledging a staged save.
absl::Status CheckStagedLayout(const v1::ShardManifest& manifest,
                               uint64_t staged_bytes);

// Stores the tensors of `req` (blob_offset: offset in `staged`; blob_digest
// must be empty) as blobs of pending version req.version() of req.run(),
// then commits the shard. INVALID_ARGUMENT naming the key path for a tensor
// whose range is not inside `staged` or that already names a digest; other
// errors as FindMissingBlobs, StartBlobUpload and CommitShard give them.
// `may_use`: the runs whose blobs the caller may deduplicate against.
absl::StatusOr<v1::VersionInfo> CommitStagedShard(
    Repository& repo, absl::string_view staged, v1::CommitShardRequest req,
    const Actor& actor, const Repository::RunFilter& may_use);

}  // namespace ckptd::core

#endif  // CKPTD_SERVER_CORE_STAGED_COMMIT_H_
