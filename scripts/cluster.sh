#!/usr/bin/env bash
# `make cluster`: etcd plus three blockd nodes in cluster mode, all on 127.0.0.1, data and
# logs under ./var/cluster (etcd/, node1..3/). Prints the endpoints. Ctrl-C or SIGTERM stops
# the nodes first (each revokes its lease: it leaves the cluster at once), then etcd, all by
# PID. A node that exits on its own is reported and the others keep running (kill -9 one
# to watch it drop out of `cairn node list`); etcd exiting stops everything.
#
# Ports (a port in use is replaced by a free one): etcd client 2379, peer 2380; node N:
# NBD 10810+N, control API 8080+N, replication link 7100+N.
set -euo pipefail
# Monitor mode: every daemon gets its own process group, so Ctrl-C reaches only this script,
# which then stops them in order (nodes before the etcd they deregister from).
set -m
BUILD_DIR=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VAR=${CAIRN_CLUSTER_VAR:-$ROOT/var/cluster}
BLOCKD="$ROOT/$BUILD_DIR/blockd/blockd"
CAIRN="$BUILD_DIR/client/cairn"
ETCD_BIN=${CAIRN_ETCD_BIN:-/usr/bin/etcd}
ETCDCTL=${CAIRN_ETCDCTL_BIN:-/usr/bin/etcdctl}
NODES=(1 2 3)

for bin in "$BLOCKD" "$ETCD_BIN" "$ETCDCTL"; do
  if [ ! -x "$bin" ]; then
    echo "cluster: $bin not found (make build; Debian packages etcd-server and etcd-client)" >&2
    exit 1
  fi
done
mkdir -p "$VAR/etcd"

ETCD_PID=""
declare -A NODE_PID=() NBD_PORT=() API_PORT=() REP_PORT=()

stop() {
  trap - INT TERM
  for i in "${!NODE_PID[@]}"; do kill -TERM "${NODE_PID[$i]}" 2>/dev/null || true; done
  for i in "${!NODE_PID[@]}"; do
    echo "stopping node$i (pid ${NODE_PID[$i]})"
    wait "${NODE_PID[$i]}" 2>/dev/null || true
  done
  if [ -n "$ETCD_PID" ]; then
    echo "stopping etcd (pid $ETCD_PID)"
    kill -TERM "$ETCD_PID" 2>/dev/null || true
    wait "$ETCD_PID" 2>/dev/null || true
  fi
  exit "${1:-0}"
}
trap stop INT TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
pick_port() { if port_in_use "$1"; then free_port; else echo "$1"; fi; }

# wait_ready NAME LOG OFFSET PID: until LOG shows "blockd ready" past byte OFFSET (logs are
# appended to across runs).
wait_ready() {
  for _ in $(seq 1 600); do
    tail -c +"$(($3 + 1))" "$2" 2>/dev/null | grep -q "blockd ready" && return 0
    if ! kill -0 "$4" 2>/dev/null; then
      echo "$1 failed to start; last lines of $2:" >&2
      tail -c +"$(($3 + 1))" "$2" | tail -n 5 >&2
      stop 1
    fi
    sleep 0.1
  done
  echo "$1 did not get ready within 60 s; see $2" >&2
  stop 1
}

ETCD_CLIENT=$(pick_port 2379)
ETCD_PEER=$(pick_port 2380)
ETCD_URL="http://127.0.0.1:$ETCD_CLIENT"
ETCD_LOG="$VAR/etcd/etcd.log"
"$ETCD_BIN" --name cairn --data-dir "$VAR/etcd/data" \
  --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "cairn=http://127.0.0.1:$ETCD_PEER" >>"$ETCD_LOG" 2>&1 &
ETCD_PID=$!
for attempt in $(seq 1 300); do
  ETCDCTL_API=3 "$ETCDCTL" --endpoints "$ETCD_URL" --command-timeout=1s endpoint health \
    >/dev/null 2>&1 && break
  if ! kill -0 "$ETCD_PID" 2>/dev/null || [ "$attempt" = 300 ]; then
    echo "etcd did not start; last lines of $ETCD_LOG:" >&2
    tail -n 5 "$ETCD_LOG" >&2
    stop 1
  fi
  sleep 0.1
done

declare -A OFFSET=()
for i in "${NODES[@]}"; do
  dir="$VAR/node$i"
  mkdir -p "$dir"
  NBD_PORT[$i]=$(pick_port $((10810 + i)))
  API_PORT[$i]=$(pick_port $((8080 + i)))
  REP_PORT[$i]=$(pick_port $((7100 + i)))
  OFFSET[$i]=$(stat -c %s "$dir/blockd.log" 2>/dev/null || echo 0)
  "$BLOCKD" --data-dir "$dir" --node-id "node$i" --cluster "$ETCD_URL" \
    --nbd-listen "127.0.0.1:${NBD_PORT[$i]}" --nbd-socket "$dir/nbd.sock" \
    --api-listen "127.0.0.1:${API_PORT[$i]}" \
    --replication-listen "127.0.0.1:${REP_PORT[$i]}" >>"$dir/blockd.log" 2>&1 &
  NODE_PID[$i]=$!
done
for i in "${NODES[@]}"; do
  wait_ready "node$i" "$VAR/node$i/blockd.log" "${OFFSET[$i]}" "${NODE_PID[$i]}"
done

echo
echo "Cairn cluster is running (etcd + ${#NODES[@]} blockd nodes, data under $VAR)."
echo "  etcd:          $ETCD_URL   (pid $ETCD_PID, log $ETCD_LOG)"
for i in "${NODES[@]}"; do
  echo "  node$i:         NBD nbd://127.0.0.1:${NBD_PORT[$i]}/<volume>   API http://127.0.0.1:${API_PORT[$i]}   pid ${NODE_PID[$i]}"
  echo "                 token $VAR/node$i/admin.token   replication 127.0.0.1:${REP_PORT[$i]}   log $VAR/node$i/blockd.log"
done
cat <<TXT
  CLI:           $CAIRN --api http://127.0.0.1:${API_PORT[1]} --token-file $VAR/node1/admin.token node list
                 ETCDCTL_API=3 etcdctl --endpoints $ETCD_URL get --prefix /cairn/nodes/
Press Ctrl-C to stop them all.
TXT

# A node exiting on its own is reported; etcd exiting, or the last node, ends the run.
set +e
while [ "${#NODE_PID[@]}" -gt 0 ]; do
  done_pid=""
  wait -n -p done_pid "$ETCD_PID" "${NODE_PID[@]}"
  status=$?
  if [ "$done_pid" = "$ETCD_PID" ]; then
    ETCD_PID=""
    echo "etcd exited (status $status); see $ETCD_LOG. Stopping the nodes." >&2
    stop 1
  fi
  for i in "${!NODE_PID[@]}"; do
    if [ "${NODE_PID[$i]}" = "$done_pid" ]; then
      unset "NODE_PID[$i]"
      echo "node$i (pid $done_pid) exited (status $status); see $VAR/node$i/blockd.log." \
           "The others keep running; Ctrl-C stops them." >&2
    fi
  done
done
echo "every node exited; stopping etcd" >&2
stop 1
