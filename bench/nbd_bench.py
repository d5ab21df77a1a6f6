#!/usr/bin/python3
"""NBD benchmark: blockd against nbdkit (file plugin), qemu-nbd and raw io_uring.

Every server serves a same-size file (or, for blockd, a thin volume) on the same
filesystem; fio drives each with the same job, interleaved case by case (A B C A B C ...)
so that the drift of a shared, noisy machine hits all servers alike. Reported numbers are
medians over --reps repetitions. See bench/README.md for what is measured and how to
read it. Stdlib only; run with /usr/bin/python3.
"""

import argparse
import datetime
import json
import mmap
import os
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import base_facts, cmd_output, fs_type, proc_cpu_s, splice, tail, wait_until  # noqa: E402,F401

SERVERS_ALL = ("blockd", "nbdkit", "qemu-nbd", "raw")
FS_ALL = ("disk", "tmpfs")
EXPORT_NAME = "bench"
MARK_BEGIN = "<!-- nbd-bench:begin -->"
MARK_END = "<!-- nbd-bench:end -->"


class Case:
    """One fio workload. fio options only; the target (engine, uri/file) is added later."""

    def __init__(self, name, title, rw, bs, iodepth, numjobs=1, extra=()):
        self.name, self.title = name, title
        self.rw, self.bs, self.iodepth, self.numjobs = rw, bs, iodepth, numjobs
        self.extra = list(extra)

    @property
    def writes(self):
        return "write" in self.rw

    @property
    def ddir(self):
        return "write" if self.writes else "read"

    def fio_args(self):
        args = [f"--rw={self.rw}", f"--bs={self.bs}", f"--iodepth={self.iodepth}",
                f"--numjobs={self.numjobs}"]
        if self.rw.startswith("rand"):
            args += ["--norandommap", "--randrepeat=0"]
        return args + self.extra


CASES = [
    Case("randread-4k-qd1", "4 KiB randread QD1", "randread", "4k", 1),
    Case("randread-4k-qd32", "4 KiB randread QD32", "randread", "4k", 32),
    Case("randwrite-4k-qd1", "4 KiB randwrite QD1", "randwrite", "4k", 1),
    Case("randwrite-4k-qd32", "4 KiB randwrite QD32", "randwrite", "4k", 32),
    Case("randread-4k-4x32", "4 KiB randread 4 jobs x QD32 (4 conns)", "randread", "4k", 32, 4),
    Case("randwrite-4k-4x32", "4 KiB randwrite 4 jobs x QD32 (4 conns)", "randwrite", "4k", 32, 4),
    Case("read-1m-qd8", "1 MiB seq read QD8", "read", "1m", 8),
    Case("write-1m-qd8", "1 MiB seq write QD8", "write", "1m", 8),
    # fio's nbd engine turns fsync=1 into NBD_CMD_FLUSH after every write (it has no
    # DDIR_DATASYNC, so not fdatasync); for raw, io_uring's IORING_OP_FSYNC.
    Case("write-flush-4k-qd1", "4 KiB randwrite + FLUSH each, QD1", "randwrite", "4k", 1,
         extra=["--fsync=1"]),
]
CASES_BY_NAME = {c.name: c for c in CASES}


# ---------------------------------------------------------------- small helpers

def log(msg):
    print(f"[nbd-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size_bytes(text):
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b?)\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 1G, 512M)")
    shift = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]
    return int(m.group(1)) << shift


def format_size(size_bytes):
    for suffix, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if size_bytes % (1 << shift) == 0:
            return f"{size_bytes >> shift}{suffix}"
    return str(size_bytes)


def csv_list(allowed):
    def parse(text):
        items = [x.strip() for x in text.split(",") if x.strip()]
        if items == ["all"]:
            return list(allowed)
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; choose from {', '.join(allowed)}")
        return items
    return parse


def o_direct_works(directory):
    """True if a 4 KiB aligned O_DIRECT write succeeds in directory."""
    path = os.path.join(directory, ".odirect-probe")
    buf = mmap.mmap(-1, 4096)  # page aligned
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o600)
        try:
            return os.pwritev(fd, [buf], 0) == 4096
        finally:
            os.close(fd)
    except OSError:
        return False
    finally:
        buf.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def fsync_tree(path):
    """Push a server's dirty page cache to disk between cases (not timed), so one
    server's writeback does not land in the next server's measurement."""
    paths = [path] if os.path.isfile(path) else [
        os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


# ---------------------------------------------------------------- servers

class Server:
    """A target fio drives. Subclasses start a process on a unix socket in workdir and
    are stopped by PID; Raw has no process."""

    name = "?"

    def __init__(self, workdir, size_bytes, direct, args):
        self.workdir, self.size_bytes, self.direct, self.args = workdir, size_bytes, direct, args
        self.proc = None
        self.command = ""
        self.log_path = os.path.join(workdir, "server.log")
        self.error = None  # set once the server is unusable; later runs are skipped
        os.makedirs(workdir, exist_ok=True)

    def start(self):
        pass

    def _spawn(self, argv):
        self.command = shlex.join(argv)
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log(f"{self.name}: pid {self.proc.pid} ignored SIGTERM; SIGKILL")
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log_file.close()

    def alive(self):
        return self.proc is None or self.proc.poll() is None

    def cpu_s(self):
        return proc_cpu_s(self.proc.pid) if self.proc else None

    def fio_target(self):
        return ["--ioengine=nbd", f"--uri={self.uri}"]

    def sync_backing(self):
        pass


class Raw(Server):
    name = "raw"

    def start(self):
        self.file = os.path.join(self.workdir, "raw.img")
        with open(self.file, "wb") as f:
            f.truncate(self.size_bytes)
        self.command = f"(no server) fio --ioengine=io_uring --direct={int(self.direct)} on {self.file}"

    def fio_target(self):
        return ["--ioengine=io_uring", f"--direct={int(self.direct)}", f"--filename={self.file}",
                f"--size={self.size_bytes}"]

    def sync_backing(self):
        fsync_tree(self.file)


class Nbdkit(Server):
    name = "nbdkit"

    def start(self):
        self.file = os.path.join(self.workdir, "disk.img")
        with open(self.file, "wb") as f:
            f.truncate(self.size_bytes)
        sock, pidfile = os.path.join(self.workdir, "nbd.sock"), os.path.join(self.workdir, "nbdkit.pid")
        self._spawn(["nbdkit", "-f", "-U", sock, "-P", pidfile, "file", self.file]
                    + shlex.split(self.args.nbdkit_opts))
        wait_until(lambda: os.path.exists(pidfile) and os.path.exists(sock), 20, "nbdkit", self.proc)
        self.uri = f"nbd+unix:///?socket={sock}"

    def sync_backing(self):
        fsync_tree(self.file)


class QemuNbd(Server):
    name = "qemu-nbd"

    def start(self):
        self.file = os.path.join(self.workdir, "disk.img")
        with open(self.file, "wb") as f:
            f.truncate(self.size_bytes)
        sock, pidfile = os.path.join(self.workdir, "nbd.sock"), os.path.join(self.workdir, "qemu-nbd.pid")
        cache = "none" if self.direct else "writeback"
        self._spawn(["qemu-nbd", "-f", "raw", f"--cache={cache}", "--aio=io_uring", "-k", sock,
                     "-x", EXPORT_NAME, "-t", "--shared=8", f"--pid-file={pidfile}", self.file])
        wait_until(lambda: os.path.exists(pidfile) and os.path.exists(sock), 20, "qemu-nbd", self.proc)
        self.uri = f"nbd+unix:///{EXPORT_NAME}?socket={sock}"

    def sync_backing(self):
        fsync_tree(self.file)


class Blockd(Server):
    name = "blockd"

    def start(self):
        build = self.args.build_dir
        blockd_bin = os.path.join(build, "blockd", "blockd")
        self.cairn_bin = os.path.join(build, "client", "cairn")
        self.data_dir = os.path.join(self.workdir, "data")
        sock = os.path.join(self.data_dir, "nbd.sock")
        argv = [blockd_bin, "--data-dir", self.data_dir, "--nbd-listen", "none",
                "--nbd-socket", sock, "--api-listen", "127.0.0.1:0"]
        if not self.direct:
            argv.append("--no-direct-io")
        argv += shlex.split(self.args.blockd_opts)
        self._spawn(argv)
        api = []

        def ready():
            m = re.search(r"blockd ready.*?api=(http://\S+)", tail(self.log_path, 200))
            if m:
                api.append(m.group(1))
            return bool(m)

        wait_until(ready, 30, "blockd (waiting for 'blockd ready' on stderr)", self.proc)
        self.api_url = api[0]
        with open(os.path.join(self.data_dir, "admin.token")) as f:
            token = f.read().strip()
        create = [self.cairn_bin, "--api", self.api_url, "--token", token, "volume", "create",
                  EXPORT_NAME, "--size", format_size(self.size_bytes)]
        r = subprocess.run(create, capture_output=True, text=True, timeout=60)
        shown = shlex.join(create[:3] + ["--token", "TOKEN"] + create[5:])
        if r.returncode != 0:
            raise RuntimeError(f"blockd: `{shown}` exited {r.returncode}: "
                               f"{(r.stderr or r.stdout).strip()}")
        self.command += f"\n{shown}"
        self.uri = f"nbd+unix:///{EXPORT_NAME}?socket={sock}"

    def sync_backing(self):
        fsync_tree(self.data_dir)


SERVER_CLASSES = {"blockd": Blockd, "nbdkit": Nbdkit, "qemu-nbd": QemuNbd, "raw": Raw}


# ---------------------------------------------------------------- fio

def run_fio(server, fio_args, name, timeout_s, json_path):
    argv = ["fio", f"--name={name}", *server.fio_target(), *fio_args, "--group_reporting",
            "--output-format=json", f"--output={json_path}"]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"fio exited {r.returncode}: {(r.stderr or r.stdout).strip()[-800:]}")
    with open(json_path) as f:
        job = json.load(f)["jobs"][0]
    if job.get("error"):
        raise RuntimeError(f"fio job error {job['error']}: {(r.stderr or '').strip()[-800:]}")
    # fio's own usr_cpu/sys_cpu come from getrusage(RUSAGE_THREAD) of each job thread and
    # so miss io_uring's iou-wrk threads; the rusage of the reaped fio process tree counts
    # them, as /proc/PID/stat does for the servers (plus fio's start-up, ~1% of a case).
    job["fio_tree_cpu_s"] = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return job


def precondition(server, tmp_dir):
    """Write the whole target once, sequentially, so later reads hit allocated data."""
    t0 = time.monotonic()
    run_fio(server, ["--rw=write", "--bs=1m", "--iodepth=8"], "precondition", 1800,
            os.path.join(tmp_dir, f"precondition-{server.name}.json"))
    server.sync_backing()
    log(f"{server.name}: preconditioned in {time.monotonic() - t0:.1f} s")


def percentile_us(lat, key):
    pct = (lat or {}).get("percentile") or {}
    return pct[key] / 1000.0 if key in pct else None


def run_case(server, case, args, tmp_dir, rep):
    cpu0 = server.cpu_s()
    job = run_fio(server, case.fio_args() + ["--time_based", f"--runtime={args.runtime}"],
                  case.name, args.runtime + 120,
                  os.path.join(tmp_dir, f"{case.name}-{server.name}-{rep}.json"))
    cpu1 = server.cpu_s()
    d = job[case.ddir]
    ios = d["total_ios"]
    if cpu0 is not None:
        cpu_s = cpu1 - cpu0
    else:  # raw: the CPU of fio itself, all its processes and threads
        cpu_s = job["fio_tree_cpu_s"]
    res = {
        "iops": d["iops"],
        "mb_s": d["bw_bytes"] / 1e6,
        "p50_us": percentile_us(d["clat_ns"], "50.000000"),
        "p99_us": percentile_us(d["clat_ns"], "99.000000"),
        "cpu_us_per_io": cpu_s * 1e6 / ios if ios else None,
        "ios": ios,
    }
    if "--fsync=1" in case.extra:
        sync = job.get("sync") or {}
        res["flush_p50_us"] = percentile_us(sync.get("lat_ns"), "50.000000")
        res["flush_p99_us"] = percentile_us(sync.get("lat_ns"), "99.000000")
    return res


# ---------------------------------------------------------------- run one filesystem

class FsSetup:
    def __init__(self, kind, args):
        self.kind, self.args, self.mounted = kind, args, None
        if kind == "disk":
            self.dir = tempfile.mkdtemp(prefix="cairn-nbd-bench-", dir=args.disk_dir)
            self.note = ""
            return
        if args.tmpfs_dir:
            self.dir = tempfile.mkdtemp(prefix="cairn-nbd-bench-", dir=args.tmpfs_dir)
            self.note = f"under {args.tmpfs_dir} (given)"
            return
        # A private, size-limited tmpfs if we may mount one; else /dev/shm.
        mnt = tempfile.mkdtemp(prefix="cairn-nbd-bench-tmpfs-")
        size_mib = (len(args.servers) * args.size_bytes * 5 // 4 >> 20) + 512  # a limit, not an allocation
        try:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", mnt],
                               capture_output=True, text=True)
        except OSError as e:
            r = subprocess.CompletedProcess([], 1, "", str(e))
        if r.returncode == 0:
            self.mounted, self.dir = mnt, mnt
            self.note = f"private tmpfs mounted by the harness (size={size_mib}m)"
        else:
            os.rmdir(mnt)
            self.dir = tempfile.mkdtemp(prefix="cairn-nbd-bench-", dir="/dev/shm")
            self.note = f"/dev/shm (mounting a tmpfs failed: {r.stderr.strip()})"

    def cleanup(self):
        if self.mounted:
            # io_uring tears a ring down asynchronously after its process exits, so the
            # files can stay busy for a moment: retry, then detach lazily.
            for _ in range(100):
                r = subprocess.run(["umount", self.mounted], capture_output=True, text=True)
                if r.returncode == 0:
                    break
                time.sleep(0.1)
            else:
                log(f"umount {self.mounted}: {r.stderr.strip()}; detaching lazily")
                subprocess.run(["umount", "-l", self.mounted], capture_output=True)
            try:
                os.rmdir(self.mounted)
            except OSError as e:
                log(f"cannot remove {self.mounted}: {e}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def run_fs(kind, args, cases, problems):
    fs = FsSetup(kind, args)
    info = {"kind": kind, "fs": fs_type(os.path.realpath(fs.dir)), "dir": fs.dir, "note": fs.note}
    servers = []
    results = {}  # (case, server) -> [per-rep result]
    try:
        info["direct"] = o_direct_works(fs.dir)
        if not info["direct"]:
            info["note"] += "; O_DIRECT fails here: raw uses direct=0, qemu-nbd --cache=writeback, blockd --no-direct-io"
        log(f"{kind}: {info['fs']}, dir {fs.dir}, O_DIRECT {'ok' if info['direct'] else 'FAILS'}")
        for name in args.servers:
            srv = SERVER_CLASSES[name](os.path.join(fs.dir, name), args.size_bytes, info["direct"], args)
            servers.append(srv)
            try:
                srv.start()
                precondition(srv, fs.dir)
            except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                srv.error = str(e)
                problems.append(f"{kind}/{name}: start or precondition failed: {e}\n"
                                f"server log tail:\n{tail(srv.log_path)}")
                log(f"{kind}/{name}: FAILED: {e}")
        info["commands"] = {s.name: s.command.replace(fs.dir, "$DIR") for s in servers}
        for rep in range(args.reps):
            for case in cases:
                for srv in servers:
                    if srv.error:
                        continue
                    try:
                        res = run_case(srv, case, args, fs.dir, rep)
                        results.setdefault((case.name, srv.name), []).append(res)
                        log(f"{kind} rep {rep + 1}/{args.reps} {case.name:<20} {srv.name:<8} "
                            f"{res['iops']:>9.0f} IOPS  p99 {res['p99_us']:.0f} us  "
                            f"cpu {res['cpu_us_per_io']:.1f} us/IO")
                    except (RuntimeError, OSError, subprocess.SubprocessError, KeyError, ValueError) as e:
                        msg = f"{kind}/{srv.name}/{case.name} rep {rep + 1}: {e}"
                        if not srv.alive():
                            srv.error = f"server exited with status {srv.proc.returncode}"
                            msg += f"\n{srv.name} exited with status {srv.proc.returncode}; log tail:\n{tail(srv.log_path)}"
                        problems.append(msg)
                        log(f"FAILED {msg}")
                    if case.writes:
                        srv.sync_backing()
    finally:
        for srv in servers:
            srv.stop()
        fs.cleanup()
    return info, results, servers


# ---------------------------------------------------------------- report

def med(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v, digits=0):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"


def report(args, machine, fs_runs, problems, cases):
    out = []
    w = out.append
    w("### NBD: blockd vs nbdkit vs qemu-nbd vs raw io_uring\n")
    w(f"Generated {machine['date']} by `bench/nbd_bench.py`. Command:\n")
    w(f"```\n{machine['command']}\n```\n")
    w("Machine: " + ", ".join(f"{k} {v}" for k, v in machine["facts"].items()) + ".\n")
    w(f"Method: {format_size(args.size_bytes)} per target, written once sequentially "
      f"(1 MiB, QD8) through its server before any case; {args.runtime} s per case, "
      f"{args.reps} repetition(s) interleaved as rep > case > server "
      f"({' '.join(args.servers)}), medians shown. All servers on unix sockets; fio "
      f"ioengine=nbd opens one connection per job. CPU µs/IO = server utime+stime "
      f"(/proc/PID/stat, all threads) over the case / I/Os done; for raw it is fio's own "
      f"usr+sys CPU (rusage of the whole fio process tree, which, unlike fio's JSON "
      f"usr_cpu/sys_cpu, includes io_uring's iou-wrk threads). MB/s = 10^6 B/s. Latency = fio clat p50/p99. Dirty page cache of each "
      f"target is fsynced (untimed) after each write case. \"spread\" = (max-min)/median of "
      f"IOPS over the repetitions.\n")
    for info, results, servers in fs_runs:
        w(f"#### {info['kind']}: {info['fs']}\n")
        notes = [n for n in (info.get("note"),) if n]
        if info.get("direct") and info["kind"] == "tmpfs":
            notes.append("O_DIRECT is accepted (tmpfs supports it since Linux 6.6) but I/O still "
                         "goes to page-cache memory: this run measures server overhead, not a disk")
        notes.append(f"$DIR = {info['dir']} (removed after the run)")
        w("Notes: " + "; ".join(notes) + ".\n")
        w("Servers:\n")
        for name, cmd in info.get("commands", {}).items():
            w(f"- {name}: `" + cmd.replace("\n", "` then `") + "`")
        if "nbdkit" in info.get("commands", {}):
            w("- nbdkit file plugin runs with its defaults (cache=default: buffered I/O "
              "through the page cache; fadvise=normal); extra plugin options: "
              f"`{args.nbdkit_opts or 'none'}`.")
        w("")
        w("| case | server | IOPS | MB/s | p50 µs | p99 µs | CPU µs/IO | spread |")
        w("|---|---|---:|---:|---:|---:|---:|---:|")
        flush_rows = []
        for case in cases:
            for srv in servers:
                runs = results.get((case.name, srv.name), [])
                if not runs:
                    w(f"| {case.title} | {srv.name} | failed | | | | | |")
                    continue
                iops = [r["iops"] for r in runs]
                spread = (max(iops) - min(iops)) / statistics.median(iops) if len(iops) > 1 and statistics.median(iops) else None
                w(f"| {case.title} | {srv.name} | {fmt(med(runs, 'iops'))} | {fmt(med(runs, 'mb_s'), 1)} | "
                  f"{fmt(med(runs, 'p50_us'), 1)} | {fmt(med(runs, 'p99_us'), 1)} | "
                  f"{fmt(med(runs, 'cpu_us_per_io'), 1)} | "
                  f"{'-' if spread is None else f'{spread * 100:.0f}%'} |")
                if "flush_p50_us" in runs[0]:
                    flush_rows.append(f"| {srv.name} | {fmt(med(runs, 'flush_p50_us'), 1)} | "
                                      f"{fmt(med(runs, 'flush_p99_us'), 1)} |")
        w("")
        if flush_rows:
            w("FLUSH latency in the write+flush case (the table's latency is the write's; "
              "its IOPS counts writes, each followed by one FLUSH; CPU/IO is per write):\n")
            w("| server | FLUSH p50 µs | FLUSH p99 µs |")
            w("|---|---:|---:|")
            out.extend(flush_rows)
            w("")
        base = args.base
        peers = [s.name for s in servers if s.name != base]
        if base in [s.name for s in servers] and peers:
            cols = [f"IOPS {base}/{p}" for p in peers]
            cols += [f"p99 {base}/{p}" for p in peers if p != "raw"]
            cols += [f"CPU/IO {base}/{p}" for p in peers if p != "raw"]
            w(f"Ratios ({base} / peer, of medians; IOPS > 1 and p99, CPU/IO < 1 favour {base}):\n")
            w("| case | " + " | ".join(cols) + " |")
            w("|---|" + "---:|" * len(cols))
            for case in cases:
                b = results.get((case.name, base), [])
                row = []
                for key, skip_raw in (("iops", False), ("p99_us", True), ("cpu_us_per_io", True)):
                    for p in peers:
                        if skip_raw and p == "raw":
                            continue
                        row.append(ratio(med(b, key), med(results.get((case.name, p), []), key)))
                w(f"| {case.title} | " + " | ".join(row) + " |")
            w("")
    if problems:
        w("#### Problems\n")
        for p in problems:
            w("```\n" + p.strip() + "\n```")
        w("")
    return "\n".join(out) + "\n"


def machine_facts(args):
    return {
        **base_facts(),
        "fio": cmd_output(["fio", "--version"]),
        "nbdkit": cmd_output(["nbdkit", "--version"]).replace("nbdkit ", ""),
        "qemu-nbd": (cmd_output(["qemu-nbd", "--version"]).splitlines() or ["?"])[0].replace("qemu-nbd ", ""),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build-dir", default="/work/main/build", help="CMake build dir with blockd/blockd and client/cairn (default %(default)s)")
    p.add_argument("--size", default="1G", help="volume/file size per target (default %(default)s)")
    p.add_argument("--runtime", type=int, default=10, help="seconds per case (default %(default)s)")
    p.add_argument("--reps", type=int, default=3, help="repetitions, medians reported (default %(default)s)")
    p.add_argument("--cases", type=csv_list([c.name for c in CASES]), default="all",
                   help="comma list or 'all' (default): " + ", ".join(c.name for c in CASES))
    p.add_argument("--servers", type=csv_list(SERVERS_ALL), default="all",
                   help="comma list of " + ", ".join(SERVERS_ALL) + " (default all)")
    p.add_argument("--fs", type=csv_list(FS_ALL), default="all", help="comma list of disk, tmpfs (default both)")
    p.add_argument("--out", help="write the markdown report here (default: stdout)")
    p.add_argument("--splice", metavar="DOC", help="also put the report between the nbd-bench markers of DOC")
    p.add_argument("--json", metavar="FILE", help="also write every repetition's numbers as JSON")
    p.add_argument("--disk-dir", default=None, help="parent of the disk temp dir (default: $TMPDIR or /tmp)")
    p.add_argument("--tmpfs-dir", default=None, help="parent dir on a tmpfs (default: mount a private tmpfs, else /dev/shm)")
    p.add_argument("--base", default="blockd", help="server the ratios are computed for (default %(default)s)")
    p.add_argument("--nbdkit-opts", default="", help="extra nbdkit file plugin params, e.g. 'cache=none'")
    p.add_argument("--blockd-opts", default="", help="extra blockd flags, e.g. '--threads 1'")
    args = p.parse_args()
    args.size_bytes = parse_size_bytes(args.size)
    if args.size_bytes < (16 << 20) or args.runtime < 1 or args.reps < 1:
        p.error("need --size >= 16M, --runtime >= 1, --reps >= 1")
    for tool in ["fio"] + [t for t in ("nbdkit", "qemu-nbd") if t in args.servers]:
        if not shutil.which(tool):
            p.error(f"{tool} not found in PATH")
    cases = [CASES_BY_NAME[n] for n in args.cases]

    # SIGTERM/SIGHUP unwind like Ctrl-C so servers are stopped and the tmpfs unmounted.
    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    machine = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
               "command": shlex.join([os.path.relpath(sys.argv[0]) if not os.path.isabs(sys.argv[0]) else sys.argv[0]]
                                     + sys.argv[1:]),
               "facts": machine_facts(args)}
    problems, fs_runs = [], []
    for kind in args.fs:
        fs_runs.append(run_fs(kind, args, cases, problems))
    machine["facts"]["loadavg at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = report(args, machine, fs_runs, problems, cases)
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
        dump = [{"fs": info, "results": {f"{c}/{s}": r for (c, s), r in results.items()}}
                for info, results, _ in fs_runs]
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "runs": dump}, f, indent=1)
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); servers stopped")
        sys.exit(130)
