// Uploading the blobs of a push over parallel UploadBlobs streams.
//
// The blobs are spread over PushOptions::streams streams, balanced by bytes
// (largest first, each to the least loaded stream); stream i uses channel
// i % channels. Each chunk is at most PushOptions::chunk_size bytes, carries
// digest, offset and XXH3-64 checksum; a blob's first chunk in a stream
// carries blob_size, a stream's first chunk run and version.
//
// Resume: when a stream fails with UNAVAILABLE, ABORTED, INTERNAL,
// DEADLINE_EXCEEDED or CANCELLED (a restarted server, a dropped
// connection), the blobs it had sent but not seen acknowledged are asked
// about with QueryUpload: complete ones are skipped, others continue at the
// durable offset. Up to PushOptions::max_attempts attempts per stream, with
// exponential backoff (100 ms doubling to 2 s; a retry goes out as soon as
// the channel reconnects).
//
// CUDA blobs are read through a pinned double buffer per stream, so the
// device-to-host copy of the next chunk overlaps sending the current one.
//
// Thread safety: UploadBlobs may be called concurrently; it starts and joins
// its own threads.
#ifndef CKPTD_CLIENT_SRC_BLOB_UPLOAD_H_
#define CKPTD_CLIENT_SRC_BLOB_UPLOAD_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "ckptd/client.h"
#include "client/src/connection.h"
#include "client/src/progress.h"
#include "client/src/push_plan.h"

namespace ckptd::internal {

// Uploads `blobs` (all of them; the caller has filtered out what the server
// has) for the pending `version` of `run`.
absl::Status UploadBlobs(Connection& connection, const std::string& run,
                         uint64_t version,
                         const std::vector<const PlannedBlob*>& blobs,
                         const PushOptions& options,
                         ProgressReporter* progress);

}  // namespace ckptd::internal

#endif  // CKPTD_CLIENT_SRC_BLOB_UPLOAD_H_
