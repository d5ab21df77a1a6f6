"""Shared machinery for Cairn's integration tests.

Every test file here is a standalone program (`python3 test_x.py`) that CTest runs with
CAIRN_BUILD_DIR set. The tests start real daemons in their own temporary directory
(under $TMPDIR) on ephemeral ports, talk to them with real clients, and always stop
them by PID.

The NBD-level tests run against any of these servers, chosen by CAIRN_NBD_TARGET:
  blockd    (default) our daemon, volumes created through its control API
  nbdkit    nbdkit's file plugin in dir= mode (one file per volume) with the
            blocksize-policy filter advertising blockd's 512/4096/32M block sizes
  qemu-nbd  one qemu-nbd per volume (unix socket) plus one more for TCP
The two reference servers exist to prove that the tests themselves are right: a check
that fails against nbdkit or qemu-nbd is a bug in the test, not in blockd.

Environment:
  CAIRN_BUILD_DIR   build tree holding blockd/blockd and client/cairn (default
                    /work/main/build)
  CAIRN_NBD_TARGET  blockd | nbdkit | qemu-nbd
  CAIRN_SEED        replay a random test with this seed (each random test prints its seed)
  CAIRN_SOAK=1      longer loops (crash rounds)
  CAIRN_KEEP_TMP=1  keep temporary directories even when the test passes
"""

import contextlib
import hashlib
import json as jsonlib
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

BUILD_DIR = os.environ.get("CAIRN_BUILD_DIR") or "/work/main/build"
BLOCKD = os.path.join(BUILD_DIR, "blockd", "blockd")
CAIRN = os.path.join(BUILD_DIR, "client", "cairn")
TARGET = os.environ.get("CAIRN_NBD_TARGET", "blockd")
SOAK = os.environ.get("CAIRN_SOAK") == "1"
KEEP_TMP = os.environ.get("CAIRN_KEEP_TMP") == "1"

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

READY_TIMEOUT_S = 30
STOP_TIMEOUT_S = 20


def import_nbd():
    """libnbd's Python binding comes from Debian's python3-libnbd, which installs into
    the system interpreter's dist-packages; a pyenv/venv interpreter of the same
    version can load it from there."""
    try:
        import nbd  # noqa: F401
    except ImportError:
        for d in ("/usr/lib/python3/dist-packages", "/usr/local/lib/python3/dist-packages"):
            if os.path.isdir(d) and d not in sys.path:
                sys.path.append(d)
        import nbd  # noqa: F401
    return sys.modules["nbd"]


nbd = import_nbd()


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _tail(text, lines=40):
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    parts = text.rstrip("\n").split("\n")
    return "\n".join(parts[-lines:])


def run(cmd, timeout=120, check=True, input=None, env=None, cwd=None, quiet=False):
    """Runs a tool with a timeout. Returns CompletedProcess (text mode). With check, a
    non-zero exit raises AssertionError carrying the command line and output tails."""
    cmd = [str(c) for c in cmd]
    if not quiet:
        log("$ " + shlex.join(cmd))
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, input=input, env=full_env,
                           cwd=cwd, text=True, errors="replace")
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"{os.path.basename(cmd[0])} timed out after {timeout}s: {shlex.join(cmd)}\n"
            f"--- stdout tail\n{_tail(e.stdout)}\n--- stderr tail\n{_tail(e.stderr)}") from None
    except FileNotFoundError:
        raise AssertionError(f"cannot run {cmd[0]}: not found") from None
    p.elapsed_s = time.monotonic() - t0
    if check and p.returncode != 0:
        raise AssertionError(
            f"{os.path.basename(cmd[0])} exited with status {p.returncode}: {shlex.join(cmd)}\n"
            f"--- stdout tail\n{_tail(p.stdout)}\n--- stderr tail\n{_tail(p.stderr)}")
    return p


def _die_with_parent():
    """preexec_fn: the child gets SIGKILL if the test process dies (e.g. a CTest
    timeout), so no daemon outlives its test."""
    import ctypes
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(cmd, log_path, env=None):
    """Starts a daemon with stdout and stderr appended to log_path."""
    logf = open(log_path, "ab")
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, env=env,
                                preexec_fn=_die_with_parent)
    finally:
        logf.close()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s, what, interval_s=0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def make_tmpdir(prefix):
    # Short names: the unix socket path must stay under 108 bytes.
    return tempfile.mkdtemp(prefix=f"cairn-{prefix}-")


# --------------------------------------------------------------------------- data


def seeded_rng(label):
    """A random.Random seeded from CAIRN_SEED or fresh; prints the seed so that a failure
    can be replayed."""
    env = os.environ.get("CAIRN_SEED")
    seed = int(env, 0) if env else random.SystemRandom().randrange(1 << 32)
    log(f"[{label}] seed={seed} (replay with CAIRN_SEED={seed})")
    return random.Random(seed), seed


def pattern_block(tag, size):
    """Deterministic pseudo-random bytes named by tag (any str)."""
    return hashlib.shake_128(tag.encode()).digest(size)


def write_random_image(path, size_bytes, rng, chunk_bytes=1 * MiB, zero_fraction=0.2):
    """Writes a raw image of random chunks with some chunks left as holes (zeros) and
    some chunks half data / half zeros, so that copies exercise sparse paths too."""
    with open(path, "wb") as f:
        f.truncate(size_bytes)
        for off in range(0, size_bytes, chunk_bytes):
            n = min(chunk_bytes, size_bytes - off)
            r = rng.random()
            if r < zero_fraction:
                continue
            f.seek(off)
            if r < zero_fraction + 0.1:
                half = (n // 2) & ~511
                f.write(rng.randbytes(half))
            else:
                f.write(rng.randbytes(n))


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def first_difference(a, b):
    n = min(len(a), len(b))
    for i in range(0, n, 4096):
        if a[i:i + 4096] != b[i:i + 4096]:
            for j in range(i, min(i + 4096, n)):
                if a[j] != b[j]:
                    return j
    return None if len(a) == len(b) else n


def assert_bytes_equal(tc, got, want, what):
    if got == want:
        return
    i = first_difference(got, want)
    tc.fail(f"{what}: {len(got)} bytes read, {len(want)} expected; first difference at byte "
            f"{i}: got {got[i:i + 16].hex() if i is not None else ''} want "
            f"{want[i:i + 16].hex() if i is not None else ''}")


# --------------------------------------------------------------------------- NBD helpers


HANDSHAKE_TIMEOUT_S = 30


def nbd_connect(uri, meta_contexts=(), name="cairn-it", timeout_s=HANDSHAKE_TIMEOUT_S):
    """A libnbd handle connected to uri. libnbd's connect has no timeout of its own: a
    server that accepts and never answers would hang the test, so drive the handshake
    asynchronously with a deadline."""
    h = nbd.NBD()
    h.set_handle_name(name)
    for c in meta_contexts:
        h.add_meta_context(c)
    h.aio_connect_uri(uri)
    deadline = time.monotonic() + timeout_s
    while not h.aio_is_ready():
        if h.aio_is_dead() or h.aio_is_closed():
            # the synchronous call reports the server's reason
            h2 = nbd.NBD()
            h2.connect_uri(uri)
            return h2
        if time.monotonic() > deadline:
            raise AssertionError(f"NBD handshake with {uri} did not complete within {timeout_s}s")
        h.poll(100)
    return h


def nbd_close(h):
    with contextlib.suppress(Exception):
        h.shutdown()
    with contextlib.suppress(Exception):
        h.close()


def nbd_read_all(uri, size_bytes, chunk_bytes=4 * MiB):
    h = nbd_connect(uri)
    try:
        out = bytearray()
        for off in range(0, size_bytes, chunk_bytes):
            out += h.pread(min(chunk_bytes, size_bytes - off), off)
        return bytes(out)
    finally:
        nbd_close(h)


# --------------------------------------------------------------------------- servers


class Server:
    """Common shape of every NBD target. Subclasses fill in the process handling."""

    kind = "?"
    # What nbdinfo --json must report for every volume of this target.
    expect_features = {}
    has_control_api = False
    has_fault_points = False
    write_beyond_end_errnos = (28,)  # ENOSPC, as the spec says

    def __init__(self, label="server"):
        self.label = label
        self.tmp = make_tmpdir(label)
        self.failed = False
        _live_servers.add(self)

    # Context manager: always stop; on an exception show the log tail.
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.failed = True
            self.print_log_tail()
        try:
            self.stop(check=exc_type is None)
        finally:
            self.cleanup()
        return False

    def cleanup(self):
        _live_servers.discard(self)
        if KEEP_TMP:
            log(f"[{self.label}] keeping {self.tmp}")
        elif self.failed:
            # keep the logs for a post-mortem, drop the (large) data
            for root, _, files in os.walk(self.tmp):
                for f in files:
                    if not f.endswith(".log"):
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join(root, f))
            log(f"[{self.label}] kept the logs in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def print_log_tail(self, lines=80):
        log(f"----- {self.kind} log tail ({self.log_path}) -----")
        try:
            with open(self.log_path, "r", errors="replace") as f:
                log(_tail(f.read(), lines))
        except OSError as e:
            log(f"(no log: {e})")
        log("----- end of log -----")

    def tmp_path(self, name):
        return os.path.join(self.tmp, name)

    def unix_list_uri(self):
        return f"nbd+unix:///?socket={self.nbd_socket}"

    def tcp_list_uri(self):
        return f"nbd://127.0.0.1:{self.nbd_port}"


class DaemonProcess:
    """Process control shared by the daemons the tests start (self.proc, self.kind,
    self.label; print_log_tail from Server): clean stop with its exit status checked, kill -9,
    waiting for an exit of its own. Always by PID."""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, check=True, timeout_s=STOP_TIMEOUT_S):
        """SIGTERM, then SIGKILL after timeout_s. With check, anything but a clean exit 0
        within the timeout is a test failure."""
        if self.proc is None:
            return None
        p, self.proc = self.proc, None
        problem = None
        rc = p.poll()
        if rc is not None:
            problem = f"{self.kind} pid {p.pid} had already exited with status {rc} before stop()"
        else:
            p.send_signal(signal.SIGTERM)
            try:
                rc = p.wait(timeout_s)
                if rc != 0:
                    problem = f"{self.kind} exited with status {rc} after SIGTERM (expected 0)"
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait(10)
                problem = f"{self.kind} did not exit within {timeout_s}s of SIGTERM; killed"
        log(f"[{self.label}] {self.kind} pid={p.pid} stopped, status {rc}")
        if problem and check:
            self.failed = True
            self.print_log_tail()
            raise AssertionError(problem)
        return rc

    def kill9(self):
        if self.proc is None:
            return
        p, self.proc = self.proc, None
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        log(f"[{self.label}] {self.kind} pid={p.pid} killed with SIGKILL")

    def wait_exit(self, timeout_s):
        """For fault-injection runs: waits for the daemon to exit by itself; returns its
        status, or None (still running) after timeout_s."""
        if self.proc is None:
            return None
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None
        log(f"[{self.label}] {self.kind} pid={self.proc.pid} exited by itself, status {rc}")
        self.proc = None
        return rc


class Blockd(DaemonProcess, Server):
    """The real blockd: temp data dir, ephemeral ports, readiness from its log line."""

    kind = "blockd"
    has_control_api = True
    has_fault_points = True
    expect_features = dict(can_flush=True, can_fua=True, can_trim=True, can_zero=True,
                           can_fast_zero=True, can_multi_conn=True, can_cache=True,
                           is_read_only=False, block_size_minimum=512,
                           block_size_preferred=4096, block_size_maximum=32 * MiB)
    min_block = 512
    max_block = 32 * MiB

    def __init__(self, threads=None, env=None, label="blockd", args=()):
        super().__init__(label)
        self.args = list(args)  # extra flags, e.g. cluster mode's (clusterharness.py)
        self.data_dir = os.path.join(self.tmp, "data")
        os.makedirs(self.data_dir)
        self.log_path = os.path.join(self.tmp, "blockd.log")
        self.threads = threads
        self.env = dict(env or {})
        self.proc = None
        self.starts = 0
        self.endpoints = {}

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self, env=None):
        assert self.proc is None, "already running"
        if not os.path.exists(BLOCKD):
            raise AssertionError(f"blockd binary not found at {BLOCKD} (CAIRN_BUILD_DIR={BUILD_DIR})")
        self.starts += 1
        cmd = [BLOCKD, "--data-dir", self.data_dir, "--nbd-listen", "127.0.0.1:0",
               "--nbd-socket", os.path.join(self.data_dir, "nbd.sock"),
               "--api-listen", "127.0.0.1:0"]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        cmd += self.args
        full_env = dict(os.environ)
        full_env.update(self.env)
        if env:
            full_env.update(env)
        with open(self.log_path, "a") as lf:
            lf.write(f"===== start #{self.starts}: {shlex.join(cmd)} "
                     f"env+={ {**self.env, **(env or {})} }\n")
            start_offset = lf.tell()
        self.proc = spawn(cmd, self.log_path, full_env)
        log(f"[{self.label}] started blockd pid={self.proc.pid} (start #{self.starts})")
        line = self._wait_ready(start_offset)
        self.endpoints = dict(re.findall(r"(\w+)=(\S+)", line.split("blockd ready", 1)[1]))
        for k in ("nbd", "socket", "api", "token_file"):
            if k not in self.endpoints:
                self.kill9()
                raise AssertionError(f"ready line lacks {k}=...: {line!r}")
        host, port = self.endpoints["nbd"].rsplit(":", 1)
        self.nbd_host, self.nbd_port = host, int(port)
        self.nbd_socket = self.endpoints["socket"]
        self.api = self.endpoints["api"].rstrip("/")
        with open(self.endpoints["token_file"]) as f:
            self.token = f.read().strip()
        if not self.token:
            raise AssertionError(f"empty admin token in {self.endpoints['token_file']}")
        return self

    def _wait_ready(self, offset):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
            for line in text.splitlines():
                if "blockd ready" in line:
                    return line
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                raise AssertionError(
                    f"blockd exited with status {rc} before logging 'blockd ready'; "
                    f"log tail:\n{_tail(text)}")
            if time.monotonic() > deadline:
                self.kill9()
                raise AssertionError(
                    f"blockd did not log 'blockd ready' within {READY_TIMEOUT_S}s; "
                    f"log tail:\n{_tail(text)}")
            time.sleep(0.05)

    def restart(self, env=None):
        if self.proc is not None:
            self.stop()
        return self.start(env=env)

    # ---- endpoints
    def tcp_uri(self, name):
        return f"nbd://{self.nbd_host}:{self.nbd_port}/{name}"

    def unix_uri(self, name):
        return f"nbd+unix:///{name}?socket={self.nbd_socket}"

    def tcp_address(self, name=None):
        return (self.nbd_host, self.nbd_port)

    def unix_address(self, name=None):
        return self.nbd_socket

    # ---- control API
    def http(self, method, path, body=None, token=True, timeout=30):
        """Returns (status, parsed JSON or raw text or None)."""
        data = None
        headers = {}
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else jsonlib.dumps(body)
            data = data.encode() if isinstance(data, str) else data
            headers["Content-Type"] = "application/json"
        if token is True:
            headers["Authorization"] = f"Bearer {self.token}"
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.api + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        text = raw.decode("utf-8", "replace")
        try:
            parsed = jsonlib.loads(text) if text.strip() else None
        except ValueError:
            parsed = text
        return status, parsed

    def cairn(self, *args, json=True, check=True, token=True, timeout=60):
        """Runs the cairn CLI against this blockd. With json and check, returns the parsed
        JSON output (None if empty); otherwise the CompletedProcess."""
        cmd = [CAIRN, "--api", self.api]
        if token is True:
            cmd += ["--token", self.token]
        elif token:
            cmd += ["--token", token]
        if json:
            cmd.append("--json")
        cmd += list(args)
        p = run(cmd, timeout=timeout, check=check)
        if json and check:
            try:
                return jsonlib.loads(p.stdout) if p.stdout.strip() else None
            except ValueError:
                raise AssertionError(f"cairn --json printed non-JSON:\n{_tail(p.stdout)}") from None
        return p

    def create_volume(self, name, size_bytes):
        status, body = self.http("POST", "/v1/volumes", {"name": name, "sizeBytes": size_bytes})
        if status not in (200, 201):
            raise AssertionError(f"creating volume {name} ({size_bytes} bytes) failed: "
                                 f"HTTP {status} {body}")
        return body


class Nbdkit(Server):
    """nbdkit file plugin over a directory: one file = one export. Two processes (unix
    socket and TCP) share the files; the kernel page cache keeps them coherent."""

    kind = "nbdkit"
    expect_features = dict(Blockd.expect_features, can_fast_zero=False)
    min_block = 512
    max_block = 32 * MiB

    def __init__(self, label="nbdkit", **_):
        super().__init__(label)
        self.vol_dir = os.path.join(self.tmp, "vols")
        os.makedirs(self.vol_dir)
        self.nbd_socket = os.path.join(self.tmp, "nbd.sock")
        self.log_path = os.path.join(self.tmp, "nbdkit.log")
        self.procs = []
        self.nbd_host = "127.0.0.1"
        self.nbd_port = None

    @property
    def pid(self):
        return self.procs[0].pid if self.procs else None

    def _spawn(self, listen_args, pidfile):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)
        cmd = ["nbdkit", "-f", "-P", pidfile, *listen_args,
               "--filter=blocksize-policy", "file", f"dir={self.vol_dir}",
               "blocksize-minimum=512", "blocksize-preferred=4096",
               "blocksize-maximum=32M", "blocksize-error-policy=error"]
        p = spawn(cmd, self.log_path)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not os.path.exists(pidfile):
            if p.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(Exception):
                    p.kill()
                    p.wait(5)
                return None
            time.sleep(0.02)
        return p

    def start(self, env=None):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.nbd_socket)
        pu = self._spawn(["-U", self.nbd_socket], self.tmp_path("unix.pid"))
        if pu is None:
            raise AssertionError("nbdkit (unix) did not start; see " + self.log_path)
        for _ in range(5):
            port = free_port()
            pt = self._spawn(["-i", "127.0.0.1", "-p", str(port)], self.tmp_path("tcp.pid"))
            if pt is not None:
                break
        else:
            pu.kill()
            raise AssertionError("nbdkit (tcp) did not start; see " + self.log_path)
        self.nbd_port = port
        self.procs = [pu, pt]
        return self

    def alive(self):
        return bool(self.procs) and all(p.poll() is None for p in self.procs)

    def stop(self, check=True, timeout_s=STOP_TIMEOUT_S):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        self.procs = []

    def kill9(self):
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
        self.procs = []

    def wait_exit(self, timeout_s):
        return None

    def restart(self, env=None):
        self.stop()
        return self.start()

    def tcp_uri(self, name):
        return f"nbd://127.0.0.1:{self.nbd_port}/{name}"

    def unix_uri(self, name):
        return f"nbd+unix:///{name}?socket={self.nbd_socket}"

    def tcp_address(self, name=None):
        return ("127.0.0.1", self.nbd_port)

    def unix_address(self, name=None):
        return self.nbd_socket

    def create_volume(self, name, size_bytes):
        path = os.path.join(self.vol_dir, name)
        if os.path.exists(path):
            raise AssertionError(f"volume {name} exists")
        with open(path, "wb") as f:
            f.truncate(size_bytes)
        return {"name": name, "sizeBytes": str(size_bytes)}


class QemuNbd(Server):
    """One qemu-nbd per volume on a unix socket plus one on TCP, both on the same file
    with image locking off."""

    kind = "qemu-nbd"
    expect_features = dict(Blockd.expect_features, block_size_minimum=1)
    min_block = 1
    max_block = 32 * MiB
    # qemu-nbd 7.2 answers writes beyond the end with EINVAL (the spec says SHOULD ENOSPC)
    write_beyond_end_errnos = (28, 22)

    def __init__(self, label="qemu-nbd", **_):
        super().__init__(label)
        self.vol_dir = os.path.join(self.tmp, "vols")
        os.makedirs(self.vol_dir)
        self.log_path = os.path.join(self.tmp, "qemu-nbd.log")
        self.vols = {}  # name -> dict(size, socket, port, procs)
        self.nbd_socket = None
        self.nbd_port = None

    @property
    def pid(self):
        for v in self.vols.values():
            if v["procs"]:
                return v["procs"][0].pid
        return None

    def start(self, env=None):
        for name in self.vols:
            self._start_vol(name)
        return self

    def _spawn(self, name, listen_args, pidfile):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)
        path = os.path.join(self.vol_dir, name)
        cmd = ["qemu-nbd", "--image-opts",
               f"driver=raw,file.driver=file,file.filename={path},file.locking=off",
               "-x", name, "-t", "-e", "0", "--cache=writeback", "--discard=unmap",
               "--pid-file", pidfile, *listen_args]
        p = spawn(cmd, self.log_path)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not os.path.exists(pidfile):
            if p.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(Exception):
                    p.kill()
                    p.wait(5)
                return None
            time.sleep(0.02)
        return p

    def _start_vol(self, name):
        v = self.vols[name]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(v["socket"])
        pu = self._spawn(name, ["-k", v["socket"]], self.tmp_path(f"{name}.u.pid"))
        if pu is None:
            raise AssertionError("qemu-nbd (unix) did not start; see " + self.log_path)
        for _ in range(5):
            port = free_port()
            pt = self._spawn(name, ["-b", "127.0.0.1", "-p", str(port)],
                             self.tmp_path(f"{name}.t.pid"))
            if pt is not None:
                break
        else:
            pu.kill()
            raise AssertionError("qemu-nbd (tcp) did not start; see " + self.log_path)
        v["port"] = port
        v["procs"] = [pu, pt]
        self.nbd_socket, self.nbd_port = v["socket"], port

    def alive(self):
        return all(p.poll() is None for v in self.vols.values() for p in v["procs"])

    def stop(self, check=True, timeout_s=STOP_TIMEOUT_S):
        for v in self.vols.values():
            for p in v["procs"]:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in v["procs"]:
                try:
                    p.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
            v["procs"] = []

    def kill9(self):
        for v in self.vols.values():
            for p in v["procs"]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
            v["procs"] = []

    def wait_exit(self, timeout_s):
        return None

    def restart(self, env=None):
        self.stop()
        return self.start()

    def tcp_uri(self, name):
        return f"nbd://127.0.0.1:{self.vols[name]['port']}/{name}"

    def unix_uri(self, name):
        return f"nbd+unix:///{name}?socket={self.vols[name]['socket']}"

    def tcp_address(self, name):
        return ("127.0.0.1", self.vols[name]["port"])

    def unix_address(self, name):
        return self.vols[name]["socket"]

    def create_volume(self, name, size_bytes):
        path = os.path.join(self.vol_dir, name)
        with open(path, "wb") as f:
            f.truncate(size_bytes)
        self.vols[name] = dict(size=size_bytes, socket=self.tmp_path(f"{name}.sock"),
                               port=None, procs=[])
        self._start_vol(name)
        return {"name": name, "sizeBytes": str(size_bytes)}


def make_server(label, **kw):
    """The NBD target selected by CAIRN_NBD_TARGET."""
    if TARGET == "blockd":
        return Blockd(label=label, **kw)
    if TARGET == "nbdkit":
        return Nbdkit(label=label)
    if TARGET in ("qemu-nbd", "qemu"):
        return QemuNbd(label=label)
    raise SystemExit(f"unknown CAIRN_NBD_TARGET={TARGET!r} (blockd, nbdkit, qemu-nbd)")


# --------------------------------------------------------------------------- unittest glue


class ServerTestCase(unittest.TestCase):
    """One server per test class (started in setUpClass, stopped cleanly in
    tearDownClass); each test makes its own volumes with unique names. When a test
    fails, the tail of the server's log is printed."""

    server = None
    server_kwargs = {}
    _names = 0

    @classmethod
    def setUpClass(cls):
        cls.server = make_server(cls.__name__.lower()[:12], **cls.server_kwargs)
        try:
            cls.server.start()
        except BaseException:
            cls.server.failed = True
            cls.server.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.server is None:
            return
        try:
            cls.server.stop(check=True)
        finally:
            cls.server.cleanup()

    def _test_failed(self):
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        if result is not None:
            for test, _ in list(result.errors) + list(result.failures):
                if test is self or getattr(test, "test_case", None) is self:  # or a subTest
                    return True
        if outcome is not None and not getattr(outcome, "success", True):
            return True
        return False

    def tearDown(self):
        if self._test_failed() and self.server is not None:
            self.server.failed = True
            self.server.print_log_tail()

    def new_volume(self, size_bytes, prefix="v"):
        ServerTestCase._names += 1
        name = f"{prefix}{ServerTestCase._names}-{os.getpid() % 10000}"
        self.server.create_volume(name, size_bytes)
        return name

    def assert_server_alive(self):
        self.assertTrue(self.server.alive(), f"{self.server.kind} is no longer running")


# Every live server, so that a watchdog can show their logs and stop them.
_live_servers = set()


def _watchdog(timeout_s):
    """A hang (a server that stops answering) must fail the test with stacks and logs,
    not wait for CTest's timeout. faulthandler backs this up in case the GIL is held."""
    import faulthandler

    def fire():
        log(f"\n!!! watchdog: test file still running after {timeout_s}s; stacks:")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        for srv in list(_live_servers):
            with contextlib.suppress(Exception):
                srv.print_log_tail()
                srv.kill9()
        os._exit(3)

    t = threading.Timer(timeout_s, fire)
    t.daemon = True
    t.start()
    faulthandler.dump_traceback_later(timeout_s + 30, exit=True)


def main():
    _watchdog(int(os.environ.get("CAIRN_TEST_TIMEOUT_S", "540")))
    unittest.main(verbosity=2)
