// Reading tensor bytes of a version into caller buffers (ReadBlobs).
//
// Destinations are grouped by blob; within a blob, destinations closer than
// kMaxRangeGap are read as one range (a packed blob is usually one range),
// and ranges longer than a piece size are split so that every stream gets
// work. The ranges are spread over PullOptions::streams parallel ReadBlobs
// calls, balanced by bytes. Each received chunk is copied straight from the
// gRPC buffer into its destination when one host destination covers it,
// otherwise through a per-stream scratch buffer (pinned and double-buffered
// with cudaMemcpyAsync for CUDA destinations); the XXH3-64 checksum of every
// chunk is verified (DATA_LOSS on mismatch). A stream that fails with a
// retryable code resumes where each range stopped.
//
// Thread safety: ReadTensorBytes may be called concurrently; it starts and
// joins its own threads.
#ifndef CKPTD_CLIENT_SRC_TENSOR_READ_H_
#define CKPTD_CLIENT_SRC_TENSOR_READ_H_

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "ckptd/client.h"
#include "client/src/connection.h"

namespace ckptd::internal {

absl::Status ReadTensorBytes(Connection& connection,
                             const VersionManifest& version,
                             absl::Span<const TensorDestination> dests,
                             const PullOptions& options);

}  // namespace ckptd::internal

#endif  // CKPTD_CLIENT_SRC_TENSOR_READ_H_
