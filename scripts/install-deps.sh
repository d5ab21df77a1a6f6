#!/usr/bin/env bash
# Installs the Debian packages Cairn needs to build, test and benchmark.
# Idempotent: only missing packages are installed. Called by `make build/test/run`.
# `install-deps.sh --bench` also installs the benchmark-only peers and tools (BENCH_PKGS);
# the benchmark scripts that need them call it so (the test path never does).
set -euo pipefail

BUILD_PKGS=(
  build-essential cmake ninja-build pkg-config ccache
  liburing-dev librocksdb-dev libboost-dev libboost-program-options-dev
  libisal-dev libprotobuf-dev protobuf-compiler libssl-dev libzstd-dev
  libcli11-dev libgtest-dev libgmock-dev libbenchmark-dev
)
TEST_PKGS=(
  qemu-utils nbdkit libnbd-bin python3-libnbd fio python3 curl jq
  awscli python3-boto3 s3cmd rclone
  etcd-server etcd-client
)
# Benchmarks only: restic (peer of `cairn backup`), the zstd CLI (compression bound),
# nodejs and npm (s3rver, the second S3 service, comes from the npm registry; a nodejs
# that brings its own npm, as NodeSource's does, conflicts with Debian's npm package).
BENCH_PKGS=(
  restic zstd nodejs
)

wanted=("${BUILD_PKGS[@]}" "${TEST_PKGS[@]}")
if [ "${1:-}" = "--bench" ]; then
  wanted+=("${BENCH_PKGS[@]}")
  command -v npm >/dev/null || wanted+=(npm)
fi

missing=()
for p in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
