// The address flags of ckptd's HTTP servers (--metrics_listen,
// --http_listen): both are civetweb (prometheus-cpp's exposer runs on it
// too), which takes "IPV4:PORT". One parser, so both flags accept and
// refuse the same values with the same words.
#ifndef CKPTD_SERVER_SERVICE_HTTP_LISTEN_H_
#define CKPTD_SERVER_SERVICE_HTTP_LISTEN_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ckptd::service {

// `listen`, the value of --`flag`, checked and put the way civetweb takes
// it: "IPV4:PORT" with a port in 0-65535 (localhost becomes 127.0.0.1,
// leading zeros of the port go). An IPv6 "[ADDR]:PORT" passes unchanged
// only if civetweb was built with IPv6 (Debian's is not).
// INVALID_ARGUMENT otherwise, naming the flag, the value (at most 200
// bytes, escaped) and the fix, with 127.0.0.1:`example_port` as example.
absl::StatusOr<std::string> ParseHttpListen(absl::string_view flag,
                                            absl::string_view listen,
                                            int example_port);

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_HTTP_LISTEN_H_
