#!/usr/bin/env python3
"""Snapshots, clones and changed-block tracking against the real blockd, with real clients:
the cairn CLI, qemu-io, nbdcopy, nbdinfo (--map with base:allocation and
qemu:dirty-bitmap:<snapshot>) and libnbd. Every test reads bytes back."""

import json
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KiB, MiB, run  # noqa: E402

BLOCK = 4 * KiB


def fill(byte, n):
    return bytes([byte]) * n


def block_runs(blocks):
    """Sorted block indexes -> [(offset, length)] byte runs."""
    runs = []
    for b in sorted(blocks):
        if runs and runs[-1][0] + runs[-1][1] == b * BLOCK:
            runs[-1] = (runs[-1][0], runs[-1][1] + BLOCK)
        else:
            runs.append((b * BLOCK, BLOCK))
    return runs


def map_runs(uri, context):
    """nbdinfo --map=CONTEXT --json -> [(offset, length, type)] with adjacent equal types
    merged (servers may split runs anywhere)."""
    p = run(["nbdinfo", "--json", f"--map={context}", uri], timeout=60)
    merged = []
    for e in json.loads(p.stdout):
        off, length, typ = e["offset"], e["length"], e["type"]
        if merged and merged[-1][2] == typ and merged[-1][0] + merged[-1][1] == off:
            merged[-1] = (merged[-1][0], merged[-1][1] + length, typ)
        else:
            merged.append((off, length, typ))
    return merged


class SnapshotTest(harness.ServerTestCase):
    def setUp(self):
        if self.server.kind != "blockd":
            self.skipTest("snapshots are a blockd feature")

    def snap(self, vol, name):
        return self.server.cairn("snapshot", "create", vol, name)

    def test_snapshot_keeps_old_data_and_exports_it_read_only(self):
        size = 8 * MiB
        vol = self.new_volume(size)
        h = harness.nbd_connect(self.server.tcp_uri(vol))
        try:
            h.pwrite(fill(0xA1, 4 * MiB), 0)
            self.snap(vol, "s1")
            h.pwrite(fill(0xB2, 1 * MiB), 1 * MiB)
            h.pwrite(fill(0xB3, 4 * KiB), 3 * MiB + 8 * KiB)
            h.trim(512 * KiB, 512 * KiB)  # [512K, 1M) of A
            live = h.pread(size, 0)
        finally:
            harness.nbd_close(h)
        want_live = bytearray(fill(0xA1, 4 * MiB) + bytes(4 * MiB))
        want_live[1 * MiB:2 * MiB] = fill(0xB2, 1 * MiB)
        want_live[3 * MiB + 8 * KiB:3 * MiB + 12 * KiB] = fill(0xB3, 4 * KiB)
        want_live[512 * KiB:1 * MiB] = bytes(512 * KiB)
        harness.assert_bytes_equal(self, live, bytes(want_live), "live volume")

        snap_uri = self.server.tcp_uri(f"{vol}@s1")
        got = harness.nbd_read_all(snap_uri, size)
        harness.assert_bytes_equal(self, got, fill(0xA1, 4 * MiB) + bytes(4 * MiB), "snapshot s1")
        info = json.loads(run(["nbdinfo", "--json", snap_uri], timeout=30).stdout)
        self.assertTrue(info["exports"][0]["is_read_only"], "snapshot export must be read-only")
        p = run(["qemu-io", "-f", "raw", "-c", "write -P 0x55 0 4k", snap_uri], check=False,
                timeout=60)
        self.assertTrue(p.returncode != 0 or "failed" in p.stdout + p.stderr,
                        f"write to a snapshot export did not fail:\n{p.stdout}{p.stderr}")
        # The snapshot's allocation map: only what A wrote.
        self.assertEqual(map_runs(snap_uri, "base:allocation"),
                         [(0, 4 * MiB, 0), (4 * MiB, 4 * MiB, 3)])
        # nbdcopy of the snapshot out equals the pattern.
        out = self.server.tmp_path(f"{vol}-s1.img")
        run(["nbdcopy", snap_uri, out], timeout=120)
        with open(out, "rb") as f:
            harness.assert_bytes_equal(self, f.read(), fill(0xA1, 4 * MiB) + bytes(4 * MiB),
                                       "nbdcopy of s1")

        snaps = self.server.cairn("snapshot", "list", vol)
        names = [s["name"] for s in snaps.get("snapshots", [])]
        self.assertEqual(names, ["s1"])

    def test_clone_is_isolated_from_source_and_snapshot(self):
        size = 4 * MiB
        vol = self.new_volume(size)
        h = harness.nbd_connect(self.server.tcp_uri(vol))
        try:
            h.pwrite(fill(0x11, size), 0)
        finally:
            harness.nbd_close(h)
        self.snap(vol, "base")
        clone = f"{vol}-clone"
        self.server.cairn("volume", "clone", f"{vol}@base", clone)

        c = harness.nbd_connect(self.server.tcp_uri(clone))
        s = harness.nbd_connect(self.server.tcp_uri(vol))
        try:
            harness.assert_bytes_equal(self, c.pread(size, 0), fill(0x11, size), "fresh clone")
            c.pwrite(fill(0x22, 64 * KiB), 0)
            c.pwrite(fill(0x23, 4 * KiB), 1 * MiB + 4 * KiB)   # partial extent: copy-on-write
            c.trim(64 * KiB, 2 * MiB)                          # must hide the parent's bytes
            s.pwrite(fill(0x33, 64 * KiB), 3 * MiB)
            want_clone = bytearray(fill(0x11, size))
            want_clone[0:64 * KiB] = fill(0x22, 64 * KiB)
            want_clone[1 * MiB + 4 * KiB:1 * MiB + 8 * KiB] = fill(0x23, 4 * KiB)
            want_clone[2 * MiB:2 * MiB + 64 * KiB] = bytes(64 * KiB)
            want_src = bytearray(fill(0x11, size))
            want_src[3 * MiB:3 * MiB + 64 * KiB] = fill(0x33, 64 * KiB)
            harness.assert_bytes_equal(self, c.pread(size, 0), bytes(want_clone), "clone")
            harness.assert_bytes_equal(self, s.pread(size, 0), bytes(want_src), "source")
        finally:
            harness.nbd_close(c)
            harness.nbd_close(s)
        got = harness.nbd_read_all(self.server.tcp_uri(f"{vol}@base"), size)
        harness.assert_bytes_equal(self, got, fill(0x11, size), "snapshot under a clone")

        # A snapshot with clones cannot go; after flatten it can, and the clone keeps its data.
        p = self.server.cairn("snapshot", "delete", vol, "base", check=False, json=False)
        self.assertNotEqual(p.returncode, 0, "deleting a snapshot with clones must fail")
        self.server.cairn("volume", "flatten", clone)
        self.server.cairn("snapshot", "delete", vol, "base")
        got = harness.nbd_read_all(self.server.tcp_uri(clone), size)
        harness.assert_bytes_equal(self, got, bytes(want_clone), "clone after flatten")

    def test_diff_and_dirty_bitmap_match_a_model(self):
        rng, _ = harness.seeded_rng("snapshot-diff")
        size = 16 * MiB
        nblocks = size // BLOCK
        vol = self.new_volume(size)
        content = {}  # block -> byte (absent: zeros)
        h = harness.nbd_connect(self.server.tcp_uri(vol))
        try:
            def write(b0, n, byte):
                h.pwrite(fill(byte, n * BLOCK), b0 * BLOCK)
                for b in range(b0, b0 + n):
                    content[b] = byte

            for _ in range(60):  # the base image
                b0 = rng.randrange(nblocks - 32)
                write(b0, rng.randrange(1, 32), rng.randrange(1, 255))
            self.snap(vol, "s1")
            at_s1 = dict(content)
            touched = set()
            for i in range(120):  # changes after s1: writes, trims, zeroes
                b0 = rng.randrange(nblocks - 16)
                n = rng.randrange(1, 16)
                op = rng.random()
                if op < 0.7:
                    write(b0, n, rng.randrange(1, 255))
                    touched.update(range(b0, b0 + n))
                else:
                    if op < 0.85:
                        h.trim(n * BLOCK, b0 * BLOCK)
                    else:
                        h.zero(n * BLOCK, b0 * BLOCK)
                    # Releasing blocks that hold no data changes nothing.
                    for b in range(b0, b0 + n):
                        if content.pop(b, None) is not None:
                            touched.add(b)
            h.flush()
            live = h.pread(size, 0)
        finally:
            harness.nbd_close(h)
        want = bytearray(size)
        for b, byte in content.items():
            want[b * BLOCK:(b + 1) * BLOCK] = fill(byte, BLOCK)
        harness.assert_bytes_equal(self, live, bytes(want), "live volume")

        # Change tracking is per 64 KiB extent (QEMU's default dirty-bitmap granularity):
        # an extent touched since s1 is changed; within it, diff reports the blocks holding
        # data now as data and the blocks that held data at s1 but read zeros now as zero.
        per_ext = 64 * KiB // BLOCK
        changed_ext = {b // per_ext for b in touched}
        changed_blocks = {e * per_ext + i for e in changed_ext for i in range(per_ext)}
        d = self.server.cairn("snapshot", "diff", vol, "--from", "s1")
        data_blocks, zero_blocks = set(), set()
        for r in d.get("runs", []):
            off, length = int(r.get("offsetBytes", 0)), int(r["lengthBytes"])
            self.assertEqual(off % BLOCK, 0)
            target = zero_blocks if r.get("zero") else data_blocks
            target.update(range(off // BLOCK, (off + length) // BLOCK))
        want_data = {b for b in changed_blocks if b in content}
        want_zero = {b for b in changed_blocks if b in at_s1 and b not in content}
        self.assertEqual(block_runs(data_blocks), block_runs(want_data),
                         "diff data runs != written blocks of the extents changed since s1")
        self.assertEqual(block_runs(zero_blocks), block_runs(want_zero),
                         "diff zero runs != blocks that lost their data since s1")

        # qemu:dirty-bitmap:s1 on the live export: the same blocks (data or zeroed) are dirty.
        changed_blocks = want_data | want_zero
        dirty = set()
        for off, length, typ in map_runs(self.server.tcp_uri(vol), "qemu:dirty-bitmap:s1"):
            if typ & 1:
                dirty.update(range(off // BLOCK, (off + length) // BLOCK))
        self.assertEqual(block_runs(dirty), block_runs(changed_blocks), "dirty bitmap != model")

        # Between two snapshots, on the newer snapshot's export.
        self.snap(vol, "s2")
        dirty2 = set()
        for off, length, typ in map_runs(self.server.tcp_uri(f"{vol}@s2"), "qemu:dirty-bitmap:s1"):
            if typ & 1:
                dirty2.update(range(off // BLOCK, (off + length) // BLOCK))
        self.assertEqual(block_runs(dirty2), block_runs(changed_blocks),
                         "s1..s2 dirty bitmap != model")
        got_s1 = harness.nbd_read_all(self.server.tcp_uri(f"{vol}@s1"), size)
        want_s1 = bytearray(size)
        for b, byte in at_s1.items():
            want_s1[b * BLOCK:(b + 1) * BLOCK] = fill(byte, BLOCK)
        harness.assert_bytes_equal(self, got_s1, bytes(want_s1), "s1 after later writes")

    def test_snapshot_survives_restart_and_crashed_create_leaves_nothing(self):
        size = 4 * MiB
        vol = self.new_volume(size)
        h = harness.nbd_connect(self.server.tcp_uri(vol))
        try:
            h.pwrite(fill(0x61, size), 0)
            h.flush()
        finally:
            harness.nbd_close(h)
        self.snap(vol, "keep")
        h = harness.nbd_connect(self.server.tcp_uri(vol))
        try:
            h.pwrite(fill(0x62, 1 * MiB), 0)
            h.flush()
        finally:
            harness.nbd_close(h)
        # Crash exactly before a snapshot's record commits: it must not exist afterwards.
        self.server.stop()
        self.server.start(env={"CAIRN_FAULTS": "blockd.snapshot.before_commit:exit"})
        p = self.server.cairn("snapshot", "create", vol, "lost", check=False, json=False)
        self.assertNotEqual(p.returncode, 0)
        self.server.wait_exit(30)
        self.server.start()
        names = [s["name"] for s in self.server.cairn("snapshot", "list", vol).get("snapshots", [])]
        self.assertEqual(names, ["keep"])
        got = harness.nbd_read_all(self.server.tcp_uri(f"{vol}@keep"), size)
        harness.assert_bytes_equal(self, got, fill(0x61, size), "snapshot after restarts")
        got = harness.nbd_read_all(self.server.tcp_uri(vol), size)
        harness.assert_bytes_equal(self, got, fill(0x62, 1 * MiB) + fill(0x61, 3 * MiB),
                                   "live volume after restarts")


if __name__ == "__main__":
    harness.main()
