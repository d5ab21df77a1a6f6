#!/usr/bin/env python3
"""Crash consistency: kill -9 blockd while writes are in flight, restart it on the same
data dir, and check the durability contract on what it reads back.

A writer with two NBD connections (CAN_MULTI_CONN: a FLUSH on either covers writes acked
on both) keeps up to QD writes of seeded 4 KiB blocks in flight per connection, some with
FUA, and issues FLUSH now and then. No two writes to one block are ever in flight at once,
so the writes to a block are totally ordered. Every submission, acknowledgement and flush
goes to a log file (fsynced at each completed flush and at the end).

After the restart, for every block:
  - the latest durable write (acked with FUA, or acked before a FLUSH was sent that then
    completed) or any write to the block submitted after it must be there, whole;
  - a block with no durable write holds zeros or one of its writes, whole;
  - never anything else (garbage, a torn block, another block's data).
Volumes of earlier rounds must still read as they did (same sha256).

CAIRN_SOAK=1: 20 rounds instead of 3. Replay a run with CAIRN_SEED.
"""

import hashlib
import os
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import MiB, nbd  # noqa: E402

BLOCK = 4096
VOL_SIZE = 32 * MiB
NBLOCKS = VOL_SIZE // BLOCK
HOT_BLOCKS = 64
QD = 8
HEADER = struct.Struct(">4sQQQ")  # magic, seed, gen, block
MAGIC = b"CRSH"


def block_data(seed, gen, blk):
    head = HEADER.pack(MAGIC, seed, gen, blk)
    return head + hashlib.shake_128(f"{seed}:{gen}:{blk}".encode()).digest(BLOCK - len(head))


class Write:
    __slots__ = ("gen", "blk", "conn", "fua", "ack")

    def __init__(self, gen, blk, conn, fua):
        self.gen, self.blk, self.conn, self.fua, self.ack = gen, blk, conn, fua, None


class CrashWriter:
    def __init__(self, uris, seed, log_path):
        self.uris = uris
        self.seed = seed
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.writes = {}        # gen -> Write
        self.by_block = {}      # blk -> [gen, ...] in submission order
        self.flushes = {}       # fid -> [issued_at_ack, done]
        self.inflight_blocks = set()
        self.acks = 0
        self.next_gen = 1
        self.next_fid = 1
        self.errors = []
        self.log = open(log_path, "w")
        self.threads = []

    def _log(self, line):
        self.log.write(line + "\n")

    def sync_log(self):
        with self.lock:
            self.log.flush()
            os.fsync(self.log.fileno())

    def start(self):
        self._log(f"# seed={self.seed} blocks={NBLOCKS} qd={QD}")
        handles = [harness.nbd_connect(u, name=f"crash{i}") for i, u in enumerate(self.uris)]
        for i, h in enumerate(handles):
            if not h.can_multi_conn() or not h.can_fua() or not h.can_flush():
                raise AssertionError("server lacks MULTI_CONN/FUA/FLUSH")
            t = threading.Thread(target=self._run, args=(i, h), daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join(30)
        stuck = [t for t in self.threads if t.is_alive()]
        self.sync_log()
        self.log.close()
        if stuck:
            raise AssertionError(f"{len(stuck)} writer threads did not stop")

    def _run(self, conn, h):
        import random
        rng = random.Random(self.seed * 1000 + conn)
        inflight = {}  # cookie -> ("W", Write, buffer) | ("F", fid)
        until_flush = rng.randint(20, 100)
        try:
            while not self.stop_event.is_set():
                while len(inflight) < QD:
                    if until_flush <= 0:
                        with self.lock:
                            fid = self.next_fid
                            self.next_fid += 1
                            self.flushes[fid] = [self.acks, False]
                            self._log(f"FS {fid} {conn} {self.acks}")
                        inflight[h.aio_flush()] = ("F", fid)
                        until_flush = rng.randint(20, 100)
                        continue
                    with self.lock:
                        for _ in range(50):
                            blk = rng.randrange(HOT_BLOCKS) if rng.random() < 0.5 else rng.randrange(NBLOCKS)
                            if blk not in self.inflight_blocks:
                                break
                        else:
                            break
                        self.inflight_blocks.add(blk)
                        w = Write(self.next_gen, blk, conn, rng.random() < 0.1)
                        self.next_gen += 1
                        self.writes[w.gen] = w
                        self.by_block.setdefault(blk, []).append(w.gen)
                        self._log(f"S {w.gen} {conn} {blk} {int(w.fua)}")
                    buf = nbd.Buffer.from_bytearray(bytearray(block_data(self.seed, w.gen, blk)))
                    cookie = h.aio_pwrite(buf, blk * BLOCK, flags=nbd.CMD_FLAG_FUA if w.fua else 0)
                    inflight[cookie] = ("W", w, buf)
                    until_flush -= 1
                h.poll(100)
                for cookie in list(inflight):
                    if not h.aio_command_completed(cookie):
                        continue
                    item = inflight.pop(cookie)
                    with self.lock:
                        if item[0] == "W":
                            w = item[1]
                            self.acks += 1
                            w.ack = self.acks
                            self.inflight_blocks.discard(w.blk)
                            self._log(f"A {w.gen} {w.ack}")
                        else:
                            self.flushes[item[1]][1] = True
                            self._log(f"FD {item[1]}")
                    if item[0] == "F":
                        self.sync_log()
        except nbd.Error as e:
            if not self.stop_event.is_set():
                with self.lock:
                    self._log(f"# conn {conn} error: {e}")
                    self.errors.append(str(e))

    def stats(self):
        with self.lock:
            return self.acks, sum(1 for f in self.flushes.values() if f[1])

    # -------------------------------------------------------------- verification

    def point(self):
        """(acks so far, next gen): taken just before a request is sent, the first says
        which writes were acknowledged before it; taken after it completes, every write
        submitted before has a smaller gen (a gen is drawn before its write is sent)."""
        with self.lock:
            return self.acks, self.next_gen

    def note(self, line):
        with self.lock:
            self._log(f"# {line}")

    def check(self, data):
        """Returns a list of human-readable violations of the durability contract."""
        mark = max((f[0] for f in self.flushes.values() if f[1]), default=0)
        return self._check(data, lambda w: w.fua or w.ack <= mark, None, f"flush mark ack#{mark}")

    def check_snapshot(self, data, acked_by, submitted_before):
        """Violations in a snapshot requested when `acked_by` writes had been acknowledged
        and completed before gen `submitted_before` was drawn: each block holds the latest
        write acknowledged before the request, or a later one submitted before the
        snapshot completed (zeros only if no write to it was acknowledged before)."""
        return self._check(data, lambda w: w.ack <= acked_by, submitted_before,
                           f"snapshot requested at ack#{acked_by}, done before gen {submitted_before}")

    def _check(self, data, settled, submitted_before, context):
        """settled(write) for an acknowledged write: it must be there (or a later one).
        submitted_before: gens at or after it cannot be there (None: no limit)."""
        problems = []
        for blk in range(NBLOCKS):
            got = data[blk * BLOCK:(blk + 1) * BLOCK]
            if got == bytes(BLOCK):
                found = 0
            else:
                magic, seed, gen, b = HEADER.unpack_from(got)
                if magic != MAGIC or seed != self.seed or b != blk or gen not in self.writes or \
                        got != block_data(self.seed, gen, blk):
                    problems.append(f"block {blk}: garbage/torn data (header {got[:28].hex()})")
                    continue
                found = gen
            gens = self.by_block.get(blk, [])
            durable_idx = None
            for i, g in enumerate(gens):
                w = self.writes[g]
                if w.ack is not None and settled(w):
                    durable_idx = i
            allowed = set(gens) | {0} if durable_idx is None else set(gens[durable_idx:])
            if submitted_before is not None:
                allowed = {g for g in allowed if g < submitted_before}
            if found not in allowed:
                desc = ", ".join(
                    f"gen {g}{' FUA' if self.writes[g].fua else ''}"
                    f"{' ack#' + str(self.writes[g].ack) if self.writes[g].ack else ' unacked'}"
                    for g in gens[-6:])
                problems.append(f"block {blk}: found {'zeros' if found == 0 else 'gen ' + str(found)}, "
                                f"allowed {sorted(allowed)}; {context}; writes: {desc}")
        return problems


class CrashRounds:
    """Rounds of: a fresh volume, a CrashWriter on it, crash(writer) brings the server
    down, restart, check the durability contract and that earlier rounds' exports still
    read the same. Mixed into a harness.ServerTestCase (test_snapshot_crash.py uses it too)."""

    def setUp(self):
        super().setUp()
        self.rng, self.seed = harness.seeded_rng(self.id())
        self.survivors = {}  # export name -> sha256 after its round

    def check_survivors(self):
        for name, want in self.survivors.items():
            got = hashlib.sha256(harness.nbd_read_all(self.server.unix_uri(name), VOL_SIZE)).hexdigest()
            self.assertEqual(got, want, f"export {name} of an earlier round changed after restart")

    def run_round(self, rnd, crash, min_acks=100, verify=None):
        """crash(writer) brings the server down; then restart and verify. verify(name,
        writer), if given, runs after the live volume passed and returns more exports to
        keep checking in later rounds ({export name: sha256})."""
        name = self.new_volume(VOL_SIZE, f"crash{rnd}-")
        self.round_volume = name  # for crash callbacks that need it
        seed = self.seed * 100 + rnd
        log_path = self.server.tmp_path(f"writes-{name}.log")
        writer = CrashWriter([self.server.tcp_uri(name), self.server.unix_uri(name)], seed, log_path)
        writer.start()
        try:
            harness.wait_for(lambda: writer.stats()[0] >= min_acks or writer.errors
                             or not self.server.alive(), 30, f"{min_acks} acknowledged writes")
            crash(writer)
        finally:
            writer.stop()
        acks, flushes = writer.stats()
        harness.log(f"round {rnd}: {len(writer.writes)} writes submitted, {acks} acked, "
                    f"{flushes} flushes completed; log {log_path}")
        self.server.start()
        data = harness.nbd_read_all(self.server.unix_uri(name), VOL_SIZE)
        problems = writer.check(data)
        self.assertEqual(problems, [], f"round {rnd} (seed {seed}): {len(problems)} blocks violate the "
                                       f"durability contract; first:\n" + "\n".join(problems[:10]))
        more = verify(name, writer) if verify else {}
        self.check_survivors()
        h = harness.nbd_connect(self.server.unix_uri(name))
        h.flush()
        harness.nbd_close(h)
        self.survivors[name] = hashlib.sha256(data).hexdigest()
        self.survivors.update(more or {})


class CrashTest(CrashRounds, harness.ServerTestCase):
    def test_kill9_while_writing(self):
        rounds = 20 if harness.SOAK else 3
        for rnd in range(rounds):
            delay_s = self.rng.uniform(0.2, 2.5)

            def crash(writer, delay_s=delay_s):
                time.sleep(delay_s)
                harness.log(f"kill -9 {self.server.kind} pid {self.server.pid} after "
                            f"{writer.stats()[0]} acks")
                self.server.kill9()

            with self.subTest(round=rnd):
                self.run_round(rnd, crash)

    def test_fault_point_exit_after_metadata(self):
        if not self.server.has_fault_points:
            self.skipTest(f"{self.server.kind} has no fault points")
        faults = "blockd.volume.after_metadata:exit:after=200"
        # restart with the fault armed (the volume is created under it too)
        self.server.stop()
        self.server.start(env={"CAIRN_FAULTS": faults})

        def crash(writer):
            rc = self.server.wait_exit(60)
            if rc is None:
                acks = writer.stats()[0]
                self.server.kill9()
                self.fail(f"CAIRN_FAULTS={faults}: blockd still running 60 s and {acks} acked "
                          f"writes later; the fault point never fired")
            harness.log(f"blockd exited at the fault point with status {rc} after "
                        f"{writer.stats()[0]} acks")

        self.run_round(100, crash, min_acks=1)


if __name__ == "__main__":
    harness.main()
