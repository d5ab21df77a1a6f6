#!/usr/bin/env python3
"""objectd's erasure coding and healing under damaged drives, checked from outside: objects
are read back through boto3 and compared byte for byte, and the shard files are counted and
compared on the drive directories themselves (not only through the heal status).

Every test runs its own objectd with --ec 4+2 over 6 explicit drive directories:
  - two drives removed (rm -rf): every object reads back identical; the directories are
    replaced by empty ones and `cairn objects heal` exits 0 with every drive holding a shard
    file for every object again;
  - shard files corrupted (flipped block bytes, truncation, deletion, a damaged trailer) on
    at most two drives per object: reads are identical; the heal restores the files;
  - three drives gone: a PUT fails cleanly with a 5xx S3 error and leaves nothing visible
    (not listed, HEAD 404, no temp files), also after the drives return and a heal;
  - objectd restarted (SIGTERM) in the middle of a heal pass: the pass resumes where it was
    (the log says so) and the `cairn objects heal` that was following it ends with exit 0.
"""

import concurrent.futures
import json
import os
import re
import shutil
import struct
import subprocess
import threading
import time

import s3harness
from harness import CAIRN, MiB, assert_bytes_equal, log, seeded_rng, wait_for
from s3harness import Objectd, ObjectdTestCase, error_code, shard_files, xml_code

SHARD_HEADER_BYTES = 16
TRAILER_FIXED_BYTES = 16  # record length, record CRC, "CAIRNEND"


def block_region(data):
    """[start, end) of a shard file's data blocks (docs/FORMAT-objectd.md, "Shard file")."""
    assert data[-8:] == b"CAIRNEND", "not a shard file"
    record_len = struct.unpack("<I", data[-16:-12])[0]
    return SHARD_HEADER_BYTES, len(data) - TRAILER_FIXED_BYTES - record_len


def remove_tree(path):
    """rm -rf that wins against objectd finishing a straggling write in there."""
    for _ in range(20):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(0.1)
    raise AssertionError(f"could not remove {path}")


class Faults(ObjectdTestCase):
    # Each test starts its own objectd (the tests damage it); no class-wide server.
    @classmethod
    def setUpClass(cls):
        cls.server = None

    @classmethod
    def tearDownClass(cls):
        pass

    def setUp(self):
        self.rng, _ = seeded_rng(self.id().rsplit(".", 1)[-1])
        self.srv = Objectd(label=self._testMethodName[5:17], drives=6)
        type(self).server = self.srv  # for ServerTestCase.tearDown's log tail on failure
        self.srv.start()

    def tearDown(self):
        super().tearDown()
        try:
            self.srv.stop(check=not self._test_failed())
        finally:
            self.srv.failed = self.srv.failed or self._test_failed()
            self.srv.cleanup()

    # ------------------------------------------------------------------ helpers

    def put_objects(self, bucket, count_small=0):
        """A mix of sizes (empty, tiny, partial and several stripes, multipart) plus
        count_small 2 KiB objects. Returns {key: bytes}."""
        s3 = self.srv.client()
        objects = {}
        sizes = [1, 1000, 256 * 1024 + 1, MiB, 3 * MiB + 5, 2 * MiB + self.rng.randrange(MiB)]
        for i, n in enumerate(sizes):
            objects[f"obj/{i}"] = self.rng.randbytes(n)
        for i in range(count_small):
            objects[f"small/{i:05d}"] = self.rng.randbytes(2048)
        tls = threading.local()

        def put(item):
            if not hasattr(tls, "client"):  # a client per thread (sessions are not shared)
                tls.client = self.srv.client()
            tls.client.put_object(Bucket=bucket, Key=item[0], Body=item[1])

        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            list(ex.map(put, objects.items()))
        # An empty object (raw PUT: see test_s3_boto3's empty-PUT check) and a multipart one.
        status, _, body = self.srv.signed("PUT", f"/{bucket}/obj/empty", b"")
        self.assertEqual(status, 200, body)
        objects["obj/empty"] = b""
        parts = [self.rng.randbytes(5 * MiB), self.rng.randbytes(MiB + 3)]
        up = s3.create_multipart_upload(Bucket=bucket, Key="obj/multipart")
        etags = []
        for i, p in enumerate(parts):
            r = s3.upload_part(Bucket=bucket, Key="obj/multipart", UploadId=up["UploadId"],
                               PartNumber=i + 1, Body=p)
            etags.append({"PartNumber": i + 1, "ETag": r["ETag"]})
        s3.complete_multipart_upload(Bucket=bucket, Key="obj/multipart", UploadId=up["UploadId"],
                                     MultipartUpload={"Parts": etags})
        objects["obj/multipart"] = b"".join(parts)
        return objects

    def read_all_back(self, bucket, objects, what):
        s3 = self.srv.client()
        for key, data in objects.items():
            got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert_bytes_equal(self, got, data, f"{what}: {key}")
        listed = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            listed += [o["Key"] for o in page.get("Contents", [])]
        self.assertEqual(sorted(listed), sorted(objects), f"{what}: listing")

    def drive_sets(self):
        return [set(shard_files(d)) for d in self.srv.drive_dirs]

    def wait_quiescent(self):
        """Until every drive holds the same shard files, twice in a row: a PUT is
        acknowledged at the write quorum (k+1 drives); the others may finish just after."""
        state = {"prev": None}

        def settled():
            sets = self.drive_sets()
            same = all(s == sets[0] for s in sets) and sets[0]
            ok = same and state["prev"] == sets[0]
            state["prev"] = sets[0] if same else None
            return ok
        wait_for(settled, 30, "every drive to hold the same shard files", interval_s=0.2)
        return self.drive_sets()[0]

    def assert_every_drive_holds(self, ids, what):
        for d in self.srv.drive_dirs:
            have = set(shard_files(d))
            missing = ids - have
            self.assertFalse(missing, f"{what}: {d} lacks {len(missing)} of {len(ids)} shard "
                                      f"files, e.g. {sorted(missing)[:3]}")
            tmp = os.path.join(d, "tmp")
            leftovers = os.listdir(tmp) if os.path.isdir(tmp) else []
            self.assertEqual(leftovers, [], f"{what}: temp files left in {tmp}")

    def cairn_heal(self, *extra, timeout=180):
        return self.srv.cairn("objects", "heal", "--poll-ms", "200", *extra, json=False,
                              check=False, timeout=timeout)

    def heal_json(self):
        status, _, body = self.srv.signed("GET", "/_cairn/admin/heal")
        self.assertEqual(status, 200, body)
        return json.loads(body)

    # ------------------------------------------------------------------ tests

    def test_two_drives_removed_reads_then_heal_rebuilds(self):
        bucket = self.new_bucket(client=self.srv.client())
        objects = self.put_objects(bucket)
        ids = self.wait_quiescent()
        log(f"{len(objects)} objects, {len(ids)} shard files per drive")
        gone = self.rng.sample(range(6), 2)
        for i in gone:
            remove_tree(self.srv.drive_dirs[i])
        self.read_all_back(bucket, objects, f"drives {gone} removed")
        # Writes need k+1 = 5 drives: refused now, cleanly.
        with self.assertRaises(s3harness.ClientError) as cm:
            self.srv.client().put_object(Bucket=bucket, Key="while-degraded", Body=b"x" * 5000)
        self.assertGreaterEqual(error_code(cm.exception)[0], 500, cm.exception.response)

        # The operator replaces the drives with empty directories and runs a heal.
        for i in gone:
            os.makedirs(self.srv.drive_dirs[i])
        p = self.cairn_heal()
        self.assertEqual(p.returncode, 0, f"cairn objects heal failed:\n{p.stdout}\n{p.stderr}")
        self.assertIn("heal finished:", p.stdout)
        self.assertIn("fully redundant (6 drives online)", p.stdout)
        self.assert_every_drive_holds(ids, "after the heal")
        st = self.srv.heal_status()
        self.assertTrue(st["fullyRedundant"], st)
        self.assertEqual(st["drivesOnline"], 6, st)
        self.assertEqual(st["objectsFailed"], "0", st)
        self.read_all_back(bucket, objects, "after the heal")
        self.assertClientError(lambda: self.srv.client().head_object(Bucket=bucket,
                                                                     Key="while-degraded"), 404)

        # The rebuilt shards are real: with two of the *other* drives gone, everything still
        # reads back (through the rebuilt ones).
        others = [i for i in range(6) if i not in gone]
        for i in self.rng.sample(others, 2):
            remove_tree(self.srv.drive_dirs[i])
        self.read_all_back(bucket, objects, "relying on the rebuilt drives")

    def test_corrupt_shards_read_back_and_heal(self):
        bucket = self.new_bucket(client=self.srv.client())
        objects = self.put_objects(bucket)
        ids = sorted(self.wait_quiescent())
        originals = {}
        damage = []
        for n, oid in enumerate(ids):
            drives = self.rng.sample(range(6), 2)
            for j, d in enumerate(drives):
                path = shard_files(self.srv.drive_dirs[d])[oid]
                with open(path, "rb") as f:
                    data = f.read()
                originals[path] = data
                start, end = block_region(data)
                kind = ["flip", "truncate", "delete", "trailer"][(n + j) % 4]
                if kind == "flip" and end - start < 1:
                    kind = "trailer"  # an empty object's files have no blocks
                buf = bytearray(data)
                if kind == "flip":
                    for _ in range(3):
                        buf[self.rng.randrange(start, end)] ^= 1 << self.rng.randrange(8)
                elif kind == "truncate":
                    buf = buf[:len(buf) // 2]
                elif kind == "trailer":
                    buf[-self.rng.randrange(1, 17)] ^= 0xFF
                if kind == "delete":
                    os.unlink(path)
                else:
                    with open(path, "wb") as f:
                        f.write(buf)
                damage.append((kind, d, oid))
        log(f"damaged {len(damage)} shard files: "
            f"{sorted(set(k for k, _, _ in damage))} over {len(ids)} objects")

        self.read_all_back(bucket, objects, "with corrupt shards")
        p = self.cairn_heal()
        self.assertEqual(p.returncode, 0, f"cairn objects heal failed:\n{p.stdout}\n{p.stderr}")
        self.assert_every_drive_holds(set(ids), "after the heal")
        for path, data in originals.items():
            with open(path, "rb") as f:
                now = f.read()
            a, b = block_region(data)
            self.assertEqual(len(now), len(data), f"{path}: healed file has another size")
            assert_bytes_equal(self, now[a:b], data[a:b], f"blocks of healed {path}")
            self.assertEqual(now, data, f"{path}: healed file differs from the original")
        self.read_all_back(bucket, objects, "after the heal")
        st = self.srv.heal_status()
        self.assertTrue(st["fullyRedundant"], st)

    def test_three_drives_gone_put_fails_cleanly(self):
        bucket = self.new_bucket(client=self.srv.client())
        objects = self.put_objects(bucket)
        ids = self.wait_quiescent()
        gone = self.rng.sample(range(6), 3)
        for i in gone:
            os.rename(self.srv.drive_dirs[i], self.srv.drive_dirs[i] + ".away")
        s3 = self.srv.client()
        data = self.rng.randbytes(MiB + 1)
        with self.assertRaises(s3harness.ClientError) as cm:
            s3.put_object(Bucket=bucket, Key="doomed", Body=data)
        status, code = error_code(cm.exception)
        self.assertGreaterEqual(status, 500, cm.exception.response)
        self.assertLess(status, 600)
        self.assertIn(code, ("ServiceUnavailable", "InternalError"), cm.exception.response)
        # The same through a raw request: a proper S3 XML error body.
        status, _, body = self.srv.signed("PUT", f"/{bucket}/doomed-raw", b"y" * 10000)
        self.assertGreaterEqual(status, 500, body)
        self.assertIn(xml_code(body), ("ServiceUnavailable", "InternalError"), body)
        for key in ("doomed", "doomed-raw"):
            self.assertClientError(lambda: s3.head_object(Bucket=bucket, Key=key), 404)
        listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="doomed")
                  .get("Contents", [])]
        self.assertEqual(listed, [])
        for i in range(6):
            if i in gone:
                continue
            d = self.srv.drive_dirs[i]
            self.assertEqual(set(shard_files(d)), ids, f"{d}: the failed PUT left shard files")
            tmp = os.path.join(d, "tmp")
            self.assertEqual(os.listdir(tmp) if os.path.isdir(tmp) else [], [],
                             f"{d}: the failed PUT left temp files")
        self.assertTrue(self.srv.alive())

        # The drives come back: a heal makes the store whole, and the failed PUT never
        # shows up.
        for i in gone:
            os.rename(self.srv.drive_dirs[i] + ".away", self.srv.drive_dirs[i])
        p = self.cairn_heal()
        self.assertEqual(p.returncode, 0, f"cairn objects heal failed:\n{p.stdout}\n{p.stderr}")
        self.read_all_back(bucket, objects, "after the drives returned")
        self.assert_every_drive_holds(ids, "after the drives returned")
        self.assertClientError(lambda: s3.head_object(Bucket=bucket, Key="doomed"), 404)
        s3.put_object(Bucket=bucket, Key="doomed", Body=data)
        self.assertEqual(s3.get_object(Bucket=bucket, Key="doomed")["Body"].read(), data)

    def test_restart_during_heal_resumes(self):
        bucket = self.new_bucket(client=self.srv.client())
        objects = self.put_objects(bucket, count_small=1000)
        ids = self.wait_quiescent()
        gone = self.rng.sample(range(6), 2)
        for i in gone:
            remove_tree(self.srv.drive_dirs[i])
            os.makedirs(self.srv.drive_dirs[i])

        # Follow the heal with the CLI, as an operator would, across the restart.
        cmd = [CAIRN, "--s3-endpoint", self.srv.endpoint, "--access-key", self.srv.access_key,
               "--secret-key", self.srv.secret_key, "objects", "heal", "--poll-ms", "100"]
        out_path = self.srv.tmp_path("heal-cli.out")
        with open(out_path, "wb") as out:
            cli = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        try:
            def mid_pass():
                st = self.heal_json()
                total, scanned = int(st["objectsTotal"]), int(st["objectsScanned"])
                return st if st["running"] and total > 0 and scanned >= total // 20 else None
            st = wait_for(mid_pass, 60, "the heal pass to get going", interval_s=0.01)
            log(f"restarting objectd mid-pass: {st['objectsScanned']}/{st['objectsTotal']}")
            before = self.srv.log_text()
            self.srv.restart()
            after = self.srv.log_text()[len(before):]
            m = re.search(r"resuming heal pass at object (\d+) of (\d+)", after)
            self.assertIsNotNone(m, "objectd did not resume the heal pass after the restart")
            resumed_at, total = int(m.group(1)), int(m.group(2))
            self.assertGreater(resumed_at, 0, "the pass started over instead of resuming")
            self.assertLess(resumed_at, total, "the pass had already finished")
            self.assertGreaterEqual(resumed_at, int(st["objectsScanned"]))
            rc = cli.wait(180)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait(10)
        with open(out_path, "r", errors="replace") as f:
            cli_out = f.read()
        log(f"cairn objects heal output:\n{cli_out}")
        self.assertEqual(rc, 0, f"cairn objects heal exited {rc}:\n{cli_out}")
        self.assertIn("fully redundant (6 drives online)", cli_out)
        self.assert_every_drive_holds(ids, "after the resumed heal")
        # A sample of objects (all the big ones) reads back identical.
        sample = {k: v for k, v in objects.items() if not k.startswith("small/")}
        sample.update({k: objects[k] for k in self.rng.sample(
            [k for k in objects if k.startswith("small/")], 50)})
        s3 = self.srv.client()
        for key, data in sample.items():
            assert_bytes_equal(self, s3.get_object(Bucket=bucket, Key=key)["Body"].read(), data,
                               key)


if __name__ == "__main__":
    s3harness.main()
