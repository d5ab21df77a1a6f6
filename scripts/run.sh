#!/usr/bin/env bash
# `make run`: the single-node service on an embedded default under ./var.
# Starts blockd (NBD + control API) and objectd (S3), prints their endpoints and
# credentials, and stops both (by PID) on Ctrl-C / SIGTERM or when either one exits.
set -euo pipefail
BUILD_DIR=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VAR=${CAIRN_VAR:-$ROOT/var}
S3_LISTEN=${CAIRN_S3_LISTEN:-127.0.0.1:9000}
mkdir -p "$VAR/blockd" "$VAR/objectd"
BLOCKD_LOG="$VAR/blockd/blockd.log"
OBJECTD_LOG="$VAR/objectd/objectd.log"
BLOCKD_PID=""
OBJECTD_PID=""

stop() {
  trap - INT TERM
  for p in $OBJECTD_PID $BLOCKD_PID; do kill -TERM "$p" 2>/dev/null || true; done
  [ -n "$OBJECTD_PID" ] && echo "stopping objectd (pid $OBJECTD_PID)"
  [ -n "$BLOCKD_PID" ] && echo "stopping blockd (pid $BLOCKD_PID)"
  for p in $OBJECTD_PID $BLOCKD_PID; do wait "$p" 2>/dev/null || true; done
  exit "${1:-0}"
}
trap stop INT TERM

# wait_ready NAME LOG OFFSET PID: until LOG shows "NAME ready" past byte OFFSET (the logs
# are appended to across runs).
wait_ready() {
  for _ in $(seq 1 300); do
    tail -c +"$(($3 + 1))" "$2" 2>/dev/null | grep -q "$1 ready" && return 0
    if ! kill -0 "$4" 2>/dev/null; then
      echo "$1 failed to start; see $2" >&2
      stop 1
    fi
    sleep 0.1
  done
  echo "$1 did not get ready within 30 s; see $2" >&2
  stop 1
}

BLOCKD_OFFSET=$(stat -c %s "$BLOCKD_LOG" 2>/dev/null || echo 0)
"$ROOT/$BUILD_DIR/blockd/blockd" --data-dir "$VAR/blockd" \
  --nbd-listen 127.0.0.1:10809 --nbd-socket "$VAR/blockd/nbd.sock" \
  --api-listen 127.0.0.1:8080 2> >(tee -a "$BLOCKD_LOG" >&2) &
BLOCKD_PID=$!

OBJECTD_OFFSET=$(stat -c %s "$OBJECTD_LOG" 2>/dev/null || echo 0)
"$ROOT/$BUILD_DIR/objectd/objectd" --data-dir "$VAR/objectd" --listen "$S3_LISTEN" \
  2> >(tee -a "$OBJECTD_LOG" >&2) &
OBJECTD_PID=$!

wait_ready blockd "$BLOCKD_LOG" "$BLOCKD_OFFSET" "$BLOCKD_PID"
wait_ready objectd "$OBJECTD_LOG" "$OBJECTD_OFFSET" "$OBJECTD_PID"

S3_CREDS="$VAR/objectd/s3.credentials"
S3_ENDPOINT="http://$S3_LISTEN"
S3_AK=$(sed -n 's/^access_key_id=//p' "$S3_CREDS")
S3_SK=$(sed -n 's/^secret_access_key=//p' "$S3_CREDS")

cat <<TXT

Cairn is running (single node, data under $VAR).
  NBD (TCP):     nbd://127.0.0.1:10809/<volume>
  NBD (unix):    nbd+unix:///<volume>?socket=$VAR/blockd/nbd.sock
  Control API:   http://127.0.0.1:8080   (admin token in $VAR/blockd/admin.token)
  CLI:           $BUILD_DIR/client/cairn volume create disk1 --size 10G
                 qemu-img info nbd://127.0.0.1:10809/disk1
  S3 endpoint:   $S3_ENDPOINT   (root key in $S3_CREDS)
                 access key id:     $S3_AK
                 secret access key: $S3_SK
  S3 CLI:        AWS_ACCESS_KEY_ID=$S3_AK AWS_SECRET_ACCESS_KEY=... \\
                   aws --endpoint-url $S3_ENDPOINT s3 mb s3://photos
                 $BUILD_DIR/client/cairn tenant create acme
Press Ctrl-C to stop.
TXT
# Either daemon exiting on its own ends the run (and stops the other).
set +e
wait -n "$BLOCKD_PID" "$OBJECTD_PID"
status=$?
set -e
echo "a daemon exited (status $status); see $BLOCKD_LOG and $OBJECTD_LOG" >&2
stop "$status"
