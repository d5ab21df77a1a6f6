#!/usr/bin/env python3
"""Cluster membership: etcd plus three blockd nodes in cluster mode on 127.0.0.1.

`cairn node list` on any node shows every live node with the endpoints it really listens
on (checked against each node's ready line and against etcd read directly); a node killed
with SIGKILL drops out once its lease expires and is back when restarted (also right
away, while its old key still lingers); a second node with a live node's id exits
non-zero saying why; a node stopped cleanly leaves at once; nodes keep serving while etcd
is down and register again when it is back. Single-node mode answers the local node.
Waits are on states, bounded; no test asserts how long anything took.
"""

import errno
import shutil
import socket
import struct

import harness
from clusterharness import ClusterTestCase, cluster_args
from harness import BLOCKD, GiB, log, run, wait_for

# Bounded waits on states (a lease is 5 s; a record is republished every 10 s).
STATE_WAIT_S = 90


def log_text(server):
    with open(server.log_path, errors="replace") as f:
        return f.read()


class ClusterTest(ClusterTestCase):

    # ---- helpers
    def listed(self, via):
        """{id: ClusterNode JSON} from `cairn node list --json` on node `via`."""
        out = via.cairn("node", "list")
        ids = [n["id"] for n in out["nodes"]]
        self.assertEqual(ids, sorted(ids), "node list is not sorted by id")
        return {n["id"]: n for n in out["nodes"]}

    def assert_listed_as_running(self, entry, node):
        self.assertEqual(entry["state"], "up")
        self.assertEqual(entry["id"], node.node_id)
        self.assertEqual(entry["nbd"], node.nbd_endpoint())
        self.assertEqual(entry["api"], node.api)
        self.assertEqual(entry["replication"], node.replication)
        self.assertGreater(int(entry["startedUnixS"]), 0)

    def wait_listed(self, via, predicate, what):
        return wait_for(lambda: predicate(self.listed(via)), STATE_WAIT_S, what, interval_s=0.25)

    def assert_all_up(self):
        for via in self.nodes:
            seen = self.listed(via)
            self.assertEqual(sorted(seen), ["node1", "node2", "node3"], f"as seen by {via.node_id}")
            for n in self.nodes:
                self.assert_listed_as_running(seen[n.node_id], n)

    # ---- tests (run in name order; each leaves the three nodes up)
    def test_01_every_node_lists_the_three_nodes_with_their_endpoints(self):
        self.assert_all_up()
        # What etcd holds, read without Cairn's client: one key per node under its lease.
        stored = self.etcd.registered_nodes()
        self.assertEqual(sorted(stored), ["node1", "node2", "node3"])
        leases = set()
        for n in self.nodes:
            record, lease = stored[n.node_id]
            self.assertNotEqual(lease, 0, f"{n.node_id}'s key has no lease")
            leases.add(lease)
            self.assertEqual(record["api"], n.api)
            self.assertEqual(record["nbd"], n.nbd_endpoint())
            self.assertEqual(record["replication"], n.replication)
            self.assertNotIn("state", {k for k, v in record.items() if v})  # reader-side only
        self.assertEqual(len(leases), 3, "nodes share a lease")
        # The replication port speaks the link protocol: a request with a bad magic gets
        # EINVAL and the connection is closed.
        host, port = self.nodes[0].replication.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.settimeout(10)
            s.sendall(b"\0" * 40)
            reply = b""
            while len(reply) < 24:
                chunk = s.recv(24 - len(reply))
                self.assertTrue(chunk, "closed without a reply")
                reply += chunk
            magic, error, _handle, _value = struct.unpack(">IIQQ", reply)
            self.assertEqual((magic, error), (0x43524C52, errno.EINVAL))
            self.assertEqual(s.recv(1), b"")
        # The human table.
        p = self.nodes[1].cairn("node", "list", json=False)
        lines = p.stdout.splitlines()
        self.assertEqual(lines[0].split(), ["ID", "NBD", "API", "STATE", "CAPACITY", "USED", "VOLUMES"])
        self.assertEqual(len(lines), 4, p.stdout)
        for line, n in zip(lines[1:], self.nodes):
            cells = line.split()
            self.assertEqual(cells[:4], [n.node_id, n.nbd_endpoint(), n.api, "up"], line)

    def test_02_a_node_publishes_its_volume_count_and_usage(self):
        n2 = self.node("node2")
        status, body = n2.http("POST", "/v1/volumes",
                               {"name": "vol-on-node2", "sizeBytes": 1 * GiB, "replicas": 1})
        self.assertEqual(status, 201, body)
        self.assertEqual(body["cluster"]["primary"], "node2")
        status = n2.cairn("status")
        self.assertEqual(int(status["volumes"]), 1)
        # Republished within the refresh period; every node sees it.
        entry = self.wait_listed(self.node("node1"),
                                 lambda seen: seen["node2"] if seen["node2"]["volumes"] == "1" else None,
                                 "node2's volume count to be republished")
        self.assertEqual(int(entry["capacityBytes"]), int(status["capacityBytes"]))
        self.assertEqual(self.listed(self.node("node3"))["node2"]["volumes"], "1")
        self.assertEqual(self.listed(n2)["node1"]["volumes"], "0")
        n2.cairn("volume", "delete", "vol-on-node2", json=False)

    def test_03_a_killed_node_drops_out_and_comes_back_when_restarted(self):
        n3, n1 = self.node("node3"), self.node("node1")
        n3.kill9()
        self.wait_listed(n1, lambda seen: "node3" not in seen, "node3 to drop out after SIGKILL")
        self.assertNotIn("node3", self.etcd.registered_nodes())
        self.assertEqual(sorted(self.listed(self.node("node2"))), ["node1", "node2"])
        n3.start()  # same data dir and id, new ports
        seen = self.listed(n1)
        self.assertIn("node3", seen)
        self.assert_listed_as_running(seen["node3"], n3)
        self.assert_all_up()

    def test_04_a_node_restarted_right_after_a_crash_takes_its_id_back(self):
        # Its old key still lingers under the dead run's lease; the new run waits for it to
        # expire (the key of a live node would not) and registers.
        n3 = self.node("node3")
        old_lease = self.etcd.registered_nodes()["node3"][1]
        n3.kill9()
        n3.start()
        record, lease = self.etcd.registered_nodes()["node3"]
        self.assertNotEqual(lease, old_lease)
        self.assertEqual(record["api"], n3.api)
        self.assert_all_up()

    def test_05_a_second_node_with_a_live_id_exits_with_a_clear_message(self):
        n1 = self.node("node1")
        before = self.etcd.registered_nodes()["node1"]
        tmp = harness.make_tmpdir("dup")
        try:
            p = run([BLOCKD, "--data-dir", tmp, "--nbd-listen", "127.0.0.1:0", "--nbd-socket", "none",
                     "--api-listen", "127.0.0.1:0", *cluster_args("node1", self.etcd)],
                    timeout=120, check=False)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(p.stderr[-2000:])
        self.assertEqual(p.returncode, 1)
        self.assertIn("cannot join the cluster as node node1", p.stderr)
        self.assertIn('node id "node1" is already registered by a live node', p.stderr)
        self.assertIn(n1.api, p.stderr)  # names the holder
        self.assertNotIn("blockd ready", p.stderr)
        # The live node1 is untouched (its usage may have been republished meanwhile).
        self.assertTrue(n1.alive())
        after = self.etcd.registered_nodes()["node1"]
        identity = ("id", "nbd", "api", "replication", "startedUnixS")
        self.assertEqual(after[1], before[1], "node1's lease changed")
        self.assertEqual({k: after[0][k] for k in identity}, {k: before[0][k] for k in identity})
        self.assert_all_up()

    def test_06_a_node_stopped_cleanly_leaves_at_once(self):
        n2 = self.node("node2")
        n2.stop()  # SIGTERM; exit 0 checked; its lease is revoked before it exits
        # No waiting for a lease to expire: the key is gone already.
        self.assertNotIn("node2", self.etcd.registered_nodes())
        self.assertEqual(sorted(self.listed(self.node("node1"))), ["node1", "node3"])
        n2.start()
        self.assert_all_up()

    def test_07_cluster_flags_are_checked(self):
        cases = [
            (["--node-id", "node9"], "go together"),
            (["--node-id", "node9", "--cluster", self.etcd.endpoint], "go together"),
            (cluster_args("Node_9", self.etcd), "invalid --node-id"),
            (cluster_args("n" * 65, self.etcd), "invalid --node-id"),
            (["--node-id", "node9", "--cluster", "127.0.0.1:2379",
              "--replication-listen", "127.0.0.1:0"], "bad --cluster"),
            (["--node-id", "node9", "--cluster", self.etcd.endpoint,
              "--replication-listen", "nowhere"], "bad --replication-listen"),
        ]
        tmp = harness.make_tmpdir("flags")
        try:
            for args, message in cases:
                with self.subTest(args=args):
                    p = run([BLOCKD, "--data-dir", tmp, "--nbd-listen", "127.0.0.1:0",
                             "--nbd-socket", "none", "--api-listen", "127.0.0.1:0", *args],
                            timeout=60, check=False)
                    self.assertEqual(p.returncode, 2, p.stderr)
                    self.assertIn(message, p.stderr)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.assertNotIn("node9", self.etcd.registered_nodes())

    def test_08_single_node_mode_lists_the_local_node_without_etcd(self):
        with harness.Blockd(label="single") as single:
            single.create_volume("only", 1 * GiB)
            out = single.cairn("node", "list")
            self.assertEqual(len(out["nodes"]), 1)
            local = out["nodes"][0]
            self.assertEqual(local["id"], "local")
            self.assertEqual(local["state"], "up")
            self.assertEqual(local["nbd"], f"{single.nbd_host}:{single.nbd_port}")
            self.assertEqual(local["api"], single.api)
            self.assertEqual(local["replication"], "")
            self.assertEqual(local["volumes"], "1")
            self.assertNotIn("node", single.endpoints)  # no node= in its ready line
        self.assertNotIn("local", self.etcd.registered_nodes())

    def test_09_nodes_keep_serving_while_etcd_is_down_and_register_again(self):
        n1 = self.node("node1")
        status, body = n1.http("POST", "/v1/volumes",
                               {"name": "survivor", "sizeBytes": 1 * GiB, "replicas": 1})
        self.assertEqual(status, 201, body)
        h = harness.nbd_connect(n1.tcp_uri("survivor"))
        try:
            h.pwrite(b"s" * 4096, 0)
            h.flush()
        finally:
            harness.nbd_close(h)
        self.etcd.stop()
        # Cluster state cannot be read: clear errors naming etcd.
        p = n1.cairn("volume", "list", json=False, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("etcd", p.stderr + p.stdout)
        p = n1.cairn("node", "list", json=False, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("etcd", p.stderr)
        # Wait until every node noticed the loss of its lease (the etcd loss is not timed).
        for n in self.nodes:
            wait_for(lambda: "lost lease" in log_text(n), STATE_WAIT_S,
                     f"{n.node_id} to notice its lease is lost")
        self.etcd.start()  # same ports, same data
        self.wait_listed(n1, lambda seen: sorted(seen) == ["node1", "node2", "node3"],
                         "every node to register again")
        for n in self.nodes:
            wait_for(lambda: "registered again" in log_text(n), STATE_WAIT_S,
                     f"{n.node_id} to log its re-registration")
        self.assert_all_up()
        for n in self.nodes:
            self.assertTrue(n.alive())
        # Served again once the node holds a lease; the data is intact.
        wait_for(lambda: n1.http("GET", "/v1/volumes/survivor")[1]["cluster"].get("serving"),
                 STATE_WAIT_S, "survivor to be served again")
        self.assertEqual(harness.nbd_read_all(n1.tcp_uri("survivor"), 4096), b"s" * 4096)
        n1.cairn("volume", "delete", "survivor", json=False)


if __name__ == "__main__":
    harness.main()
