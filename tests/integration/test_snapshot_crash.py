#!/usr/bin/env python3
"""kill -9 of the real blockd around snapshots: during snapshot delete, during snapshot
create, and while writes land right after snapshots. Every check is on data read back.

DeleteCrashTest: a volume with a model of its history (whole 64 KiB extents written and
trimmed between snapshots, each snapshot with its own contents) loses blockd at a random
moment during a snapshot delete (one round instead at the fault point
blockd.snapshot.delete.mid with the exit action). After the restart the deleted snapshot
is either gone or reads back whole; every other snapshot and the live volume read back
exactly as the model says; once the delete is finished (retried if the snapshot survived)
the API's exclusive/shared bytes of the volume and of every snapshot equal the model's, and
the node's used bytes dropped by exactly the victim's exclusive bytes.

SnapshotCrashTest: test_crash.py's CrashWriter (seeded 4 KiB blocks, FUA and FLUSH, a log
of every submission and acknowledgement) writes while snapshots are taken, back to back
(kill -9 at a random moment inside a create) or spaced out (kill -9 at a random moment of
the workload). After the restart the live volume honours test_crash.py's durability
contract; every snapshot whose create was answered exists, none other than those asked for
does, and each one that exists holds, for every block, the latest write acknowledged before
its request was sent or a later one submitted before it completed (never a torn block or
garbage); a diff between consecutive snapshots covers every block that differs between them.

CAIRN_SOAK=1: more rounds. Replay a run with CAIRN_SEED.
"""

import hashlib
import math
import os
import random
import statistics
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KiB, MiB  # noqa: E402
from test_crash import VOL_SIZE, CrashRounds  # noqa: E402

EXTENT = 64 * KiB
BLOCK = 4 * KiB
INF = float("inf")


def api(tc, method, path, body=None, want=(200, 201, 204)):
    status, reply = tc.server.http(method, path, body)
    tc.assertIn(status, want, f"{method} {path}: HTTP {status} {reply}")
    return reply


def list_snapshots(tc, vol):
    return {s["name"]: s for s in (api(tc, "GET", f"/v1/volumes/{vol}/snapshots") or {}).get("snapshots", [])}


def node_used_bytes(tc):
    return int(api(tc, "GET", "/v1/status")["usedBytes"])


def send_in_thread(server, method, path, body=None):
    """Starts an API call in a thread; returns (thread, result dict: status or error)."""
    result = {}

    def call():
        try:
            result["status"], result["body"] = server.http(method, path, body, timeout=60)
        except Exception as e:  # noqa: BLE001  the server is killed under it
            result["error"] = repr(e)
        result["t1"] = time.monotonic()

    result["t0"] = time.monotonic()
    t = threading.Thread(target=call, daemon=True)
    t.start()
    return t, result


# --------------------------------------------------------------------------- delete


class Rec:
    __slots__ = ("birth", "death", "tag")

    def __init__(self, birth, tag):
        self.birth, self.death, self.tag = birth, None, tag


class VolumeModel:
    """What blockd must hold for a volume written in whole extents: per extent, its live
    record and the versions snapshots still see. A snapshot taken at sequence S sees the
    records with birth <= S < death; a write to a live record some snapshot sees makes a
    new record (the old one lives on as a version), otherwise it goes in place."""

    def __init__(self, name, size_bytes, seed):
        self.name, self.size_bytes, self.seed = name, size_bytes, seed
        self.nexts = size_bytes // EXTENT
        self.seq = 1
        self.recs = {}   # extent -> [Rec], oldest first; the last may be live (death None)
        self.snaps = {}  # snapshot name -> sequence it froze

    def data(self, tag, ext):
        return harness.pattern_block(f"{self.seed}:{tag}:{ext}", EXTENT)

    def _live(self, ext):
        recs = self.recs.get(ext, [])
        return recs[-1] if recs and recs[-1].death is None else None

    def _shared(self, rec):
        return any(rec.birth <= s < (rec.death or INF) for s in self.snaps.values())

    def write(self, ext, tag):
        live = self._live(ext)
        if live is not None and not self._shared(live):
            live.tag = tag
            return
        if live is not None:
            live.death = self.seq
        self.recs.setdefault(ext, []).append(Rec(self.seq, tag))

    def trim(self, ext):
        live = self._live(ext)
        if live is None:
            return
        if self._shared(live):
            live.death = self.seq
        else:
            self.recs[ext].remove(live)

    def snapshot(self, name):
        self.snaps[name] = self.seq
        self.seq += 1

    def delete(self, name):
        del self.snaps[name]
        for ext, recs in self.recs.items():
            self.recs[ext] = [r for r in recs if r.death is None or self._shared(r)]

    def image(self, snap=None):
        """The bytes the live volume (snap None) or a snapshot must read."""
        s = self.snaps[snap] if snap is not None else None
        out = bytearray(self.size_bytes)
        for ext, recs in self.recs.items():
            for r in recs:
                if (r.death is None) if s is None else (r.birth <= s < (r.death or INF)):
                    out[ext * EXTENT:(ext + 1) * EXTENT] = self.data(r.tag, ext)
        return bytes(out)

    def accounting(self):
        """{snapshot: (exclusive, shared)}, volume (allocated, exclusive, shared), physical
        bytes: every record is one whole extent."""
        snaps = {n: [0, 0] for n in self.snaps}
        alloc = shared_live = phys = 0
        for recs in self.recs.values():
            for r in recs:
                seen = [n for n, s in self.snaps.items() if r.birth <= s < (r.death or INF)]
                live = r.death is None
                phys += EXTENT
                if live:
                    alloc += EXTENT
                    shared_live += EXTENT if seen else 0
                for n in seen:
                    snaps[n][0 if len(seen) + live == 1 else 1] += EXTENT
        return ({n: tuple(v) for n, v in snaps.items()},
                (alloc, alloc - shared_live, shared_live), phys)


class DeleteCrashTest(harness.ServerTestCase):
    VOL = 16 * MiB

    def setUp(self):
        if self.server.kind != "blockd":
            self.skipTest("snapshots are a blockd feature")
        self.rng, self.seed = harness.seeded_rng(self.id())
        self.models = []
        self.delete_s = []  # durations of deletes that ran to the end
        self.stages = {}    # where the kills landed -> rounds

    def build(self, rnd):
        """A volume with four snapshots of distinct contents and a live image that differs
        from all of them: s0 = everything written; then three times: half the extents
        rewritten, a few trimmed, a snapshot; then the same once more for the live image."""
        vol = self.new_volume(self.VOL, f"del{rnd}-")
        m = VolumeModel(vol, self.VOL, self.seed * 100 + rnd)
        h = harness.nbd_connect(self.server.unix_uri(vol))
        try:
            for phase in range(5):
                if phase == 0:
                    writes, trims = range(m.nexts), []
                else:
                    writes = self.rng.sample(range(m.nexts), m.nexts // 2)
                    trims = self.rng.sample(range(m.nexts), m.nexts // 20)
                for ext in writes:
                    h.pwrite(m.data(phase, ext), ext * EXTENT)
                    m.write(ext, phase)
                for ext in trims:
                    h.trim(EXTENT, ext * EXTENT)
                    m.trim(ext)
                h.flush()
                if phase < 4:
                    api(self, "POST", f"/v1/volumes/{vol}/snapshots", {"name": f"s{phase}"})
                    m.snapshot(f"s{phase}")
        finally:
            harness.nbd_close(h)
        self.models.append(m)
        return m

    def check_data(self, m, what):
        listed = list_snapshots(self, m.name)
        self.assertEqual(sorted(listed), sorted(m.snaps), f"{what}: snapshots of {m.name}")
        for snap in [None] + sorted(m.snaps):
            export = m.name if snap is None else f"{m.name}@{snap}"
            got = harness.nbd_read_all(self.server.unix_uri(export), m.size_bytes)
            harness.assert_bytes_equal(self, got, m.image(snap), f"{what}: {export}")

    def check_accounting(self, m, what):
        snaps, (alloc, excl, shared), _ = m.accounting()
        listed = list_snapshots(self, m.name)
        got = {n: (int(s["exclusiveBytes"]), int(s["sharedBytes"])) for n, s in listed.items()}
        self.assertEqual(got, snaps, f"{what}: snapshot (exclusive, shared) bytes of {m.name}")
        v = api(self, "GET", f"/v1/volumes/{m.name}")
        self.assertEqual((int(v["allocatedBytes"]), int(v["exclusiveBytes"]), int(v["sharedBytes"])),
                         (alloc, excl, shared), f"{what}: volume (allocated, exclusive, shared) of {m.name}")

    def check_used(self, what):
        """Right after a start the allocator is rebuilt from the records (nothing is in
        quarantine), so the node's used bytes are exactly the models' extents."""
        want = sum(m.accounting()[2] for m in self.models)
        self.assertEqual(node_used_bytes(self), want, f"{what}: node usedBytes")

    def delete_round(self, rnd, faults=None):
        m = self.build(rnd)
        # A clean restart (armed with the fault if any) so used bytes are exact.
        self.server.restart(env={"CAIRN_FAULTS": faults} if faults else None)
        self.check_accounting(m, f"round {rnd} before delete")
        self.check_used(f"round {rnd} before delete")
        used_before = node_used_bytes(self)
        candidates = sorted(m.snaps)
        if faults:  # the fault point is passed only when there are versions to free
            candidates = [n for n in candidates if m.accounting()[0][n][0] > 0]
            self.assertTrue(candidates, "no snapshot with exclusive data")
        victim = self.rng.choice(candidates)
        victim_excl = int(list_snapshots(self, m.name)[victim]["exclusiveBytes"])
        victim_image = m.image(victim)

        t, res = send_in_thread(self.server, "DELETE", f"/v1/volumes/{m.name}/snapshots/{victim}")
        if faults:
            rc = self.server.wait_exit(60)
            if rc is None:
                self.server.kill9()
                self.fail(f"CAIRN_FAULTS={faults}: blockd did not exit during the delete of {victim}")
            how = f"fault point exit, status {rc}"
        else:
            # A random moment of the request, log-uniform from 20 us to a bit past the
            # median time a whole delete takes here (client side, HTTP included): the
            # synced record delete comes early, most of the time goes to freeing versions.
            est_s = statistics.median(self.delete_s) if self.delete_s else 0.003
            delay_s = math.exp(self.rng.uniform(math.log(20e-6), math.log(1.2 * est_s)))
            time.sleep(delay_s)
            self.server.kill9()
            how = f"kill -9 {delay_s * 1e3:.1f} ms after the request"
        t.join(60)
        self.assertFalse(t.is_alive(), "the delete request did not return")
        if res.get("status") == 204:
            self.delete_s.append(res["t1"] - res["t0"])
        harness.log(f"round {rnd}: delete {m.name}@{victim}: {how}; answer {res.get('status') or res.get('error')}")

        self.server.start()
        listed = list_snapshots(self, m.name)
        if res.get("status") == 204 or faults:
            # Answered, or stopped after its synced record delete: the snapshot is gone.
            self.assertNotIn(victim, listed, f"round {rnd}: deleted snapshot {victim} came back")
        survived = victim in listed
        with open(self.server.log_path, errors="replace") as f:
            finished = f"snapshot deleted {m.name}@{victim} " in f.read()
        stage = ("before its record delete" if survived else
                 "after the delete finished" if finished else "after its record delete, before the end")
        self.stages[stage] = self.stages.get(stage, 0) + 1
        harness.log(f"round {rnd}: after restart {victim} {'survived' if survived else 'is gone'}: "
                    f"blockd died {stage}")
        if not survived:
            m.delete(victim)
        else:  # it must be whole
            got = harness.nbd_read_all(self.server.unix_uri(f"{m.name}@{victim}"), m.size_bytes)
            harness.assert_bytes_equal(self, got, victim_image, f"round {rnd}: surviving {victim}")
        self.check_data(m, f"round {rnd} after kill")
        self.check_accounting(m, f"round {rnd} after kill")
        self.check_used(f"round {rnd} after kill")
        if survived:  # finish it
            t0 = time.monotonic()
            api(self, "DELETE", f"/v1/volumes/{m.name}/snapshots/{victim}", want=(204,))
            self.delete_s.append(time.monotonic() - t0)
            m.delete(victim)
            self.check_accounting(m, f"round {rnd} after the retried delete")
        self.server.restart()
        self.check_used(f"round {rnd} after the delete")
        self.assertEqual(used_before - node_used_bytes(self), victim_excl,
                         f"round {rnd}: deleting {victim} must free exactly its exclusive bytes")
        if survived:  # the retried delete ran to the end: nothing else may have changed
            self.check_data(m, f"round {rnd} after the retried delete")

    def test_kill9_during_snapshot_delete(self):
        rounds = 16 if harness.SOAK else 3
        for rnd in range(rounds):
            with self.subTest(round=rnd):
                self.delete_round(rnd)
        with self.subTest(round="fault"):
            self.delete_round(rounds, faults="blockd.snapshot.delete.mid:exit")
        # Every round's volume and snapshots, after all those crashes.
        for m in self.models:
            self.check_data(m, "at the end")
        harness.log(f"where blockd died during the deletes: {self.stages}")


# --------------------------------------------------------------------------- create


class SnapshotLoop(threading.Thread):
    """Takes up to max_snaps snapshots of a volume, gap_s apart, noting for each the
    writer's point before the request and after the answer."""

    def __init__(self, server, vol, writer, rng, gap_s, max_snaps):
        super().__init__(daemon=True)
        self.server, self.vol, self.writer = server, vol, writer
        self.rng, self.gap_s, self.max_snaps = rng, gap_s, max_snaps
        self.records = []
        self.stop_event = threading.Event()

    def run(self):
        for i in range(self.max_snaps):
            if self.stop_event.wait(self.rng.uniform(*self.gap_s)):
                return
            acked_by, _ = self.writer.point()
            rec = dict(name=f"c{i}", acked_by=acked_by, done_before=None, status=None,
                       t0=time.monotonic())
            self.records.append(rec)
            self.writer.note(f"snapshot {rec['name']} requested at ack#{acked_by}")
            try:
                rec["status"], body = self.server.http("POST", f"/v1/volumes/{self.vol}/snapshots",
                                                       {"name": rec["name"]}, timeout=60)
            except Exception as e:  # noqa: BLE001  blockd was killed under it
                rec["error"] = repr(e)
                return
            rec["seconds"] = time.monotonic() - rec["t0"]
            if rec["status"] != 201:
                rec["error"] = f"HTTP {rec['status']} {body}"
                return
            rec["done_before"] = self.writer.point()[1]
            self.writer.note(f"snapshot {rec['name']} done before gen {rec['done_before']}")


def diff_covered_blocks(tc, vol, frm, to):
    q = f"from={frm}" + (f"&to={to}" if to else "")
    d = api(tc, "GET", f"/v1/volumes/{vol}/diff?{q}")
    covered = set()
    for r in d.get("runs", []):
        off, length = int(r.get("offsetBytes", 0)), int(r["lengthBytes"])
        covered.update(range(off // BLOCK, (off + length) // BLOCK))
    return covered


def differing_blocks(a, b):
    return {i for i in range(len(a) // BLOCK) if a[i * BLOCK:(i + 1) * BLOCK] != b[i * BLOCK:(i + 1) * BLOCK]}


class SnapshotCrashTest(CrashRounds, harness.ServerTestCase):
    def setUp(self):
        super().setUp()
        if self.server.kind != "blockd":
            self.skipTest("snapshots are a blockd feature")

    def snapshot_round(self, rnd, gap_s, max_snaps, kill):
        """A CrashWriter round with a SnapshotLoop beside it; kill(loop) brings blockd down."""
        loop_rng = random.Random(self.seed * 1000 + rnd)
        state = {}

        def crash(writer):
            vol = self.round_volume
            loop = SnapshotLoop(self.server, vol, writer, loop_rng, gap_s, max_snaps)
            state["loop"] = loop
            loop.start()
            try:
                kill(loop, writer)
            finally:
                loop.stop_event.set()
                loop.join(60)
            self.assertFalse(loop.is_alive(), "the snapshot loop did not stop")
            state["gen_at_kill"] = writer.point()[1]

        def verify(vol, writer):
            loop = state["loop"]
            listed = list_snapshots(self, vol)
            asked = {r["name"]: r for r in loop.records}
            self.assertEqual(set(listed) - set(asked), set(), "snapshots nobody asked for")
            more = {}
            prev_name, prev_data = None, None
            for r in loop.records:  # oldest first
                name = r["name"]
                if r["status"] == 201:
                    self.assertIn(name, listed, f"snapshot {name} was created (201) but is gone")
                elif r["status"] is not None:
                    self.assertNotIn(name, listed, f"snapshot {name} failed ({r['error']}) but exists")
                if name not in listed:
                    continue
                done_before = r["done_before"] or state["gen_at_kill"]
                self.assertEqual(int(listed[name]["sizeBytes"]), VOL_SIZE)
                api(self, "GET", f"/v1/volumes/{vol}/snapshots/{name}")
                data = harness.nbd_read_all(self.server.unix_uri(f"{vol}@{name}"), VOL_SIZE)
                problems = writer.check_snapshot(data, r["acked_by"], done_before)
                self.assertEqual(problems, [], f"round {rnd}: snapshot {name} "
                                 f"({'answered' if r['status'] == 201 else 'in flight at the kill'}): "
                                 f"{len(problems)} bad blocks; first:\n" + "\n".join(problems[:10]))
                if prev_name is not None:
                    missing = differing_blocks(prev_data, data) - diff_covered_blocks(self, vol, prev_name, name)
                    self.assertEqual(sorted(missing)[:10], [],
                                     f"diff {prev_name}..{name} misses blocks that differ")
                prev_name, prev_data = name, data
                more[f"{vol}@{name}"] = hashlib.sha256(data).hexdigest()
            if prev_name is not None:
                live = harness.nbd_read_all(self.server.unix_uri(vol), VOL_SIZE)
                missing = differing_blocks(prev_data, live) - diff_covered_blocks(self, vol, prev_name, None)
                self.assertEqual(sorted(missing)[:10], [], f"diff {prev_name}..live misses blocks that differ")
            inflight = [r["name"] for r in loop.records if r["status"] is None]
            harness.log(f"round {rnd}: {len(loop.records)} snapshot(s) requested, "
                        f"{sum(r['status'] == 201 for r in loop.records)} answered, "
                        f"in flight at the kill: {inflight or 'none'} "
                        f"({'kept' if inflight and inflight[0] in listed else 'not kept' if inflight else '-'})")
            return more

        self.run_round(rnd, crash, verify=verify)

    def test_kill9_during_snapshot_create(self):
        """Creates back to back while the writer runs; the kill lands at a random moment
        inside create k (a random delay up to 1.5x the round's median create time)."""
        rounds = 12 if harness.SOAK else 3
        max_snaps = 6
        for rnd in range(rounds):
            k = self.rng.randrange(1, max_snaps)
            frac = self.rng.uniform(0, 1.5)

            def kill(loop, writer, k=k, frac=frac):
                harness.wait_for(lambda: len(loop.records) > k or not loop.is_alive(), 60,
                                 f"snapshot create #{k}")
                done = [r["seconds"] for r in loop.records[:k] if "seconds" in r]
                delay_s = frac * (statistics.median(done) if done else 0.01)
                time.sleep(delay_s)
                harness.log(f"kill -9 blockd {delay_s * 1e3:.2f} ms into create #{k} "
                            f"(median create {statistics.median(done) * 1e3 if done else 0:.2f} ms), "
                            f"{writer.stats()[0]} acks")
                self.server.kill9()

            with self.subTest(round=rnd):
                self.snapshot_round(rnd, (0, 0.005), max_snaps, kill)

    def test_kill9_with_writes_right_after_snapshots(self):
        """Snapshots spaced out while the writer runs, so writes land right after each one
        (the redirect path); the kill lands at a random moment of the workload."""
        rounds = 12 if harness.SOAK else 3
        for rnd in range(rounds):
            delay_s = self.rng.uniform(0.1, 1.2)

            def kill(loop, writer, delay_s=delay_s):
                time.sleep(delay_s)
                harness.log(f"kill -9 blockd after {delay_s:.2f} s, {len(loop.records)} snapshot(s) "
                            f"requested, {writer.stats()[0]} acks")
                self.server.kill9()

            with self.subTest(round=rnd):
                self.snapshot_round(rnd, (0.02, 0.25), 6, kill)


if __name__ == "__main__":
    harness.main()
