#!/usr/bin/python3
"""Backup benchmark: `cairn backup` (blockd -> S3) beside restic, into objectd and s3rver,
with the bounds of the same machine measured in the same run.

One blockd holds a thin volume (--size, default 4 GiB) half written with incompressible
random data in 4 MiB runs (exactly half of the 4 MiB chunks, chosen at random; the rest
never written), snapshot s1. For each S3 server, in turn (phases interleaved server by
server, so drift lands on both alike):
  full         `cairn backup create vol@s1` into a fresh repository
  clustered    1 % of the volume changed as whole 4 MiB chunks, snapshot s2,
               `cairn backup create vol@s2` (incremental)
  scattered    1 % of the volume changed in 64 KiB writes at random offsets, snapshot s3,
               `cairn backup create vol@s3` (incremental to s2)
  restore      `cairn backup restore` of the full backup into a new volume
  instant      `cairn backup restore --instant --detach`, then one 4 KiB NBD read at a
               random offset inside a chunk holding data: time to first correct byte;
               then the time until hydration is done
  restic       the snapshots exported through NBD to a raw image (nbdcopy), `restic backup`
               of the image for s1, s2, s3 (restic rereads the whole file each time), and
               `restic restore` of the s1 snapshot
Bounds (same run): fio sequential 1 MiB O_DIRECT read and write on the filesystem holding
blockd's data, `openssl speed -evp sha256` (4 MiB blocks), `zstd -b3` on incompressible 4 MiB
blocks (compress and decompress), PUT and GET of 4 MiB objects at concurrency 4 against each
S3 server (s3_bench.py's load generator).

See bench/README.md ("Backups"). Run with /usr/bin/python3 (python3-libnbd, boto3).
"""

import argparse
import datetime
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import base_facts, cmd_output, splice  # noqa: E402

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CHUNK = 4 * MiB        # the repository's chunk (cairn's default)
EXTENT = 64 * KiB      # blockd's extent: the diff's granularity
SERVERS_ALL = ("objectd", "s3rver")
CHANGES_ALL = ("clustered", "scattered")
MARK_BEGIN = "<!-- backup-bench:begin -->"
MARK_END = "<!-- backup-bench:end -->"
REPO_BUCKET = "cairn-bench"
RESTIC_BUCKET = "restic-bench"
RESTIC_PASSWORD = "backup-bench-not-a-secret"


def log(msg):
    print(f"[backup-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size_bytes(text):
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b?)\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 2G, 4G)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]


def csv_of(allowed):
    def parse(text):
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items or any(x not in allowed for x in items):
            raise argparse.ArgumentTypeError(f"bad list {text!r}; choose from {', '.join(allowed)}")
        return items
    return parse


def tool(argv, timeout_s=3600, env=None, check=True):
    """Runs a tool; returns (CompletedProcess, wall seconds, CPU seconds of the children)."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    if check and p.returncode != 0:
        raise RuntimeError(f"`{shlex.join(argv[:8])}{' ...' if len(argv) > 8 else ''}` exited "
                           f"{p.returncode}: {(p.stderr or p.stdout).strip()[-800:]}")
    return p, wall, cpu


def drop_file_cache(path):
    """Evicts one file's pages (after a sync) so that the next reader goes to the disk:
    blockd reads its data O_DIRECT, so restic's source must not come from memory either."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_tree_cache(root):
    for d, _, files in os.walk(root):
        for f in files:
            try:
                drop_file_cache(os.path.join(d, f))
            except OSError:
                pass


def dir_bytes(root):
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_blocks * 512
            except OSError:
                pass
    return total


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# ---------------------------------------------------------------- S3 servers

class ObjectdServer:
    """objectd as the integration tests start it (s3harness.Objectd), with the attributes
    s3_bench.run_phase wants (name, endpoint, creds, cpu_s)."""

    name = "objectd"

    def __init__(self):
        self.o = s3harness.Objectd(label="bkb-obj")

    def start(self):
        self.o.start()
        self.endpoint = self.o.endpoint
        self.creds = (self.o.access_key, self.o.secret_key)
        self.command = shlex.join(self.o.command()).replace(self.o.tmp, "$OBJDIR")
        self.data_dir = self.o.data_dir

    def cpu_s(self):
        return s3b.proc_cpu_s(self.o.pid) if self.o.pid else None

    def alive(self):
        return self.o.alive()

    def version(self):
        return "this tree"

    def stop(self):
        try:
            self.o.stop(check=False)
        finally:
            self.o.cleanup()


class S3rverServer:
    """s3rver from the npm registry, started by s3_bench.py's S3rver class."""

    name = "s3rver"

    def __init__(self, workdir, s3rver_dir):
        shim = argparse.Namespace(s3rver_dir=s3rver_dir)
        self.s = s3b.S3rver(workdir, shim)

    def start(self):
        self.s.start()
        self.endpoint = self.s.endpoint
        self.creds = self.s.creds
        self.command = self.s.command
        self.data_dir = os.path.join(self.s.dir, "data")

    def cpu_s(self):
        return self.s.cpu_s()

    def alive(self):
        return self.s.proc is not None and self.s.proc.poll() is None

    def stop(self):
        self.s.stop()
        shutil.rmtree(self.s.dir, ignore_errors=True)


class S3rverTls:
    """A second s3rver, serving HTTPS with a throw-away self-signed certificate, for restic
    only: restic's S3 library (minio-go) signs uploads over plain HTTP with streaming SigV4
    (`Content-Encoding: aws-chunked`), which s3rver 3.7.1 stores verbatim, chunk framing
    and all, so the repository is unreadable; over HTTPS minio-go sends UNSIGNED-PAYLOAD."""

    name = "s3rver"

    def __init__(self, workdir, s3rver_dir):
        self.dir = tempfile.mkdtemp(prefix="s3rver-tls-", dir=workdir)
        self.s3rver_dir = s3rver_dir
        self.proc = None

    def start(self):
        key, cert = os.path.join(self.dir, "key.pem"), os.path.join(self.dir, "cert.pem")
        tool(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
              "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
              "-addext", "subjectAltName=IP:127.0.0.1"])
        self.cacert = cert
        data = os.path.join(self.dir, "data")
        os.makedirs(data)
        self.data_dir = data
        port = s3b.free_port()
        script = os.path.join(self.s3rver_dir, "node_modules", "s3rver", "bin", "s3rver.js")
        argv = [shutil.which("node") or "node", script, "-d", data, "-a", "127.0.0.1", "-p",
                str(port), "--silent", "--no-vhost-buckets", "--key", key, "--cert", cert]
        self.command = shlex.join(argv).replace(self.dir, "$TLSDIR").replace(self.s3rver_dir, "$S3RVER")
        self.proc = harness.spawn(argv, os.path.join(self.dir, "s3rver.log"))
        self.endpoint = f"https://127.0.0.1:{port}"
        self.creds = ("S3RVER", "S3RVER")

        def listening():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False
        s3b.wait_until(listening, 60, "s3rver (TLS) listening", self.proc)

    def cpu_s(self):
        return s3b.proc_cpu_s(self.proc.pid) if self.proc else None

    def stop(self):
        if self.proc is not None:
            p, self.proc = self.proc, None
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def s3_client(server):
    return s3harness.s3_client(server.endpoint, *server.creds)


def ensure_bucket(server, bucket):
    c = s3_client(server)
    try:
        c.create_bucket(Bucket=bucket)
    except s3harness.ClientError as e:
        if s3harness.error_code(e)[1] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def delete_prefix(server, bucket, prefix):
    """Removes every object under bucket/prefix (one DELETE each: plain enough for any S3)."""
    c = s3_client(server)
    # The whole listing first: s3rver fails a listing whose continuation key was deleted.
    keys = [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    for k in keys:
        c.delete_object(Bucket=bucket, Key=k)
    return len(keys)


# ---------------------------------------------------------------- blockd + cairn

class Node:
    """blockd (harness.Blockd) and the cairn CLI pointed at it."""

    def __init__(self):
        self.b = harness.Blockd(label="bkb-blk")

    def start(self):
        self.b.start()
        self.command = ("blockd --data-dir $BLKDIR/data --nbd-listen 127.0.0.1:0 "
                        "--nbd-socket $BLKDIR/data/nbd.sock --api-listen 127.0.0.1:0")

    def cpu_s(self):
        return s3b.proc_cpu_s(self.b.pid) if self.b.pid else None

    def stop(self):
        try:
            self.b.stop(check=False)
        finally:
            self.b.cleanup()

    def cairn(self, server, *args, timeout_s=3600, check=True):
        cmd = [harness.CAIRN, "--api", self.b.api, "--token", self.b.token,
               "--s3-endpoint", server.endpoint, "--access-key", server.creds[0],
               "--secret-key", server.creds[1], "--json", *args]
        p, wall, _ = tool(cmd, timeout_s=timeout_s, check=check)
        out = json.loads(p.stdout) if p.returncode == 0 and p.stdout.strip() else None
        return out, wall, p

    def api(self, method, path, body=None):
        status, out = self.b.http(method, path, body)
        if status // 100 != 2:
            raise RuntimeError(f"{method} {path}: HTTP {status} {out}")
        return out

    def snapshot(self, vol, snap):
        self.api("POST", f"/v1/volumes/{vol}/snapshots", {"name": snap})

    def delete_volume(self, vol):
        status, out = self.b.http("DELETE", f"/v1/volumes/{vol}?force=true")
        if status // 100 != 2:
            raise RuntimeError(f"delete volume {vol}: HTTP {status} {out}")

    def uri(self, name):
        return self.b.tcp_uri(name)


def write_chunks(node, vol, chunks, rng_bytes):
    """Writes a fresh random 4 MiB into each chunk index, 4 requests in flight."""
    h = harness.nbd_connect(node.uri(vol))
    try:
        pending = []
        for i in chunks:
            buf = harness.nbd.Buffer.from_bytearray(bytearray(rng_bytes(CHUNK)))
            pending.append((h.aio_pwrite(buf, i * CHUNK), buf))
            while len(pending) >= 4:
                h.poll(-1)
                pending = [(c, b) for c, b in pending if not h.aio_command_completed(c)]
        while pending:
            h.poll(-1)
            pending = [(c, b) for c, b in pending if not h.aio_command_completed(c)]
        h.flush()
    finally:
        harness.nbd_close(h)


def write_scattered(node, vol, offsets, rng_bytes):
    h = harness.nbd_connect(node.uri(vol))
    try:
        for off in offsets:
            h.pwrite(rng_bytes(EXTENT), off)
        h.flush()
    finally:
        harness.nbd_close(h)


def qemu_compare(a, b):
    p, wall, _ = tool(["qemu-img", "compare", "-f", "raw", "-F", "raw", a, b], check=False)
    if p.returncode != 0:
        raise RuntimeError(f"{a} and {b} differ: {(p.stdout + p.stderr).strip()[-400:]}")
    return wall


def job_result(job):
    """(durationS from the job, stats dict) of a finished cairn backup job."""
    if not job or job.get("state") != "done":
        raise RuntimeError(f"job did not finish: {job}")
    res = job.get("result", {})
    stats = {k: float(v) for k, v in res.get("stats", {}).items()}
    return res, stats


# ---------------------------------------------------------------- bounds

def bound_fio(directory, size, seconds):
    path = os.path.join(directory, "fio-bound.dat")
    out = {}
    try:
        for rw in ("write", "read"):
            p, _, _ = tool(["fio", "--name=bound", f"--filename={path}", f"--rw={rw}", "--bs=1M",
                            "--direct=1", "--ioengine=libaio", "--iodepth=8", f"--size={size}",
                            "--time_based", f"--runtime={seconds}", "--output-format=json"],
                           timeout_s=600)
            out[f"fio_{rw}_mb_s"] = json.loads(p.stdout)["jobs"][0][rw]["bw_bytes"] / 1e6
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return out


def bound_sha256(seconds):
    p, _, _ = tool(["openssl", "speed", "-evp", "sha256", "-bytes", str(CHUNK),
                    "-seconds", str(int(max(1, seconds)))], timeout_s=120)
    # Last line: "sha256   1234567.89k" (in 1000s of bytes per second).
    m = re.search(r"^sha256\s+([0-9.]+)k\s*$", p.stdout, re.MULTILINE | re.IGNORECASE)
    if not m:
        raise RuntimeError(f"cannot read openssl speed output: {p.stdout[-300:]}")
    return {"sha256_mb_s": float(m.group(1)) * 1e3 / 1e6}


def bound_zstd(directory, seconds):
    path = os.path.join(directory, "zstd-bound.dat")
    with open(path, "wb") as f:
        f.write(os.urandom(64 * MiB))
    try:
        p, _, _ = tool(["zstd", "-b3", "-e3", f"-i{int(max(1, seconds))}", f"-B{CHUNK}", "-T1",
                        path], timeout_s=120)
    finally:
        os.unlink(path)
    text = p.stdout + p.stderr
    # " 3#zstd-bound.dat :  67108864 ->  67110422 (x1.000), 1021.6 MB/s, 8234.1 MB/s"
    m = re.findall(r"->\s*(\d+)\s*\(x?([0-9.]+)\),\s*([0-9.]+)\s*MB/s\s*,\s*([0-9.]+)\s*MB/s", text)
    if not m:
        raise RuntimeError(f"cannot read zstd -b output: {text[-300:]}")
    _, ratio_x, comp, decomp = m[-1]
    return {"zstd3_compress_mb_s": float(comp), "zstd_decompress_mb_s": float(decomp),
            "zstd3_ratio": float(ratio_x)}


def bound_s3(server, seconds):
    """PUT then GET of 4 MiB objects, 4 connections, with s3_bench.py's load generator."""
    ensure_bucket(server, s3b.BUCKET)
    put, keys = s3b.run_phase(server, "PUT", CHUNK, 4, seconds)
    os.sync()
    get, _ = s3b.run_phase(server, "GET", CHUNK, 4, seconds, keys)
    delete_prefix(server, s3b.BUCKET, "")
    return {"put_mb_s": put["mb_s"], "get_mb_s": get["mb_s"],
            "put_server_cpu_s_per_gb": put.get("cpu_s_per_gb"),
            "get_server_cpu_s_per_gb": get.get("cpu_s_per_gb")}


# ---------------------------------------------------------------- restic

class Restic:
    def __init__(self, server, workdir, rep, cacert=None):
        self.server = server
        self.cacert = cacert
        self.repo = f"s3:{server.endpoint}/{RESTIC_BUCKET}/r{rep}"
        self.prefix = f"r{rep}/"
        self.env = dict(os.environ)
        self.env.update(s3harness.no_proxy_env())
        self.env.update({"AWS_ACCESS_KEY_ID": server.creds[0],
                         "AWS_SECRET_ACCESS_KEY": server.creds[1],
                         "RESTIC_PASSWORD": RESTIC_PASSWORD,
                         "RESTIC_CACHE_DIR": os.path.join(workdir, f"restic-cache-{server.name}-{rep}")})

    def run(self, *args, timeout_s=3600):
        argv = ["restic", "-r", self.repo, "-o", "s3.region=us-east-1", *args]
        if self.cacert:
            argv[1:1] = ["--cacert", self.cacert]
        return tool(argv, timeout_s=timeout_s, env=self.env)

    def init(self):
        self.run("init")

    def backup(self, path):
        p, wall, cpu = self.run("backup", "--json", "--host", "bench", path)
        summary = {}
        for line in p.stdout.splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if d.get("message_type") == "summary":
                summary = d
        return wall, cpu, summary

    def restore(self, snapshot_id, target):
        p, wall, cpu = self.run("restore", snapshot_id, "--target", target)
        return wall, cpu


def export_image(node, name, path):
    """nbdcopy of an NBD export to a raw image (sparse where the export reads zeros)."""
    if os.path.exists(path):
        os.unlink(path)
    _, wall, _ = tool(["nbdcopy", node.uri(name), path])
    drop_file_cache(path)
    return wall


# ---------------------------------------------------------------- the run

class Bench:
    def __init__(self, args, workdir):
        self.args = args
        self.work = workdir
        self.rng = random.Random(args.seed)
        self.size = args.size
        self.nchunks = self.size // CHUNK
        self.results = {}     # (server, phase) -> [sample dict]
        self.bounds = {"common": [], }  # "common" -> [dict]; server name -> [dict]
        self.problems = []
        self.facts = {}
        self.data_chunks, self.clustered_chunks, self.scattered_offsets = [], [], []
        self.scattered_chunks = 0
        self.blockd_command = "?"

    def add(self, server, phase, sample):
        self.results.setdefault((server, phase), []).append(sample)
        log(f"{server} {phase}: " + ", ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in sample.items()))

    # ---- data
    def prepare_volume(self, node):
        vol = "vol"
        node.api("POST", "/v1/volumes", {"name": vol, "sizeBytes": str(self.size)})
        data_chunks = sorted(self.rng.sample(range(self.nchunks), self.nchunks // 2))
        self.data_chunks = data_chunks
        t0 = time.perf_counter()
        write_chunks(node, vol, data_chunks, os.urandom)
        log(f"wrote {len(data_chunks)} x 4 MiB of random data in {time.perf_counter() - t0:.1f} s")
        node.snapshot(vol, "s1")
        change = self.size // 100
        # clustered: whole chunks among those holding data, overwritten with new random data
        n_clustered = max(1, round(change / CHUNK))
        self.clustered_chunks = sorted(self.rng.sample(data_chunks, n_clustered))
        # scattered: 64 KiB writes at random 64 KiB-aligned offsets anywhere in the volume
        n_scattered = max(1, round(change / EXTENT))
        self.scattered_offsets = sorted(self.rng.sample(range(self.size // EXTENT), n_scattered))
        self.scattered_offsets = [x * EXTENT for x in self.scattered_offsets]
        self.scattered_chunks = len({o // CHUNK for o in self.scattered_offsets})
        return vol

    def change(self, node, vol, kind):
        t0 = time.perf_counter()
        if kind == "clustered":
            write_chunks(node, vol, self.clustered_chunks, os.urandom)
            node.snapshot(vol, "s2")
        else:
            write_scattered(node, vol, self.scattered_offsets, os.urandom)
            node.snapshot(vol, "s3")
        log(f"{kind} change written in {time.perf_counter() - t0:.1f} s")

    # ---- cairn phases
    def cairn_backup(self, node, server, vol, snap, phase, repo):
        cpu_b0, cpu_s0 = node.cpu_s(), server.cpu_s()
        job, wall, _ = node.cairn(server, "backup", "create", f"{vol}@{snap}", "--repo", repo,
                                  "--poll-ms", "50")
        cpu_b1, cpu_s1 = node.cpu_s(), server.cpu_s()
        res, stats = job_result(job)
        if phase == "full" and res.get("parentId"):
            raise RuntimeError(f"the full backup has a parent: {res}")
        if phase != "full" and not res.get("parentId"):
            raise RuntimeError(f"the {phase} backup is not incremental: {res}")
        self.add(server.name, phase, {
            "duration_s": stats.get("durationS", 0.0), "wall_s": wall,
            "read_bytes": stats.get("readBytes", 0.0), "new_bytes": stats.get("newBytes", 0.0),
            "new_chunks": stats.get("newChunks", 0.0), "reused_chunks": stats.get("reusedChunks", 0.0),
            "logical_bytes": stats.get("logicalBytes", 0.0),
            "blockd_cpu_s": cpu_b1 - cpu_b0, "server_cpu_s": cpu_s1 - cpu_s0})
        return res["backupId"]

    def cairn_restore(self, node, server, vol, backup_id, repo, rep):
        newvol = f"r-{server.name}-{rep}"
        cpu_b0, cpu_s0 = node.cpu_s(), server.cpu_s()
        job, wall, _ = node.cairn(server, "backup", "restore", f"{vol}/{backup_id}", newvol,
                                  "--repo", repo, "--poll-ms", "50")
        cpu_b1, cpu_s1 = node.cpu_s(), server.cpu_s()
        if not job or job.get("state") != "done":
            raise RuntimeError(f"restore failed: {job}")
        data_bytes = len(self.data_chunks) * CHUNK
        self.add(server.name, "restore", {
            "duration_s": float(job.get("elapsedS", wall)), "wall_s": wall,
            "read_bytes": float(data_bytes),
            "fetched_bytes": float(job.get("uploadedBytes", 0)),
            "blockd_cpu_s": cpu_b1 - cpu_b0, "server_cpu_s": cpu_s1 - cpu_s0})
        cmp_s = qemu_compare(node.uri(f"{vol}@s1"), node.uri(newvol))
        log(f"restored volume equals vol@s1 (qemu-img compare, {cmp_s:.1f} s, untimed)")
        node.delete_volume(newvol)

    def cairn_instant(self, node, server, vol, backup_id, repo, rep):
        newvol = f"i-{server.name}-{rep}"
        # A random 4 KiB inside a chunk holding data, in the second half of the chunk list so
        # that the background pass (in index order) has not reached it.
        chunk = self.rng.choice(self.data_chunks[len(self.data_chunks) // 2:])
        off = chunk * CHUNK + self.rng.randrange(CHUNK // 4096) * 4096
        h = harness.nbd_connect(node.uri(f"{vol}@s1"))
        try:
            want = h.pread(4096, off)
        finally:
            harness.nbd_close(h)
        cpu_b0, cpu_s0 = node.cpu_s(), server.cpu_s()
        t0 = time.perf_counter()
        job, _, _ = node.cairn(server, "backup", "restore", f"{vol}/{backup_id}", newvol,
                               "--repo", repo, "--instant", "--detach")
        t_started = time.perf_counter() - t0
        h = harness.nbd_connect(node.uri(newvol))
        try:
            got = h.pread(4096, off)
            t_first = time.perf_counter() - t0
            # a few more reads at random data chunks, one at a time
            more = []
            for c in self.rng.sample(self.data_chunks, min(8, len(self.data_chunks))):
                o = c * CHUNK + self.rng.randrange(CHUNK // 4096) * 4096
                t1 = time.perf_counter()
                h.pread(4096, o)
                more.append(time.perf_counter() - t1)
        finally:
            harness.nbd_close(h)
        if got != want:
            raise RuntimeError(f"instant restore: 4 KiB at {off} differs from vol@s1")
        job_id = job["id"]
        while True:
            j = node.api("GET", f"/v1/backup/jobs/{job_id}")
            if j.get("state") != "running":
                break
            time.sleep(0.05)
        t_done = time.perf_counter() - t0
        cpu_b1, cpu_s1 = node.cpu_s(), server.cpu_s()
        if j.get("state") != "done":
            raise RuntimeError(f"hydration failed: {j}")
        self.add(server.name, "instant", {
            "api_s": t_started, "first_read_s": t_first,
            "next_reads_median_s": statistics.median(more) if more else 0.0,
            "next_reads_max_s": max(more) if more else 0.0,
            "hydrated_s": t_done, "read_bytes": float(len(self.data_chunks) * CHUNK),
            "blockd_cpu_s": cpu_b1 - cpu_b0, "server_cpu_s": cpu_s1 - cpu_s0})
        cmp_s = qemu_compare(node.uri(f"{vol}@s1"), node.uri(newvol))
        log(f"hydrated volume equals vol@s1 (qemu-img compare, {cmp_s:.1f} s, untimed)")
        node.delete_volume(newvol)

    # ---- restic phases
    def restic_phases(self, node, server, vol, rep, snaps):
        img_dir = os.path.join(self.work, "img")
        os.makedirs(img_dir, exist_ok=True)
        img = os.path.join(img_dir, f"{vol}.img")
        tls = None
        if server.name == "s3rver":
            tls = S3rverTls(self.work, self.args.s3rver_dir)
            tls.start()
            self.restic_s3rver_command = tls.command
            server = tls
        try:
            self._restic_phases(node, server, vol, rep, snaps, img,
                                Restic(server, self.work, rep, tls.cacert if tls else None))
        finally:
            if tls is not None:
                used = dir_bytes(tls.data_dir)
                self.add("s3rver", "restic-disk", {"repo_stored_bytes_on_disk": float(used)})
                tls.stop()

    def _restic_phases(self, node, server, vol, rep, snaps, img, r):
        r.init()  # restic creates the bucket
        first_id = None
        for snap, phase in snaps:
            exp_s = export_image(node, f"{vol}@{snap}", img)
            cpu_s0 = server.cpu_s()
            wall, cpu, summary = r.backup(img)
            cpu_s1 = server.cpu_s()
            if first_id is None:
                first_id = summary.get("snapshot_id")
            self.add(server.name, f"restic-{phase}", {
                "duration_s": float(summary.get("total_duration", wall)), "wall_s": wall,
                "export_s": exp_s,
                "read_bytes": float(summary.get("total_bytes_processed", 0)),
                "new_bytes": float(summary.get("data_added", 0)),
                "restic_cpu_s": cpu, "server_cpu_s": cpu_s1 - cpu_s0})
        os.unlink(img)
        target = os.path.join(self.work, "restic-restore")
        shutil.rmtree(target, ignore_errors=True)
        cpu_s0 = server.cpu_s()
        wall, cpu = r.restore(first_id, target)
        cpu_s1 = server.cpu_s()
        restored = os.path.join(target, img.lstrip("/"))
        if not os.path.exists(restored):
            raise RuntimeError(f"restic restore: {restored} missing")
        alloc = os.stat(restored).st_blocks * 512
        self.add(server.name, "restic-restore", {
            "duration_s": wall, "wall_s": wall, "read_bytes": float(len(self.data_chunks) * CHUNK),
            "written_allocated_bytes": float(alloc),
            "restic_cpu_s": cpu, "server_cpu_s": cpu_s1 - cpu_s0})
        cmp_s = qemu_compare(node.uri(f"{vol}@s1"), restored)
        log(f"restic's restored image equals vol@s1 (qemu-img compare, {cmp_s:.1f} s, untimed)")
        shutil.rmtree(target, ignore_errors=True)

    def run(self):
        args = self.args
        servers = []
        node = None
        try:
            node = Node()
            node.start()
            self.blockd_command = node.command
            data_dir = node.b.data_dir
            self.facts["data_fs"] = s3b.fs_type(data_dir)
            for name in args.servers:
                s = ObjectdServer() if name == "objectd" else S3rverServer(self.work, args.s3rver_dir)
                s.start()
                servers.append(s)
                log(f"{name} up at {s.endpoint}")
            self.servers = servers
            # bounds
            if not args.no_bounds:
                log("bounds: fio, openssl, zstd")
                common = {}
                common.update(bound_fio(data_dir, args.fio_size, args.bound_seconds * 2))
                common.update(bound_sha256(args.bound_seconds))
                common.update(bound_zstd(self.work, args.bound_seconds))
                self.bounds["common"].append(common)
                log("bounds: " + ", ".join(f"{k}={v:.0f}" for k, v in common.items()))
                for s in servers:
                    b = bound_s3(s, args.bound_seconds * 2)
                    self.bounds.setdefault(s.name, []).append(b)
                    log(f"bounds {s.name}: " + ", ".join(
                        f"{k}={v:.1f}" for k, v in b.items() if v is not None))
            vol = self.prepare_volume(node)
            for rep in range(1, args.reps + 1):
                repo = f"s3://{REPO_BUCKET}/r{rep}"
                ids = {}
                for s in servers:
                    node.cairn(s, "backup", "init", "--repo", repo)
                    ids[s.name] = {}
                for s in servers:
                    ids[s.name]["full"] = self.cairn_backup(node, s, vol, "s1", "full", repo)
                snaps = [("s1", "full")]
                for kind in args.changes:
                    snap = "s2" if kind == "clustered" else "s3"
                    if rep == 1:
                        self.change(node, vol, kind)
                    for s in servers:
                        ids[s.name][kind] = self.cairn_backup(node, s, vol, snap, kind, repo)
                    snaps.append((snap, kind))
                for s in servers:
                    self.cairn_restore(node, s, vol, ids[s.name]["full"], repo, rep)
                for s in servers:
                    self.cairn_instant(node, s, vol, ids[s.name]["full"], repo, rep)
                if not args.no_restic:
                    for s in servers:
                        self.restic_phases(node, s, vol, rep, snaps)
                for s in servers:
                    used = {"repo_stored_bytes_on_disk": float(dir_bytes(s.data_dir))}
                    self.add(s.name, "disk", used)
                    log(f"{s.name} data dir holds {used['repo_stored_bytes_on_disk'] / GiB:.2f} GiB")
                    if rep < args.reps:
                        try:
                            delete_prefix(s, REPO_BUCKET, f"r{rep}/")
                            if s.name == "objectd":  # s3rver's restic repository went with its TLS instance
                                delete_prefix(s, RESTIC_BUCKET, f"r{rep}/")
                        except Exception as e:  # noqa: BLE001 - only disk space is at stake
                            self.problems.append(f"cleaning up {s.name} after rep {rep}: {e}")
                            log(f"cleaning up {s.name} after rep {rep}: {e}")
        except Exception as e:  # noqa: BLE001 - report what was measured, and the failure
            import traceback
            self.problems.append(f"the run stopped: {type(e).__name__}: {e}\n{traceback.format_exc()}")
            log(f"the run stopped: {e}")
        finally:
            for s in servers:
                try:
                    s.stop()
                except Exception as e:  # noqa: BLE001 - keep stopping the others
                    self.problems.append(f"stopping {s.name}: {e}")
            if node is not None:
                node.stop()


# ---------------------------------------------------------------- report

def med(samples, key):
    vals = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"


def mb_s(nbytes, seconds):
    return nbytes / seconds / 1e6 if nbytes is not None and seconds else None


def report(bench, machine):
    a = bench.args
    R = bench.results
    out = []
    w = out.append
    w("### Backups: cairn backup vs restic, into objectd and s3rver\n")
    w(f"Generated {machine['date']} by `bench/backup_bench.py`. Command:\n")
    w(f"```\n{machine['command']}\n```\n")
    w("Machine: " + ", ".join(f"{k} {v}" for k, v in machine["facts"].items()) + ".\n")
    data = len(bench.data_chunks) * CHUNK
    w(f"Data: a {a.size / GiB:g} GiB thin volume; {len(bench.data_chunks)} of its "
      f"{bench.nchunks} 4 MiB chunks (chosen at random, seed {a.seed}) written whole with "
      f"random bytes (`os.urandom`, incompressible), the others never written: "
      f"{data / GiB:g} GiB of data, snapshot s1. Clustered change (s2): "
      f"{len(bench.clustered_chunks)} whole 4 MiB chunks among those holding data overwritten "
      f"with new random bytes ({len(bench.clustered_chunks) * CHUNK / MiB:g} MiB, 1 % of the "
      f"volume). Scattered change (s3, after s2): {len(bench.scattered_offsets)} random 64 KiB "
      f"writes at 64 KiB-aligned offsets over the whole volume "
      f"({len(bench.scattered_offsets) * EXTENT / MiB:g} MiB, 1 %), touching "
      f"{bench.scattered_chunks} of the {bench.nchunks} chunks. blockd's data and both S3 "
      f"servers' data on {bench.facts.get('data_fs', '?')}.\n")
    w("Method: one blockd (`" + bench.blockd_command + "`, Release build, 4 backup workers per "
      "job); each S3 server gets its own repository `s3://" + REPO_BUCKET + "/rN` (`cairn backup "
      "init`, 4 MiB chunks, zstd level 3, unencrypted). Phases run server after server "
      f"({', '.join(a.servers)}), {a.reps} repetition(s), medians shown. Backup time = the job's "
      "`stats.durationS` (blockd's own clock, from the job start to the manifest); wall = the "
      "CLI command (`--poll-ms 50`); restore time = the job's `elapsedS`. MB/s = 10^6 B/s of "
      "*data* (bytes read from the snapshot for a backup, bytes of the backup's non-hole chunks "
      "for a restore). CPU = utime+stime of the process (blockd, S3 server from /proc; restic "
      "from its rusage). Every restore (cairn, instant, restic) is compared byte for byte with "
      "vol@s1 afterwards (`qemu-img compare`, untimed).\n")
    w("restic (" + machine["facts"].get("restic", "?") + ", Debian package): the snapshot "
      "exported through NBD to a raw image file with `nbdcopy` (sparse; the time is in the "
      "'export' column, not in restic's), the file's page cache dropped (fsync + "
      "POSIX_FADV_DONTNEED, like blockd's O_DIRECT reads), then `restic -r s3:ENDPOINT/"
      f"{RESTIC_BUCKET}/rN -o s3.region=us-east-1 backup --host bench IMG` (repository "
      "format 2, compression auto, default 5 S3 connections); s2 and s3 are exported to the "
      "same path and backed up again (restic finds the parent snapshot and rereads the whole "
      "file: that is its cost); `restic restore SNAP --target DIR` of the s1 snapshot "
      "(restic 0.14 writes the zeros too: no sparse restore). restic's time = its summary's "
      "`total_duration` (backup) or the wall time (restore). Into objectd restic talks plain "
      "HTTP like cairn (minio-go then uploads with streaming SigV4, `aws-chunked`, which objectd "
      "decodes). Into s3rver it cannot: s3rver 3.7.1 stores an `aws-chunked` body verbatim, "
      "chunk framing included, so restic's repository is unreadable (`Unmarshal: invalid "
      "character 'b' after top-level value` on the key file); so restic gets a second s3rver "
      "serving HTTPS with a self-signed certificate (`--cacert`), where minio-go sends "
      "UNSIGNED-PAYLOAD: `" + getattr(bench, "restic_s3rver_command", "?") + "`. That s3rver pays for "
      "TLS, cairn's does not.\n")
    # bounds
    common = bench.bounds.get("common", [])
    if common:
        w("#### Bounds (same run)\n")
        w("| bound | MB/s |")
        w("|---|---:|")
        rows = [("fio_read_mb_s", "disk: fio seq read 1 MiB, O_DIRECT, libaio QD8 (blockd's filesystem)"),
                ("fio_write_mb_s", "disk: fio seq write 1 MiB, O_DIRECT, libaio QD8"),
                ("sha256_mb_s", "SHA-256, one core (`openssl speed -evp sha256 -bytes 4194304`)"),
                ("zstd3_compress_mb_s", "zstd -3 compress, one core, incompressible 4 MiB blocks (`zstd -b3 -B4M -T1`)"),
                ("zstd_decompress_mb_s", "zstd decompress of the same (unused: such chunks are stored raw)")]
        for key, title in rows:
            v = med(common, key)
            if v is not None:
                w(f"| {title} | {fmt(v, 0)} |")
        sha, z = med(common, "sha256_mb_s"), med(common, "zstd3_compress_mb_s")
        if sha and z:
            per_core = 1 / (2 / sha + 1 / z)
            bench.cpu_bound = 2 * per_core
            w(f"| backup CPU per byte, one core: SHA-256 (chunk id) + zstd -3 attempt + SHA-256 "
              f"(SigV4 payload hash of the PUT) | {fmt(per_core, 0)} |")
            w(f"| the same on both cores (blockd alone; the S3 server needs CPU too) | "
              f"{fmt(2 * per_core, 0)} |")
        for s in a.servers:
            b = bench.bounds.get(s, [])
            if b:
                w(f"| {s}: PUT 4 MiB objects, 4 connections (s3_bench.py client), server CPU "
                  f"{fmt(med(b, 'put_server_cpu_s_per_gb'), 2)} s/GB | {fmt(med(b, 'put_mb_s'), 0)} |")
                w(f"| {s}: GET 4 MiB objects, 4 connections, server CPU "
                  f"{fmt(med(b, 'get_server_cpu_s_per_gb'), 2)} s/GB | {fmt(med(b, 'get_mb_s'), 0)} |")
        w("")
    # results
    w("#### Results\n")
    w("| phase | server | time s | wall s | data MB/s | read | stored new | blockd CPU s | server CPU s | restic time s | restic CPU s | restic read | restic stored new | cairn / restic time |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def size_cell(v):
        if v is None:
            return "-"
        return f"{v / GiB:.2f} GiB" if v >= GiB else f"{v / MiB:.1f} MiB"

    phases = [("full", "full backup (s1)", "restic-full")]
    for kind in a.changes:
        phases.append((kind, f"incremental, {kind} 1 % ({'s2' if kind == 'clustered' else 's3'})",
                       f"restic-{kind}"))
    phases.append(("restore", "full restore (of s1's backup)", "restic-restore"))
    for s in a.servers:
        for key, title, rkey in phases:
            c = R.get((s, key), [])
            r = R.get((s, rkey), [])
            if not c:
                w(f"| {title} | {s} | failed | | | | | | | | | | | |")
                continue
            t = med(c, "duration_s")
            rt = med(r, "duration_s") if r else None
            w(f"| {title} | {s} | {fmt(t, 2)} | {fmt(med(c, 'wall_s'), 2)} | "
              f"{fmt(mb_s(med(c, 'read_bytes'), t), 0)} | {size_cell(med(c, 'read_bytes'))} | "
              f"{size_cell(med(c, 'new_bytes'))} | {fmt(med(c, 'blockd_cpu_s'), 1)} | "
              f"{fmt(med(c, 'server_cpu_s'), 1)} | {fmt(rt, 2)} | {fmt(med(r, 'restic_cpu_s'), 1) if r else '-'} | "
              f"{size_cell(med(r, 'read_bytes')) if r and key != 'restore' else '-'} | "
              f"{size_cell(med(r, 'new_bytes')) if r and key != 'restore' else '-'} | "
              f"{fmt(t / rt, 2) if rt else '-'} |")
        inst = R.get((s, "instant"), [])
        if inst:
            w(f"| instant restore: first 4 KiB read | {s} | {fmt(med(inst, 'first_read_s'), 3)} | "
              f"| | | | | | | | | | |")
            w(f"| instant restore: hydrated | {s} | {fmt(med(inst, 'hydrated_s'), 2)} | | "
              f"{fmt(mb_s(med(inst, 'read_bytes'), med(inst, 'hydrated_s')), 0)} | | | "
              f"{fmt(med(inst, 'blockd_cpu_s'), 1)} | {fmt(med(inst, 'server_cpu_s'), 1)} | | | | | |")
    w("")
    for s in a.servers:
        inst = R.get((s, "instant"), [])
        r = [x for k in ("restic-full", "restic-clustered", "restic-scattered")
             for x in R.get((s, k), [])]
        bits = []
        if inst:
            bits.append(f"instant restore: the restore call returned after "
                        f"{fmt(med(inst, 'api_s'), 3)} s, the first 4 KiB read (a chunk not "
                        f"hydrated yet) after {fmt(med(inst, 'first_read_s'), 3)} s from the "
                        f"start; 8 more reads at random data chunks took "
                        f"{fmt(med(inst, 'next_reads_median_s') * 1e3, 1)} ms median, "
                        f"{fmt(med(inst, 'next_reads_max_s') * 1e3, 1)} ms max")
        if r:
            bits.append(f"nbdcopy export for restic {fmt(med(r, 'export_s'), 1)} s per image")
        d = R.get((s, "disk"), [])
        if d:
            bits.append(f"the server's data dir held {fmt(med(d, 'repo_stored_bytes_on_disk') / GiB, 2)} "
                        f"GiB at the end (both repositories)")
        if bits:
            w(f"- {s}: " + "; ".join(bits) + ".")
    w("")
    if bench.problems:
        w("#### Problems\n")
        for p in bench.problems:
            w("```\n" + p.strip()[-3000:] + "\n```")
        w("")
    return "\n".join(out) + "\n"


def targets_text(bench):
    """The issue's targets, checked against the medians; plain text for the report."""
    a = bench.args
    R = bench.results
    common = bench.bounds.get("common", [])
    lines = ["#### Targets (from the issue)\n"]
    for s in a.servers:
        full = R.get((s, "full"), [])
        rest = R.get((s, "restore"), [])
        b = bench.bounds.get(s, [])
        if not full or not common or not b:
            continue
        full_rate = mb_s(med(full, "read_bytes"), med(full, "duration_s"))
        bounds_b = {"disk read": med(common, "fio_read_mb_s"), f"{s} PUT x4": med(b, "put_mb_s"),
                    "backup CPU on 2 cores": getattr(bench, "cpu_bound", None)}
        bounds_b = {k: v for k, v in bounds_b.items() if v}
        slow_k = min(bounds_b, key=bounds_b.get)
        lines.append(f"- {s}, full backup: {fmt(full_rate, 0)} MB/s = "
                     f"{full_rate / bounds_b[slow_k] * 100:.0f} % of the slowest bound "
                     f"({slow_k}, {fmt(bounds_b[slow_k], 0)} MB/s); target >= 80 %: "
                     f"{'met' if full_rate >= 0.8 * bounds_b[slow_k] else 'missed'}.")
        if rest:
            rest_rate = mb_s(med(rest, "read_bytes"), med(rest, "duration_s"))
            bounds_r = {"disk write": med(common, "fio_write_mb_s"), f"{s} GET x4": med(b, "get_mb_s"),
                        "SHA-256 on 2 cores": 2 * med(common, "sha256_mb_s")}
            bounds_r = {k: v for k, v in bounds_r.items() if v}
            slow_r = min(bounds_r, key=bounds_r.get)
            lines.append(f"- {s}, full restore: {fmt(rest_rate, 0)} MB/s = "
                         f"{rest_rate / bounds_r[slow_r] * 100:.0f} % of the slowest bound "
                         f"({slow_r}, {fmt(bounds_r[slow_r], 0)} MB/s); target >= 80 %: "
                         f"{'met' if rest_rate >= 0.8 * bounds_r[slow_r] else 'missed'}.")
        for kind in a.changes:
            inc = R.get((s, kind), [])
            if inc:
                ratio = med(inc, "duration_s") / med(full, "duration_s")
                ideal = med(inc, "read_bytes") / med(full, "read_bytes")
                lines.append(f"- {s}, incremental ({kind}, 1 % of the volume changed): "
                             f"{ratio * 100:.1f} % of the full backup's time (it read "
                             f"{ideal * 100:.1f} % of what the full one read); target about 1 %.")
        for key, title in (("full", "full"), ("clustered", "incremental (clustered)"),
                           ("scattered", "incremental (scattered)")):
            c, r = R.get((s, key), []), R.get((s, f"restic-{key}"), [])
            if c and r:
                ratio = med(c, "duration_s") / med(r, "duration_s")
                lines.append(f"- {s}, {title} vs restic: cairn/restic time {ratio:.2f} "
                             f"({'ahead' if ratio < 1 else 'behind'}).")
    return "\n".join(lines) + "\n"


def s3rver_version(s3rver_dir):
    try:
        with open(os.path.join(s3rver_dir, "node_modules", "s3rver", "package.json")) as f:
            return json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        return "?"


def machine_facts(args, bench):
    facts = {**base_facts(),
             "restic": cmd_output(["restic", "version"]).split(" compiled")[0].replace("restic ", ""),
             "zstd": cmd_output(["zstd", "--version"]).split(",")[0].replace("*** ", ""),
             "openssl": cmd_output(["openssl", "version"]),
             "s3rver": s3rver_version(args.s3rver_dir) if "s3rver" in args.servers else "-",
             "node": cmd_output(["node", "--version"]),
             "binaries": args.build_dir}
    return facts


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build-dir", default=os.environ.get("CAIRN_BUILD_DIR") or os.path.join(ROOT, "build"),
                   help="CMake build dir with blockd, objectd and cairn (default $CAIRN_BUILD_DIR "
                        "or %(default)s)")
    p.add_argument("--size", type=parse_size_bytes, default="4G", help="volume size (default %(default)s)")
    p.add_argument("--reps", type=int, default=1, help="repetitions, medians reported (default %(default)s)")
    p.add_argument("--servers", type=csv_of(SERVERS_ALL), default="objectd,s3rver",
                   help="comma list of " + ", ".join(SERVERS_ALL) + " (default %(default)s)")
    p.add_argument("--changes", type=csv_of(CHANGES_ALL), default="clustered,scattered",
                   help="the 1 %% changes to back up incrementally (default %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="where the data and changes go (default %(default)s)")
    p.add_argument("--no-restic", action="store_true", help="skip restic")
    p.add_argument("--no-bounds", action="store_true", help="skip the bounds")
    p.add_argument("--bound-seconds", type=float, default=3,
                   help="seconds per CPU bound (fio and S3: twice that) (default %(default)s)")
    p.add_argument("--fio-size", default="2G", help="fio file size (default %(default)s)")
    p.add_argument("--s3rver-dir", default=os.path.join(ROOT, "var", "bench", "s3rver"),
                   help="npm prefix holding s3rver (installed there with npm if missing)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "backup-latest.md"),
                   help="markdown report (default %(default)s; .json beside it)")
    p.add_argument("--splice", metavar="DOC", default=None,
                   help="also put the report between the backup-bench markers of DOC "
                        "(e.g. docs/BENCHMARKS.md)")
    p.add_argument("--no-install", action="store_true",
                   help="do not run scripts/install-deps.sh --bench (restic, zstd, node)")
    args = p.parse_args()
    if args.size < 64 * MiB or args.size % CHUNK or args.reps < 1:
        p.error("--size must be a multiple of 4 MiB, at least 64 MiB; --reps >= 1")
    args.build_dir = os.path.abspath(args.build_dir)
    os.environ["CAIRN_BUILD_DIR"] = args.build_dir
    args.s3rver_dir = os.path.abspath(args.s3rver_dir)

    global harness, s3harness, s3b
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    import harness  # noqa: E402
    import s3harness  # noqa: E402
    import s3_bench as s3b  # noqa: E402

    if not args.no_install:
        subprocess.run([os.path.join(ROOT, "scripts", "install-deps.sh"), "--bench"], check=True)
    if "s3rver" in args.servers and not os.path.exists(
            os.path.join(args.s3rver_dir, "node_modules", "s3rver")):
        log(f"installing s3rver@{s3b.S3RVER_VERSION} into {args.s3rver_dir}")
        os.makedirs(args.s3rver_dir, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", args.s3rver_dir,
                        f"s3rver@{s3b.S3RVER_VERSION}"], check=True)
    for b in (harness.BLOCKD, harness.CAIRN, s3harness.OBJECTD):
        if not os.path.exists(b):
            p.error(f"{b} not found (build blockd, objectd and cairn in {args.build_dir})")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    # s3rver 3.7.1 encrypts ListObjectsV2 continuation tokens with DES, which Node 17+ (OpenSSL
    # 3) has only in its legacy provider: without it every listing past 1000 keys fails with
    # InternalError (cairn's `backup list`, prune and GC, boto3 alike).
    if "--openssl-legacy-provider" not in os.environ.get("NODE_OPTIONS", ""):
        os.environ["NODE_OPTIONS"] = (os.environ.get("NODE_OPTIONS", "") + " --openssl-legacy-provider").strip()
    workdir = tempfile.mkdtemp(prefix="cairn-backup-bench-")
    need = args.size * 3
    if free_bytes(workdir) < need:
        shutil.rmtree(workdir, ignore_errors=True)
        p.error(f"{workdir}: less than {need / GiB:.0f} GiB free; try a smaller --size")
    argv0 = os.path.relpath(sys.argv[0], ROOT) if not os.path.isabs(sys.argv[0]) else \
        os.path.relpath(sys.argv[0], ROOT)
    bench = Bench(args, workdir)
    machine = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
               "command": shlex.join([argv0] + sys.argv[1:]),
               "facts": machine_facts(args, bench)}
    t0 = time.monotonic()
    try:
        bench.run()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    machine["facts"]["loadavg at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    machine["facts"]["run time"] = f"{(time.monotonic() - t0) / 60:.0f} min"
    text = report(bench, machine) + targets_text(bench)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({"machine": machine, "bounds": bench.bounds,
                   "results": {f"{srv} {phase}": v for (srv, phase), v in bench.results.items()},
                   "problems": bench.problems}, f, indent=1)
    log(f"wrote {args.out}")
    if args.splice:
        splice(args.splice, text, MARK_BEGIN, MARK_END,
               "## Backups (blockd -> S3)\n\nRegenerate with `bench/backup_bench.py` (see "
               "bench/README.md, \"Backups\"); the section between the markers below is "
               "replaced by the run, the same report is kept in "
               "`bench/results/backup-latest.md`.")
        log(f"updated {args.splice} between {MARK_BEGIN} and {MARK_END}")
    sys.stdout.write(text)
    return 1 if bench.problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); servers stopped")
        sys.exit(130)
