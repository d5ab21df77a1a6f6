#!/usr/bin/env python3
"""objectd driven by the aws CLI (Debian's awscli): mb, multipart cp of a 100 MiB random
file and its download (sha256 compared), ls, rm, presign + fetch with urllib and curl.

Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; AWS_CONFIG_FILE is a temp
file with path-style addressing and region us-east-1; nothing but 127.0.0.1 is contacted.
"""

import os
import shutil
import urllib.request

import s3harness
from harness import MiB, run, seeded_rng, sha256_file
from s3harness import AWS, ObjectdTestCase


class AwsCli(ObjectdTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        srv = cls.server
        cls.home = srv.tmp_path("home")
        os.makedirs(cls.home)
        cls.config = srv.tmp_path("aws-config")
        with open(cls.config, "w") as f:
            f.write("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n"
                    "    multipart_threshold = 8MB\n    multipart_chunksize = 8MB\n")
        cls.env = dict(s3harness.no_proxy_env(), HOME=cls.home, AWS_CONFIG_FILE=cls.config,
                       AWS_SHARED_CREDENTIALS_FILE=srv.tmp_path("no-credentials"),
                       AWS_ACCESS_KEY_ID=srv.access_key, AWS_SECRET_ACCESS_KEY=srv.secret_key,
                       AWS_PAGER="", AWS_DEFAULT_OUTPUT="json")
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION"):
            os.environ.pop(k, None)

    def aws(self, *args, check=True, timeout=240):
        if AWS is None:
            self.fail("the aws CLI is not installed (Debian package awscli)")
        return run([AWS, "--endpoint-url", self.server.endpoint, *args], env=self.env,
                   check=check, timeout=timeout)

    def test_mb_cp_multipart_ls_rm(self):
        rng, _ = seeded_rng("awscli-cp")
        bucket = f"aws-{rng.randrange(1 << 30):x}"
        p = self.aws("s3", "mb", f"s3://{bucket}")
        self.assertIn(f"make_bucket: {bucket}", p.stdout)
        self.assertIn(bucket, self.aws("s3", "ls").stdout)

        src = self.server.tmp_path("big.bin")
        size = 100 * MiB + 12345  # not a multiple of the part size nor of a stripe
        with open(src, "wb") as f:
            left = size
            while left:
                n = min(left, 8 * MiB)
                f.write(rng.randbytes(n))
                left -= n
        want = sha256_file(src)
        self.aws("s3", "cp", src, f"s3://{bucket}/dir/big.bin")
        os.unlink(src)  # keep the temp dir small; only the hash is needed now

        # The aws CLI split it into 8 MiB parts: a multipart ETag "<md5>-13".
        head = self.server.client().head_object(Bucket=bucket, Key="dir/big.bin")
        self.assertEqual(head["ContentLength"], size)
        self.assertRegex(head["ETag"], r'^"[0-9a-f]{32}-13"$')

        dst = self.server.tmp_path("big.out")
        self.aws("s3", "cp", f"s3://{bucket}/dir/big.bin", dst)
        self.assertEqual(os.path.getsize(dst), size)
        self.assertEqual(sha256_file(dst), want, "downloaded file differs from the uploaded one")
        os.unlink(dst)

        small = self.server.tmp_path("small.txt")
        with open(small, "wb") as f:
            f.write(b"hello objectd\n")
        self.aws("s3", "cp", small, f"s3://{bucket}/small.txt")

        ls = self.aws("s3", "ls", f"s3://{bucket}/").stdout
        self.assertIn("PRE dir/", ls)
        self.assertRegex(ls, r"\s14 small\.txt")
        ls = self.aws("s3", "ls", "--recursive", f"s3://{bucket}").stdout
        self.assertRegex(ls, rf"\s{size} dir/big\.bin")

        p = self.aws("s3", "rm", f"s3://{bucket}/dir/big.bin")
        self.assertIn(f"delete: s3://{bucket}/dir/big.bin", p.stdout)
        ls = self.aws("s3", "ls", "--recursive", f"s3://{bucket}").stdout
        self.assertNotIn("big.bin", ls)
        self.assertIn("small.txt", ls)
        p = self.aws("s3", "cp", f"s3://{bucket}/dir/big.bin", dst, check=False)
        self.assertNotEqual(p.returncode, 0, "a removed object could still be downloaded")
        self.assertFalse(os.path.exists(dst))

        self.aws("s3", "rm", "--recursive", f"s3://{bucket}")
        self.aws("s3", "rb", f"s3://{bucket}")
        self.assertNotIn(bucket, self.aws("s3", "ls").stdout)

    def test_presign_fetch_with_urllib_and_curl(self):
        rng, _ = seeded_rng("awscli-presign")
        bucket = f"aws-pre-{rng.randrange(1 << 30):x}"
        self.aws("s3", "mb", f"s3://{bucket}")
        data = rng.randbytes(3 * MiB + 17)
        src = self.server.tmp_path("presign.bin")
        with open(src, "wb") as f:
            f.write(data)
        key = "a b/presign+me.bin"  # characters that need escaping in the URL
        self.aws("s3", "cp", src, f"s3://{bucket}/{key}")
        url = self.aws("s3", "presign", f"s3://{bucket}/{key}", "--expires-in", "300").stdout
        url = url.strip()
        self.assertTrue(url.startswith(self.server.endpoint + "/"), url)
        self.assertIn("X-Amz-Signature=", url)

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=60) as r:
            self.assertEqual(r.status, 200)
            got = r.read()
        self.assertEqual(got, data, "presigned GET through urllib returned other bytes")

        curl = shutil.which("curl")
        if curl:
            out = self.server.tmp_path("curl.out")
            p = run([curl, "-sS", "--noproxy", "*", "-o", out, "-w", "%{http_code}", url])
            self.assertEqual(p.stdout.strip(), "200")
            with open(out, "rb") as f:
                self.assertEqual(f.read(), data, "presigned GET through curl returned other bytes")

        # A tampered signature is refused.
        bad = url[:-1] + ("0" if url[-1] != "0" else "1")
        with self.assertRaises(urllib.error.HTTPError) as cm:
            opener.open(bad, timeout=30)
        self.assertEqual(cm.exception.code, 403)
        self.assertIn(b"SignatureDoesNotMatch", cm.exception.read())


if __name__ == "__main__":
    s3harness.main()
