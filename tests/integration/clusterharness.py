"""etcd and cluster-mode blockd nodes for the cluster integration tests.

Builds on harness.py (processes, temp dirs, log tails, the watchdog). `Etcd` runs one
etcd member (Debian's etcd-server, or $CAIRN_ETCD_BIN) on free 127.0.0.1 ports with its
data in a temp dir; it can be stopped and started again on the same ports with the same
data. It also reads keys straight from etcd's JSON gateway, independently of Cairn's own
etcd client, so that tests can check what the nodes really registered. `ClusterNode` is
a harness.Blockd started with --node-id/--cluster/--replication-listen. Everything is
stopped by PID.
"""

import base64
import contextlib
import json as jsonlib
import os
import signal
import socket
import subprocess
import threading
import time
import unittest
import urllib.error
import urllib.request

import harness
from harness import READY_TIMEOUT_S, STOP_TIMEOUT_S, _tail, free_port, log, spawn, wait_for

ETCD = os.environ.get("CAIRN_ETCD_BIN") or "/usr/bin/etcd"
NODES_PREFIX = "/cairn/nodes/"


def _b64(data):
    return base64.b64encode(data).decode()


class Etcd(harness.DaemonProcess, harness.Server):
    """One etcd member on 127.0.0.1. start() after stop() reuses the ports and the data."""

    kind = "etcd"

    def __init__(self, label="etcd"):
        super().__init__(label)
        self.log_path = self.tmp_path("etcd.log")
        self.data_dir = self.tmp_path("data")
        self.proc = None
        self.client_port = None
        self.peer_port = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, env=None):
        assert self.proc is None, "already running"
        if not os.path.exists(ETCD):
            raise AssertionError(f"etcd not found at {ETCD} (Debian package etcd-server; "
                                 "scripts/install-deps.sh installs it)")
        fresh_ports = self.client_port is None
        for _ in range(5 if fresh_ports else 1):  # a free port may be taken before etcd binds it
            if fresh_ports:
                self.client_port, self.peer_port = free_port(), free_port()
            peer = f"http://127.0.0.1:{self.peer_port}"
            cmd = [ETCD, "--name", "cairn-test", "--data-dir", self.data_dir,
                   "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                   "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                   "--initial-cluster", f"cairn-test={peer}"]
            self.proc = spawn(cmd, self.log_path)
            log(f"[{self.label}] started etcd pid={self.proc.pid} at {self.endpoint}")
            if self._wait_ready():
                return self
        raise AssertionError(f"etcd did not start; log tail:\n{self._log_tail()}")

    def _log_tail(self):
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as f:
            return _tail(f.read())
        return ""

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log(f"[{self.label}] etcd exited with status {self.proc.returncode} while starting")
                self.proc = None
                return False
            with contextlib.suppress(OSError, ValueError):
                self.range("/cairn-test/ready", timeout=2)
                return True
            time.sleep(0.1)
        self.kill9()
        return False

    def stop(self, check=True, timeout_s=STOP_TIMEOUT_S):
        if self.proc is None:
            return None
        p, self.proc = self.proc, None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        log(f"[{self.label}] etcd pid={p.pid} stopped, status {p.returncode}")
        return p.returncode

    # ---- reading etcd directly (its v3 JSON gateway)
    def range(self, prefix, timeout=10):
        """Every key starting with prefix: [{key, value (str), lease (int)}], in key order."""
        key = prefix.encode()
        end = key[:-1] + bytes([key[-1] + 1])
        body = jsonlib.dumps({"key": _b64(key), "range_end": _b64(end)}).encode()
        req = urllib.request.Request(self.endpoint + "/v3/kv/range", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            reply = jsonlib.loads(r.read())
        return [{"key": base64.b64decode(kv["key"]).decode(),
                 "value": base64.b64decode(kv.get("value", "")).decode(),
                 "lease": int(kv.get("lease", "0"))} for kv in reply.get("kvs", [])]

    def registered_nodes(self):
        """{node id: (ClusterNode JSON as stored, lease)} for every key under /cairn/nodes/."""
        return {kv["key"][len(NODES_PREFIX):]: (jsonlib.loads(kv["value"]), kv["lease"])
                for kv in self.range(NODES_PREFIX)}


def cluster_args(node_id, etcd, replication_listen="127.0.0.1:0", etcd_endpoint=None):
    return ["--node-id", node_id, "--cluster", etcd_endpoint or etcd.endpoint,
            "--replication-listen", replication_listen]


class ClusterNode(harness.Blockd):
    """A blockd in cluster mode, on ephemeral 127.0.0.1 ports like harness.Blockd.
    `etcd_endpoint` replaces etcd's own (e.g. a TcpProxy's), `extra_args` adds flags."""

    def __init__(self, node_id, etcd, label=None, etcd_endpoint=None, extra_args=(),
                 replication_listen="127.0.0.1:0", **kw):
        super().__init__(label=label or node_id,
                         args=cluster_args(node_id, etcd, replication_listen, etcd_endpoint)
                         + list(extra_args), **kw)
        self.node_id = node_id

    def start(self, env=None):
        super().start(env=env)
        if self.endpoints.get("node") != self.node_id or "replication" not in self.endpoints:
            self.kill9()
            raise AssertionError(f"ready line lacks node={self.node_id} or replication=...: "
                                 f"{self.endpoints}")
        self.replication = self.endpoints["replication"]
        return self

    def nbd_endpoint(self):
        return f"{self.nbd_host}:{self.nbd_port}"


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of `target` ("host:port"), for link faults.

    Modes: "pass" forwards; "delay" forwards each chunk after `delay_s`; "blackhole" keeps
    connections open and silently drops what they carry (a hung peer); "refuse" closes new
    connections at once. cut() closes every open connection (both ends). Threads: one
    acceptor, two pumps per connection; stop() closes everything and joins them."""

    def __init__(self, target, label="proxy"):
        self.label = label
        self.target = target
        self.mode = "pass"
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self._conns = []
        self._threads = []
        self._stopping = False
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)

    def set_mode(self, mode, delay_s=0.0):
        assert mode in ("pass", "delay", "blackhole", "refuse")
        log(f"[{self.label}] mode {mode}" + (f" ({delay_s} s)" if mode == "delay" else ""))
        self.delay_s = delay_s
        self.mode = mode

    def cut(self):
        with self._lock:
            conns, self._conns = self._conns, []
        log(f"[{self.label}] cutting {len(conns)} connection(s)")
        for a, b in conns:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()

    def stop(self):
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut()
        for t in self._threads:
            t.join(10)

    def _accept_loop(self):
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "refuse":
                client.close()
                continue
            host, port = self.target.rsplit(":", 1)
            try:
                upstream = socket.create_connection((host, int(port)), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.append((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src, dst):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            mode = self.mode
            if mode == "blackhole":
                continue
            if mode == "delay":
                time.sleep(self.delay_s)
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def copies_digests(nodes, volumes):
    """{volume: {node id: sha256}} of every node's own copy of each volume (name -> size),
    read independently of the cluster: the nodes are killed, then each data dir is opened
    by a single-node blockd and read over NBD (a node without a copy is left out). The
    nodes are left stopped."""
    import hashlib
    for n in nodes:
        if n.proc is not None:
            n.kill9()
    digests = {}
    for n in nodes:
        single = harness.Blockd(label=f"single-{n.node_id}")
        os.rmdir(single.data_dir)
        single.data_dir = n.data_dir
        try:
            single.start()
            status, listed = single.http("GET", "/v1/volumes")
            held = {v["name"] for v in listed.get("volumes", [])} if status == 200 else set()
            for name, size in volumes.items():
                if name not in held:
                    continue
                data = harness.nbd_read_all(single.tcp_uri(name), size)
                digests.setdefault(name, {})[n.node_id] = hashlib.sha256(data).hexdigest()
            single.stop()
        finally:
            single.cleanup()
    return digests


class ClusterTestCase(unittest.TestCase):
    """A test class sharing one etcd and the nodes make_nodes() builds (three plain nodes
    unless overridden; it may also create TcpProxy objects and add them to cls.proxies).
    setUpClass starts them; tearDownClass stops the nodes first (they revoke their leases),
    then the proxies and etcd, every process by its PID; a failed test prints every log's
    tail."""

    etcd = None
    nodes = []
    proxies = []

    @classmethod
    def make_nodes(cls):
        return [ClusterNode(f"node{i}", cls.etcd) for i in (1, 2, 3)]

    @classmethod
    def setUpClass(cls):
        cls.etcd = Etcd()
        cls.nodes, cls.proxies = [], []
        try:
            cls.etcd.start()
            cls.nodes = cls.make_nodes()
            for n in cls.nodes:
                n.start()
        except BaseException:
            cls._teardown(failed=True)
            raise

    @classmethod
    def tearDownClass(cls):
        cls._teardown(failed=False)

    @classmethod
    def _teardown(cls, failed):
        try:
            for n in cls.nodes:
                try:
                    n.failed = n.failed or failed
                    if n.proc is not None:
                        n.stop(check=not failed)
                finally:
                    n.cleanup()
        finally:
            for p in cls.proxies:
                p.stop()
            if cls.etcd is not None:
                cls.etcd.failed = cls.etcd.failed or failed
                cls.etcd.stop()
                cls.etcd.cleanup()

    def tearDown(self):
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        failed = result is not None and any(t is self for t, _ in result.errors + result.failures)
        if failed or (outcome is not None and not getattr(outcome, "success", True)):
            for s in [self.etcd, *self.nodes]:
                s.failed = True
                s.print_log_tail(60)

    def node(self, node_id):
        return next(n for n in self.nodes if n.node_id == node_id)


# ---- replicated volumes

BLOCK = 4096
STATE_WAIT_S = 120  # bounded waits on states (leases of 3 s, a reconcile every second)


def pattern(tag, size=BLOCK):
    return harness.pattern_block(tag, size)


class DurableWriter:
    """Writes 4 KiB blocks through an NBD handle on a thread until stopped or until the
    server fails it: write i goes to block first + (i * stride) % blocks, every
    `fua_every`-th write with FUA (0: none), a FLUSH after every `flush_every` writes. For
    every block it records the values written, in order, and how many of them a completed
    FLUSH or a FUA made durable: the block may then read as the newest durable value or as
    anything written after it, never as something older."""

    def __init__(self, h, tag, blocks, first=0, stride=1, fua_every=0, flush_every=8):
        self.h, self.tag, self.blocks, self.first, self.stride = h, tag, blocks, first, stride
        self.fua_every, self.flush_every = fua_every, flush_every
        self.history, self.durable, self.errors = {}, {}, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        i = 0
        try:
            while not self._stop.is_set():
                off = (self.first + i * self.stride % self.blocks) * BLOCK
                data = pattern(f"{self.tag}{i}")
                fua = self.fua_every and i % self.fua_every == 0
                if fua:
                    self.h.pwrite(data, off, harness.nbd.CMD_FLAG_FUA)
                else:
                    self.h.pwrite(data, off)
                self.history.setdefault(off, []).append(data)
                if fua:
                    self.durable[off] = len(self.history[off])
                if i % self.flush_every == self.flush_every - 1:
                    written = {k: len(v) for k, v in self.history.items()}
                    self.h.flush()
                    self.durable.update(written)
                i += 1
        except Exception as e:  # the server failed the client
            self.errors.append(e)

    def join(self, timeout_s):
        """Waits for the writer to end by itself (its server failed it); True if it did."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stop(self, timeout_s=60):
        self._stop.set()
        return self.join(timeout_s)

    def check(self, tc, h, what="acknowledged write"):
        """Every durable write reads back through handle h (a value at least as new)."""
        for off, n in sorted(self.durable.items()):
            tc.assertIn(bytes(h.pread(BLOCK, off)), self.history[off][n - 1:],
                        f"{what} at {off} lost")
        return len(self.durable)


class ReplicatedVolumesTestCase(ClusterTestCase):
    """ClusterTestCase with replicated volumes: create() records every volume and its copy
    count, the helpers read their records, and assert_copies_identical() reads every
    node's own copy in single-node mode (the nodes are restarted after)."""

    @classmethod
    def setUpClass(cls):
        cls.volumes, cls.copies = {}, {}  # name -> size, name -> replicas
        super().setUpClass()

    def info_nodes(self):
        """Nodes asked for records, in order."""
        return [n for n in self.nodes if n.proc is not None]

    def create(self, name, size, replicas=3, via=None):
        via = via or self.nodes[0]
        out = via.cairn("volume", "create", name, "--size", str(size), "--replicas", str(replicas))
        self.volumes[name] = size
        self.copies[name] = replicas
        self.assertEqual(out["cluster"]["primary"], via.node_id)  # the node asked has room
        return out["cluster"]

    def info(self, name, via=None):
        for n in ([via] if via else self.info_nodes()):
            try:
                status, body = n.http("GET", f"/v1/volumes/{name}", timeout=10)
            except OSError:
                continue
            if status == 200:
                return body["cluster"]
        return None

    def states(self, name, via=None):
        c = self.info(name, via)
        return {r["node"]: r["state"] for r in c["replicas"]} if c else {}

    def wait_state(self, name, node_id, state, via=None):
        return wait_for(lambda: self.states(name, via).get(node_id) == state, STATE_WAIT_S,
                        f"{name}: replica {node_id} to be {state}", interval_s=0.2)

    def wait_all_in_sync(self, name):
        wait_for(lambda: set(self.states(name).values()) == {"in_sync"}, STATE_WAIT_S,
                 f"{name}: every replica in sync", interval_s=0.2)

    def assert_copies_identical(self):
        for name in self.volumes:
            self.wait_all_in_sync(name)
        digests = copies_digests(self.nodes, self.volumes)
        for name, by_node in digests.items():
            self.assertEqual(len(by_node), self.copies[name], f"{name}: copies on {sorted(by_node)}")
            self.assertEqual(len(set(by_node.values())), 1, f"{name}: copies differ: {by_node}")
            log(f"{name}: {len(by_node)} identical copies ({next(iter(by_node.values()))[:16]})")
        for n in self.nodes:
            n.start()
