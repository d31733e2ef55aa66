// WebView: ckptd's read-only web view, served over HTTP/1.1 (civetweb) on
// --http_listen. It shows the runs; a run's versions (step, epoch, metrics,
// aliases, size, uploaded bytes), a chart of each metric's history with
// `best` marked, and the run's alias and audit history; a version's
// environment and tensor list.
//
// What it serves:
//   /, /runs/RUN, /runs/RUN/versions/REF   the page (index.html; app.js
//                                          renders it from the JSON API)
//   /assets/NAME                           app.js, app.css (embedded in the
//                                          binary, web_assets.h)
//   /api/v1/...                            read-only JSON, listed in
//                                          web_view.cc (kRoutes)
// Only GET and HEAD; everything else is 405. Every JSON answer is bounded
// (page_size/page_token, limit, tensor_offset/tensor_limit) and every query
// parameter is validated: a bad or unknown one is 400 with a JSON error
// `{"error": {"code", "http_status", "message"}}` that names it and the fix.
//
// Identities are the API's: the JSON endpoints ask AccessPolicy (access.h)
// with the request's `Authorization: Bearer TOKEN` header, under the same
// method rules as the gRPC calls (ListRuns lists only the runs the caller
// may read; a run it may not read is 403 PERMISSION_DENIED; no or an
// unknown token is 401 UNAUTHENTICATED). The page and its assets hold no
// data and are served to anyone; the page asks for a token when the API
// answers 401 and keeps it in sessionStorage. Without an auth file the
// view, like the gRPC port, is loopback-only (unless --insecure_no_auth)
// and answers only requests whose Host is a loopback name, so a web page
// elsewhere cannot read it through DNS rebinding. With an auth file it is
// loopback-only too: it speaks plain HTTP, and tokens must not cross a
// network in clear text (put a TLS-terminating proxy in front).
//
// Every value that came from users (run names, labels, metric names, key
// paths) is data in JSON; the page puts it into the DOM as text only
// (textContent), and the Content-Security-Policy allows only ckptd's own
// scripts and styles.
//
// Thread safety: handlers run on civetweb's worker threads and only call
// thread-safe Repository queries. Start/destroy from one thread.
#ifndef CKPTD_SERVER_SERVICE_WEB_VIEW_H_
#define CKPTD_SERVER_SERVICE_WEB_VIEW_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/core/repository.h"
#include "server/service/access.h"

struct mg_context;
struct mg_connection;

namespace ckptd::service {

// Worker threads of the web view: concurrent requests it serves.
inline constexpr int kWebViewThreads = 4;

struct WebViewOptions {
  // HOST:PORT; HOST an IPv4 address or `localhost`. Port 0 picks one.
  std::string listen;
  // Whether the access policy authenticates callers (--auth_file).
  bool authentication = false;
  // --insecure_no_auth: without authentication, serve off loopback too.
  bool insecure_no_auth = false;
};

// Checks `listen` as --http_listen and returns civetweb's form of it.
absl::StatusOr<std::string> ParseHttpListenAddress(absl::string_view listen);
// The address and the security rule (see above), before anything starts.
absl::Status CheckWebViewOptions(const WebViewOptions& options);

class WebView {
 public:
  // `repo` and `access` are not owned and must outlive the view.
  static absl::StatusOr<std::unique_ptr<WebView>> Start(
      const WebViewOptions& options, core::Repository* repo,
      const AccessPolicy* access);
  // Stops serving; waits for requests in progress.
  ~WebView();
  WebView(const WebView&) = delete;
  WebView& operator=(const WebView&) = delete;

  int port() const { return port_; }

  // Internal: civetweb's request callback.
  int Handle(mg_connection* conn);

 private:
  WebView(const WebViewOptions& options, core::Repository* repo,
          const AccessPolicy* access);

  const WebViewOptions options_;
  core::Repository* const repo_;
  const AccessPolicy* const access_;
  // Requests must name a loopback Host (no authentication, loopback).
  bool loopback_hosts_only_ = false;
  mg_context* ctx_ = nullptr;
  int port_ = 0;
};

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_WEB_VIEW_H_
