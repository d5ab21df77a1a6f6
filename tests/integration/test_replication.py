#!/usr/bin/env python3
"""Replicated volumes: etcd plus three blockd nodes in cluster mode on 127.0.0.1.

A volume created with --replicas 3 lives on three nodes; its primary serves NBD and the
others refuse, naming it. fio writes and verifies through the primary. A replica killed
with SIGKILL is marked out while writes go on; restarted, it gets exactly the extents
that changed (counted), then is in sync. The primary killed mid write+flush: another node
takes over and every write acknowledged before a completed FLUSH, or with FUA, reads back
from it; the killed node rejoins as a replica and refuses its old epoch. A node whose data
dir is emptied is rebuilt in full. At the end every node's copy of every volume is read
in single-node mode, independently of the cluster: all identical.
Waits are on states, bounded; no test asserts how long anything took (the failover time
is logged; bench/replication_bench.py measures it).
"""

import errno
import hashlib
import os
import shutil
import socket
import struct
import threading
import time

import harness
import s3harness
from clusterharness import (BLOCK, STATE_WAIT_S, DurableWriter, ReplicatedVolumesTestCase,
                            pattern)
from harness import MiB, log, run, wait_for


EXTENT = 64 * 1024
LINK_MAGIC, LINK_REPLY_MAGIC, LINK_HELLO = 0x43524C4B, 0x43524C52, 1


class ReplicationTest(ReplicatedVolumesTestCase):
    # ---- helpers
    def wait_served(self, name, not_by=None):
        """The record once its primary (asked itself) serves the volume."""
        def served():
            c = self.info(name)
            if not c or c["primary"] == not_by:
                return None
            c = self.info(name, self.node(c["primary"]))
            return c if c and c.get("serving") else None
        return wait_for(served, STATE_WAIT_S, f"{name} to be served", interval_s=0.1)

    def primary(self, name):
        return self.node(self.info(name)["primary"])

    def connect(self, name):
        return harness.nbd_connect(self.primary(name).tcp_uri(name))

    def assert_refused_naming(self, node, name, primary):
        """NBD to a node that is not the volume's primary fails; the server's message (which
        qemu-img prints) names the primary."""
        p = run(["qemu-img", "info", node.tcp_uri(name)], check=False)
        self.assertNotEqual(p.returncode, 0, f"{node.node_id} served {name}")
        self.assertIn(f"node {primary.node_id} at nbd://{primary.nbd_endpoint()}/{name}", p.stderr)

    def hello(self, node, name, size, epoch):
        """A HELLO on node's replication link, as a primary of `epoch` would send it; returns
        the replica's errno (0 = admitted)."""
        host, port = node.replication.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.settimeout(10)
            s.sendall(struct.pack(">IHHQQQII", LINK_MAGIC, LINK_HELLO, 0, 0, epoch, size, 0,
                                  len(name)) + name.encode())
            reply = b""
            while len(reply) < 24:
                chunk = s.recv(24 - len(reply))
                self.assertTrue(chunk, "replication link closed without a reply")
                reply += chunk
        magic, err, _handle, _value = struct.unpack(">IIQQ", reply)
        self.assertEqual(magic, LINK_REPLY_MAGIC)
        return err

    # ---- tests (run in name order; each leaves the three nodes up)
    def test_01_create_places_replicas_and_only_the_primary_serves(self):
        c = self.create("vplace", 64 * MiB)
        self.assertEqual(c["primary"], "node1")  # the node asked, which has room
        self.assertEqual(int(c["epoch"]), 1)
        self.assertEqual(sorted(r["node"] for r in c["replicas"]), ["node1", "node2", "node3"])
        self.assertEqual({r["state"] for r in c["replicas"]}, {"in_sync"})
        self.assertTrue(c["serving"])
        self.assertEqual(c["nbdUri"], self.node("node1").tcp_uri("vplace"))
        # Human view.
        text = self.nodes[1].cairn("volume", "info", "vplace", json=False).stdout
        self.assertIn("primary:", text)
        self.assertIn("node1 (serving)", text)
        self.assertIn("replica node3", text)
        # More replicas than nodes: a clear error, nothing created.
        p = self.nodes[0].cairn("volume", "create", "vtoo-many", "--size", "1G", "--replicas", "4",
                                json=False, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertRegex(p.stderr, r"(?i)4 .*replica|node")
        self.assertIsNone(self.info("vtoo-many", self.nodes[0]))
        # Another node refuses the export and names the primary.
        self.assert_refused_naming(self.node("node2"), "vplace", self.node("node1"))
        p = run(["nbdinfo", self.node("node3").tcp_uri("vplace")], check=False)
        self.assertNotEqual(p.returncode, 0)
        # Data written through the primary reads back through it.
        h = self.connect("vplace")
        try:
            h.pwrite(pattern("vplace"), 0)
            h.flush()
            self.assertEqual(h.pread(BLOCK, 0), pattern("vplace"))
        finally:
            harness.nbd_close(h)

    def test_02_fio_writes_and_verifies_through_the_primary(self):
        size = 64 * MiB
        self.create("vfio", size)
        uri = self.primary("vfio").tcp_uri("vfio")
        common = ["fio", "--name=repl", "--ioengine=nbd", f"--uri={uri}", "--rw=randrw",
                  "--bs=4k", f"--size={size}", "--iodepth=16", "--verify=crc32c",
                  "--verify_fatal=1", "--randseed=77", "--verify_state_save=0",
                  "--number_ios=4000", "--fsync=64"]
        for phase, extra in (("write+verify", []), ("verify_only", ["--verify_only"])):
            p = run(common + extra, timeout=300, check=False, cwd=self.nodes[0].tmp)
            self.assertEqual(p.returncode, 0, f"fio {phase}: {p.stdout[-2000:]} {p.stderr[-2000:]}")
            self.assertNotIn("verify", (p.stderr or "").lower(), f"fio {phase} verify errors")
        h = self.connect("vfio")
        h.flush()
        harness.nbd_close(h)
        self.assertEqual(set(self.states("vfio").values()), {"in_sync"})

    def test_03_a_killed_replica_is_resynced_with_only_the_changed_extents(self):
        size = 64 * MiB
        self.create("vresync", size)
        h = self.connect("vresync")
        try:
            for off in range(0, 16 * MiB, 1 * MiB):
                h.pwrite(pattern(f"base{off}", 1 * MiB), off)
            h.flush()
            n3 = self.node("node3")
            n3.kill9()
            # 10 writes in 10 distinct extents while node3 is away (two in the same extent).
            changed = [i * 5 * EXTENT for i in range(10)]
            for i, off in enumerate(changed):
                h.pwrite(pattern(f"changed{i}"), off)
            h.pwrite(pattern("changed-again"), changed[3] + BLOCK)
            h.flush()
            self.assertEqual(self.states("vresync")["node3"], "out")
            # Writes keep working with node3 out.
            h.pwrite(pattern("while-out"), 40 * MiB)
            h.flush()
            changed.append(40 * MiB)
            n3.start()
            self.wait_state("vresync", "node3", "in_sync")
            c = self.info("vresync", self.primary("vresync"))
            r3 = next(r for r in c["replicas"] if r["node"] == "node3")
            copied = int(r3.get("resyncDoneBytes", 0))
            log(f"resync copied {copied} bytes for {len(changed)} changed extents")
            self.assertEqual(copied, len(changed) * EXTENT,
                             "the resync copied other extents than the changed ones")
            # Writes after the resync reach node3 too (checked by the final comparison).
            h.pwrite(pattern("after-resync"), 8 * MiB)
            h.flush()
        finally:
            harness.nbd_close(h)

    def test_04_the_primary_killed_mid_write_and_flush_fails_over(self):
        size = 64 * MiB
        self.create("vfail", size, via=self.node("node2"))
        old = self.info("vfail")
        self.assertEqual(old["primary"], "node2")
        h = self.connect("vfail")
        writer = DurableWriter(h, "w", size // BLOCK, stride=7, fua_every=5).start()
        wait_for(lambda: len(writer.durable) >= 200, STATE_WAIT_S, "writes before the kill",
                 interval_s=0.05)
        killed = self.node("node2")
        killed.kill9()
        killed_at = time.monotonic()
        self.assertTrue(writer.join(60), "the client kept writing after its server died")
        harness.nbd_close(h)
        c = self.wait_served("vfail", not_by="node2")
        uri = self.node(c["primary"]).tcp_uri("vfail")
        wait_for(lambda: harness.nbd_read_all(uri, BLOCK) is not None, STATE_WAIT_S, "a read")
        log(f"failover: kill to first served read {time.monotonic() - killed_at:.2f} s; "
            f"new primary {c['primary']}, epoch {c['epoch']}")
        self.assertGreater(int(c["epoch"]), int(old["epoch"]))
        self.assertEqual(self.states("vfail")["node2"], "out")
        # Every durable write reads back from the new primary.
        h = harness.nbd_connect(uri)
        try:
            n = writer.check(self, h, "acknowledged write lost in the failover:")
        finally:
            harness.nbd_close(h)
        log(f"{n} durable writes read back after failover")
        # The killed node comes back as a replica: resynced in full, and fenced.
        killed.start()
        self.wait_state("vfail", "node2", "in_sync")
        self.assertEqual(self.hello(killed, "vfail", size, int(old["epoch"])), errno.ESTALE)
        self.assert_refused_naming(killed, "vfail", self.node(c["primary"]))

    def test_05_attach_moves_the_primary_and_bumps_the_epoch(self):
        before = self.info("vplace")
        target = "node3" if before["primary"] != "node3" else "node2"
        out = self.nodes[0].cairn("volume", "attach", "vplace", "--node", target)
        self.assertEqual(out["cluster"]["primary"], target)
        self.assertEqual(int(out["cluster"]["epoch"]), int(before["epoch"]) + 1)
        c = self.wait_served("vplace", not_by=before["primary"])
        self.assertEqual(harness.nbd_read_all(self.node(target).tcp_uri("vplace"), BLOCK),
                         pattern("vplace"))
        self.assert_refused_naming(self.node(before["primary"]), "vplace", self.node(target))
        self.wait_all_in_sync("vplace")
        self.assertEqual(c["primary"], target)

    def test_06_an_emptied_node_is_rebuilt_in_full(self):
        name = "vresync"
        primary = self.info(name)["primary"]
        victim = next(n for n in self.nodes if n.node_id != primary)
        victim.stop()
        shutil.rmtree(victim.data_dir)
        os.makedirs(victim.data_dir)
        victim.start()
        # In sync again after a resync of everything the primary holds (the numbers of the
        # last resync stay visible): not merely still listed in sync.
        state, done, _ = wait_for(
            lambda: (lambda p: p if p[0] == "in_sync" and p[1] >= 16 * MiB else None)(
                self.resync_progress(name, victim.node_id, self.node(primary))),
            STATE_WAIT_S, f"{victim.node_id} rebuilt and in sync", interval_s=0.2)
        log(f"full rebuild of {victim.node_id} copied {done} bytes")

    def test_07_a_snapshot_is_taken_at_one_point_on_every_replica(self):
        name, size = "vsnap", 32 * MiB
        self.create(name, size)
        primary = self.primary(name)
        other = next(n for n in self.nodes if n is not primary)
        h = self.connect(name)
        stop = threading.Event()

        def writer():  # keeps writing while the snapshot is taken
            i = 0
            while not stop.is_set():
                h.pwrite(pattern(f"s{i}"), (i * 13 % (size // BLOCK)) * BLOCK)
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            time.sleep(0.3)
            status, body = primary.http("POST", f"/v1/volumes/{name}/snapshots", {"name": "s1"})
            self.assertEqual(status, 201, body)
            time.sleep(0.3)
        finally:
            stop.set()
            t.join(60)
        h.flush()
        harness.nbd_close(h)
        # Only the primary takes snapshots; another node says which one.
        status, body = other.http("POST", f"/v1/volumes/{name}/snapshots", {"name": "s2"})
        self.assertEqual(status, 503, body)
        self.assertIn(primary.node_id, body["message"])
        # Every node holds s1, with the same bytes (each reads its own copy).
        digests = {}
        for n in self.nodes:
            status, body = n.http("GET", f"/v1/volumes/{name}/snapshots")
            self.assertEqual(status, 200, body)
            self.assertEqual([s["name"] for s in body.get("snapshots", [])], ["s1"], n.node_id)
            data = harness.nbd_read_all(n.tcp_uri(f"{name}@s1"), size)
            digests[n.node_id] = hashlib.sha256(data).hexdigest()
        self.assertEqual(len(set(digests.values())), 1, f"snapshot copies differ: {digests}")
        self.assertNotEqual(harness.nbd_read_all(primary.tcp_uri(name), size),
                            harness.nbd_read_all(primary.tcp_uri(f"{name}@s1"), size),
                            "writes after the snapshot are missing from the volume")
        # A backup reads any in-sync replica: taken on a node that is not the primary, from
        # its own copy, and restored there, it holds the snapshot's bytes.
        objectd = s3harness.Objectd(label="repl-objectd")
        try:
            objectd.start()
            s3 = ["--s3-endpoint", objectd.endpoint, "--access-key", objectd.access_key,
                  "--secret-key", objectd.secret_key]
            other.cairn("backup", "init", "--repo", "s3://replbk/repo", *s3)
            job = other.cairn("backup", "create", f"{name}@s1", "--repo", "s3://replbk/repo", *s3)
            self.assertEqual(job["state"], "done", job)
            job = other.cairn("backup", "restore", job["result"]["backupId"], f"{name}-restored",
                              "--repo", "s3://replbk/repo", *s3)
            self.assertEqual(job["state"], "done", job)
            restored = harness.nbd_read_all(other.tcp_uri(f"{name}-restored"), size)
            self.assertEqual(hashlib.sha256(restored).hexdigest(), digests[primary.node_id],
                             "a backup taken on a replica differs from the snapshot")
            objectd.stop()
        finally:
            objectd.cleanup()
        # Deleting it deletes it everywhere.
        status, body = primary.http("DELETE", f"/v1/volumes/{name}/snapshots/s1")
        self.assertEqual(status, 204, body)
        for n in self.nodes:
            status, body = n.http("GET", f"/v1/volumes/{name}/snapshots")
            self.assertEqual(body.get("snapshots", []), [], n.node_id)

    def resync_progress(self, name, node_id, via):
        c = self.info(name, via) or {"replicas": []}
        r = next((r for r in c["replicas"] if r["node"] == node_id), {})
        return r.get("state"), int(r.get("resyncDoneBytes", 0)), int(r.get("resyncTotalBytes", 0))

    def test_08_a_resync_resumes_after_either_side_restarts(self):
        name, size = "vresume", 64 * MiB
        c = self.create(name, size, replicas=2, via=self.node("node1"))
        primary = self.node(c["primary"])
        replica = self.node(next(r["node"] for r in c["replicas"] if r["node"] != primary.node_id))
        h = self.connect(name)
        replica.kill9()
        for off in range(0, 32 * MiB, 1 * MiB):
            h.pwrite(pattern(f"resume{off}", 1 * MiB), off)
        h.flush()
        harness.nbd_close(h)
        primary.cairn("volume", "rebuild-rate", name, "4M")
        replica.start()
        wait_for(lambda: self.resync_progress(name, replica.node_id, primary)[1] >= 4 * MiB,
                 STATE_WAIT_S, "the resync to make progress", interval_s=0.1)
        text = primary.cairn("volume", "info", name, json=False).stdout
        self.assertRegex(text, rf"replica {replica.node_id}: +resyncing \d+% .*/s, ETA")
        # The replica restarts mid-resync: out again, then the resync goes on from what was
        # checkpointed (every second at this rate).
        replica.kill9()
        replica.start()

        def left():
            state, done, total = self.resync_progress(name, replica.node_id, primary)
            return total - done if state == "resyncing" and total else None
        before = wait_for(lambda: (lambda n: n if n is not None and n <= 12 * MiB else None)(left()),
                          STATE_WAIT_S, "the resync to get within 12 MiB of the end", interval_s=0.1)
        # The primary restarts mid-resync: still the primary (its replica is not in sync),
        # it resumes from its dirty map instead of starting over.
        primary.kill9()
        primary.start()
        state, done, total = wait_for(
            lambda: (lambda p: p if p[0] == "resyncing" else None)(
                self.resync_progress(name, replica.node_id, primary)),
            STATE_WAIT_S, "the resync to resume", interval_s=0.1)
        log(f"resumed resync: {total} bytes to go of 32 MiB ({before} were left at the kill)")
        self.assertLess(total, 32 * MiB, "the resync started over after the primary's restart")
        self.assertLessEqual(total, before + 16 * MiB, "more than one checkpoint's worth redone")
        primary.cairn("volume", "rebuild-rate", name, "0")
        wait_for(lambda: self.resync_progress(name, replica.node_id, primary)[0] == "in_sync",
                 STATE_WAIT_S, "the replica to be in sync", interval_s=0.1)
        h = self.connect(name)
        try:
            for off in range(0, 32 * MiB, 1 * MiB):
                self.assertEqual(h.pread(1 * MiB, off), pattern(f"resume{off}", 1 * MiB))
        finally:
            harness.nbd_close(h)

    def test_09_a_name_reused_after_delete_gets_fresh_copies(self):
        name, size = "vreuse", 16 * MiB
        self.create(name, size)
        h = self.connect(name)
        h.pwrite(pattern("old incarnation", 1 * MiB), 0)
        h.flush()
        harness.nbd_close(h)
        n3 = self.node("node3")
        n3.kill9()  # misses the deletion: it keeps its copy and its fence
        self.nodes[0].cairn("volume", "delete", name, json=False)
        n3.start()
        c = self.create(name, size)
        self.assertEqual(int(c["epoch"]), 1)
        self.wait_all_in_sync(name)
        # The new volume reads as zeros; node3's old copy was not taken for it (the final
        # comparison reads node3's own copy).
        self.assertEqual(harness.nbd_read_all(self.primary(name).tcp_uri(name), 1 * MiB),
                         bytes(1 * MiB))

    def test_99_every_copy_of_every_volume_is_identical(self):
        # Independent check: each node's data dir opened in single-node mode.
        self.assert_copies_identical()


if __name__ == "__main__":
    harness.main()
