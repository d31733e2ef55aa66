// StreamingRefWatch: the RefWatch of Client::OpenWatch over one WatchRef
// call. A reader thread blocks in Read() and queues each event; Next() waits
// on the queue with a timeout, so a caller can poll (for Ctrl-C) and another
// thread can Cancel() at any time (grpc::ClientContext::TryCancel is
// thread-safe and makes the pending Read() return).
//
// Thread safety: as RefWatch.
#ifndef CKPTD_CLIENT_SRC_REF_WATCH_H_
#define CKPTD_CLIENT_SRC_REF_WATCH_H_

#include <memory>
#include <string>

#include "ckptd/client.h"
#include "client/src/connection.h"

namespace ckptd::internal {

// Starts the call (and its reader thread) at once.
std::unique_ptr<RefWatch> StartRefWatch(Connection& connection,
                                        const std::string& run,
                                        const std::string& ref);

}  // namespace ckptd::internal

#endif  // CKPTD_CLIENT_SRC_REF_WATCH_H_
