#include "server/service/http_listen.h"

#include <arpa/inet.h>
#include <civetweb.h>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ckptd::service {

absl::StatusOr<std::string> ParseHttpListen(absl::string_view flag,
                                            absl::string_view listen,
                                            int example_port) {
  const auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, " '", absl::CHexEscape(listen.substr(0, 200)), "' ", why,
        "; give IPV4:PORT with a port in 0-65535, e.g. 127.0.0.1:",
        example_port, " (port 0 picks a free one)"));
  };
  const size_t colon = listen.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return bad("is not HOST:PORT");
  }
  const absl::string_view host = listen.substr(0, colon);
  const absl::string_view port_text = listen.substr(colon + 1);
  int port = -1;
  if (port_text.empty() || port_text.size() > 5 ||
      port_text.find_first_not_of("0123456789") != absl::string_view::npos ||
      !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return bad("does not end in a port in 0-65535");
  }
  if (absl::StartsWith(host, "[")) {
    if (mg_check_feature(MG_FEATURES_IPV6) == 0) {
      return bad(
          "is an IPv6 address, which this build of civetweb cannot serve; "
          "give an IPv4 address");
    }
    return std::string(listen);
  }
  if (host == "localhost") return absl::StrCat("127.0.0.1:", port);
  in_addr addr{};
  if (::inet_pton(AF_INET, std::string(host).c_str(), &addr) != 1) {
    return bad("does not start with an IPv4 address or localhost");
  }
  return absl::StrCat(host, ":", port);
}

}  // namespace ckptd::service
