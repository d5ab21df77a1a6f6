#!/usr/bin/env python3
"""Replication under link faults: etcd plus three blockd nodes on 127.0.0.1, with TCP
proxies the test controls in front of node3's replication port and of node1's etcd.

Delayed link: writes go on, node3 stays in sync. Dropped link (the proxy swallows bytes):
after the 5 s request timeout node3 is marked out and writes go on; when the link heals it
is resynced. Cut connections under a running writer: no write fails, node3 comes back in
sync. Partitioned primary (node1 loses etcd): it stops serving when its lease runs out,
another node takes over, every write node1 acknowledged before a completed FLUSH reads
back from the new primary, nothing node1's client sends afterwards lands (no split brain),
and after the partition heals node1 is rebuilt as a replica. At the end every copy of
every volume is identical (read in single-node mode).
A seeded loop of random faults under a writer ends it (2 rounds; CAIRN_SOAK=1: 12; replay
with CAIRN_SEED). Waits are on states, bounded; no test asserts how long anything took.
"""

import threading
import time

import harness
from clusterharness import (BLOCK, STATE_WAIT_S, ClusterNode, DurableWriter,
                            ReplicatedVolumesTestCase, TcpProxy, pattern)
from harness import MiB, free_port, log, run, wait_for


class ReplicationFaultsTest(ReplicatedVolumesTestCase):

    @classmethod
    def make_nodes(cls):
        cls.etcd_proxy = TcpProxy(cls.etcd.endpoint[len("http://"):], "etcd-proxy-node1")
        rep_port = free_port()
        cls.rep_proxy = TcpProxy(f"127.0.0.1:{rep_port}", "replication-proxy-node3")
        cls.proxies = [cls.etcd_proxy, cls.rep_proxy]
        return [
            ClusterNode("node1", cls.etcd, etcd_endpoint=f"http://{cls.etcd_proxy.address}"),
            ClusterNode("node2", cls.etcd),
            ClusterNode("node3", cls.etcd, replication_listen=f"127.0.0.1:{rep_port}",
                        extra_args=["--replication-advertise", cls.rep_proxy.address]),
        ]

    # ---- helpers
    def info_nodes(self):
        # node1 may be cut off from etcd: ask the others first.
        return [self.node("node2"), self.node("node3"), self.node("node1")]

    def write_blocks(self, h, tag, first, count, flush=True):
        for i in range(count):
            h.pwrite(pattern(f"{tag}{i}"), (first + i) * BLOCK)
        if flush:
            h.flush()

    def check_blocks(self, h, tag, first, count):
        for i in range(count):
            self.assertEqual(h.pread(BLOCK, (first + i) * BLOCK), pattern(f"{tag}{i}"),
                             f"block {first + i} ({tag}{i})")

    # ---- tests (in name order)
    def test_1_a_delayed_link_slows_writes_but_loses_nothing(self):
        self.create("vdelay", 32 * MiB, via=self.node("node1"))
        h = harness.nbd_connect(self.node("node1").tcp_uri("vdelay"))
        try:
            self.rep_proxy.set_mode("delay", 0.02)
            self.write_blocks(h, "d", 0, 100)
            self.assertEqual(self.states("vdelay")["node3"], "in_sync")
            self.rep_proxy.set_mode("pass")
            self.check_blocks(h, "d", 0, 100)
        finally:
            self.rep_proxy.set_mode("pass")
            harness.nbd_close(h)

    def test_2_a_dropped_link_marks_the_replica_out_then_it_is_resynced(self):
        self.create("vdrop", 32 * MiB, via=self.node("node1"))
        h = harness.nbd_connect(self.node("node1").tcp_uri("vdrop"))
        try:
            self.write_blocks(h, "before", 0, 50)
            self.rep_proxy.set_mode("blackhole")
            # The first write waits for the request timeout, then node3 is out.
            self.write_blocks(h, "during", 100, 50)
            self.assertEqual(self.states("vdrop")["node3"], "out")
            self.rep_proxy.set_mode("pass")
            self.rep_proxy.cut()
            self.wait_state("vdrop", "node3", "in_sync")
            self.write_blocks(h, "after", 200, 20)
            self.check_blocks(h, "before", 0, 50)
            self.check_blocks(h, "during", 100, 50)
        finally:
            self.rep_proxy.set_mode("pass")
            harness.nbd_close(h)

    def test_3_cut_connections_under_a_writer_fail_no_write(self):
        self.create("vcut", 32 * MiB, via=self.node("node1"))
        h = harness.nbd_connect(self.node("node1").tcp_uri("vcut"))
        stop = threading.Event()
        errors, done = [], []

        def writer():
            i = 0
            try:
                while not stop.is_set():
                    h.pwrite(pattern(f"c{i}"), (i % 2048) * BLOCK)
                    if i % 16 == 15:
                        h.flush()
                    done.append(i)
                    i += 1
            except Exception as e:
                errors.append(e)

        t = threading.Thread(target=writer)
        t.start()
        try:
            for _ in range(3):
                wait_for(lambda: len(done) > 50, STATE_WAIT_S, "writes")
                self.rep_proxy.cut()
                self.wait_state("vcut", "node3", "in_sync")
                done.clear()
        finally:
            stop.set()
            t.join(60)
        self.assertEqual(errors, [], "a write failed while links were cut")
        h.flush()
        harness.nbd_close(h)

    def test_4_a_partitioned_primary_stops_and_another_node_takes_over(self):
        name, size = "vpart", 32 * MiB
        self.create(name, size, via=self.node("node1"))
        old = self.node("node1")
        h = harness.nbd_connect(old.tcp_uri(name))
        # Blocks 0..1023; from block 2048 on is the new primary's.
        writer = DurableWriter(h, "p", 1024).start()
        wait_for(lambda: len(writer.durable) >= 100, STATE_WAIT_S, "writes before the partition")
        self.etcd_proxy.set_mode("blackhole")
        partitioned_at = time.monotonic()
        try:
            self.partitioned(name, old, h, writer, partitioned_at)
        finally:
            self.etcd_proxy.set_mode("pass")
            self.etcd_proxy.cut()
        # Healed: node1 registers again and is rebuilt as a replica.
        self.wait_state(name, "node1", "in_sync")
        self.assertNotEqual(self.info(name)["primary"], "node1")

    def partitioned(self, name, old, h, writer, partitioned_at):
        def taken_over():
            c = self.info(name, self.node("node2"))
            return c if c and c["primary"] != "node1" else None
        c = wait_for(taken_over, STATE_WAIT_S, "another node to take over", interval_s=0.1)
        new = self.node(c["primary"])
        wait_for(lambda: (self.info(name, new) or {}).get("serving"), STATE_WAIT_S,
                 "the new primary to serve")
        log(f"partition: {new.node_id} serves {name} (epoch {c['epoch']}) "
            f"{time.monotonic() - partitioned_at:.2f} s after node1 lost etcd")
        self.assertTrue(writer.join(60), "node1's client still writes after the takeover")
        self.assertTrue(writer.errors, "node1 kept acknowledging writes after losing its lease")
        # The old primary serves nothing; whatever its client still sends does not land.
        p = run(["qemu-img", "info", old.tcp_uri(name)], check=False)
        self.assertNotEqual(p.returncode, 0, "the partitioned node still serves the volume")
        h2 = harness.nbd_connect(new.tcp_uri(name))
        try:
            self.write_blocks(h2, "new", 2048, 64)
            with self.assertRaises(Exception):
                h.pwrite(pattern("stale"), 2048 * BLOCK)
                h.flush()
            harness.nbd_close(h)
            self.check_blocks(h2, "new", 2048, 64)
            n = writer.check(self, h2)
            log(f"{n} writes node1 acknowledged read back from {new.node_id}")
        finally:
            harness.nbd_close(h2)

    def test_5_random_faults_under_a_writer_lose_no_acknowledged_write(self):
        """The soak loop: seeded random faults on node3 (cut links, a hung link, kill -9 and
        restart) while a writer writes and flushes through node2; then every write
        acknowledged before a completed FLUSH reads back and node3 is in sync again."""
        rng, seed = harness.seeded_rng("replication-faults")
        rounds = 12 if harness.SOAK else 2
        name, size = "vsoak", 32 * MiB
        self.create(name, size, via=self.node("node2"))
        h = harness.nbd_connect(self.node("node2").tcp_uri(name))
        writer = DurableWriter(h, f"soak{seed}-", size // BLOCK, stride=7).start()
        n3 = self.node("node3")
        try:
            for r in range(rounds):
                fault = rng.choice(["cut", "hang", "kill"])
                log(f"round {r + 1}/{rounds} (seed {seed}): {fault}")
                if fault == "cut":
                    self.rep_proxy.cut()
                elif fault == "hang":
                    self.rep_proxy.set_mode("blackhole")
                    wait_for(lambda: self.states(name).get("node3") == "out", STATE_WAIT_S,
                             "node3 out after the link hung", interval_s=0.2)
                    self.rep_proxy.set_mode("pass")
                    self.rep_proxy.cut()
                else:
                    n3.kill9()
                    n3.start()
                self.wait_state(name, "node3", "in_sync")
        finally:
            self.rep_proxy.set_mode("pass")
            writer.stop()
        self.assertEqual(writer.errors, [], f"a write failed under replica faults (seed {seed})")
        h.flush()
        writer.check(self, h, f"acknowledged write (seed {seed})")
        harness.nbd_close(h)

    def test_9_every_copy_of_every_volume_is_identical(self):
        self.assert_copies_identical()


if __name__ == "__main__":
    harness.main()
