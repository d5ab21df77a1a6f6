#!/usr/bin/python3
"""Replication benchmark: replicated volumes on etcd + 3 blockd nodes, in one run.

Four measurements on one machine (see bench/README.md, "Replication"):
  perf      3 replicas vs 1 replica, both volumes in the same 3-node cluster with node1 as
            primary, fio (nbd engine) against the primary's NBD URI: 4 KiB randwrite QD1
            latency, 4 KiB randwrite QD32 IOPS, 1 MiB sequential write MB/s. The two
            volumes are written fully first, so every case measures overwrites of the same
            region; the configurations are interleaved per repetition (1-3, 3-1, ...).
  bounds    fio sequential 1 MiB O_DIRECT write and read (QD8) on a file in the nodes'
            filesystem; TCP throughput over 127.0.0.1 (Python sender and receiver, two
            processes, 1 MiB sends).
  resync    a --resync-size (4 GiB) 3-replica volume written fully; node3 killed with
            SIGKILL; 1 % of the 64 KiB extents changed (one 4 KiB write at the start of
            each); node3 restarted: time until the primary reports it in_sync, and the
            bytes it copied. Then a full rebuild: node3 stopped, its data dir emptied,
            started again, timed the same way.
  failover  a 64 MiB 3-replica volume; --failover-trials times: kill -9 the primary, poll
            every 20 ms until another node serves the volume (its own info: serving, primary
            = itself) and a 4 KiB NBD read through it returns the data; then the killed node
            is restarted and every replica waited back to in_sync.

Reuses nbd_bench.py (fio runner, machine facts) and the integration tests' harness.py and
clusterharness.py (etcd, cluster-mode blockd; every process stopped by its PID). Stdlib +
python3-libnbd; run with /usr/bin/python3. A benchmark, not a test: the targets are
reported, never asserted.
"""

import argparse
import datetime
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

from benchlib import splice  # noqa: E402

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import nbd_bench as nb  # noqa: E402  (stdlib only; harness is imported in main())

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
EXTENT = 64 * KiB       # blockd's extent: the dirty-set granularity of a resync
BLOCK = 4 * KiB
SECTIONS = ("perf", "bounds", "resync", "failover")
PERF_CASES = ("randwrite-4k-qd1", "randwrite-4k-qd32", "write-1m-qd8")
NODE_IDS = ("node1", "node2", "node3")
MARK_BEGIN = "<!-- replication-bench:begin -->"
MARK_END = "<!-- replication-bench:end -->"
DOC = os.path.join(ROOT, "docs", "BENCHMARKS.md")
# The targets.
TARGET_IOPS_RATIO = 0.50        # 3-replica / 1-replica 4 KiB QD32 IOPS, at least
TARGET_QD1_P50_DELTA_US = 100   # 3-replica minus 1-replica QD1 p50, at most
TARGET_REBUILD_FRACTION = 0.80  # rebuild MB/s / min(disk write, loopback), at least
TARGET_FAILOVER_P99_S = 5.0     # kill to first served read, p99 below

harness = clusterharness = None  # imported in main(), after CAIRN_BUILD_DIR is set


def log(msg):
    print(f"[replication-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def quantile(values, q):
    """Nearest-rank quantile (q in [0, 1]); with fewer than 100 values p99 is the max."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f}"


def size_text(n):
    if n is None:
        return "-"
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit:
            return f"{n / unit:,.{0 if n % unit == 0 else 1}f} {name}"
    return f"{n} B"


def tool(argv, timeout_s=600):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0:
        raise RuntimeError(f"`{shlex.join(argv[:8])}{' ...' if len(argv) > 8 else ''}` exited "
                           f"{r.returncode}: {(r.stderr or r.stdout).strip()[-800:]}")
    return r


# ---------------------------------------------------------------- the cluster

class Cluster:
    """etcd plus node1..node3 (clusterharness.ClusterNode: temp data dir each, ephemeral
    127.0.0.1 ports, default lease TTL), and the control API calls the benchmark needs."""

    def __init__(self):
        self.etcd = clusterharness.Etcd(label="rb-etcd")
        self.nodes = {}

    def start(self):
        self.etcd.start()
        for nid in NODE_IDS:
            n = clusterharness.ClusterNode(nid, self.etcd, label=f"rb-{nid}")
            self.nodes[nid] = n
            n.start()
        return self

    def stop(self, failed=False):
        for n in self.nodes.values():
            try:
                n.failed = n.failed or failed
                if n.proc is not None:
                    n.stop(check=False)
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                log(f"stopping {n.node_id}: {e}")
            finally:
                n.cleanup()
        self.etcd.failed = self.etcd.failed or failed
        self.etcd.stop(check=False)
        self.etcd.cleanup()

    def up(self):
        return [n for n in self.nodes.values() if n.proc is not None]

    def cpu_s(self):
        """utime+stime of the three blockd processes together (None if one is down)."""
        total = 0.0
        for n in self.nodes.values():
            if n.proc is None:
                return None
            try:
                total += nb.proc_cpu_s(n.proc.pid)
            except OSError:
                return None
        return total

    def create(self, name, size_bytes, replicas, via="node1"):
        out = self.nodes[via].cairn("volume", "create", name, "--size", str(size_bytes),
                                    "--replicas", str(replicas))
        return out["cluster"]

    def delete(self, name, via, busy_timeout_s=30):
        """Deletes a volume through node `via`; a 409 busy (the primary still holds the
        volume) is retried. Returns (seconds it stayed busy, the first busy answer)."""
        t0, first_busy = time.monotonic(), None
        while True:
            status, body = self.nodes[via].http("DELETE", f"/v1/volumes/{name}", timeout=60)
            if status // 100 == 2:
                return (time.monotonic() - t0 if first_busy else 0.0), first_busy
            if status != 409 or time.monotonic() - t0 > busy_timeout_s:
                raise RuntimeError(f"delete {name} via {via}: HTTP {status} {body}")
            first_busy = first_busy or f"HTTP {status} {body}"
            time.sleep(0.1)

    def info(self, name, via=None, timeout=5):
        """The volume's cluster record as node `via` (or the first node up that answers)
        sees it; None if nobody answers."""
        for n in ([self.nodes[via]] if via else self.up()):
            if n.proc is None:
                continue
            try:
                status, body = n.http("GET", f"/v1/volumes/{name}", timeout=timeout)
            except Exception:  # noqa: BLE001 - a node going away mid-request
                continue
            if status == 200 and isinstance(body, dict) and "cluster" in body:
                return body["cluster"]
        return None

    def primary_info(self, name):
        """The record as the primary itself reports it (live replica states and resync
        progress are only known there)."""
        c = self.info(name)
        if c and c.get("primary") in self.nodes and self.nodes[c["primary"]].proc is not None:
            return self.info(name, via=c["primary"]) or c
        return c

    def states(self, name):
        c = self.primary_info(name)
        return {r["node"]: r["state"] for r in c["replicas"]} if c else {}

    def wait_all_in_sync(self, name, timeout_s):
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.states(name)
            if st and set(st.values()) == {"in_sync"}:
                return st
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: replicas not all in_sync after {timeout_s:.0f} s: {st}")
            time.sleep(0.1)

    def registered(self):
        try:
            return set(self.etcd.registered_nodes())
        except Exception:  # noqa: BLE001
            return None

    def wait_unregistered(self, nid, timeout_s):
        """Waits for a killed node's key to leave etcd (its lease expired), so that its
        restart does not wait for that inside blockd; returns the seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            reg = self.registered()
            if reg is not None and nid not in reg:
                return time.monotonic() - t0
            time.sleep(0.05)
        return None

    def write_blocks(self, uri, offsets, data):
        h = harness.nbd_connect(uri)
        try:
            for off in offsets:
                h.pwrite(data, off)
            h.flush()
        finally:
            harness.nbd_close(h)

    def flush(self, uri):
        h = harness.nbd_connect(uri)
        try:
            h.flush()
        finally:
            harness.nbd_close(h)


class FioTarget:
    """What nbd_bench's fio helpers need: a name, fio's target options, a way to push dirty
    page cache down (untimed) and the CPU of the servers (all three nodes together)."""

    def __init__(self, name, uri, cluster):
        self.name, self.uri, self.cluster = name, uri, cluster

    def fio_target(self):
        return ["--ioengine=nbd", f"--uri={self.uri}"]

    def sync_backing(self):
        for n in self.cluster.nodes.values():
            nb.fsync_tree(n.data_dir)

    def cpu_s(self):
        return self.cluster.cpu_s()


# ---------------------------------------------------------------- 1. 3 replicas vs 1

def bench_perf(args, cl, work, res):
    size = args.perf_size_bytes
    targets = {}
    created = []
    for replicas in (1, 3):
        name = f"perf-r{replicas}"
        c = cl.create(name, size, replicas)
        created.append(name)
        nodes = sorted(r["node"] for r in c["replicas"])
        if c["primary"] != "node1" or len(nodes) != replicas:
            raise RuntimeError(f"{name}: placed on {nodes}, primary {c['primary']}; expected "
                               f"{replicas} replica(s) with primary node1")
        uri = c.get("nbdUri") or cl.nodes["node1"].tcp_uri(name)
        targets[replicas] = FioTarget(f"{replicas}-replica", uri, cl)
        log(f"{name}: {size_text(size)}, replicas {nodes}, primary {c['primary']}, {uri}")
    out = {"size_bytes": size, "uris": {k: t.uri for k, t in targets.items()},
           "results": {}, "precondition_s": {}}
    c0, t0 = cl.cpu_s(), time.monotonic()  # what the three nodes burn doing nothing
    time.sleep(2)
    c1 = cl.cpu_s()
    out["idle_cpu_ms_per_s"] = (c1 - c0) / (time.monotonic() - t0) * 1e3 \
        if c0 is not None and c1 is not None else None
    for replicas, t in targets.items():  # the whole region written once: cases overwrite
        t0 = time.monotonic()
        nb.precondition(t, work)
        cl.flush(t.uri)
        out["precondition_s"][replicas] = time.monotonic() - t0
    st = cl.states("perf-r3")
    if set(st.values()) != {"in_sync"}:
        raise RuntimeError(f"perf-r3 not in sync after the fill: {st}")
    cases = [nb.CASES_BY_NAME[c] for c in PERF_CASES]
    for rep in range(args.reps):
        order = (1, 3) if rep % 2 == 0 else (3, 1)
        for case in cases:
            for replicas in order:
                t = targets[replicas]
                r = nb.run_case(t, case, args, work, f"r{replicas}-{rep}")
                out["results"].setdefault(f"{case.name}/{replicas}", []).append(r)
                log(f"rep {rep + 1}/{args.reps} {case.name:<18} {replicas} replica(s): "
                    f"{r['iops']:>9,.0f} IOPS {r['mb_s']:>8.1f} MB/s  p50 {r['p50_us']:.0f} us  "
                    f"p99 {r['p99_us']:.0f} us  cpu {r['cpu_us_per_io'] or 0:.1f} us/IO")
                if case.writes:
                    t.sync_backing()
    st = cl.states("perf-r3")
    out["states_after"] = st
    for name in created:  # room for the next sections, and no extra volumes in a failover
        try:
            note_busy_delete(res, name, *cl.delete(name, via="node1"))
        except RuntimeError as e:
            res["problems"].append(f"perf: {e}")
    return out


# ---------------------------------------------------------------- 3. bounds

def bound_fio(directory, size_bytes, seconds):
    path = os.path.join(directory, "fio-bound.dat")
    out = {"dir_fs": nb.fs_type(os.path.realpath(directory))}
    try:
        for rw in ("write", "read"):
            r = tool(["fio", "--name=bound", f"--filename={path}", f"--rw={rw}", "--bs=1M",
                      "--direct=1", "--ioengine=libaio", "--iodepth=8", f"--size={size_bytes}",
                      "--time_based", f"--runtime={seconds}", "--output-format=json"],
                     timeout_s=seconds + 600)
            out[f"disk_{rw}_mb_s"] = json.loads(r.stdout)["jobs"][0][rw]["bw_bytes"] / 1e6
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return out


def bound_loopback(seconds, chunk=1 * MiB):
    """One TCP stream over 127.0.0.1: a forked receiver (recv_into a 1 MiB buffer) and this
    process sending 1 MiB buffers for `seconds`; MB/s as the receiver counts it."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the receiver
        code = 1
        try:
            os.close(rfd)
            conn, _ = lsock.accept()
            buf = bytearray(chunk)
            total, t0 = 0, None
            while True:
                n = conn.recv_into(buf)
                if n == 0:
                    break
                if t0 is None:
                    t0 = time.perf_counter()
                total += n
            t1 = time.perf_counter()
            os.write(wfd, json.dumps({"bytes": total, "seconds": t1 - (t0 or t1)}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    lsock.close()
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        data = os.urandom(chunk)
        t_end = time.perf_counter() + seconds
        sent = 0
        while time.perf_counter() < t_end:
            s.sendall(data)
            sent += chunk
        s.shutdown(socket.SHUT_WR)
        s.close()
        raw = b""
        while True:
            b = os.read(rfd, 4096)
            if not b:
                break
            raw += b
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    r = json.loads(raw)
    if r["bytes"] != sent or r["seconds"] <= 0:
        raise RuntimeError(f"loopback: sent {sent} bytes, received {r}")
    return r["bytes"] / r["seconds"] / 1e6


def bench_bounds(args, cl, work, res):
    directory = cl.nodes["node1"].tmp if cl else work  # the nodes' filesystem
    out = bound_fio(directory, args.bound_size_bytes, args.bound_seconds)
    runs = [bound_loopback(args.loopback_seconds) for _ in range(3)]
    out["loopback_mb_s"] = statistics.median(runs)
    out["loopback_runs_mb_s"] = runs
    log(f"bounds: disk write {out['disk_write_mb_s']:.0f} MB/s, read {out['disk_read_mb_s']:.0f} "
        f"MB/s, loopback {out['loopback_mb_s']:.0f} MB/s (runs {', '.join(f'{x:.0f}' for x in runs)})")
    return out


# ---------------------------------------------------------------- 2. resync vs full rebuild

def note_busy_delete(res, name, busy_s, answer):
    if answer:
        res.setdefault("busy_deletes", []).append({"volume": name, "busy_s": busy_s, "answer": answer})
        log(f"delete {name}: busy for {busy_s:.2f} s ({answer})")


def replica(c, nid):
    return next((r for r in (c or {}).get("replicas", []) if r["node"] == nid), None)


def watch_until_in_sync(cl, name, primary, nid, t0, timeout_s, interval_s=0.05,
                        need_not_in_sync=False, settle_s=0.5):
    """Polls the primary every interval_s until replica nid is in_sync. Returns what it saw:
    seconds from t0 to in_sync, the states seen (in order), the largest resyncTotalBytes and
    resyncBytesPerS reported, and the final resyncDoneBytes. With need_not_in_sync, an
    in_sync answer counts only after another state has been seen (a stale in_sync from
    before the node went away is not the end)."""
    seen, first_seen = [], {}
    max_total, max_rate, last = 0, 0.0, None
    polls = 0
    deadline = time.monotonic() + timeout_s
    while True:
        c = cl.info(name, via=primary, timeout=5)
        now = time.monotonic()
        polls += 1
        r = replica(c, nid)
        if r:
            state = r.get("state")
            if not seen or seen[-1] != state:
                seen.append(state)
                first_seen.setdefault(state, now - t0)
            max_total = max(max_total, int(r.get("resyncTotalBytes", 0) or 0))
            max_rate = max(max_rate, float(r.get("resyncBytesPerS", 0) or 0))
            last = r
            if state == "in_sync" and (not need_not_in_sync or len(seen) > 1
                                       or seen[0] != "in_sync"):
                # resyncDoneBytes can lag the state by a moment (then it still shows the
                # previous resync's count): read it again for settle_s, keep the last value.
                first_done = int(r.get("resyncDoneBytes", 0) or 0)
                data = int(r.get("resyncDataBytes", 0) or 0)
                done, settle_end = first_done, time.monotonic() + settle_s
                while time.monotonic() < settle_end:
                    time.sleep(interval_s)
                    r2 = replica(cl.info(name, via=primary, timeout=5), nid)
                    if r2 and r2.get("state") == "in_sync":
                        done = int(r2.get("resyncDoneBytes", 0) or 0)
                        data = int(r2.get("resyncDataBytes", 0) or 0)
                return {"seconds": now - t0, "states": seen, "first_seen_s": first_seen,
                        "max_total_bytes": max_total, "max_rate_bytes_per_s": max_rate,
                        "done_bytes": done, "data_bytes": data,
                        "done_bytes_at_in_sync": first_done,
                        "polls": polls, "epoch": int(c.get("epoch", 0))}
        if now > deadline or (need_not_in_sync and seen == ["in_sync"] and now - t0 > 60):
            raise RuntimeError(f"{name}: {nid} not (back) in_sync after {now - t0:.0f} s; states "
                               f"seen {seen}, last {last}")
        time.sleep(interval_s)


def fill(cl, uri, name, work):
    t = FioTarget(name, uri, cl)
    t0 = time.monotonic()
    nb.run_fio(t, ["--rw=write", "--bs=1m", "--iodepth=8"], f"fill-{name}", 7200,
               os.path.join(work, f"fill-{name}.json"))
    cl.flush(uri)
    return time.monotonic() - t0


def bench_resync(args, cl, work, res, rng):
    name, size = "resync", args.resync_size_bytes
    c = cl.create(name, size, 3)
    primary = c["primary"]
    victim = "node3" if primary != "node3" else "node2"
    uri = c.get("nbdUri") or cl.nodes[primary].tcp_uri(name)
    out = {"size_bytes": size, "primary": primary, "victim": victim}
    out["fill_s"] = fill(cl, uri, name, work)
    log(f"resync: {size_text(size)} written through {primary} (3 copies) in {out['fill_s']:.1f} s "
        f"({size / out['fill_s'] / 1e6:.0f} MB/s)")
    cl.wait_all_in_sync(name, 120)
    n3 = cl.nodes[victim]
    timeout_s = max(600, size / (5 * MiB))  # even at 5 MiB/s

    # -- resync: node3 away while 1 % of the extents change
    n3.kill9()
    extents = size // EXTENT
    count = max(1, extents * args.change_pct // 100)
    offs = sorted(e * EXTENT for e in rng.sample(range(extents), count))
    t0 = time.monotonic()
    cl.write_blocks(uri, offs, os.urandom(BLOCK))
    out["change_write_s"] = time.monotonic() - t0
    out["changed_extents"] = count
    out["changed_bytes_extents"] = count * EXTENT
    out["changed_bytes_written"] = count * BLOCK
    st = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = cl.states(name)
        if st.get(victim) == "out":
            break
        time.sleep(0.1)
    out["state_while_away"] = st.get(victim)
    out["lease_wait_s"] = cl.wait_unregistered(victim, 60)
    log(f"resync: {count} extents changed ({size_text(count * EXTENT)} of extents, "
        f"{size_text(count * BLOCK)} written) with {victim} away (its state: "
        f"{out['state_while_away']}); restarting it")
    t0 = time.monotonic()
    n3.start()
    out["resync_ready_s"] = time.monotonic() - t0
    w = watch_until_in_sync(cl, name, primary, victim, t0, timeout_s)
    out["resync"] = w
    out["resync_s"] = w["seconds"]
    out["resync_bytes"] = w["done_bytes"]
    log(f"resync: in_sync {w['seconds']:.2f} s after the restart (ready after "
        f"{out['resync_ready_s']:.2f} s), copied {w['done_bytes']:,} bytes "
        f"(changed extents: {count * EXTENT:,}); states {w['states']}")

    # -- full rebuild: node3 stopped, its data dir emptied, started
    n3.stop(check=False)
    t_stop = time.monotonic()
    st = {}
    while time.monotonic() - t_stop < 15:
        st = cl.states(name)
        if st.get(victim) != "in_sync":
            break
        time.sleep(0.05)
    out["state_after_stop"] = st.get(victim)
    out["state_after_stop_s"] = time.monotonic() - t_stop
    shutil.rmtree(n3.data_dir)
    os.makedirs(n3.data_dir)
    t0 = time.monotonic()
    n3.start()
    out["rebuild_ready_s"] = time.monotonic() - t0
    w = watch_until_in_sync(cl, name, primary, victim, t0, timeout_s, need_not_in_sync=True)
    out["rebuild"] = w
    out["rebuild_s"] = w["seconds"]
    out["rebuild_bytes"] = w["done_bytes"]
    copy_s = w["seconds"] - out["rebuild_ready_s"]
    out["rebuild_copy_s"] = copy_s
    out["rebuild_mb_s"] = w["done_bytes"] / copy_s / 1e6 if copy_s > 0 else None
    log(f"rebuild: in_sync {w['seconds']:.2f} s after the start (ready after "
        f"{out['rebuild_ready_s']:.2f} s), copied {w['done_bytes']:,} bytes "
        f"= {fmt(out['rebuild_mb_s'])} MB/s from ready; states {w['states']}")
    try:
        note_busy_delete(res, name, *cl.delete(name, via=primary))
    except RuntimeError as e:
        res["problems"].append(f"resync: {e}")
    return out


# ---------------------------------------------------------------- 4. failover

def bench_failover(args, cl, work, res):
    name, size = "failover", args.failover_size_bytes
    c = cl.create(name, size, 3)
    data = os.urandom(BLOCK)
    cl.write_blocks(c.get("nbdUri") or cl.nodes[c["primary"]].tcp_uri(name), [0], data)
    cl.wait_all_in_sync(name, 120)
    trials = []
    for i in range(args.failover_trials):
        c = cl.primary_info(name)
        old, old_epoch = c["primary"], int(c["epoch"])
        victim = cl.nodes[old]
        victim.kill9()
        t0 = time.monotonic()
        served_at, new, epoch, read_error, polls = None, None, None, None, 0
        deadline = t0 + args.failover_timeout
        while True:
            polls += 1
            for n in cl.up():
                ci = cl.info(name, via=n.node_id, timeout=2)
                if not ci or ci.get("primary") != n.node_id or not ci.get("serving"):
                    continue
                if served_at is None:
                    served_at = time.monotonic() - t0
                try:
                    h = harness.nbd_connect(n.tcp_uri(name), timeout_s=5)
                    try:
                        got = h.pread(BLOCK, 0)
                    finally:
                        harness.nbd_close(h)
                except Exception as e:  # noqa: BLE001 - not serving yet after all
                    read_error = f"{type(e).__name__}: {e}"
                    continue
                if got != data:
                    raise RuntimeError(f"failover trial {i + 1}: the 4 KiB at 0 read through "
                                       f"{n.node_id} differs from what was written")
                new, epoch = n.node_id, int(ci.get("epoch", 0))
                break
            if new:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"failover trial {i + 1}: no node served {name} within "
                                   f"{args.failover_timeout} s of killing {old} (last read "
                                   f"error: {read_error})")
            time.sleep(0.02)
        t_read = time.monotonic() - t0
        # The killed node comes back (its lease is gone: that is what triggered the
        # failover) and every replica is waited back to in_sync, untimed for the failover.
        t1 = time.monotonic()
        victim.start()
        w = watch_until_in_sync(cl, name, new, old, t1, 300)
        cl.wait_all_in_sync(name, 300)
        trial = {"trial": i + 1, "killed": old, "new_primary": new, "old_epoch": old_epoch,
                 "epoch": epoch, "served_s": served_at, "read_s": t_read, "polls": polls,
                 "rejoin_s": w["seconds"], "rejoin_states": w["states"],
                 "rejoin_resync_bytes": w["done_bytes"], "rejoin_data_bytes": w["data_bytes"],
                 "rejoin": w}
        trials.append(trial)
        log(f"failover {i + 1}/{args.failover_trials}: killed {old} -> {new} (epoch "
            f"{old_epoch} -> {epoch}): info serving after {fmt(served_at, 2)} s, first read "
            f"after {t_read:.2f} s; {old} back in_sync {trial['rejoin_s']:.1f} s after its "
            f"restart (copied {w['done_bytes']:,} bytes; states {w['states']})")
    reads = [t["read_s"] for t in trials]
    return {"size_bytes": size, "trials": trials,
            "p50_s": quantile(reads, 0.5), "p99_s": quantile(reads, 0.99),
            "min_s": min(reads), "max_s": max(reads)}


# ---------------------------------------------------------------- report

def pct_miss(value, target):
    """'met' or how far below a higher-is-better target the value is."""
    if value >= target:
        return "met"
    return f"missed by {target - value:.2f} ({(target - value) / target * 100:.0f} % below the target)"


def targets_lines(res):
    lines = []
    p = res.get("perf")
    if p:
        def m(case, replicas, key):
            return med([r.get(key) for r in p["results"].get(f"{case}/{replicas}", [])])
        i1, i3 = m("randwrite-4k-qd32", 1, "iops"), m("randwrite-4k-qd32", 3, "iops")
        if i1 and i3:
            ratio = i3 / i1
            lines.append(f"- 4 KiB randwrite QD32 IOPS, 3 replicas / 1 replica: **{ratio:.2f}** "
                         f"({i3:,.0f} / {i1:,.0f}); target >= {TARGET_IOPS_RATIO:.2f}: "
                         f"{pct_miss(ratio, TARGET_IOPS_RATIO)}.")
        l1, l3 = m("randwrite-4k-qd1", 1, "p50_us"), m("randwrite-4k-qd1", 3, "p50_us")
        if l1 is not None and l3 is not None:
            d = l3 - l1
            note = "met" if d <= TARGET_QD1_P50_DELTA_US else \
                f"missed by {d - TARGET_QD1_P50_DELTA_US:,.0f} µs"
            lines.append(f"- 4 KiB randwrite QD1 p50 latency, 3 replicas - 1 replica: "
                         f"**{d:+,.0f} µs** ({l3:,.0f} vs {l1:,.0f} µs); target <= "
                         f"+{TARGET_QD1_P50_DELTA_US} µs: {note}.")
    r, b = res.get("resync"), res.get("bounds")
    if r and r.get("rebuild_mb_s") and b:
        bounds = {"disk write": b["disk_write_mb_s"], "loopback TCP": b["loopback_mb_s"]}
        k = min(bounds, key=bounds.get)
        frac = r["rebuild_mb_s"] / bounds[k]
        lines.append(f"- full rebuild throughput / min(disk write, loopback): **{frac:.2f}** "
                     f"({r['rebuild_mb_s']:,.0f} MB/s / {k} {bounds[k]:,.0f} MB/s); target >= "
                     f"{TARGET_REBUILD_FRACTION:.2f}: {pct_miss(frac, TARGET_REBUILD_FRACTION)}.")
    if r and r.get("rebuild_s"):
        lines.append(f"- resync / full rebuild time: **{r['resync_s'] / r['rebuild_s']:.3f}** "
                     f"with {r['changed_bytes_extents'] / r['size_bytes'] * 100:.2f} % of the "
                     f"volume's extents changed (no numeric target; the ideal is about the "
                     f"changed fraction plus the restart).")
    f = res.get("failover")
    if f:
        n = len(f["trials"])
        what = "p99" if n > 100 else "p99 (nearest rank: the max with 100 trials or fewer)"
        lines.append(f"- failover, kill -9 of the primary to the first served 4 KiB read, "
                     f"{what} over {n} trials: **{f['p99_s']:.2f} s**; target < "
                     f"{TARGET_FAILOVER_P99_S:g} s: "
                     f"{'met' if f['p99_s'] < TARGET_FAILOVER_P99_S else 'missed by ' + format(f['p99_s'] - TARGET_FAILOVER_P99_S, '.2f') + ' s'}.")
    return lines


def observations(res, args):
    """Things worth a second look, derived from the numbers (not pass/fail)."""
    obs = []
    r = res.get("resync")
    if r:
        want = r["changed_bytes_extents"]
        got = r.get("resync_bytes")
        if got is not None and got != want:
            obs.append(f"the resync copied {got:,} bytes for {r['changed_extents']} changed "
                       f"extents ({want:,} bytes at 64 KiB each): {got / want:.2f}x the "
                       f"changed extents")
        if r.get("state_while_away") != "out":
            obs.append(f"{r['victim']} was reported `{r.get('state_while_away')}` (not `out`) "
                       f"after writes went on without it")
        rb = r.get("rebuild_bytes")
        if rb is not None and abs(rb - r["size_bytes"]) > r["size_bytes"] // 100:
            obs.append(f"the full rebuild copied {rb:,} bytes of a fully written "
                       f"{r['size_bytes']:,}-byte volume")
        if r.get("state_after_stop") == "in_sync":
            obs.append(f"after a clean stop of {r['victim']} the primary still reported it "
                       f"`in_sync` {r['state_after_stop_s']:.1f} s later (it is marked out "
                       f"only once a write or a link check fails)")
        if r.get("resync_s") and r.get("resync_ready_s") is not None and \
                r["resync_ready_s"] > 0.5 * r["resync_s"]:
            obs.append(f"most of the resync time is the node's start-up ({r['resync_ready_s']:.2f} "
                       f"of {r['resync_s']:.2f} s)")
    lagging = []
    for label, w in ((("resync", (r or {}).get("resync")), ("full rebuild", (r or {}).get("rebuild")))
                     + tuple((f"failover rejoin #{t['trial']}", t.get("rejoin"))
                             for t in (res.get("failover") or {}).get("trials", []))):
        if w and w.get("done_bytes_at_in_sync") != w.get("done_bytes"):
            lagging.append(f"{label}: {w['done_bytes_at_in_sync']:,} at the first in_sync answer, "
                           f"{w['done_bytes']:,} 0.5 s later")
    if lagging:
        obs.append("the primary's `resyncDoneBytes` lagged the `in_sync` state (for a moment "
                   "an in_sync replica shows the previous resync's count): " + "; ".join(lagging))
    for d in res.get("busy_deletes", []):
        obs.append(f"`DELETE /v1/volumes/{d['volume']}` right after the section's last "
                   f"resync/I-O answered `{d['answer']}` for {d['busy_s']:.2f} s, though no NBD "
                   f"client was connected any more")
    f = res.get("failover")
    if f:
        slow = [t for t in f["trials"] if t["read_s"] >= TARGET_FAILOVER_P99_S]
        if slow:
            obs.append("failover trials at or above the 5 s target: " + ", ".join(
                f"#{t['trial']} {t['read_s']:.2f} s ({t['killed']} -> {t['new_primary']})"
                for t in slow))
        gaps = [t["read_s"] - t["served_s"] for t in f["trials"] if t["served_s"] is not None]
        if gaps and max(gaps) > 0.5:
            obs.append(f"a node reported itself serving up to {max(gaps):.2f} s before an NBD "
                       f"read through it succeeded")
        full = [t for t in f["trials"] if t["rejoin_resync_bytes"] >= f["size_bytes"] // 2]
        if full:
            copied = ", ".join(sorted({f"{t['rejoin_resync_bytes']:,}" for t in full}))
            data = ", ".join(sorted({f"{t.get('rejoin_data_bytes', 0):,}" for t in full}))
            obs.append(f"{len(full)} of {len(f['trials'])} rejoins of a killed former primary went "
                       f"over the whole volume ({copied} bytes of a {f['size_bytes']:,}-byte "
                       f"volume, of which {data} bytes sent as data, the rest trimmed as holes): "
                       f"the new primary cannot tell which extents the old one wrote without an "
                       f"acknowledgement, so a former primary is rebuilt in full (every allocated "
                       f"extent copied, every hole trimmed)")
    p = res.get("perf")
    for key, runs in sorted((p or {}).get("results", {}).items()):
        p50, p99 = med([x["p50_us"] for x in runs]), med([x["p99_us"] for x in runs])
        if p50 and p99 and p99 > 10 * p50:
            cname, replicas = key.split("/")
            obs.append(f"{nb.CASES_BY_NAME[cname].title}, {replicas} replica(s): p99 "
                       f"{p99:,.0f} µs is {p99 / p50:.0f}x the p50 ({p50:,.0f} µs): stalls")
    if p and p.get("states_after") and set(p["states_after"].values()) != {"in_sync"}:
        obs.append(f"after the fio cases the 3-replica volume's replicas were {p['states_after']}")
    return obs


def report(args, machine, res):
    out = []
    w = out.append
    w("### Replication: 3 replicas vs 1, resync vs full rebuild, failover\n")
    w(f"Generated {machine['date']} by `bench/replication_bench.py`. Command:\n")
    w(f"```\n{machine['command']}\n```\n")
    w("Machine: " + ", ".join(f"{k} {v}" for k, v in machine["facts"].items()) + ".\n")
    w(f"Cluster: one etcd ({machine['facts'].get('etcd', '?')}) and three blockd nodes in cluster "
      f"mode on this machine (`{machine.get('blockd_command', 'blockd ...')}`), every node's "
      f"data dir on {machine['fs']}: all replicas share one disk and two cores, and the "
      f"replication links run over loopback. NBD over TCP to the primary (the record's "
      f"`nbdUri`). Default lease TTL (3 s): a killed node's volumes fail over once its "
      f"etcd lease expires.\n")
    lines = targets_lines(res)
    if lines:
        w("#### Targets (from the issue)\n")
        out.extend(lines)
        w("")
    p = res.get("perf")
    if p:
        w("#### 3 replicas vs 1 replica\n")
        w(f"Two {size_text(p['size_bytes'])} volumes in the same cluster, created through node1 "
          f"with `--replicas 1` and `--replicas 3` (primary node1 for both), each written "
          f"fully once (1 MiB, QD8) so every case overwrites; fio `ioengine=nbd`, "
          f"{args.runtime} s per case, time based, random cases `norandommap`; "
          f"{args.reps} repetition(s), the two configurations interleaved (rep 1: 1 then 3, "
          f"rep 2: 3 then 1, ...), medians shown. CPU µs/IO = utime+stime of all three blockd "
          f"processes over the case / I/Os done (idle, the three together use "
          f"{fmt(p.get('idle_cpu_ms_per_s'), 1)} ms of CPU per second). MB/s = 10^6 B/s. "
          f"Everything shares this machine's {os.cpu_count()} cores: the 3-replica case runs "
          f"three nodes' work plus fio on them, where a real cluster gives each node its own "
          f"CPUs and disk, so the CPU column is the number that carries over.\n")
        w("| case | replicas | IOPS | MB/s | p50 µs | p99 µs | CPU µs/IO (3 nodes) | spread |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for cname in PERF_CASES:
            case = nb.CASES_BY_NAME[cname]
            for replicas in (1, 3):
                runs = p["results"].get(f"{cname}/{replicas}", [])
                if not runs:
                    w(f"| {case.title} | {replicas} | failed | | | | | |")
                    continue
                iops = [x["iops"] for x in runs]
                spread = (max(iops) - min(iops)) / statistics.median(iops) \
                    if len(iops) > 1 and statistics.median(iops) else None
                w(f"| {case.title} | {replicas} | {fmt(med(iops))} | "
                  f"{fmt(med([x['mb_s'] for x in runs]), 1)} | "
                  f"{fmt(med([x['p50_us'] for x in runs]), 1)} | "
                  f"{fmt(med([x['p99_us'] for x in runs]), 1)} | "
                  f"{fmt(med([x['cpu_us_per_io'] for x in runs]), 1)} | "
                  f"{'-' if spread is None else f'{spread * 100:.0f}%'} |")
        w("")
        ratios = []
        for cname in PERF_CASES:
            a = med([x["iops"] for x in p["results"].get(f"{cname}/3", [])])
            b = med([x["iops"] for x in p["results"].get(f"{cname}/1", [])])
            if a and b:
                ratios.append(f"{nb.CASES_BY_NAME[cname].title} {a / b:.2f}")
        if ratios:
            w("3 replicas / 1 replica (IOPS, of medians): " + ", ".join(ratios) + ".\n")
    b = res.get("bounds")
    if b:
        w("#### Bounds (same run)\n")
        w("| bound | MB/s |")
        w("|---|---:|")
        w(f"| disk: fio seq write 1 MiB, O_DIRECT, libaio QD8, {args.bound_seconds} s, on "
          f"{b.get('dir_fs', '?')} (the nodes' filesystem) | {fmt(b['disk_write_mb_s'])} |")
        w(f"| disk: fio seq read, the same file | {fmt(b['disk_read_mb_s'])} |")
        w(f"| loopback TCP: one stream over 127.0.0.1, Python sender and receiver (two "
          f"processes), 1 MiB sends for {args.loopback_seconds:g} s, median of 3 "
          f"({', '.join(f'{x:,.0f}' for x in b['loopback_runs_mb_s'])}) | "
          f"{fmt(b['loopback_mb_s'])} |")
        w("")
    r = res.get("resync")
    if r:
        w("#### Resync vs full rebuild\n")
        w(f"A {size_text(r['size_bytes'])} volume with 3 replicas (primary {r['primary']}) written "
          f"fully once with fio (1 MiB, QD8: {r['fill_s']:.1f} s, "
          f"{r['size_bytes'] / r['fill_s'] / 1e6:,.0f} MB/s with 3 copies) and flushed. "
          f"**Resync**: {r['victim']} killed with SIGKILL; {r['changed_extents']:,} random distinct "
          f"64 KiB extents ({args.change_pct} % of them) each got one 4 KiB write at its start, "
          f"then a FLUSH; once {r['victim']}'s lease had left etcd (untimed: "
          f"{fmt(r.get('lease_wait_s'), 1)} s), it was restarted. **Full rebuild**: "
          f"{r['victim']} stopped (SIGTERM), its data dir removed and recreated empty, started. "
          f"Both timed from the start of the process to the primary reporting the replica "
          f"`in_sync` (its `GET /v1/volumes/NAME` polled every 50 ms); bytes copied = the "
          f"replica's `resyncDoneBytes` then. Rebuild MB/s = bytes copied / (in_sync - "
          f"ready), i.e. without the process start.\n")
        w("| phase | changed | bytes copied | node ready s | in_sync s (from start) | "
          "copy MB/s | states seen |")
        w("|---|---:|---:|---:|---:|---:|---|")
        rs, rb = r["resync"], r["rebuild"]
        rs_copy = r["resync_s"] - r["resync_ready_s"]
        w(f"| resync after kill -9 | {r['changed_extents']:,} extents = "
          f"{size_text(r['changed_bytes_extents'])} ({size_text(r['changed_bytes_written'])} "
          f"written) | {r['resync_bytes']:,} | {r['resync_ready_s']:.2f} | {r['resync_s']:.2f} | "
          f"{fmt(r['resync_bytes'] / rs_copy / 1e6 if rs_copy > 0 else None)} | "
          f"{' > '.join(rs['states'])} |")
        w(f"| full rebuild, empty data dir | whole volume | {r['rebuild_bytes']:,} | "
          f"{r['rebuild_ready_s']:.2f} | {r['rebuild_s']:.2f} | {fmt(r['rebuild_mb_s'])} | "
          f"{' > '.join(rb['states'])} |")
        w("")
        w(f"Resync / full rebuild time: {r['resync_s'] / r['rebuild_s']:.3f}; changed fraction: "
          f"{r['changed_bytes_extents'] / r['size_bytes'] * 100:.2f} % of the volume by extent "
          f"({r['changed_bytes_written'] / r['size_bytes'] * 100:.3f} % by bytes written); "
          f"resync copied {r['resync_bytes'] / r['size_bytes'] * 100:.2f} % of the volume. "
          f"Largest rate the primary reported while copying: resync "
          f"{rs['max_rate_bytes_per_s'] / 1e6:,.0f} MB/s, rebuild "
          f"{rb['max_rate_bytes_per_s'] / 1e6:,.0f} MB/s.\n")
    f = res.get("failover")
    if f:
        w("#### Failover\n")
        w(f"A {size_text(f['size_bytes'])} volume with 3 replicas and 4 KiB of known data at "
          f"offset 0. Each trial: `kill -9` of the current primary; then every 20 ms each "
          f"surviving node is asked for the volume (`GET /v1/volumes/NAME` on that node) and, "
          f"once one says it is the primary and serving, a 4 KiB NBD read at 0 goes through it "
          f"(new connection) and must return the data; time = kill to that read's answer. "
          f"Then the killed node is restarted and every replica waited back to `in_sync` "
          f"before the next trial (untimed for the failover).\n")
        n = len(f["trials"])
        w(f"Kill to first served read over {n} trials: p50 {f['p50_s']:.2f} s, p99 "
          f"{f['p99_s']:.2f} s{' (nearest rank: the max with 100 trials or fewer)' if n <= 100 else ''}, "
          f"min {f['min_s']:.2f} s, max {f['max_s']:.2f} s.\n")
        w("| trial | killed | new primary | epoch | serving (info) s | first read s | "
          "rejoin: in_sync s after restart | rejoin: bytes resynced (data) |")
        w("|---:|---|---|---|---:|---:|---:|---:|")
        for t in f["trials"]:
            w(f"| {t['trial']} | {t['killed']} | {t['new_primary']} | {t['old_epoch']} -> "
              f"{t['epoch']} | {fmt(t['served_s'], 2)} | {t['read_s']:.2f} | "
              f"{t['rejoin_s']:.2f} | {t['rejoin_resync_bytes']:,} "
              f"({t.get('rejoin_data_bytes', 0):,}) |")
        w("")
    obs = observations(res, args)
    if obs:
        w("#### Observations\n")
        for o in obs:
            w(f"- {o}.")
        w("")
    if res.get("problems"):
        w("#### Problems\n")
        for pr in res["problems"]:
            w("```\n" + pr.strip()[-3000:] + "\n```")
        w("")
    return "\n".join(out) + "\n"


def disk_cache_facts(fs_desc):
    m = re.search(r" on /dev/(\S+) ", fs_desc)
    if not m:
        return "?"
    dev = m.group(1)
    for q in (f"/sys/class/block/{dev}/queue", f"/sys/class/block/{dev}/../queue"):
        try:
            with open(f"{q}/write_cache") as f:
                cache = f.read().strip()
            with open(f"{q}/fua") as f:
                fua = f.read().strip() == "1"
            return f"{dev}: {cache}, {'FUA' if fua else 'no FUA'}"
        except OSError:
            continue
    return "?"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build-dir", default=os.environ.get("CAIRN_BUILD_DIR") or os.path.join(ROOT, "build"),
                   help="CMake build dir with blockd/blockd and client/cairn (default "
                        "$CAIRN_BUILD_DIR or %(default)s)")
    p.add_argument("--sections", type=nb.csv_list(SECTIONS), default="all",
                   help="comma list of " + ", ".join(SECTIONS) + " (default all)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes for a check of the script: --perf-size 256M, --resync-size "
                        "512M, --failover-trials 3, --reps 1, --runtime 2 (flags given win)")
    p.add_argument("--runtime", type=int, default=None, help="seconds per fio case (default 10)")
    p.add_argument("--reps", type=int, default=None, help="repetitions of the perf cases (default 3)")
    p.add_argument("--perf-size", type=nb.parse_size_bytes, default=None,
                   help="each perf volume, all of it the fio region (default 1G)")
    p.add_argument("--resync-size", type=nb.parse_size_bytes, default=None,
                   help="the resync/rebuild volume, written fully (default 4G)")
    p.add_argument("--change-pct", type=int, default=1,
                   help="percent of the resync volume's extents changed while the replica is away (default %(default)s)")
    p.add_argument("--failover-trials", type=int, default=None, help="failover trials (default 10)")
    p.add_argument("--failover-size", type=nb.parse_size_bytes, default="64M",
                   help="the failover volume (default 64M)")
    p.add_argument("--failover-timeout", type=float, default=60,
                   help="give up a failover trial after this many seconds (default %(default)s)")
    p.add_argument("--bound-size", type=nb.parse_size_bytes, default=None,
                   help="fio file of the disk bound (default 2G; --quick 512M)")
    p.add_argument("--bound-seconds", type=int, default=None,
                   help="seconds of each fio bound (default 10; --quick 3)")
    p.add_argument("--loopback-seconds", type=float, default=2, help="seconds per loopback run (default %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="random seed of the changed extents (default: fresh, printed)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "replication-latest.md"),
                   help="markdown report (default %(default)s); the JSON goes beside it")
    p.add_argument("--update-docs", action="store_true",
                   help=f"also put the report between the replication-bench markers of {os.path.relpath(DOC, ROOT)}")
    args = p.parse_args()
    quick = args.quick
    for key, full, small in (("runtime", 10, 2), ("reps", 3, 1), ("perf_size", 1 * GiB, 256 * MiB),
                             ("resync_size", 4 * GiB, 512 * MiB), ("failover_trials", 10, 3),
                             ("bound_size", 2 * GiB, 512 * MiB), ("bound_seconds", 10, 3)):
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
    args.perf_size_bytes = args.perf_size
    args.resync_size_bytes = args.resync_size
    args.failover_size_bytes = args.failover_size
    args.bound_size_bytes = args.bound_size
    if args.runtime < 1 or args.reps < 1 or args.failover_trials < 1 or args.bound_seconds < 1:
        p.error("need --runtime, --reps, --failover-trials, --bound-seconds >= 1")
    for k in ("perf_size", "resync_size", "failover_size"):
        v = getattr(args, k)
        if v % EXTENT or v < 16 * MiB:
            p.error(f"--{k.replace('_', '-')} must be a multiple of 64 KiB and >= 16M")
    if not 0 < args.change_pct <= 100:
        p.error("--change-pct must be in 1..100")
    args.build_dir = os.path.abspath(args.build_dir)
    os.environ["CAIRN_BUILD_DIR"] = args.build_dir

    global harness, clusterharness
    import harness  # noqa: E402  (reads CAIRN_BUILD_DIR)
    import clusterharness  # noqa: E402
    for b in (harness.BLOCKD, harness.CAIRN, clusterharness.ETCD):
        if not os.path.exists(b):
            p.error(f"{b} not found")
    if not shutil.which("fio"):
        p.error("fio not found in PATH")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    log(f"seed {seed} (replay the changed extents with --seed {seed})")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    work = tempfile.mkdtemp(prefix="cairn-repl-bench-")
    free = shutil.disk_usage(work).free
    need = 0
    if "perf" in args.sections:
        need = max(need, 4 * args.perf_size_bytes)
    if "resync" in args.sections:
        need = max(need, 3 * args.resync_size_bytes)
    if "bounds" in args.sections:
        need = max(need, args.bound_size_bytes)
    if free < need * 1.3 + 2 * GiB:
        shutil.rmtree(work, ignore_errors=True)
        p.error(f"{free / GiB:.0f} GiB free under {os.path.dirname(work)}; need about "
                f"{(need * 1.3 + 2 * GiB) / GiB:.0f} GiB")
    argv0 = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    facts = nb.machine_facts(args)
    facts.pop("nbdkit", None)
    facts.pop("qemu-nbd", None)
    facts["etcd"] = (nb.cmd_output([clusterharness.ETCD, "--version"]).splitlines() or ["?"])[0] \
        .replace("etcd Version: ", "")
    facts["python"] = sys.version.split()[0]
    fs = nb.fs_type(os.path.realpath(work))
    facts["disk cache"] = disk_cache_facts(fs)
    facts["free disk at start"] = f"{free / GiB:.0f} GiB"
    facts["binaries"] = args.build_dir
    machine = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
               "command": shlex.join(["/usr/bin/python3", argv0] + sys.argv[1:]),
               "facts": facts, "fs": fs, "seed": seed}
    res = {"problems": []}
    cl = None
    t_start = time.monotonic()
    failed = False
    try:
        if set(args.sections) - {"bounds"}:
            cl = Cluster().start()
            n1 = cl.nodes["node1"]
            machine["blockd_command"] = shlex.join(
                ["blockd", "--data-dir", "$NODE/data", "--nbd-listen", "127.0.0.1:0",
                 "--nbd-socket", "$NODE/data/nbd.sock", "--api-listen", "127.0.0.1:0",
                 "--node-id", "nodeN", "--cluster", "http://127.0.0.1:PORT",
                 "--replication-listen", "127.0.0.1:0"] + ([f"--threads {n1.threads}"] if n1.threads else []))
            machine["fs"] = nb.fs_type(os.path.realpath(n1.data_dir))
        order = [s for s in ("bounds", "perf", "resync", "failover") if s in args.sections]
        for name in order:
            t0 = time.monotonic()
            try:
                if name == "bounds":
                    res[name] = bench_bounds(args, cl, work, res)
                elif name == "perf":
                    res[name] = bench_perf(args, cl, work, res)
                elif name == "resync":
                    res[name] = bench_resync(args, cl, work, res, random.Random(f"{seed}:resync"))
                else:
                    res[name] = bench_failover(args, cl, work, res)
            except (RuntimeError, OSError, subprocess.SubprocessError, AssertionError,
                    KeyError, ValueError, TypeError) as e:
                failed = True
                msg = f"{name}: {type(e).__name__}: {e}\n{traceback.format_exc()}"
                res["problems"].append(msg)
                log(f"{name}: FAILED: {e}")
                if cl:
                    for n in cl.nodes.values():
                        if n.proc is not None and n.proc.poll() is not None:
                            res["problems"].append(f"{n.node_id} died; log tail:\n{nb.tail(n.log_path, 30)}")
                    # later sections need all three nodes up
                    for n in cl.nodes.values():
                        if n.proc is None or n.proc.poll() is not None:
                            n.proc = None
                            try:
                                n.start()
                            except AssertionError as e2:
                                res["problems"].append(f"restarting {n.node_id}: {e2}")
            log(f"{name}: done in {time.monotonic() - t0:.0f} s")
    finally:
        if cl:
            cl.stop(failed=failed)
        shutil.rmtree(work, ignore_errors=True)
    facts["loadavg at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    facts["run time"] = f"{(time.monotonic() - t_start) / 60:.1f} min"
    text = report(args, machine, res)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"machine": machine, "args": vars(args), "results": res}, f, indent=1, default=str)
    log(f"wrote {args.out} and {os.path.splitext(args.out)[0]}.json")
    sys.stdout.write(text)
    if args.update_docs:
        splice(DOC, text, MARK_BEGIN, MARK_END,
               "## Replication\n\nReplicated volumes on etcd + 3 blockd nodes: 3 replicas vs "
               "1, resync vs full rebuild, failover, with the bounds of the same machine. "
               "Regenerate with `/usr/bin/python3 bench/replication_bench.py --update-docs` "
               "(see bench/README.md, \"Replication\"); the section between the markers below "
               "is replaced by the run, the same report is kept in "
               "`bench/results/replication-latest.md`.")
        log(f"updated {DOC} between {MARK_BEGIN} and {MARK_END}")
    return 1 if res["problems"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); processes stopped")
        sys.exit(130)
