#!/usr/bin/env python3
"""objectd driven by s3cmd and rclone (Debian's packages), each checked by the bytes it
downloads.

s3cmd: a generated config (host_base/host_bucket 127.0.0.1:PORT, use_https False,
signature_v2 False): mb, put (single and multipart), ls, get, del.
rclone: a remote configured only through RCLONE_CONFIG_CAIRN_* (type s3, provider Other,
path style): copy a tree of random files, `rclone check` (exit 0), copy back and compare.
"""

import filecmp
import os

import s3harness
from harness import MiB, run, seeded_rng, sha256_file
from s3harness import ObjectdTestCase, RCLONE, S3CMD


def write_random(path, size, rng):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def tree_files(root):
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            p = os.path.join(d, name)
            out[os.path.relpath(p, root)] = p
    return out


class Tools(ObjectdTestCase):
    def setUp(self):
        self.rng, _ = seeded_rng(self.id().rsplit(".", 1)[-1])

    # ------------------------------------------------------------------ s3cmd

    def s3cmd(self, *args, check=True):
        if S3CMD is None:
            self.fail("s3cmd is not installed (Debian package s3cmd)")
        return run([S3CMD, "-c", self.s3cmd_config, "--no-progress", *args], check=check,
                   timeout=180, env=dict(s3harness.no_proxy_env(), HOME=self.server.tmp))

    def test_s3cmd_put_get_ls_del(self):
        srv = self.server
        host = f"127.0.0.1:{srv.port}"
        self.s3cmd_config = srv.tmp_path("s3cmd.cfg")
        with open(self.s3cmd_config, "w") as f:
            f.write("[default]\n"
                    f"access_key = {srv.access_key}\n"
                    f"secret_key = {srv.secret_key}\n"
                    f"host_base = {host}\n"
                    f"host_bucket = {host}\n"
                    "use_https = False\n"
                    "signature_v2 = False\n"
                    "bucket_location = us-east-1\n"
                    "check_ssl_certificate = False\n"
                    "proxy_host =\n"
                    "multipart_chunk_size_mb = 5\n")
        bucket = f"s3cmd-{self.rng.randrange(1 << 30):x}"
        p = self.s3cmd("mb", f"s3://{bucket}")
        self.assertIn(f"Bucket 's3://{bucket}/' created", p.stdout)
        self.assertIn(f"s3://{bucket}", self.s3cmd("ls").stdout)

        src = srv.tmp_path("s3cmd-src")
        files = {"small.txt": 1234, "empty": 0, "multi/part.bin": 12 * MiB + 321}
        for name, size in files.items():
            write_random(os.path.join(src, name), size, self.rng)
        for name in files:
            self.s3cmd("put", os.path.join(src, name), f"s3://{bucket}/{name}")
        # 12 MiB in 5 MiB chunks: s3cmd went multipart.
        head = srv.client().head_object(Bucket=bucket, Key="multi/part.bin")
        self.assertRegex(head["ETag"], r'^"[0-9a-f]{32}-3"$')

        ls = self.s3cmd("ls", "--recursive", f"s3://{bucket}").stdout
        for name, size in files.items():
            self.assertRegex(ls, rf"\s{size}\s+s3://{bucket}/{name}\n")

        dst = srv.tmp_path("s3cmd-dst")
        os.makedirs(dst)
        for name in files:
            out = os.path.join(dst, name.replace("/", "_"))
            self.s3cmd("get", f"s3://{bucket}/{name}", out)
            self.assertEqual(sha256_file(out), sha256_file(os.path.join(src, name)),
                             f"s3cmd get {name} returned other bytes")

        self.s3cmd("del", f"s3://{bucket}/small.txt")
        ls = self.s3cmd("ls", "--recursive", f"s3://{bucket}").stdout
        self.assertNotIn("small.txt", ls)
        self.assertIn("multi/part.bin", ls)
        p = self.s3cmd("get", f"s3://{bucket}/small.txt", os.path.join(dst, "gone"), check=False)
        self.assertNotEqual(p.returncode, 0)
        self.s3cmd("del", "--recursive", "--force", f"s3://{bucket}")
        self.s3cmd("rb", f"s3://{bucket}")
        self.assertNotIn(f"s3://{bucket}", self.s3cmd("ls").stdout)

    # ------------------------------------------------------------------ rclone

    def rclone(self, *args, check=True):
        if RCLONE is None:
            self.fail("rclone is not installed (Debian package rclone)")
        srv = self.server
        env = dict(s3harness.no_proxy_env(),
                   HOME=srv.tmp,
                   RCLONE_CONFIG=srv.tmp_path("rclone.conf"),  # empty: only the env remote
                   RCLONE_CONFIG_CAIRN_TYPE="s3",
                   RCLONE_CONFIG_CAIRN_PROVIDER="Other",
                   RCLONE_CONFIG_CAIRN_ENDPOINT=srv.endpoint,
                   RCLONE_CONFIG_CAIRN_ACCESS_KEY_ID=srv.access_key,
                   RCLONE_CONFIG_CAIRN_SECRET_ACCESS_KEY=srv.secret_key,
                   RCLONE_CONFIG_CAIRN_FORCE_PATH_STYLE="true",
                   RCLONE_CONFIG_CAIRN_REGION="us-east-1",
                   # files over 6 MiB go multipart in 5 MiB chunks
                   RCLONE_CONFIG_CAIRN_UPLOAD_CUTOFF="6M",
                   RCLONE_CONFIG_CAIRN_CHUNK_SIZE="5M")
        return run([RCLONE, "--retries", "1", "--low-level-retries", "1", "--transfers", "4",
                    *args], check=check, env=env, timeout=180)

    def test_rclone_copy_check_and_download(self):
        srv = self.server
        open(srv.tmp_path("rclone.conf"), "w").close()
        src = srv.tmp_path("rclone-src")
        sizes = {"a.txt": 1, "b/empty": 0, "b/c/d.bin": 300 * 1024 + 7,
                 "b/c/e.bin": 7 * MiB + 5, "space name/f g.bin": 65536,
                 "deep/1/2/3/4/h.bin": 1024 * 1024}
        for i in range(self.rng.randrange(8, 16)):
            sizes[f"many/file-{i:02d}.dat"] = self.rng.randrange(0, 200 * 1024)
        for name, size in sizes.items():
            write_random(os.path.join(src, name), size, self.rng)
        bucket = f"rclone-{self.rng.randrange(1 << 30):x}"
        self.rclone("mkdir", f"cairn:{bucket}")
        self.rclone("copy", src, f"cairn:{bucket}/tree")
        # rclone went multipart for the 7 MiB file (5 MiB chunks): a "-2" ETag.
        head = srv.client().head_object(Bucket=bucket, Key="tree/b/c/e.bin")
        self.assertRegex(head["ETag"], r'^"[0-9a-f]{32}-2"$')
        p = self.rclone("check", src, f"cairn:{bucket}/tree", check=False)
        self.assertEqual(p.returncode, 0, f"rclone check failed:\n{p.stdout}\n{p.stderr}")
        self.assertIn("0 differences found", p.stderr)

        listed = self.rclone("lsf", "-R", "--files-only", f"cairn:{bucket}/tree").stdout
        self.assertEqual(sorted(listed.splitlines()), sorted(sizes))

        dst = srv.tmp_path("rclone-dst")
        self.rclone("copy", f"cairn:{bucket}/tree", dst)
        got = tree_files(dst)
        self.assertEqual(sorted(got), sorted(sizes))
        for name in sizes:
            self.assertTrue(filecmp.cmp(os.path.join(src, name), got[name], shallow=False),
                            f"{name} differs after the round trip through objectd")

        # A changed file is a difference rclone check notices (the check is not vacuous).
        with open(os.path.join(src, "a.txt"), "wb") as f:
            f.write(b"Z")
        p = self.rclone("check", src, f"cairn:{bucket}/tree", check=False)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("1 differences found", p.stderr)

        self.rclone("purge", f"cairn:{bucket}")
        self.assertNotIn(bucket, [b["Name"] for b in srv.client().list_buckets()["Buckets"]])


if __name__ == "__main__":
    s3harness.main()
