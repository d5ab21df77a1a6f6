#!/usr/bin/env python3
"""Crash consistency of objectd: kill -9 (or a fault point's exit) in the middle of PUTs and
in the middle of a heal, restart on the same data dir, and check what it serves and what is
on its drives.

During PUTs (4+2 over 6 drive directories): worker threads with their own boto3 clients PUT
objects of mixed sizes (empty, small, one stripe, several stripes of 1 MiB) over keys that
they own (so writes to a key are ordered), one of them doing multipart uploads; each round
ends with kill -9 at a random moment or with an exit fault point armed through CAIRN_FAULTS
(mid-stream, before the shard files are committed, with some of them renamed, before and
after the index write, before a multipart completion's index write). After the restart:
  - every key reads back as its last acknowledged PUT or as the PUT that was in flight on
    it, byte for byte; a key with no acknowledged PUT is absent (404) or complete - never
    partial or anything else;
  - the listing has exactly the keys that GETs find, with their sizes;
  - once the start-up sweep is done, no drive has a temp file, and every drive holds the
    shard files of exactly the live versions (objects, multipart parts and manifests): no
    orphans of the interrupted writes.

During a heal: a drive directory is removed and replaced by an empty one, `cairn objects
heal --no-wait` starts a pass, and objectd dies mid-pass (kill -9 while it runs with a slow
--heal-rate, or the `objectd.heal.mid` exit fault while a shard is half rewritten). After
the restart, the start-up sweep removes the half-written heal files, `cairn objects heal`
runs to the end and exits 0, every drive holds every shard file again (the rebuilt ones
byte-identical to the lost ones) and every object reads back identical.

Rounds: 3 + 2 by default (under a minute); CAIRN_SOAK=1: 12 + 6. Replay a run with
CAIRN_SEED (printed per test).
"""

import concurrent.futures
import hashlib
import os
import threading
import time

import harness
import s3harness
from harness import MiB, assert_bytes_equal, log, pattern_block, seeded_rng, wait_for
from s3harness import Objectd, ObjectdTestCase, error_code, remove_tree, shard_files, temp_files

KiB = 1024
SIZES = [0, 1, 4 * KiB, 300 * KiB, MiB, MiB + 1, 2 * MiB + 12345, 4 * MiB + 7]
PART_BYTES = 5 * MiB
WORKERS = 4          # PUT workers; one more does multipart uploads
KEYS_PER_WORKER = 6
ROUND_DEADLINE_S = 60

# (fault point, range of `after` to draw from): exit on one hit past `after`.
PUT_FAULTS = [
    ("objectd.shard.append", 120),          # per stripe per shard file: mid-stream
    ("objectd.put.before_commit", 10),      # all stripes written, nothing renamed
    ("objectd.shard.renamed", 40),          # some shard files renamed into objects/
    ("objectd.put.before_index", 10),       # all renamed, no index entry
    ("objectd.put.after_index", 10),        # committed, replaced version's files not removed
    ("objectd.complete.before_index", 1),   # multipart manifest written, no index entry
]


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Version:
    """One PUT (or multipart upload) of a key: its generation and part sizes."""

    def __init__(self, gen, sizes, multipart):
        self.gen, self.sizes, self.multipart = gen, sizes, multipart

    def data(self, seed, key):
        if not self.multipart:
            return pattern_block(f"{seed}:{key}:{self.gen}", self.sizes[0])
        return b"".join(pattern_block(f"{seed}:{key}:{self.gen}:p{i}", n)
                        for i, n in enumerate(self.sizes))

    def __repr__(self):
        return f"gen {self.gen} ({'multipart ' if self.multipart else ''}{sum(self.sizes)} B)"


class KeyState:
    def __init__(self):
        self.acked = None     # the version the last acknowledged PUT wrote
        self.pending = None   # the version of a PUT in flight when the server died


class Crash(ObjectdTestCase):
    # Each test runs its own objectd; no class-wide server.
    @classmethod
    def setUpClass(cls):
        cls.server = None

    @classmethod
    def tearDownClass(cls):
        pass

    def setUp(self):
        self.rng, self.seed = seeded_rng(self.id().rsplit(".", 1)[-1])
        self.srv = Objectd(label=self._testMethodName[5:17], drives=6)
        type(self).server = self.srv  # for ServerTestCase.tearDown's log tail on failure
        self.srv.start()
        self.srv.wait_startup_sweep()

    def tearDown(self):
        super().tearDown()
        try:
            if self.srv.proc is not None:
                self.srv.stop(check=not self._test_failed())
        finally:
            self.srv.failed = self.srv.failed or self._test_failed()
            self.srv.cleanup()

    # ------------------------------------------------------------------ helpers

    def temp_file_ids(self):
        """(path, inode, mtime) of every temp file on the drives: a file recreated under the
        same name by the restarted server (a resumed heal) is not the leftover."""
        out = set()
        for d in self.srv.drive_dirs:
            for name in temp_files(d):
                path = os.path.join(d, "tmp", name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                out.add((path, st.st_ino, st.st_mtime_ns))
        return out

    def restart_after_crash(self):
        """Starts objectd again; once its start-up sweep is done, none of the temp files the
        crash left behind may remain."""
        before = self.temp_file_ids()
        self.srv.start()
        removed = self.srv.wait_startup_sweep()
        log(f"restarted; {len(before)} temp files were left by the crash, the start-up sweep "
            f"removed {removed} leftover files")
        left = sorted(p for p, _, _ in before & self.temp_file_ids())
        self.assertEqual(left, [], "temp files of the crashed run survived the start-up sweep")
        self.assertGreaterEqual(removed, len(before))
        return removed

    def drive_sets(self):
        return [set(shard_files(d)) for d in self.srv.drive_dirs]

    def wait_quiescent(self):
        """Until every drive holds the same shard files, twice in a row (a PUT is
        acknowledged at k+1 drives; the sixth may finish just after)."""
        state = {"prev": None}

        def settled():
            sets = self.drive_sets()
            same = all(s == sets[0] for s in sets) and sets[0]
            ok = same and state["prev"] == sets[0]
            state["prev"] = sets[0] if same else None
            return ok
        wait_for(settled, 30, "every drive to hold the same shard files", interval_s=0.2)
        return self.drive_sets()[0]

    def cairn_heal(self, *extra, timeout=180):
        return self.srv.cairn("objects", "heal", "--poll-ms", "100", *extra, json=False,
                              check=False, timeout=timeout)

    # ------------------------------------------------------------------ PUTs

    def test_kill_during_puts(self):
        rounds = 12 if harness.SOAK else 3
        bucket = self.new_bucket(client=self.srv.client())
        keys = {}
        lock = threading.Lock()
        gen_counter = [0]

        def new_version(sizes, multipart):
            with lock:
                gen_counter[0] += 1
                return Version(gen_counter[0], sizes, multipart)

        for w in range(WORKERS):
            for i in range(KEYS_PER_WORKER):
                keys[f"w{w}/k{i}"] = KeyState()
        for i in range(2):
            keys[f"mp/k{i}"] = KeyState()

        # Odd rounds end by a fault point (a seeded choice, then the others in turn), even
        # rounds by kill -9.
        first_fault = self.rng.randrange(len(PUT_FAULTS))
        for rnd in range(rounds):
            fault = None
            if rnd % 2 == 1:
                point, spread = PUT_FAULTS[(first_fault + rnd // 2) % len(PUT_FAULTS)]
                fault = f"{point}:exit:after={self.rng.randrange(spread)}"
            if rnd > 0:
                self.srv.start(env={"CAIRN_FAULTS": fault} if fault else None)
                self.srv.wait_startup_sweep()
            elif fault:
                raise AssertionError("round 0 runs on the server setUp started")
            stats = self.run_put_round(rnd, bucket, keys, new_version, lock, fault)
            log(f"round {rnd} ({fault or 'kill -9'}): {stats}")
            self.restart_after_crash()
            self.verify_after_crash(rnd, bucket, keys)
            self.srv.stop()
        self.srv.start()
        self.srv.wait_startup_sweep()
        self.verify_after_crash(rounds, bucket, keys)

    def run_put_round(self, rnd, bucket, keys, new_version, lock, fault):
        srv = self.srv
        acked = [0]
        errors = []
        dead = threading.Event()
        round_seed = self.rng.randrange(1 << 30)

        def put_worker(w):
            import random
            rng = random.Random(round_seed * 10 + w)
            s3 = srv.client()
            own = [k for k in keys if k.startswith(f"w{w}/")]
            for _ in range(100000):  # bounded; ends when the server dies
                key = rng.choice(own)
                v = new_version([rng.choice(SIZES)], False)
                keys[key].pending = v
                try:
                    s3.put_object(Bucket=bucket, Key=key, Body=v.data(self.seed, key))
                except Exception as e:  # noqa: BLE001 - the crash
                    errors.append(f"{key} {v}: {type(e).__name__}")
                    return
                with lock:
                    keys[key].acked, keys[key].pending = v, None
                    acked[0] += 1
                if dead.is_set():
                    return

        def multipart_worker():
            import random
            rng = random.Random(round_seed * 10 + 9)
            s3 = srv.client()
            own = [k for k in keys if k.startswith("mp/")]
            for _ in range(10000):
                key = rng.choice(own)
                v = new_version([PART_BYTES, rng.randrange(1, 2 * MiB)], True)
                keys[key].pending = v
                try:
                    up = s3.create_multipart_upload(Bucket=bucket, Key=key)
                    parts = []
                    for i, n in enumerate(v.sizes):
                        body = pattern_block(f"{self.seed}:{key}:{v.gen}:p{i}", n)
                        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                           PartNumber=i + 1, Body=body)
                        parts.append({"PartNumber": i + 1, "ETag": r["ETag"]})
                    s3.complete_multipart_upload(Bucket=bucket, Key=key,
                                                 UploadId=up["UploadId"],
                                                 MultipartUpload={"Parts": parts})
                except Exception as e:  # noqa: BLE001 - the crash
                    errors.append(f"{key} {v}: {type(e).__name__}")
                    return
                with lock:
                    keys[key].acked, keys[key].pending = v, None
                    acked[0] += 1
                if dead.is_set():
                    return

        threads = [threading.Thread(target=put_worker, args=(w,), daemon=True)
                   for w in range(WORKERS)]
        threads.append(threading.Thread(target=multipart_worker, daemon=True))
        for t in threads:
            t.start()
        try:
            if fault:
                rc = srv.wait_exit(ROUND_DEADLINE_S)
                self.assertIsNotNone(rc, f"the fault point ({fault}) did not fire within "
                                         f"{ROUND_DEADLINE_S} s")
                self.assertEqual(rc, 137, f"objectd exited with {rc}, not by the fault point")
            else:
                wait_for(lambda: acked[0] >= 3, ROUND_DEADLINE_S, "a few acknowledged PUTs")
                time.sleep(self.rng.uniform(0.1, 1.5))
                srv.kill9()
        finally:
            dead.set()
            if srv.proc is not None:
                srv.kill9()
            for t in threads:
                t.join(120)
        self.assertFalse(any(t.is_alive() for t in threads), "a PUT worker did not stop")
        in_flight = sum(1 for k in keys.values() if k.pending is not None)
        return f"{acked[0]} PUTs acknowledged, {in_flight} in flight at the crash"

    def verify_after_crash(self, rnd, bucket, keys):
        s3 = self.srv.client()
        found = {}
        expect_ids = 0
        for key, st in sorted(keys.items()):
            try:
                r = s3.get_object(Bucket=bucket, Key=key)
            except s3harness.ClientError as e:
                self.assertEqual(error_code(e)[0], 404, f"round {rnd}: GET {key}: {e.response}")
                self.assertIsNone(st.acked, f"round {rnd}: {key} is gone, but its PUT of "
                                            f"{st.acked} was acknowledged")
                st.pending = None
                continue
            got = r["Body"].read()
            candidates = [v for v in (st.acked, st.pending) if v is not None]
            match = next((v for v in candidates if v.data(self.seed, key) == got), None)
            if match is None:
                want = candidates[0].data(self.seed, key) if candidates else b""
                assert_bytes_equal(self, got, want,
                                   f"round {rnd}: {key} (acknowledged {st.acked}, in flight "
                                   f"{st.pending}) reads back as neither")
                self.fail(f"round {rnd}: {key}: {len(got)} bytes match no version written")
            if match is st.pending and st.pending is not st.acked:
                log(f"round {rnd}: {key}: the in-flight {match} survived the crash")
            st.acked, st.pending = match, None
            found[key] = len(got)
            etag = r["ETag"].strip('"')
            expect_ids += 1 + (int(etag.split("-")[1]) if "-" in etag else 0)
            self.assertEqual(int(etag.split("-")[1]) if "-" in etag else 0,
                             len(match.sizes) if match.multipart else 0, f"{key}: ETag {etag}")

        listed = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                listed[o["Key"]] = o["Size"]
        self.assertEqual(listed, found, f"round {rnd}: the listing disagrees with the GETs")

        # Uploads a crash left open are aborted (their files go with them).
        uploads = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        for u in uploads:
            s3.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
        sets = self.drive_sets()
        for d, ids in zip(self.srv.drive_dirs, sets):
            self.assertEqual(temp_files(d), [], f"round {rnd}: {d}: temp files left")
            self.assertEqual(ids, sets[0], f"round {rnd}: drives hold different shard files")
        self.assertEqual(len(sets[0]), expect_ids,
                         f"round {rnd}: {len(sets[0])} shard files per drive, but the live "
                         f"objects have {expect_ids} versions: orphans left behind")
        log(f"round {rnd}: verified {len(found)} objects ({len(uploads)} open uploads "
            f"aborted), {expect_ids} versions on every drive")

    # ------------------------------------------------------------------ heal

    def test_kill_during_heal(self):
        rounds = 6 if harness.SOAK else 2
        bucket = self.new_bucket(client=self.srv.client())
        objects = {}
        for i in range(150):
            objects[f"small/{i:04d}"] = self.rng.randbytes(self.rng.choice([0, 100, 5000, 70000]))
        for i in range(8):
            objects[f"big/{i}"] = self.rng.randbytes(self.rng.randrange(MiB, 5 * MiB))
        tls = threading.local()

        def put(item):
            if not hasattr(tls, "client"):
                tls.client = self.srv.client()
            tls.client.put_object(Bucket=bucket, Key=item[0], Body=item[1])

        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            list(ex.map(put, objects.items()))
        s3 = self.srv.client()
        parts = [self.rng.randbytes(PART_BYTES), self.rng.randbytes(MiB + 3)]
        up = s3.create_multipart_upload(Bucket=bucket, Key="multipart")
        etags = []
        for i, p in enumerate(parts):
            r = s3.upload_part(Bucket=bucket, Key="multipart", UploadId=up["UploadId"],
                               PartNumber=i + 1, Body=p)
            etags.append({"PartNumber": i + 1, "ETag": r["ETag"]})
        s3.complete_multipart_upload(Bucket=bucket, Key="multipart", UploadId=up["UploadId"],
                                     MultipartUpload={"Parts": etags})
        objects["multipart"] = b"".join(parts)
        ids = self.wait_quiescent()
        log(f"{len(objects)} objects, {len(ids)} shard files per drive")
        self.srv.stop()

        for rnd in range(rounds):
            by_fault = rnd % 2 == 1
            victim = self.rng.randrange(6)
            drive = self.srv.drive_dirs[victim]
            originals = {oid: file_sha256(path) for oid, path in shard_files(drive).items()}
            self.assertEqual(set(originals), ids)
            fault = f"objectd.heal.mid:exit:after={self.rng.randrange(len(ids) // 2)}"
            if by_fault:
                self.srv.start(env={"CAIRN_FAULTS": fault})
            else:
                # Slow enough that the pass is surely still running when it is killed.
                self.srv.start(args=["--heal-rate", "4M"])
            self.srv.wait_startup_sweep()
            remove_tree(drive)
            os.makedirs(drive)
            p = self.cairn_heal("--no-wait")
            self.assertEqual(p.returncode, 0, f"cairn objects heal --no-wait:\n{p.stdout}{p.stderr}")
            if by_fault:
                rc = self.srv.wait_exit(ROUND_DEADLINE_S)
                self.assertEqual(rc, 137, f"the fault point ({fault}) did not end objectd")
                half = temp_files(drive)
                self.assertTrue(any(n.endswith(".heal") for n in half),
                                f"no half-written heal file in {drive}/tmp: {half}")
                what = f"{fault}, {len(shard_files(drive))} shard files rebuilt before it"
            else:
                # Kill at a random moment while a shard file is being rebuilt, after a few.
                done_before = self.rng.randrange(3)
                wait_for(lambda: len(shard_files(drive)) >= done_before and
                         any(n.endswith(".heal") for n in temp_files(drive)),
                         ROUND_DEADLINE_S, "the heal pass to rebuild a shard file",
                         interval_s=0.01)
                time.sleep(self.rng.uniform(0, 0.3))
                st = self.srv.heal_status()
                self.assertTrue(st.get("running"), f"the heal pass ended before the kill: {st}")
                self.srv.kill9()
                what = (f"kill -9 at {st.get('objectsScanned')}/{st.get('objectsTotal')} objects, "
                        f"{len(shard_files(drive))} shard files rebuilt")
            log(f"heal round {rnd}: drive {victim}: {what}")
            self.assertLess(len(shard_files(drive)), len(ids), "the heal had already finished")

            self.restart_after_crash()
            p = self.cairn_heal()
            self.assertEqual(p.returncode, 0, f"cairn objects heal after the restart exited "
                                              f"{p.returncode}:\n{p.stdout}\n{p.stderr}")
            self.assertIn("fully redundant (6 drives online)", p.stdout)
            for d in self.srv.drive_dirs:
                have = set(shard_files(d))
                self.assertEqual(have, ids, f"round {rnd}: {d}: {len(ids - have)} shard files "
                                            f"missing, {len(have - ids)} extra")
                self.assertEqual(temp_files(d), [], f"round {rnd}: {d}: temp files left")
            rebuilt = {oid: file_sha256(path) for oid, path in shard_files(drive).items()}
            differ = [oid for oid in ids if rebuilt[oid] != originals[oid]]
            self.assertEqual(differ, [], f"round {rnd}: rebuilt shard files differ from the "
                                         f"lost ones")
            s3 = self.srv.client()
            for key, data in objects.items():
                got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                assert_bytes_equal(self, got, data, f"round {rnd}: {key}")
            self.srv.stop()
        self.srv.start()


if __name__ == "__main__":
    s3harness.main()
