#!/usr/bin/python3
"""Snapshot benchmark: blockd's snapshots beside qcow2's internal and external snapshots.

Three measurements in one run (see bench/README.md, "Snapshots"):
  create  snapshot create latency on a 1 GiB and a 1 TiB thin volume holding the same
          64 MiB of data: blockd's control API (POST, timed client-side) beside
          `qemu-img snapshot -c` (internal) and `qemu-img create -b` (external overlay).
  iops    4 KiB random writes at QD32 (fio, nbd engine) right after a snapshot of a fully
          written volume, where every write is the first one to a shared 64 KiB extent /
          cluster, against steady state; blockd beside qemu-nbd serving a qcow2 with an
          internal snapshot and an overlay over a backing file.
  diff    time to list what changed since a snapshot when 1 % of a 16 GiB volume changed,
          and when the same amount changed on a 1 TiB volume: blockd's diff API and
          `nbdinfo --map=qemu:dirty-bitmap:SNAP`, beside `qemu-img map` of a qcow2 overlay.

Reuses nbd_bench.py (fio runner, qemu-nbd process handling, machine facts) and the
integration tests' harness.py (blockd process and control API). Stdlib + python3-libnbd;
run with /usr/bin/python3. Every server is stopped by its PID.
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
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import splice  # noqa: E402

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import nbd_bench as nb  # noqa: E402
import harness  # noqa: E402

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
EXTENT = 64 * KiB  # blockd's extent, qcow2's default cluster
BLOCK = 4 * KiB
QD = 32
SECTIONS = ("create", "iops", "diff")
MARK_BEGIN = "<!-- snapshot-bench:begin -->"
MARK_END = "<!-- snapshot-bench:end -->"


def log(msg):
    print(f"[snapshot-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    r = fn(*a, **kw)
    return time.perf_counter() - t0, r


def quantile(values, q):
    """Nearest-rank quantile (q in [0, 1])."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def ms(seconds):
    return f"{seconds * 1e3:,.2f}"


def tool(argv, timeout_s=600):
    """Runs a tool; raises RuntimeError with its output on failure."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if r.returncode != 0:
        raise RuntimeError(f"`{shlex.join(argv[:6])}{' ...' if len(argv) > 6 else ''}` exited "
                           f"{r.returncode}: {(r.stderr or r.stdout).strip()[-600:]}")
    return r


def spread_offsets(size_bytes, total_bytes, chunk_bytes=EXTENT):
    """total_bytes in chunk_bytes pieces spread evenly over the whole device."""
    n = total_bytes // chunk_bytes
    stride = (size_bytes // n) // chunk_bytes * chunk_bytes
    return [i * stride for i in range(n)]


def random_extent_offsets(size_bytes, count, rng):
    """count distinct extent-aligned offsets, random over the device."""
    return sorted(e * EXTENT for e in rng.sample(range(size_bytes // EXTENT), count))


def qemu_io_write(image, offsets, length, pattern):
    """Writes `length` bytes at each offset of a qcow2 with one qemu-io process."""
    cmds = []
    for off in offsets:
        cmds += ["-c", f"write -q -P {pattern} {off} {length}"]
    for i in range(0, len(cmds), 4000):  # keep the command line bounded
        tool(["qemu-io", "-f", "qcow2", *cmds[i:i + 4000], image])


def qcow2_create(path, size_bytes=None, backing=None):
    """A qcow2 (64 KiB clusters, the default); with backing, an overlay of its size."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        argv += ["-b", backing, "-F", "qcow2"]
    tool(argv + [path] + ([str(size_bytes)] if size_bytes is not None else []))


# ---------------------------------------------------------------- servers

class BlockdNode:
    """blockd (harness.Blockd: temp data dir, unix socket, stopped by PID) plus the control
    API calls the benchmark needs, each raising on an unexpected answer."""

    def __init__(self):
        self.srv = harness.Blockd(label="snapbench")
        self.srv.start()

    def call(self, method, path, body=None, want=(200, 201, 204)):
        status, reply = self.srv.http(method, path, body, timeout=120)
        if status not in want:
            raise RuntimeError(f"blockd {method} {path}: HTTP {status} {reply}")
        return reply

    def create_volume(self, name, size_bytes):
        self.call("POST", "/v1/volumes", {"name": name, "sizeBytes": size_bytes})

    def snapshot(self, vol, snap):
        return self.call("POST", f"/v1/volumes/{vol}/snapshots", {"name": snap})

    def delete_snapshot(self, vol, snap):
        self.call("DELETE", f"/v1/volumes/{vol}/snapshots/{snap}")

    def volume(self, vol):
        return self.call("GET", f"/v1/volumes/{vol}")

    def diff(self, vol, since):
        return self.call("GET", f"/v1/volumes/{vol}/diff?from={since}")

    def uri(self, export):
        return self.srv.unix_uri(export)

    def write(self, vol, offsets, length, byte):
        h = harness.nbd_connect(self.uri(vol))
        try:
            buf = bytes([byte]) * length
            for off in offsets:
                h.pwrite(buf, off)
            h.flush()
        finally:
            harness.nbd_close(h)

    def stop(self):
        try:
            self.srv.stop(check=False)
        finally:
            self.srv.cleanup()


class FioTarget:
    """What nbd_bench's fio helpers need of a target: a name, fio's target options and a
    way to push its dirty page cache down between cases."""

    def __init__(self, name, uri, backing_path):
        self.name, self.uri, self.backing_path = name, uri, backing_path

    def fio_target(self):
        return ["--ioengine=nbd", f"--uri={self.uri}"]

    def sync_backing(self):
        nb.fsync_tree(self.backing_path)

    def cpu_s(self):
        return None  # nbd_bench.run_case then reports fio's CPU; not shown here


class DsyncFile:
    """fio on a plain file with O_DIRECT|O_DSYNC writes, one at a time: what the disk gives
    a writer that waits for each durable (FUA) write before the next."""

    name = "disk"

    def __init__(self, path):
        self.path = path

    def fio_target(self):
        return ["--ioengine=psync", "--direct=1", "--sync=dsync", f"--filename={self.path}",
                f"--size={256 * MiB}"]


class Qcow2Nbd(nb.QemuNbd):
    """qemu-nbd serving an existing qcow2 (its backing chain opened by qemu), started as
    nbd_bench starts qemu-nbd (O_DIRECT, io_uring) and restartable."""

    def __init__(self, workdir, image, label, args):
        super().__init__(workdir, 0, True, args)
        self.image, self.name = image, label
        self.log_path = os.path.join(workdir, f"{label}.log")

    def start(self):
        sock = os.path.join(self.workdir, f"{self.name}.sock")
        pidfile = os.path.join(self.workdir, f"{self.name}.pid")
        for p in (sock, pidfile):
            if os.path.exists(p):
                os.unlink(p)
        self._spawn(["qemu-nbd", "-f", "qcow2", "--cache=none", "--aio=io_uring", "-k", sock,
                     "-x", nb.EXPORT_NAME, "-t", "--shared=8", f"--pid-file={pidfile}",
                     self.image])
        nb.wait_until(lambda: os.path.exists(pidfile) and os.path.exists(sock), 20,
                      self.name, self.proc)
        self.uri = f"nbd+unix:///{nb.EXPORT_NAME}?socket={sock}"

    def stop(self):
        super().stop()
        self.proc = None

    def target(self):
        return FioTarget(self.name, self.uri, self.image)


# ---------------------------------------------------------------- 1. create latency

def bench_create(args, node, work, rng):
    sizes = [("1 GiB", 1 * GiB), ("1 TiB", 1 * TiB)]
    data = spread_offsets(1 * GiB, args.data_bytes)  # count only; offsets per size below
    setups = {}
    for label, size in sizes:
        offs = spread_offsets(size, args.data_bytes)
        vol = f"create-{size >> 30}g"
        node.create_volume(vol, size)
        node.write(vol, offs, EXTENT, 0x5A)
        internal = os.path.join(work, f"internal-{size >> 30}g.qcow2")
        base = os.path.join(work, f"base-{size >> 30}g.qcow2")
        for img in (internal, base):
            qcow2_create(img, size)
            qemu_io_write(img, offs, EXTENT, "0x5a")
        setups[label] = dict(vol=vol, internal=internal, base=base, size=size)
    log(f"create: volumes and images ready ({len(data)} x 64 KiB written to each)")
    samples = {}  # (method, size label) -> [s]

    def add(key, s):
        samples.setdefault(key, []).append(s)

    for i in range(args.creates):
        for label, st in setups.items():  # interleaved so drift hits every method alike
            dt, _ = timed(node.snapshot, st["vol"], f"s{i}")
            add(("blockd (API POST)", label), dt)
            dt, _ = timed(tool, ["qemu-img", "snapshot", "-c", f"s{i}", st["internal"]])
            add(("qcow2 internal (`qemu-img snapshot -c`)", label), dt)
            overlay = os.path.join(work, f"overlay-{st['size'] >> 30}g-{i}.qcow2")
            dt, _ = timed(tool, ["qemu-img", "create", "-q", "-f", "qcow2", "-b", st["base"],
                                 "-F", "qcow2", overlay])
            add(("qcow2 external (`qemu-img create -b`)", label), dt)
            os.unlink(overlay)
        dt, _ = timed(tool, ["qemu-img", "--version"])
        add(("process floor (`qemu-img --version`)", "-"), dt)
    # The snapshots are real: the newest one reads back the written data.
    for label, st in setups.items():
        h = harness.nbd_connect(node.uri(f"{st['vol']}@s{args.creates - 1}"))
        try:
            got = h.pread(EXTENT, spread_offsets(st["size"], args.data_bytes)[-1])
        finally:
            harness.nbd_close(h)
        if got != bytes([0x5A]) * EXTENT:
            raise RuntimeError(f"snapshot of {st['vol']} does not hold the written data")
    for st in setups.values():
        for img in (st["internal"], st["base"]):
            os.unlink(img)
    rows = []
    for (method, label), vals in samples.items():
        rows.append(dict(method=method, size=label, n=len(vals), median_s=statistics.median(vals),
                         p90_s=quantile(vals, 0.9), min_s=min(vals), max_s=max(vals)))
    return dict(rows=rows, data_bytes=args.data_bytes, creates=args.creates)


# ---------------------------------------------------------------- 2. IOPS after a snapshot

def write_replay_log(path, size_bytes, rng):
    """A fio iolog writing one 4 KiB block at a random position of every 64 KiB extent,
    extents in random order: with the volume fully written and just snapshotted, every
    write is the first to a shared extent (the copy-on-write / redirect path)."""
    extents = list(range(size_bytes // EXTENT))
    rng.shuffle(extents)
    with open(path, "w") as f:
        f.write("fio version 2 iolog\nnbd add\nnbd open\n")
        for e in extents:
            f.write(f"nbd write {e * EXTENT + rng.randrange(EXTENT // BLOCK) * BLOCK} {BLOCK}\n")
    return len(extents)


def run_replay(target, log_path, tmp, tag):
    """Replays log_path at QD32. fio's replay ends without reaping the writes still in
    flight (they complete at the server, fio counts them anyway), so the rate comes from
    the per-I/O completion log: completions logged / time of the last one."""
    prefix = os.path.join(tmp, f"lat-{tag}")
    nb.run_fio(target, ["--read_iolog=" + log_path, "--replay_no_stall=1", f"--iodepth={QD}",
                        f"--write_lat_log={prefix}", "--log_avg_msec=0"],
               tag, 1800, os.path.join(tmp, f"{tag}.json"))
    times_ms, clat_us = [], []
    with open(f"{prefix}_clat.1.log") as f:
        for line in f:
            parts = line.split(",")
            if len(parts) >= 3 and parts[2].strip() == "1":
                times_ms.append(int(parts[0]))
                clat_us.append(int(parts[1]) / 1000.0)
    for suffix in ("clat", "lat", "slat"):
        path = f"{prefix}_{suffix}.1.log"
        if os.path.exists(path):
            os.unlink(path)
    span_s = max(max(times_ms), 1) / 1000.0
    return dict(iops=len(times_ms) / span_s, ios=len(times_ms), seconds=span_s,
                p50_us=quantile(clat_us, 0.5), p99_us=quantile(clat_us, 0.99))


def run_steady(target, args, tmp, tag):
    res = nb.run_case(target, nb.CASES_BY_NAME["randwrite-4k-qd32"], args, tmp, tag)
    return dict(iops=res["iops"], ios=res["ios"], seconds=float(args.runtime),
                p50_us=res["p50_us"], p99_us=res["p99_us"])


class IopsSubject:
    """One side of the comparison: knows how to take a fresh snapshot that shares every
    extent of its fully written image, and where fio points."""

    def prepare(self, rep):
        raise NotImplementedError

    def check(self):
        return ""


class BlockdSubject(IopsSubject):
    name = "blockd"

    def __init__(self, node, size_bytes, tmp):
        self.node, self.vol = node, "iops"
        node.create_volume(self.vol, size_bytes)
        self.target = FioTarget(self.name, node.uri(self.vol), node.srv.data_dir)
        nb.precondition(self.target, tmp)
        self.snap = None

    def prepare(self, rep):
        if self.snap:  # the previous rep's snapshot: free its extents (untimed)
            self.node.delete_snapshot(self.vol, self.snap)
        self.snap = f"r{rep}"
        self.node.snapshot(self.vol, self.snap)
        shared = int(self.node.volume(self.vol)["sharedBytes"])
        return f"shared after snapshot {shared >> 20} MiB"

    def check(self):
        # Each extent was written once after the snapshot: none may still be shared (the
        # last writes of the replay may still be finishing in the server: poll briefly).
        deadline = time.monotonic() + 10
        while True:
            shared = int(self.node.volume(self.vol)["sharedBytes"])
            if shared == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if shared != 0:
            raise RuntimeError(f"blockd: {shared} bytes still shared after the first-write pass")
        return "sharedBytes 0 after the pass (every extent redirected)"


class InternalSubject(IopsSubject):
    name = "qemu-nbd qcow2 internal"

    def __init__(self, work, size_bytes, args, tmp):
        self.image = os.path.join(work, "iops-internal.qcow2")
        qcow2_create(self.image, size_bytes)
        self.server = Qcow2Nbd(work, self.image, "qcow2-internal", args)
        self.server.start()
        self.target = self.server.target()
        self.target.name = self.name
        nb.precondition(self.target, tmp)
        self.snap = None

    def prepare(self, rep):
        self.server.stop()  # qemu-img needs the image closed
        if self.snap:
            tool(["qemu-img", "snapshot", "-d", self.snap, self.image])
        self.snap = f"r{rep}"
        tool(["qemu-img", "snapshot", "-c", self.snap, self.image])
        self.server.start()
        self.target.uri = self.server.uri
        return ""

    def stop(self):
        self.server.stop()


class ExternalSubject(IopsSubject):
    name = "qemu-nbd qcow2 external"

    def __init__(self, work, size_bytes, args, tmp):
        self.work, self.args = work, args
        self.base = os.path.join(work, "iops-base.qcow2")
        qcow2_create(self.base, size_bytes)
        self.overlay = os.path.join(work, "iops-overlay.qcow2")
        srv = Qcow2Nbd(work, self.base, "qcow2-base", args)
        srv.start()
        try:
            nb.precondition(FioTarget("qcow2 base", srv.uri, self.base), tmp)
        finally:
            srv.stop()
        self.server = None
        self.target = FioTarget(self.name, "", self.overlay)

    def prepare(self, rep):
        if self.server:
            self.server.stop()
        if os.path.exists(self.overlay):
            os.unlink(self.overlay)
        qcow2_create(self.overlay, backing=self.base)
        self.server = Qcow2Nbd(self.work, self.overlay, "qcow2-overlay", self.args)
        self.server.start()
        self.target.uri = self.server.uri
        return ""

    def stop(self):
        if self.server:
            self.server.stop()


def bench_iops(args, node, work, rng):
    size = args.iops_size_bytes
    tmp = os.path.join(work, "fio")
    os.makedirs(tmp, exist_ok=True)
    subjects = [BlockdSubject(node, size, tmp),
                InternalSubject(work, size, args, tmp),
                ExternalSubject(work, size, args, tmp)]
    results = {s.name: [] for s in subjects}
    notes = {}
    disk = DsyncFile(os.path.join(work, "dsync.img"))
    disk_iops = []
    try:
        for rep in range(args.reps):
            for s in subjects:
                note = s.prepare(rep)
                first_log = os.path.join(tmp, "first.iolog")
                extents = write_replay_log(first_log, size, rng)
                first = run_replay(s.target, first_log, tmp, f"first-{rep}")
                check = s.check()
                # Same job again: every extent now belongs to the live image alone.
                again_log = os.path.join(tmp, "again.iolog")
                write_replay_log(again_log, size, rng)
                again = run_replay(s.target, again_log, tmp, f"again-{rep}")
                steady = run_steady(s.target, args, tmp, f"steady-{rep}")
                s.target.sync_backing()
                results[s.name].append(dict(first=first, again=again, steady=steady,
                                            extents=extents))
                notes[s.name] = "; ".join(x for x in (note, check) if x)
                log(f"iops rep {rep + 1}/{args.reps} {s.name:<24} first {first['iops']:>8.0f} "
                    f"({first['seconds']:.2f} s)  same-again {again['iops']:>8.0f}  "
                    f"steady {steady['iops']:>8.0f} IOPS")
            job = nb.run_fio(disk, ["--rw=randwrite", "--bs=64k", "--iodepth=1", "--time_based",
                                    f"--runtime={min(args.runtime, 3)}"],
                             "disk", 120, os.path.join(tmp, f"disk-{rep}.json"))
            disk_iops.append(job["write"]["iops"])
            log(f"iops rep {rep + 1}/{args.reps} disk: {disk_iops[-1]:.0f} serial 64 KiB O_DSYNC writes/s")
    finally:
        for s in subjects:
            if hasattr(s, "stop"):
                s.stop()
    return dict(size_bytes=size, results=results, notes=notes, disk_iops=disk_iops)


# ---------------------------------------------------------------- 3. diff time

def bench_diff(args, node, work, rng):
    changes = int(args.diff_size_bytes * args.diff_pct / 100) // EXTENT
    cases = [(f"{args.diff_size_bytes >> 30} GiB, {args.diff_pct:g} % changed", args.diff_size_bytes),
             (f"1 TiB, same {changes * EXTENT >> 20} MiB changed", 1 * TiB)]
    want = changes * EXTENT
    setups = []
    for label, size in cases:
        tag = f"{size >> 30}g"
        base_offs = spread_offsets(size, args.data_bytes)
        change_offs = random_extent_offsets(size, changes, rng)
        # blockd: base data, snapshot s0, then the changes.
        vol = f"diff-{tag}"
        node.create_volume(vol, size)
        node.write(vol, base_offs, EXTENT, 0x11)
        node.snapshot(vol, "s0")
        node.write(vol, change_offs, EXTENT, 0x22)
        # qcow2: base image with the same data, an overlay holding the same changes.
        base = os.path.join(work, f"diff-base-{tag}.qcow2")
        overlay = os.path.join(work, f"diff-overlay-{tag}.qcow2")
        qcow2_create(base, size)
        qemu_io_write(base, base_offs, EXTENT, "0x11")
        qcow2_create(overlay, backing=base)
        qemu_io_write(overlay, change_offs, EXTENT, "0x22")
        log(f"diff: {label}: {changes} x 64 KiB written after the snapshot")
        setups.append(dict(case=label, size_bytes=size, vol=vol, uri=node.uri(vol), base=base,
                           overlay=overlay, t={"api": [], "nbdinfo": [], "nbdinfo_floor": [],
                                               "qemu_map": []}))
    for _ in range(args.diff_reps):
        for st in setups:  # interleaved so drift hits both sizes alike
            t, vol, uri = st["t"], st["vol"], st["uri"]
            dt, d = timed(node.diff, vol, "s0")
            t["api"].append(dt)
            if int(d["changedBytes"]) != want:
                raise RuntimeError(f"diff of {vol}: changedBytes {d['changedBytes']} != {want}")
            st["diff_runs"] = len(d.get("runs", []))
            dt, r = timed(tool, ["nbdinfo", "--json", "--map=qemu:dirty-bitmap:s0", uri])
            t["nbdinfo"].append(dt)
            dirty = sum(e["length"] for e in json.loads(r.stdout) if e["type"] & 1)
            if dirty != want:
                raise RuntimeError(f"dirty bitmap of {vol}: {dirty} dirty bytes != {want}")
            dt, _ = timed(tool, ["nbdinfo", "--size", uri])
            t["nbdinfo_floor"].append(dt)
            dt, r = timed(tool, ["qemu-img", "map", "--output=json", "-f", "qcow2", st["overlay"]])
            t["qemu_map"].append(dt)
            top = sum(e["length"] for e in json.loads(r.stdout) if e["depth"] == 0 and e["data"])
            if top != want:
                raise RuntimeError(f"qemu-img map of {st['overlay']}: {top} bytes in the overlay != {want}")
    rows = []
    for st in setups:
        rows.append(dict(case=st["case"], size_bytes=st["size_bytes"], changed_bytes=want,
                         diff_runs=st["diff_runs"],
                         **{k: statistics.median(v) for k, v in st["t"].items()}, samples=st["t"]))
        for img in (st["base"], st["overlay"]):
            os.unlink(img)
    return dict(rows=rows, reps=args.diff_reps)


# ---------------------------------------------------------------- report

def report(args, machine, res):
    out = []
    w = out.append
    w("### Snapshots: blockd vs qcow2 (internal and external)\n")
    w(f"Generated {machine['date']} by `bench/snapshot_bench.py`. Command:\n")
    w(f"```\n{machine['command']}\n```\n")
    w("Machine: " + ", ".join(f"{k} {v}" for k, v in machine["facts"].items()) + ".\n")
    w(f"Everything on {machine['fs']}; blockd with O_DIRECT (its default), qemu-nbd with "
      f"`--cache=none --aio=io_uring`, each on a unix socket.\n")
    if "create" in res:
        c = res["create"]
        w("#### Snapshot create latency\n")
        w(f"{c['data_bytes'] >> 20} MiB written first as 64 KiB pieces spread evenly over the "
          f"whole device (the same offsets on the blockd volume and the qcow2 images), "
          f"flushed; then {c['creates']} creates per case, interleaved round-robin. blockd: "
          f"`POST /v1/volumes/VOL/snapshots` timed in the client (new TCP connection each, "
          f"HTTP, the engine's drain + fdatasync + synced RocksDB batch). qemu-img: the "
          f"wall time of the whole process on the closed image (start-up included; the "
          f"floor row is the start-up alone).\n")
        w("| method | size | median ms | p90 ms | min ms | max ms |")
        w("|---|---|---:|---:|---:|---:|")
        for r in c["rows"]:
            w(f"| {r['method']} | {r['size']} | {ms(r['median_s'])} | {ms(r['p90_s'])} | "
              f"{ms(r['min_s'])} | {ms(r['max_s'])} |")
        w("")
        med = {(r["method"], r["size"]): r["median_s"] for r in c["rows"]}
        w("Growth from 1 GiB to 1 TiB (median 1 TiB / median 1 GiB): " + ", ".join(
            f"{m.split(' (')[0]} {med[(m, '1 TiB')] / med[(m, '1 GiB')]:.2f}"
            for m in dict.fromkeys(r["method"] for r in c["rows"]) if (m, "1 GiB") in med) + ".\n")
    if "iops" in res:
        r = res["iops"]
        w("#### 4 KiB random writes right after a snapshot\n")
        w(f"A {r['size_bytes'] / GiB:g} GiB image is written fully (1 MiB sequential, through its "
          f"server), then each repetition takes a fresh snapshot (blockd: API, the previous "
          f"rep's snapshot deleted first; internal: server stopped, `qemu-img snapshot -c`; "
          f"external: a new overlay on the fully written base) and runs, with fio's nbd "
          f"engine at QD{QD}:\n")
        w(f"- **first writes**: one 4 KiB write at a random block of every 64 KiB "
          f"extent/cluster, extents in random order (a fio replay log, "
          f"{r['size_bytes'] // EXTENT} writes): every write is the first to a shared "
          f"extent, so each one takes the copy-on-write / redirect path. IOPS = completions "
          f"in fio's per-I/O log / time of the last one.")
        w("- **same again**: the same kind of pass right after: every extent is now the "
          "live image's alone, the writes go in place.")
        w(f"- **steady**: fio `randwrite bs=4k iodepth={QD} norandommap`, time based, "
          f"{args.runtime} s (nbd_bench's randwrite-4k-qd32 case).\n")
        w(f"Medians of {args.reps} repetition(s); targets interleaved per repetition.\n")
        w("IOPS cells: median (min-max over the repetitions).\n")
        w("| target | first writes IOPS | p50 / p99 µs | same again IOPS | steady IOPS | "
          "p50 / p99 µs | first / steady | first / same again |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, reps in r["results"].items():
            def m(phase, key):
                return statistics.median(x[phase][key] for x in reps)

            def spread(phase):
                v = [x[phase]["iops"] for x in reps]
                return f"{statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f})"
            fi, ag = m("first", "iops"), m("again", "iops")
            ratios = [x["first"]["iops"] / x["steady"]["iops"] for x in reps]
            w(f"| {name} | {spread('first')} | {m('first', 'p50_us'):,.0f} / {m('first', 'p99_us'):,.0f} | "
              f"{spread('again')} | {spread('steady')} | "
              f"{m('steady', 'p50_us'):,.0f} / {m('steady', 'p99_us'):,.0f} | "
              f"{statistics.median(ratios):.2f} | {fi / ag:.2f} |")
        w("")
        if r.get("disk_iops"):
            v = r["disk_iops"]
            w(f"For scale, measured in each repetition: fio 64 KiB random writes with "
              f"O_DIRECT|O_DSYNC at QD1 on a file beside the images (each durable before the "
              f"next; blockd's redirect writes its new extent with RWF_DSYNC, the same "
              f"thing): {statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f}) writes/s.\n")
        notes = [f"{k}: {v}" for k, v in r["notes"].items() if v]
        if notes:
            w("Checks: " + "; ".join(notes) + ".\n")
        names = list(r["results"])
        if len(names) > 1:
            b = r["results"][names[0]]
            w(f"{names[0]} / peer, first writes IOPS: " + ", ".join(
                f"{p} {statistics.median(x['first']['iops'] for x in b) / statistics.median(x['first']['iops'] for x in r['results'][p]):.2f}"
                for p in names[1:]) + "; steady IOPS: " + ", ".join(
                f"{p} {statistics.median(x['steady']['iops'] for x in b) / statistics.median(x['steady']['iops'] for x in r['results'][p]):.2f}"
                for p in names[1:]) + ".\n")
    if "diff" in res:
        d = res["diff"]
        w("#### Changed-block listing after a snapshot\n")
        w(f"{args.data_bytes >> 20} MiB spread over the volume, snapshot `s0`, then 64 KiB "
          f"writes at random distinct 64 KiB-aligned offsets. blockd: `GET "
          f"/v1/volumes/VOL/diff?from=s0` (client-side, one HTTP request) and `nbdinfo "
          f"--json --map=qemu:dirty-bitmap:s0` (a whole process: connect, handshake, "
          f"BLOCK_STATUS over the device; `nbdinfo --size` is its floor). qcow2: an overlay on "
          f"a base with the same data holds the same changes; `qemu-img map --output=json` "
          f"walks the chain (what changed = depth 0). Every answer was checked to report "
          f"exactly the changed bytes. Medians of {d['reps']}, the two sizes interleaved.\n")
        w("| case | changed | blockd diff API ms | diff runs | nbdinfo dirty-bitmap ms | "
          "nbdinfo --size ms (floor) | qemu-img map overlay ms |")
        w("|---|---:|---:|---:|---:|---:|---:|")
        for row in d["rows"]:
            w(f"| {row['case']} | {row['changed_bytes'] >> 20} MiB | {ms(row['api'])} | "
              f"{row['diff_runs']:,} | {ms(row['nbdinfo'])} | {ms(row['nbdinfo_floor'])} | "
              f"{ms(row['qemu_map'])} |")
        w("")
        if len(d["rows"]) == 2:
            a, b = d["rows"]
            w(f"1 TiB / {a['size_bytes'] >> 30} GiB with the same changes: diff API "
              f"{b['api'] / a['api']:.2f}, nbdinfo dirty bitmap {b['nbdinfo'] / a['nbdinfo']:.2f}, "
              f"qemu-img map {b['qemu_map'] / a['qemu_map']:.2f}.\n")
    if res.get("problems"):
        w("#### Problems\n")
        for p in res["problems"]:
            w("```\n" + p.strip() + "\n```")
        w("")
    return "\n".join(out) + "\n"


def disk_cache_facts(fs_desc):
    """'write back, no FUA' for the block device under the work dir, from sysfs."""
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
            return f"{dev}: {cache}, {'FUA' if fua else 'no FUA (a DSYNC write is a write + cache flush)'}"
        except OSError:
            continue
    return "?"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build-dir", default=os.path.join(ROOT, "build"),
                   help="CMake build dir with blockd/blockd (default %(default)s)")
    p.add_argument("--sections", type=nb.csv_list(SECTIONS), default="all",
                   help="comma list of create, iops, diff (default all)")
    p.add_argument("--runtime", type=int, default=5, help="seconds of the steady fio case (default %(default)s)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of the IOPS passes (default %(default)s)")
    p.add_argument("--creates", type=int, default=20, help="snapshot creates per case (default %(default)s)")
    p.add_argument("--diff-reps", type=int, default=5, help="timed diff listings per case (default %(default)s)")
    p.add_argument("--data", default="64M", help="data written before create/diff snapshots (default %(default)s)")
    p.add_argument("--iops-size", default="1G", help="fully written image of the IOPS section (default %(default)s; keep <= 2G)")
    p.add_argument("--diff-size", default="16G", help="thin volume of the diff section (default %(default)s)")
    p.add_argument("--diff-pct", type=float, default=1.0, help="percent of --diff-size changed (default %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="offsets' random seed (default: fresh, printed)")
    p.add_argument("--work-dir", default=None, help="parent of the temp dir (default $TMPDIR or /tmp: the disk)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "snapshot-latest.md"),
                   help="markdown report (default %(default)s); the JSON goes beside it")
    p.add_argument("--splice", metavar="DOC", help="also put the report between the snapshot-bench markers of DOC")
    args = p.parse_args()
    args.data_bytes = nb.parse_size_bytes(args.data)
    args.iops_size_bytes = nb.parse_size_bytes(args.iops_size)
    args.diff_size_bytes = nb.parse_size_bytes(args.diff_size)
    if args.runtime < 1 or args.reps < 1 or args.creates < 1 or args.diff_reps < 1:
        p.error("need --runtime, --reps, --creates, --diff-reps >= 1")
    if args.iops_size_bytes % EXTENT or args.iops_size_bytes < 16 * MiB:
        p.error("--iops-size must be a multiple of 64 KiB and >= 16M")
    for t in ("fio", "qemu-img", "qemu-io", "qemu-nbd", "nbdinfo"):
        if not shutil.which(t):
            p.error(f"{t} not found in PATH")
    harness.BLOCKD = os.path.join(args.build_dir, "blockd", "blockd")
    if not os.path.exists(harness.BLOCKD):
        p.error(f"no blockd at {harness.BLOCKD}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    log(f"seed {seed} (replay offsets with --seed {seed})")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    work = tempfile.mkdtemp(prefix="cairn-snap-bench-", dir=args.work_dir)
    free_gib = shutil.disk_usage(work).free / GiB
    need_gib = 2.5 * 3 * args.iops_size_bytes / GiB + 1
    if "iops" in args.sections and free_gib < need_gib + 5:
        p.error(f"{free_gib:.0f} GiB free in {work}; the IOPS section needs about {need_gib:.0f} GiB")
    argv0 = os.path.relpath(sys.argv[0], ROOT) if not os.path.isabs(sys.argv[0]) else sys.argv[0]
    facts = nb.machine_facts(args)
    facts.pop("nbdkit", None)
    facts["qemu-img"] = (nb.cmd_output(["qemu-img", "--version"]).splitlines() or ["?"])[0].replace("qemu-img version ", "")
    facts["free disk at start"] = f"{free_gib:.0f} GiB"
    facts["disk cache"] = disk_cache_facts(nb.fs_type(os.path.realpath(work)))
    machine = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
               "command": shlex.join(["/usr/bin/python3", argv0] + sys.argv[1:]),
               "facts": facts, "fs": nb.fs_type(os.path.realpath(work)), "seed": seed}
    res = {"problems": []}
    node = None
    benches = {"create": bench_create, "iops": bench_iops, "diff": bench_diff}
    try:
        node = BlockdNode()
        for name in args.sections:
            rng = random.Random(f"{seed}:{name}")
            t0 = time.monotonic()
            try:
                res[name] = benches[name](args, node, work, rng)
            except (RuntimeError, OSError, subprocess.SubprocessError, AssertionError) as e:
                res["problems"].append(f"{name}: {e}")
                log(f"{name}: FAILED: {e}")
                if not node.srv.alive():
                    res["problems"].append("blockd died; log tail:\n" + nb.tail(node.srv.log_path, 30))
                    break
            log(f"{name}: done in {time.monotonic() - t0:.0f} s")
    finally:
        if node:
            node.stop()
        shutil.rmtree(work, ignore_errors=True)
    facts["loadavg at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = report(args, machine, res)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"machine": machine, "args": {k: v for k, v in vars(args).items()},
                   "results": res}, f, indent=1, default=str)
    log(f"wrote {args.out} and its .json")
    sys.stdout.write(text)
    if args.splice:
        splice(args.splice, text, MARK_BEGIN, MARK_END)
        log(f"updated {args.splice} between {MARK_BEGIN} and {MARK_END}")
    return 1 if res["problems"] else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); servers stopped")
        sys.exit(130)
