#!/usr/bin/env bash
# `make bench`: blockd vs nbdkit vs qemu-nbd vs raw io_uring over NBD (see bench/README.md).
# Usage: bench/run_nbd_bench.sh [BUILD_DIR]
# Writes bench/results/nbd-latest.md (+ .json with every repetition) and replaces the
# section between <!-- nbd-bench:begin --> and <!-- nbd-bench:end --> in docs/BENCHMARKS.md.
# Knobs (environment): NBD_BENCH_SIZE (1G), NBD_BENCH_RUNTIME (10 s per case),
# NBD_BENCH_REPS (3), NBD_BENCH_FS (disk,tmpfs), NBD_BENCH_SPLICE (1; 0 = leave docs alone),
# NBD_BENCH_ARGS (extra flags for nbd_bench.py, e.g. "--cases randread-4k-qd32").
# Full run: 9 cases x 4 targets x 2 filesystems x 3 reps x ~11 s = about 45 minutes.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
cd "$root"

args=(--build-dir "$build"
      --size "${NBD_BENCH_SIZE:-1G}"
      --runtime "${NBD_BENCH_RUNTIME:-10}"
      --reps "${NBD_BENCH_REPS:-3}"
      --fs "${NBD_BENCH_FS:-disk,tmpfs}"
      --out bench/results/nbd-latest.md
      --json bench/results/nbd-latest.json)
if [ "${NBD_BENCH_SPLICE:-1}" != 0 ]; then
  args+=(--splice docs/BENCHMARKS.md)
fi
# shellcheck disable=SC2086  # NBD_BENCH_ARGS is a word list on purpose
exec /usr/bin/python3 bench/nbd_bench.py "${args[@]}" ${NBD_BENCH_ARGS:-}
