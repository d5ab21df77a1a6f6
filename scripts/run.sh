#!/usr/bin/env bash
# `make run`: the single-node service on an embedded default under ./var.
# Starts blockd, prints its endpoints and credentials, and stops it on Ctrl-C / SIGTERM.
set -euo pipefail
BUILD_DIR=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VAR=${CAIRN_VAR:-$ROOT/var}
mkdir -p "$VAR/blockd"
LOG="$VAR/blockd/blockd.log"

"$ROOT/$BUILD_DIR/blockd/blockd" --data-dir "$VAR/blockd" \
  --nbd-listen 127.0.0.1:10809 --nbd-socket "$VAR/blockd/nbd.sock" \
  --api-listen 127.0.0.1:8080 2> >(tee -a "$LOG" >&2) &
BLOCKD_PID=$!

stop() {
  trap - INT TERM
  echo "stopping blockd (pid $BLOCKD_PID)"
  kill -TERM "$BLOCKD_PID" 2>/dev/null || true
  wait "$BLOCKD_PID" 2>/dev/null || true
  exit 0
}
trap stop INT TERM

for _ in $(seq 1 100); do
  grep -q "blockd ready" "$LOG" 2>/dev/null && break
  if ! kill -0 "$BLOCKD_PID" 2>/dev/null; then
    echo "blockd failed to start; see $LOG" >&2
    exit 1
  fi
  sleep 0.1
done

cat <<TXT

Cairn is running (single node, data under $VAR).
  NBD (TCP):     nbd://127.0.0.1:10809/<volume>
  NBD (unix):    nbd+unix:///<volume>?socket=$VAR/blockd/nbd.sock
  Control API:   http://127.0.0.1:8080   (admin token in $VAR/blockd/admin.token)
  CLI:           $BUILD_DIR/client/cairn volume create disk1 --size 10G
                 qemu-img info nbd://127.0.0.1:10809/disk1
Press Ctrl-C to stop.
TXT
wait "$BLOCKD_PID"
