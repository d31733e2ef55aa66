// The web view's static files (server/web/), embedded into the binary at
// build time: cmake/EmbedWebAssets.cmake turns them into a generated
// web_assets.cc in the build directory (never committed).
//
// Thread safety: immutable data.
#ifndef CKPTD_SERVER_SERVICE_WEB_ASSETS_H_
#define CKPTD_SERVER_SERVICE_WEB_ASSETS_H_

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace ckptd::service {

struct WebAsset {
  absl::string_view name;  // the file name in server/web/, e.g. "app.js"
  absl::string_view body;
};

// Every file of server/web/, sorted by name.
absl::Span<const WebAsset> WebAssets();

}  // namespace ckptd::service

#endif  // CKPTD_SERVER_SERVICE_WEB_ASSETS_H_
