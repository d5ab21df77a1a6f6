#!/usr/bin/env python3
"""Backups of snapshots into objectd, through the real blockd and the cairn CLI: full and
incremental backups of a seeded random volume, restores compared byte for byte with the
snapshot exports (qemu-img compare over NBD), verify and restore against chunks deleted or
corrupted through the S3 API, prune, encrypted repositories. Replay with CAIRN_SEED."""

import hashlib
import json
import os
import shutil
import sys
import time
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import s3harness  # noqa: E402
from harness import KiB, MiB, nbd, run  # noqa: E402

CHUNK = 4 * MiB


class BackupTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.objectd = s3harness.Objectd(label="bkobj")
        cls.blockd = harness.Blockd(label="bkblk")
        try:
            cls.objectd.start()
            cls.blockd.start()
        except BaseException:
            cls.tearDownClass()
            raise
        cls.s3 = cls.objectd.client()
        cls.names = 0

    @classmethod
    def tearDownClass(cls):
        for server in (getattr(cls, "blockd", None), getattr(cls, "objectd", None)):
            if server is None:
                continue
            try:
                if server.proc is not None:
                    server.stop(check=True)
            finally:
                server.cleanup()

    def tearDown(self):
        failed = any(t is self for t, _ in
                     list(self._outcome.result.errors) + list(self._outcome.result.failures))
        if failed:
            self.blockd.print_log_tail()
            self.objectd.print_log_tail()

    # ---- helpers ----

    def name(self, prefix):
        BackupTest.names += 1
        return f"{prefix}{BackupTest.names}"

    def cairn(self, *args, check=True, json_out=True, env=None):
        cmd = [harness.CAIRN, "--api", self.blockd.api, "--token", self.blockd.token,
               "--s3-endpoint", self.objectd.endpoint, "--access-key", self.objectd.access_key,
               "--secret-key", self.objectd.secret_key]
        if json_out:
            cmd.append("--json")
        cmd += list(args)
        p = run(cmd, timeout=300, check=check, env=env)
        if json_out and check:
            return json.loads(p.stdout) if p.stdout.strip() else None
        return p

    def new_repo(self, *extra):
        repo = f"s3://{self.name('bk')}/repo"
        self.cairn("backup", "init", "--repo", repo, *extra)
        return repo

    def write_pattern(self, vol, size, rng, density=0.5):
        """Seeded random 1 MiB runs over about `density` of the volume, the rest never written."""
        h = harness.nbd_connect(self.blockd.tcp_uri(vol))
        try:
            for off in range(0, size, MiB):
                if rng.random() < density:
                    h.pwrite(rng.randbytes(MiB), off)
            h.flush()
        finally:
            harness.nbd_close(h)

    def snapshotted_volume(self, tag, size, density=0.5, prefix="v"):
        """A new volume with a seeded random pattern and its snapshot s1."""
        rng, _ = harness.seeded_rng(tag)
        vol = self.name(prefix)
        self.blockd.create_volume(vol, size)
        self.write_pattern(vol, size, rng, density)
        self.blockd.cairn("snapshot", "create", vol, "s1")
        return rng, vol

    def compare(self, uri_a, uri_b):
        p = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", uri_a, uri_b], timeout=300, check=False)
        self.assertEqual(p.returncode, 0, f"{uri_a} != {uri_b}: {p.stdout}{p.stderr}")

    def backup(self, repo, vol, snap, *extra):
        job = self.cairn("backup", "create", f"{vol}@{snap}", "--repo", repo, *extra)
        self.assertEqual(job["state"], "done", job)
        return job["result"]

    def restore(self, repo, backup_ref, *extra):
        newvol = self.name("r")
        job = self.cairn("backup", "restore", backup_ref, newvol, "--repo", repo, *extra)
        self.assertEqual(job["state"], "done", job)
        return newvol

    def chunk_keys(self, repo):
        bucket, prefix = repo[len("s3://"):].split("/", 1)
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/chunks/"):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return bucket, keys

    # ---- tests ----

    def test_full_incremental_restore_verify_prune(self):
        rng, vol = self.snapshotted_volume("backup-full-incr", 64 * MiB)
        repo = self.new_repo()

        full = self.backup(repo, vol, "s1")
        self.assertEqual(full.get("parentId", ""), "")
        stats = full["stats"]
        self.assertGreater(int(stats["newBytes"]), 0)

        # Change about 1 %: 640 KiB inside one 4 MiB chunk.
        h = harness.nbd_connect(self.blockd.tcp_uri(vol))
        try:
            h.pwrite(rng.randbytes(640 * KiB), 20 * MiB + 64 * KiB)
            h.flush()
        finally:
            harness.nbd_close(h)
        self.blockd.cairn("snapshot", "create", vol, "s2")
        incr = self.backup(repo, vol, "s2")
        self.assertEqual(incr["parentId"], full["backupId"])
        # Only the touched chunk was read and stored, not the volume.
        self.assertEqual(int(incr["stats"]["readBytes"]), CHUNK)
        self.assertLessEqual(int(incr["stats"].get("newBytes", 0)), CHUNK + 4 * KiB)
        self.assertEqual(int(incr["stats"].get("newChunks", 0)), 1)

        # Both backups are complete images.
        r1 = self.restore(repo, f"{vol}/{full['backupId']}")
        r2 = self.restore(repo, incr["backupId"])
        self.compare(self.blockd.tcp_uri(f"{vol}@s1"), self.blockd.tcp_uri(r1))
        self.compare(self.blockd.tcp_uri(f"{vol}@s2"), self.blockd.tcp_uri(r2))
        # Holes stay holes: the restored volume holds about what the source does.
        src_alloc = int(self.blockd.cairn("volume", "info", vol)["allocatedBytes"])
        r1_alloc = int(self.blockd.cairn("volume", "info", r1)["allocatedBytes"])
        self.assertLessEqual(r1_alloc, src_alloc)

        listed = self.cairn("backup", "list", "--repo", repo, vol)
        self.assertEqual([b["backupId"] for b in listed["backups"]], [full["backupId"], incr["backupId"]])
        self.assertGreater(int(listed["repoUniqueBytes"]), 0)
        text = self.cairn("backup", "list", "--repo", repo, json_out=False).stdout
        self.assertIn(incr["backupId"], text)

        v = self.cairn("backup", "verify", "--repo", repo)
        self.assertEqual(v["state"], "done", v)
        self.assertEqual(v["verify"].get("damaged", []), [])

        # Prune to the newest: the full backup goes, with the one chunk only it held. GC keeps
        # chunks younger than 2 s (LastModified has one-second resolution): wait them out.
        time.sleep(3)
        chunks_before = len(self.chunk_keys(repo)[1])
        dry = self.cairn("backup", "prune", "--repo", repo, "--keep-last", "1", "--dry-run")
        self.assertEqual(dry["removed"], [f"{vol}/{full['backupId']}"])
        self.assertEqual(len(self.chunk_keys(repo)[1]), chunks_before)
        pruned = self.cairn("backup", "prune", "--repo", repo, "--keep-last", "1")
        self.assertEqual(pruned["removed"], [f"{vol}/{full['backupId']}"])
        # What stays is exactly the incremental's chunks (random data: no two alike); the
        # changed chunk's old version went, unless the full backup had a hole there.
        remaining = int(incr["stats"]["logicalBytes"]) // CHUNK
        self.assertIn(chunks_before - remaining, (0, 1))
        self.assertEqual(int(pruned.get("chunksDeleted", 0)), chunks_before - remaining)
        self.assertEqual(len(self.chunk_keys(repo)[1]), remaining)
        r3 = self.restore(repo, incr["backupId"])
        self.compare(self.blockd.tcp_uri(f"{vol}@s2"), self.blockd.tcp_uri(r3))
        jobs = self.cairn("backup", "jobs")
        self.assertTrue(any(j["kind"] == "restore" and j["state"] == "done" for j in jobs["jobs"]))

    def test_damaged_chunks_are_named_and_never_restored_silently(self):
        rng, _ = harness.seeded_rng("backup-damage")
        size = 32 * MiB
        repo = self.new_repo()
        vols = []
        for i in range(2):
            vol = self.name("d")
            self.blockd.create_volume(vol, size)
            self.write_pattern(vol, size, rng, density=1.0)
            self.blockd.cairn("snapshot", "create", vol, "s1")
            vols.append((vol, self.backup(repo, vol, "s1")))
        (va, ba), (vb, bb) = vols

        bucket, keys = self.chunk_keys(repo)
        ids = {k.rsplit("/", 1)[1] for k in keys}
        listed = self.cairn("backup", "list", "--repo", repo, va)["backups"]
        self.assertEqual([b["backupId"] for b in listed], [ba["backupId"]])
        rb = self.restore(repo, bb["backupId"])
        self.compare(self.blockd.tcp_uri(f"{vb}@s1"), self.blockd.tcp_uri(rb))

        # Corrupt chunk objects through the S3 API until verify names exactly backup A (the
        # data is random, so no chunk is shared); chunks of B are put back as they were.
        victims = sorted(ids)
        damaged = None
        for key_id in victims:
            key = next(k for k in keys if k.endswith(key_id))
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            self.s3.put_object(Bucket=bucket, Key=key, Body=body[:-1] + bytes([body[-1] ^ 0xFF]))
            v = self.cairn("backup", "verify", "--repo", repo, check=False)
            report = json.loads(v.stdout)
            names = {d["backupId"] for d in report["verify"].get("damaged", [])}
            if names == {ba["backupId"]}:
                damaged = key
                self.assertEqual(v.returncode, 1)
                self.assertEqual(report["state"], "failed")
                break
            self.s3.put_object(Bucket=bucket, Key=key, Body=body)  # B's chunk: put it back
        self.assertIsNotNone(damaged, "no chunk of backup A found")
        text = self.cairn("backup", "verify", "--repo", repo, json_out=False, check=False)
        self.assertEqual(text.returncode, 1)
        self.assertIn(ba["backupId"], text.stdout)
        self.assertNotIn(bb["backupId"], text.stdout)

        # Restoring A fails clearly and leaves no volume behind; B still restores.
        newvol = self.name("r")
        p = self.cairn("backup", "restore", ba["backupId"], newvol, "--repo", repo, json_out=False, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("corrupt", p.stderr)
        vols_now = [v["name"] for v in self.blockd.cairn("volume", "list")["volumes"]]
        self.assertNotIn(newvol, vols_now)
        rb2 = self.restore(repo, bb["backupId"])
        self.compare(self.blockd.tcp_uri(f"{vb}@s1"), self.blockd.tcp_uri(rb2))

        # A missing chunk: named as missing.
        self.s3.delete_object(Bucket=bucket, Key=damaged)
        v = self.cairn("backup", "verify", "--repo", repo, ba["backupId"], check=False)
        self.assertEqual(v.returncode, 1)
        d = json.loads(v.stdout)["verify"]["damaged"][0]
        self.assertEqual(int(d.get("missingChunks", 0)), 1)

    def test_encrypted_repository(self):
        rng, _ = harness.seeded_rng("backup-enc")
        size = 16 * MiB
        vol = self.name("secret-volume-name-")  # long enough not to turn up in ciphertext by chance
        self.blockd.create_volume(vol, size)
        marker = b"CAIRN-PLAINTEXT-MARKER-" * 178 + b"-" * 2  # 4096 bytes
        h = harness.nbd_connect(self.blockd.tcp_uri(vol))
        try:
            h.pwrite(marker + rng.randbytes(MiB - len(marker)), 0)
            h.pwrite(b"\x00" * 4096 + marker, 5 * MiB)  # compressible too
            h.flush()
        finally:
            harness.nbd_close(h)
        self.blockd.cairn("snapshot", "create", vol, "s1")
        key_file = os.path.join(self.blockd.tmp, f"{vol}.key")
        repo = f"s3://{self.name('enc')}"
        init = self.cairn("backup", "init", "--repo", repo, "--key-file", key_file, json_out=False)
        self.assertIn("encrypted", init.stdout)
        self.assertEqual(os.stat(key_file).st_mode & 0o777, 0o600)
        b = self.backup(repo, vol, "s1", "--key-file", key_file)
        r = self.restore(repo, b["backupId"], "--key-file", key_file)
        self.compare(self.blockd.tcp_uri(f"{vol}@s1"), self.blockd.tcp_uri(r))

        bucket = repo[len("s3://"):]
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                body = self.s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
                self.assertNotIn(b"CAIRN-PLAINTEXT-MARKER", body, o["Key"])
                self.assertNotIn(vol.encode(), body, o["Key"])

        # No key, or a wrong one: a clear error, nothing restored.
        p = self.cairn("backup", "list", "--repo", repo, json_out=False, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("repository key", p.stderr)
        wrong = os.path.join(self.blockd.tmp, "wrong.key")
        with open(wrong, "w") as f:
            f.write(hashlib.sha256(b"wrong").hexdigest())
        p = self.cairn("backup", "restore", b["backupId"], self.name("r"), "--repo", repo,
                       "--key-file", wrong, json_out=False, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("repository key", p.stderr)

    def test_rerun_after_kill9_mid_backup_uploads_nothing_twice(self):
        _, vol = self.snapshotted_volume("backup-kill", 64 * MiB, density=1.0, prefix="k")  # 16 chunks
        repo = self.new_repo()
        # blockd dies like a crash (_exit) on the 7th chunk upload of the backup.
        self.blockd.stop()
        self.blockd.start(env={"CAIRN_FAULTS": "backup.chunk.before_put:exit:after=6"})
        p = self.cairn("backup", "create", f"{vol}@s1", "--repo", repo, "--poll-ms", "50",
                       json_out=False, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.blockd.wait_exit(30)
        self.blockd.restart()
        # Workers upload in parallel: how many uploads finished before the exit varies (and
        # objectd may finish one it was receiving after blockd died: count after the restart).
        n = len(self.chunk_keys(repo)[1])
        self.assertTrue(0 < n < 16, n)
        b = self.backup(repo, vol, "s1")
        self.assertEqual(int(b["stats"].get("newChunks", 0)), 16 - n)
        self.assertEqual(int(b["stats"].get("reusedChunks", 0)), n)
        self.assertEqual(len(self.chunk_keys(repo)[1]), 16)
        r = self.restore(repo, b["backupId"])
        self.compare(self.blockd.tcp_uri(f"{vol}@s1"), self.blockd.tcp_uri(r))

    def test_restore_interrupted_by_a_crash_leaves_no_partial_volume(self):
        _, vol = self.snapshotted_volume("backup-restore-kill", 32 * MiB, density=1.0, prefix="c")
        repo = self.new_repo()
        b = self.backup(repo, vol, "s1")
        self.blockd.restart(env={"CAIRN_FAULTS": "backup.restore.chunk:exit:after=3"})
        newvol = self.name("r")
        p = self.cairn("backup", "restore", b["backupId"], newvol, "--repo", repo, "--poll-ms", "50",
                       json_out=False, check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIsNotNone(self.blockd.wait_exit(30), "blockd did not stop at the fault point")
        self.blockd.start()
        names = [v["name"] for v in self.blockd.cairn("volume", "list")["volumes"]]
        self.assertNotIn(newvol, names)
        self.assertEqual(os.listdir(os.path.join(self.blockd.data_dir, "hydrate")), [])
        r = self.restore(repo, b["backupId"])
        self.compare(self.blockd.tcp_uri(f"{vol}@s1"), self.blockd.tcp_uri(r))

    def test_backup_and_restore_with_a_lost_objectd_drive(self):
        rng, vol = self.snapshotted_volume("backup-lost-drive", 32 * MiB, prefix="l")
        repo = self.new_repo()
        full = self.backup(repo, vol, "s1")
        # One of the 6 drives vanishes: 4+2 still reads and writes with quorum.
        shutil.rmtree(self.objectd.drive_dirs[0])
        try:
            h = harness.nbd_connect(self.blockd.tcp_uri(vol))
            try:
                h.pwrite(rng.randbytes(MiB), 3 * MiB)
                h.flush()
            finally:
                harness.nbd_close(h)
            self.blockd.cairn("snapshot", "create", vol, "s2")
            incr = self.backup(repo, vol, "s2")
            for b, snap in ((full, "s1"), (incr, "s2")):
                r = self.restore(repo, b["backupId"])
                self.compare(self.blockd.tcp_uri(f"{vol}@{snap}"), self.blockd.tcp_uri(r))
            v = self.cairn("backup", "verify", "--repo", repo)
            self.assertEqual(v["verify"].get("damaged", []), [])
        finally:
            os.makedirs(self.objectd.drive_dirs[0], exist_ok=True)
            self.objectd.cairn("objects", "heal", json=False, timeout=300)

    def job_of(self, kind, volume):
        jobs = [j for j in self.cairn("backup", "jobs")["jobs"] if j["kind"] == kind and j["volume"] == volume]
        return jobs[-1] if jobs else None

    def wait_job(self, kind, volume, timeout_s=120):
        harness.wait_for(lambda: (self.job_of(kind, volume) or {}).get("state", "running") != "running",
                         timeout_s, f"{kind} job of {volume}", interval_s=0.2)
        job = self.job_of(kind, volume)
        self.assertEqual(job["state"], "done", job)
        return job

    def instant_source(self, tag, size):
        rng, vol = self.snapshotted_volume(tag, size, density=0.7, prefix="i")
        repo = self.new_repo()
        return rng, vol, repo, self.backup(repo, vol, "s1")

    def test_instant_restore_serves_reads_and_writes_while_hydrating(self):
        size = 64 * MiB
        rng, vol, repo, b = self.instant_source("backup-instant", size)
        # Slow hydration down so that clients meet chunks that are not there yet.
        self.blockd.restart(env={"CAIRN_FAULTS": "backup.hydrate.chunk:delay_ms=300"})
        newvol = self.name("n")
        job = self.cairn("backup", "restore", b["backupId"], newvol, "--repo", repo, "--instant", "--detach")
        self.assertEqual(job["kind"], "hydrate")
        running_at_first_read = self.job_of("hydrate", newvol)["state"] == "running"
        self.compare(self.blockd.tcp_uri(f"{vol}@s1"), self.blockd.tcp_uri(newvol))
        # A write into a chunk the pass has not reached: hydration must not overwrite it.
        mine = rng.randbytes(64 * KiB)
        h = harness.nbd_connect(self.blockd.tcp_uri(newvol))
        try:
            h.pwrite(mine, size - 3 * MiB)
            h.flush()
        finally:
            harness.nbd_close(h)
        self.wait_job("hydrate", newvol)
        want = bytearray(harness.nbd_read_all(self.blockd.tcp_uri(f"{vol}@s1"), size))
        want[size - 3 * MiB:size - 3 * MiB + len(mine)] = mine
        got = harness.nbd_read_all(self.blockd.tcp_uri(newvol), size)
        harness.assert_bytes_equal(self, got, bytes(want), "hydrated volume")
        harness.log(f"hydration was running at the first read: {running_at_first_read}")
        self.blockd.restart()

    def test_instant_restore_resumes_after_kill9(self):
        size = 64 * MiB
        rng, vol, repo, b = self.instant_source("backup-instant-kill", size)
        self.blockd.restart(env={"CAIRN_FAULTS": "backup.hydrate.chunk:delay_ms=300"})
        newvol = self.name("n")
        self.cairn("backup", "restore", b["backupId"], newvol, "--repo", repo, "--instant", "--detach")
        mine = rng.randbytes(64 * KiB)
        h = harness.nbd_connect(self.blockd.tcp_uri(newvol))
        try:
            head = h.pread(MiB, 0)  # on demand
            h.pwrite(mine, size - 3 * MiB, nbd.CMD_FLAG_FUA)
        finally:
            harness.nbd_close(h)
        self.blockd.kill9()
        self.blockd.start()
        # The state survived: hydration resumes by itself and the volume is served through it.
        self.assertIsNotNone(self.job_of("hydrate", newvol))
        self.wait_job("hydrate", newvol)
        want = bytearray(harness.nbd_read_all(self.blockd.tcp_uri(f"{vol}@s1"), size))
        self.assertEqual(head, bytes(want[:MiB]))
        want[size - 3 * MiB:size - 3 * MiB + len(mine)] = mine
        got = harness.nbd_read_all(self.blockd.tcp_uri(newvol), size)
        harness.assert_bytes_equal(self, got, bytes(want), "volume hydrated across a crash")
        self.assertEqual(os.listdir(os.path.join(self.blockd.data_dir, "hydrate")), [])

    def test_bad_requests_are_clear_errors(self):
        repo = self.new_repo()
        p = self.cairn("backup", "init", "--repo", repo, json_out=False, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("exists already", p.stderr)
        for bad_repo in ("s3://", "s3://A_B", "http://x/y"):
            p = self.cairn("backup", "list", "--repo", bad_repo, json_out=False, check=False)
            self.assertNotEqual(p.returncode, 0, bad_repo)
            self.assertIn("repository", p.stderr)
        p = self.cairn("backup", "list", "--repo", f"s3://{self.name('none')}", json_out=False, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("no backup repository", p.stderr)
        p = self.cairn("backup", "create", "nosuchvol@s1", "--repo", repo, json_out=False, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("not found", p.stderr)
        p = self.cairn("backup", "restore", "20200101T000000Z-00000000", self.name("r"), "--repo", repo,
                       json_out=False, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("no backup", p.stderr)
        p = self.cairn("backup", "prune", "--repo", repo, json_out=False, check=False)
        self.assertEqual(p.returncode, 2)
        self.assertTrue(self.blockd.alive())


if __name__ == "__main__":
    unittest.main(verbosity=2)
