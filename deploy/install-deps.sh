#!/usr/bin/env bash
# Installs every Debian 12 package that building and testing ckptd needs.
# Idempotent and non-interactive; fetches nothing but Debian packages.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libspdlog-dev librocksdb-dev libxxhash-dev
  libgtest-dev libgmock-dev libcli11-dev nlohmann-json3-dev libssl-dev openssl
  # Prometheus metrics (--metrics_listen): prometheus-cpp core and pull.
  prometheus-cpp-dev
  # The web view: its HTTP server, and the browser its tests drive.
  libcivetweb-dev chromium
  pybind11-dev python3-dev python3-torch python3-numpy python3-pytest
  # tests/deploy: systemd-analyze and systemd-sysusers check the unit, the
  # YAML parser reads the k8s manifests.
  systemd python3-yaml
  # The S3 blob store's HTTP client (libcurl's SigV4), and the throwaway
  # Ceph cluster its tests run against (tests/s3/ceph-cluster).
  libcurl4-openssl-dev curl ceph-mon ceph-osd radosgw ceph-common
  # The `clang` preset (lock annotations checked by -Wthread-safety), the
  # format check (.ci/check-format) and clang's sanitizer runtimes.
  clang-16 clang-format-16 libclang-rt-16-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
