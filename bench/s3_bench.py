#!/usr/bin/python3
"""S3 benchmark: objectd against s3rver, beside the raw ceilings of the same machine.

PUT and GET of objects of several sizes at several concurrencies, driven by one load
generator (this file: http.client + SigV4 with UNSIGNED-PAYLOAD, one process per
connection) against every server, interleaved case by case (A B A B ...) so the drift of
a shared, noisy machine hits all servers alike. Beside them, in the same run, the ceilings
of the work a PUT does: ISA-L Reed-Solomon encode, OpenSSL MD5 and ISA-L CRC32C rates
(bench/ceilings.cc, target cairn_bench_ceilings) and fio sequential 1 MiB O_DIRECT
write/read on the filesystem holding the servers' data. See bench/README.md ("S3") for
what is measured and how to read it. Stdlib only; run with /usr/bin/python3.
"""

import argparse
import datetime
import hashlib
import hmac
import http.client
import json
import multiprocessing
import os
import platform
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
import urllib.parse

from benchlib import (base_facts, cmd_output, free_port, fs_type, proc_cpu_s, splice,  # noqa: E402,F401
                      tail, wait_until)

SERVERS_ALL = ("objectd", "s3rver")
MARK_BEGIN = "<!-- s3-bench:begin -->"
MARK_END = "<!-- s3-bench:end -->"
REGION = "us-east-1"
BUCKET = "bench"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S3RVER_DIR_DEFAULT = os.path.join(ROOT, "var", "bench", "s3rver")
S3RVER_VERSION = "3.7.1"


# ---------------------------------------------------------------- small helpers

def log(msg):
    print(f"[s3-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size_bytes(text):
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b?)\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 4K, 1M, 64M)")
    shift = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]
    return int(m.group(1)) << shift


def format_size(size_bytes):
    for suffix, shift in ((" GiB", 30), (" MiB", 20), (" KiB", 10)):
        if size_bytes % (1 << shift) == 0:
            return f"{size_bytes >> shift}{suffix}"
    return f"{size_bytes} B"


def csv_of(parse_one, allowed=None):
    def parse(text):
        items = [x.strip() for x in text.split(",") if x.strip()]
        if allowed and items == ["all"]:
            return list(allowed)
        if not items or (allowed and any(x not in allowed for x in items)):
            raise argparse.ArgumentTypeError(
                f"bad list {text!r}" + (f"; choose from {', '.join(allowed)}" if allowed else ""))
        return [parse_one(x) for x in items]
    return parse


def percentile(sorted_vals, q):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


# ---------------------------------------------------------------- the S3 client

class S3Conn:
    """One keep-alive HTTP/1.1 connection that signs requests with SigV4 (header form,
    x-amz-content-sha256: UNSIGNED-PAYLOAD, so the client does not hash the body: the
    same client cost for every server). Path-style addressing."""

    def __init__(self, endpoint, access_key, secret_key, timeout_s=300):
        u = urllib.parse.urlsplit(endpoint)
        self.host, self.port = u.hostname, u.port or 80
        self.host_header = f"{self.host}:{self.port}"
        self.access_key, self.secret_key = access_key, secret_key
        self.timeout_s = timeout_s
        self.conn = None
        self.last_headers = {}  # of the last response
        self._key_date, self._key = None, None

    def _signing_key(self, date):
        if self._key_date != date:
            k = hmac.new(b"AWS4" + self.secret_key.encode(), date.encode(), hashlib.sha256).digest()
            for part in (REGION, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._key_date, self._key = date, k
        return self._key

    def _headers(self, method, path, query, extra):
        now = time.gmtime()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", now)
        date = amz_date[:8]
        headers = {"host": self.host_header, "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
                   "x-amz-date": amz_date}
        headers.update({k.lower(): v for k, v in (extra or {}).items()})
        names = sorted(headers)
        canonical_query = "&".join(
            f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
            for k, v in sorted(query))
        canonical = "\n".join([method, path, canonical_query,
                               "".join(f"{n}:{str(headers[n]).strip()}\n" for n in names),
                               ";".join(names), "UNSIGNED-PAYLOAD"])
        scope = f"{date}/{REGION}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        sig = hmac.new(self._signing_key(date), to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                                    f"SignedHeaders={';'.join(names)}, Signature={sig}")
        return headers

    def request(self, method, path, body=None, query=(), headers=None, sink=None):
        """Sends one request; returns (status, body bytes) or, with sink (a writable
        memoryview), (status, bytes read into it). Reconnects once on a dropped
        keep-alive connection."""
        target = path + ("?" + "&".join(f"{urllib.parse.quote(k, safe='-_.~')}="
                                        f"{urllib.parse.quote(v, safe='-_.~')}"
                                        for k, v in query) if query else "")
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            h = self._headers(method, path, query, headers)
            if body is not None:
                h["content-length"] = str(len(body))
            try:
                self.conn.request(method, target, body=body, headers=h)
                r = self.conn.getresponse()
                self.last_headers = {k.lower(): v for k, v in r.getheaders()}
                if sink is not None and r.status == 200:
                    got = 0
                    while True:
                        n = r.readinto(sink[got:])
                        if not n:
                            break
                        got += n
                    extra = r.read()  # longer than expected: counted, not kept
                    return r.status, got + len(extra)
                data = r.read()
                return r.status, data
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()
                if attempt == 1 or body is not None and method != "PUT":
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def quote_key(key):
    return urllib.parse.quote(key, safe="/-_.~")


# ---------------------------------------------------------------- load generation

def _worker(endpoint, creds, op, size, keys_in, runtime_s, min_ops, barrier, out_q, index):
    """One connection: PUT fresh keys (or GET keys_in round-robin) until runtime_s has
    passed and at least min_ops are done."""
    try:
        c = S3Conn(endpoint, *creds)
        payload = memoryview(os.urandom(size)) if op == "PUT" else None
        sink = memoryview(bytearray(size + 1)) if op == "GET" else None
        # Warm the connection (not timed): one HEAD of the bucket; a server still busy with
        # the previous phase may drop a fresh connection, so a few tries.
        for attempt in range(5):
            try:
                c.request("HEAD", f"/{BUCKET}")
                break
            except OSError:
                c.close()
                if attempt == 4:
                    raise
                time.sleep(0.5)
        barrier.wait(120)
        lat, keys, errors = [], [], []
        t_start = time.monotonic()
        end = t_start + runtime_s
        n = 0
        while True:
            if op == "PUT":
                key = f"{size}/{os.getpid()}-{index}/{n}"
                t0 = time.monotonic()
                status, body = c.request("PUT", f"/{BUCKET}/{quote_key(key)}", body=payload)
                t1 = time.monotonic()
                if status != 200:
                    errors.append(f"PUT {key}: {status} {body[:200]!r}")
                    break
                keys.append(key)
            else:
                key = keys_in[n % len(keys_in)]
                t0 = time.monotonic()
                status, got = c.request("GET", f"/{BUCKET}/{quote_key(key)}", sink=sink)
                t1 = time.monotonic()
                if status != 200 or got != size:
                    errors.append(f"GET {key}: {status}, {got if status == 200 else got[:200]!r}")
                    break
            lat.append(t1 - t0)
            n += 1
            if t1 >= end and n >= min_ops:
                break
        c.close()
        out_q.put({"index": index, "start": t_start, "stop": time.monotonic(), "lat": lat,
                   "keys": keys, "errors": errors})
    except BaseException as e:  # reported to the parent, which fails the case
        out_q.put({"index": index, "errors": [f"{type(e).__name__}: {e}"], "lat": [], "keys": [],
                   "start": None, "stop": None})


def run_phase(server, op, size, conc, runtime_s, keys_by_worker=None):
    """conc worker processes against server; returns the phase's numbers (and the keys
    written, for the GET phase)."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(conc + 1)
    out_q = ctx.Queue()
    procs = []
    for i in range(conc):
        keys_in = keys_by_worker[i] if keys_by_worker else None
        p = ctx.Process(target=_worker, daemon=True,
                        args=(server.endpoint, server.creds, op, size, keys_in, runtime_s, 1,
                              barrier, out_q, i))
        p.start()
        procs.append(p)
    try:
        barrier.wait(180)  # every worker has its buffers and a warm connection
    except Exception:
        for p in procs:
            p.kill()
        why = []
        while True:
            try:
                why += out_q.get(timeout=1)["errors"]
            except Exception:  # noqa: BLE001 - queue drained
                break
        raise RuntimeError(f"{op} workers did not get ready: {'; '.join(why[:3]) or 'no error'}")
    cpu0 = server.cpu_s()
    ru0 = os.times()
    results = [out_q.get(timeout=runtime_s * 4 + 600) for _ in procs]
    cpu1 = server.cpu_s()
    ru1 = os.times()
    for p in procs:
        p.join(30)
    errors = [e for r in results for e in r["errors"]]
    if errors:
        raise RuntimeError(f"{op} {format_size(size)} x{conc} on {server.name}: " + "; ".join(errors[:3]))
    start = min(r["start"] for r in results)
    stop = max(r["stop"] for r in results)
    lat = sorted(x for r in results for x in r["lat"])
    ops = len(lat)
    wall = stop - start
    out = {"ops": ops, "wall_s": wall, "ops_s": ops / wall, "mb_s": ops * size / wall / 1e6,
           "p50_ms": percentile(lat, 0.5) * 1e3, "p99_ms": percentile(lat, 0.99) * 1e3,
           "client_cpu_s": (ru1.children_user + ru1.children_system)
           - (ru0.children_user + ru0.children_system)}
    if cpu0 is not None and cpu1 is not None:
        out["server_cpu_s"] = cpu1 - cpu0
        out["cpu_s_per_gb"] = (cpu1 - cpu0) / (ops * size / 1e9) if ops else None
        out["cpu_ms_per_op"] = (cpu1 - cpu0) * 1e3 / ops if ops else None
    by_index = sorted(results, key=lambda r: r["index"])
    return out, [r["keys"] for r in by_index]


# ---------------------------------------------------------------- servers

class Server:
    name = "?"

    def __init__(self, workdir, args):
        self.dir = os.path.join(workdir, self.name)
        os.makedirs(self.dir)
        self.args = args
        self.proc = None
        self.log_path = os.path.join(self.dir, "server.log")
        self.endpoint = None
        self.creds = None
        self.command = ""

    def _spawn(self, argv, cwd=None):
        self.command = shlex.join(argv)
        logf = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         cwd=cwd or self.dir)
        finally:
            logf.close()

    def stop(self):
        if self.proc is None:
            return
        p, self.proc = self.proc, None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)

    def cpu_s(self):
        return proc_cpu_s(self.proc.pid) if self.proc else None

    def client(self):
        return S3Conn(self.endpoint, *self.creds)


class Objectd(Server):
    name = "objectd"

    def start(self):
        binary = os.path.join(self.args.build_dir, "objectd", "objectd")
        if not os.path.exists(binary):
            raise RuntimeError(f"{binary} not found (build the objectd target)")
        data = os.path.join(self.dir, "data")
        argv = [binary, "--data-dir", data, "--listen", "127.0.0.1:0"] + shlex.split(self.args.objectd_opts)
        self._spawn(argv)
        line = {}

        def ready():
            for ln in tail(self.log_path, 50).splitlines():
                if "objectd ready" in ln:
                    line["text"] = ln
                    return True
            return False
        wait_until(ready, 60, "objectd ready", self.proc)
        fields = dict(re.findall(r"(\w+)=(\S+)", line["text"].split("objectd ready", 1)[1]))
        self.endpoint = fields["endpoint"].rstrip("/")
        kv = dict(ln.strip().split("=", 1) for ln in open(fields["credentials"]) if "=" in ln)
        self.creds = (kv["access_key_id"], kv["secret_access_key"])
        self.command = self.command.replace(self.dir, "$DIR")


class S3rver(Server):
    name = "s3rver"

    def start(self):
        script = os.path.join(self.args.s3rver_dir, "node_modules", "s3rver", "bin", "s3rver.js")
        if not os.path.exists(script):
            raise RuntimeError(f"{script} not found: npm install --prefix {self.args.s3rver_dir} "
                               f"s3rver@{S3RVER_VERSION}")
        port = free_port()
        data = os.path.join(self.dir, "data")
        os.makedirs(data)
        node = shutil.which("node") or "node"
        self._spawn([node, script, "-d", data, "-a", "127.0.0.1", "-p", str(port), "--silent",
                     "--no-vhost-buckets"])
        self.command = self.command.replace(self.dir, "$DIR").replace(self.args.s3rver_dir, "$S3RVER")
        self.endpoint = f"http://127.0.0.1:{port}"
        self.creds = ("S3RVER", "S3RVER")  # s3rver's built-in account

        def listening():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False
        wait_until(listening, 60, "s3rver listening", self.proc)


def s3rver_version(s3rver_dir):
    try:
        with open(os.path.join(s3rver_dir, "node_modules", "s3rver", "package.json")) as f:
            return json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        return "?"


SERVER_CLASSES = {"objectd": Objectd, "s3rver": S3rver}


# ---------------------------------------------------------------- ceilings

def run_ceilings(args, workdir):
    out = {}
    tool = os.path.join(args.build_dir, "bench", "cairn_bench_ceilings")
    if os.path.exists(tool):
        # Best of three: a ceiling is what the core does when it gets the core, and other
        # jobs on a shared machine only ever lower a run.
        for _ in range(3):
            p = subprocess.run([tool, "--seconds", str(args.ceiling_seconds)],
                               capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                raise RuntimeError(f"{tool} failed: {p.stderr.strip()}")
            for k, v in json.loads(p.stdout).items():
                out[k] = max(out.get(k, v), v) if k.endswith("_mb_s") else v
    else:
        log(f"{tool} not found: no CPU ceilings (build target cairn_bench_ceilings)")
    if shutil.which("fio"):
        path = os.path.join(workdir, "fio.dat")
        for rw in ("write", "read"):
            p = subprocess.run(
                ["fio", "--name=ceiling", f"--filename={path}", f"--rw={rw}", "--bs=1M",
                 "--direct=1", "--ioengine=libaio", "--iodepth=8", f"--size={args.fio_size}",
                 "--time_based", f"--runtime={args.ceiling_seconds * 2}", "--output-format=json"],
                capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                raise RuntimeError(f"fio {rw} failed: {p.stderr.strip()[-500:]}")
            job = json.loads(p.stdout)["jobs"][0][rw]
            out[f"fio_seq_{rw}_mb_s"] = job["bw_bytes"] / 1e6
        os.unlink(path)
        out["fio_version"] = cmd_output(["fio", "--version"])
    return out


# ---------------------------------------------------------------- the run

def delete_keys(server, keys):
    c = server.client()
    for k in keys:
        status, body = c.request("DELETE", f"/{BUCKET}/{quote_key(k)}")
        if status not in (200, 204):
            raise RuntimeError(f"DELETE {k} on {server.name}: {status} {body[:200]!r}")
    c.close()


def verify_one(server, key, size):
    """Untimed: one object read back must be the bytes a worker sent: its length, and its
    MD5 equal to the ETag the server computed when the PUT came in."""
    c = server.client()
    status, data = c.request("GET", f"/{BUCKET}/{quote_key(key)}")
    etag = c.last_headers.get("etag", "")
    c.close()
    if status != 200 or len(data) != size:
        raise RuntimeError(f"verify {key} on {server.name}: {status}, {len(data)} bytes")
    if etag.strip('"') != hashlib.md5(data).hexdigest():
        raise RuntimeError(f"verify {key} on {server.name}: ETag {etag} is not the MD5 of "
                           f"the {len(data)} bytes read back")


def run_all(args, workdir, cases, problems):
    servers = []
    results = {}
    try:
        for name in args.servers:
            s = SERVER_CLASSES[name](workdir, args)
            s.start()
            c = s.client()
            status, body = c.request("PUT", f"/{BUCKET}", body=b"")
            c.close()
            if status != 200:
                raise RuntimeError(f"create bucket on {name}: {status} {body[:300]!r}")
            log(f"{name} up at {s.endpoint}")
            servers.append(s)
        for rep in range(args.reps):
            for size, conc in cases:
                for s in servers:
                    label = f"{format_size(size)} x{conc} {s.name} rep {rep + 1}"
                    try:
                        os.sync()  # so the timed sync below finds only this phase's data
                        put, keys = run_phase(s, "PUT", size, conc, args.runtime)
                        # Not part of the PUT phase: what the server left in the page cache
                        # goes to disk now, so it does not land in the next measurement. Its
                        # duration is reported beside the PUT rate (a server that fsyncs
                        # before it answers leaves little).
                        t0 = time.monotonic()
                        os.sync()
                        put["sync_s"] = time.monotonic() - t0
                        put["mb_s_synced"] = put["ops"] * size / (put["wall_s"] + put["sync_s"]) / 1e6
                        get, _ = run_phase(s, "GET", size, conc, args.runtime, keys)
                        verify_one(s, keys[0][0], size)
                        results.setdefault((size, conc, s.name, "PUT"), []).append(put)
                        results.setdefault((size, conc, s.name, "GET"), []).append(get)
                        log(f"{label}: PUT {put['mb_s']:.1f} MB/s {put['ops_s']:.1f} op/s, "
                            f"GET {get['mb_s']:.1f} MB/s {get['ops_s']:.1f} op/s")
                        if size >= (1 << 20):
                            delete_keys(s, [k for ks in keys for k in ks])
                        os.sync()
                    except Exception as e:  # noqa: BLE001 - reported, the run goes on
                        problems.append(f"{label}: {e}")
                        log(f"{label}: FAILED: {e}")
                        if s.proc is None or s.proc.poll() is not None:
                            problems.append(f"{s.name} died; log tail:\n{tail(s.log_path)}")
                            raise
    finally:
        for s in servers:
            s.stop()
    return servers, results


def med(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f}"


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"


def report(args, machine, ceilings, servers, results, cases, problems):
    out = []
    w = out.append
    w("### S3: objectd vs s3rver, beside the ceilings\n")
    w(f"Generated {machine['date']} by `bench/s3_bench.py`. Command:\n")
    w(f"```\n{machine['command']}\n```\n")
    w("Machine: " + ", ".join(f"{k} {v}" for k, v in machine["facts"].items()) + ".\n")
    w(f"Method: for each case (size x concurrency), each server in turn ({', '.join(args.servers)}): "
      f"a PUT phase of {args.runtime} s writing fresh keys, `sync`, then a GET phase of "
      f"{args.runtime} s reading those keys round-robin; {args.reps} repetition(s) interleaved as "
      f"rep > case > server, medians shown. Objects of 1 MiB and more are deleted after "
      f"their case. Concurrency N = N client processes, one keep-alive "
      f"connection each, on the same 2 cores as the server (client: `bench/s3_bench.py`, "
      f"http.client + SigV4 header auth with UNSIGNED-PAYLOAD, identical for every server). "
      f"MB/s = 10^6 B/s of object data over the phase's wall time; latency = request start to "
      f"last response byte, p50/p99 over all requests; server CPU = utime+stime of the server "
      f"process (/proc/PID/stat) per GB (10^9 B) of object data. Data: {machine['data_fs']}.\n")
    w("Servers:\n")
    for s in servers:
        w(f"- {s.name}: `{s.command}`")
    w("- objectd: 4+2 Reed-Solomon over 6 drive directories on the one filesystem, a shard file "
      "per drive per object, fsync of every shard file and its directory before a PUT is "
      "acknowledged, MD5 (ETag) and CRC32C per shard block.")
    w("- s3rver: a directory per key holding three files (the bytes, their MD5, the "
      "metadata), plain Node.js `fs` writes, no erasure coding, no redundancy and no fsync "
      "(a PUT is acknowledged from the page cache). Its MD5 (ETag) is computed by Node's "
      "crypto while the body streams in.\n")
    if ceilings:
        w("Ceilings (same run; the CPU rates are single-core, best of three runs):\n")
        w("| ceiling | MB/s |")
        w("|---|---:|")
        rows = [("isal_encode_mb_s", f"ISA-L RS encode {ceilings.get('k', 4)}+{ceilings.get('m', 2)}, "
                 f"{ceilings.get('block_bytes', 262144) // 1024} KiB blocks (data bytes in)"),
                ("md5_mb_s", "OpenSSL MD5"),
                ("crc32c_mb_s", "ISA-L CRC32C"),
                ("put_cpu_mb_s", "a PUT's per-byte CPU work on one core: MD5 + encode + CRC32C of 1.5x"),
                ("fio_seq_write_mb_s", "fio seq write 1 MiB, O_DIRECT, QD8 (same filesystem)"),
                ("fio_seq_read_mb_s", "fio seq read 1 MiB, O_DIRECT, QD8 (same filesystem)")]
        for key, title in rows:
            if key in ceilings:
                w(f"| {title} | {fmt(ceilings[key], 0)} |")
        if "fio_seq_write_mb_s" in ceilings:
            w(f"| the disk write ceiling for objectd's PUT (fio write / 1.5: parity) | "
              f"{fmt(ceilings['fio_seq_write_mb_s'] / 1.5, 0)} |")
        w("")
    w("| case | server | MB/s | MB/s incl. sync | ops/s | p50 ms | p99 ms | server CPU s/GB | spread |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for size, conc in cases:
        for op in ("PUT", "GET"):
            for s in servers:
                runs = results.get((size, conc, s.name, op), [])
                title = f"{op} {format_size(size)} x{conc}"
                if not runs:
                    w(f"| {title} | {s.name} | failed | | | | | | |")
                    continue
                mbs = [r["mb_s"] for r in runs]
                m = statistics.median(mbs)
                spread = (max(mbs) - min(mbs)) / m if len(mbs) > 1 and m else None
                w(f"| {title} | {s.name} | {fmt(m, 1)} | {fmt(med(runs, 'mb_s_synced'), 1)} | "
                  f"{fmt(med(runs, 'ops_s'), 1)} | "
                  f"{fmt(med(runs, 'p50_ms'), 2)} | {fmt(med(runs, 'p99_ms'), 2)} | "
                  f"{fmt(med(runs, 'cpu_s_per_gb'), 2)} | "
                  f"{'-' if spread is None else f'{spread * 100:.0f}%'} |")
    w("")
    w("\"MB/s incl. sync\" (PUT rows): the same bytes over the phase's wall time plus the "
      "`sync` that follows it, i.e. until the data is on disk; it is what a server that does "
      "not fsync would get if it did (a `sync` just before the phase leaves only the "
      "phase's data and other processes' writes of those seconds for it).\n")
    names = [s.name for s in servers]
    if "objectd" in names and len(names) > 1:
        peers = [n for n in names if n != "objectd"]
        cols = [f"MB/s objectd/{p}" for p in peers] + \
               [f"MB/s incl. sync objectd/{p}" for p in peers] + \
               [f"p99 objectd/{p}" for p in peers] + [f"CPU/GB objectd/{p}" for p in peers]
        w("Ratios (objectd / peer, of medians; MB/s > 1 and p99, CPU/GB < 1 favour objectd):\n")
        w("| case | " + " | ".join(cols) + " |")
        w("|---|" + "---:|" * len(cols))
        for size, conc in cases:
            for op in ("PUT", "GET"):
                b = results.get((size, conc, "objectd", op), [])
                row = []
                for key in ("mb_s", "mb_s_synced", "p99_ms", "cpu_s_per_gb"):
                    for p in peers:
                        row.append(ratio(med(b, key), med(results.get((size, conc, p, op), []), key)))
                w(f"| {op} {format_size(size)} x{conc} | " + " | ".join(row) + " |")
        w("")
    if problems:
        w("#### Problems\n")
        for p in problems:
            w("```\n" + p.strip() + "\n```")
        w("")
    return "\n".join(out) + "\n"


def machine_facts(args, servers_versions):
    facts = {**base_facts(),
             "python": platform.python_version(), "node": cmd_output(["node", "--version"])}
    facts.update(servers_versions)
    return facts


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build-dir", default=os.path.join(ROOT, "build"),
                   help="CMake build dir with objectd/objectd and bench/cairn_bench_ceilings "
                        "(default %(default)s)")
    p.add_argument("--sizes", type=csv_of(parse_size_bytes), default="4K,1M,64M",
                   help="object sizes (default %(default)s)")
    p.add_argument("--concurrency", type=csv_of(int), default="1,16",
                   help="client connections (default %(default)s)")
    p.add_argument("--runtime", type=float, default=10, help="seconds per phase (default %(default)s)")
    p.add_argument("--reps", type=int, default=1, help="repetitions, medians reported (default %(default)s)")
    p.add_argument("--servers", type=csv_of(str, SERVERS_ALL), default="all",
                   help="comma list of " + ", ".join(SERVERS_ALL) + " (default all)")
    p.add_argument("--s3rver-dir", default=S3RVER_DIR_DEFAULT,
                   help="npm prefix holding s3rver (default %(default)s; installed there with "
                        "npm if missing)")
    p.add_argument("--objectd-opts", default="", help="extra objectd flags, e.g. '--threads 2'")
    p.add_argument("--ceiling-seconds", type=float, default=2,
                   help="seconds per CPU ceiling (fio: twice that) (default %(default)s)")
    p.add_argument("--fio-size", default="1G", help="fio file size (default %(default)s)")
    p.add_argument("--no-ceilings", action="store_true", help="skip the ceilings")
    p.add_argument("--dir", default=None, help="parent of the temp dir (default: $TMPDIR or /tmp)")
    p.add_argument("--out", help="write the markdown report here (default: stdout)")
    p.add_argument("--json", metavar="FILE", help="also write every repetition's numbers as JSON")
    p.add_argument("--splice", metavar="DOC", help="also put the report between the s3-bench markers of DOC")
    args = p.parse_args()
    if args.runtime <= 0 or args.reps < 1 or min(args.concurrency) < 1:
        p.error("need --runtime > 0, --reps >= 1, --concurrency >= 1")
    args.build_dir = os.path.abspath(args.build_dir)
    args.s3rver_dir = os.path.abspath(args.s3rver_dir)
    if "s3rver" in args.servers and not os.path.exists(
            os.path.join(args.s3rver_dir, "node_modules", "s3rver")):
        log(f"installing s3rver@{S3RVER_VERSION} into {args.s3rver_dir}")
        os.makedirs(args.s3rver_dir, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", args.s3rver_dir,
                        f"s3rver@{S3RVER_VERSION}"], check=True)
    cases = [(s, c) for s in args.sizes for c in args.concurrency]

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    argv0 = sys.argv[0] if os.path.isabs(sys.argv[0]) else os.path.relpath(sys.argv[0])
    versions = {}
    if "s3rver" in args.servers:
        versions["s3rver"] = s3rver_version(args.s3rver_dir)
    machine = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
               "command": shlex.join([argv0] + sys.argv[1:]),
               "facts": machine_facts(args, versions)}
    workdir = tempfile.mkdtemp(prefix="cairn-s3-bench-", dir=args.dir)
    machine["data_fs"] = f"{fs_type(workdir)}, $DIR = {workdir} (removed after the run)"
    problems = []
    try:
        ceilings = {}
        if not args.no_ceilings:
            log("ceilings")
            ceilings = run_ceilings(args, workdir)
            log("ceilings: " + ", ".join(f"{k}={v:.0f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in ceilings.items()))
        servers, results = run_all(args, workdir, cases, problems)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    machine["facts"]["loadavg at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = report(args, machine, ceilings, servers, results, cases, problems)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        log(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    if args.splice:
        splice(args.splice, text, MARK_BEGIN, MARK_END)
        log(f"updated {args.splice} between {MARK_BEGIN} and {MARK_END}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "ceilings": ceilings,
                       "results": {f"{op} {size} x{conc} {srv}": r
                                   for (size, conc, srv, op), r in results.items()}}, f, indent=1)
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); servers stopped")
        sys.exit(130)
