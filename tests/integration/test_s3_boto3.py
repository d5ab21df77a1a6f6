#!/usr/bin/env python3
"""objectd through boto3 (Debian's python3-boto3): every operation checks the bytes and
metadata it reads back.

Covers put/get, Range (206, 416), CopyObject (COPY and REPLACE), multipart (ETag "-N",
ListParts, abort), conditional GET/HEAD (304/412), ListObjectsV2 pagination (MaxKeys,
delimiter/CommonPrefixes, continuation, StartAfter), user metadata, additional checksums
(CRC32C and SHA256 on PUT, ChecksumMode on GET), DeleteObjects, presigned PUT/GET with
expiry, tenant isolation (tenants and keys made with the cairn CLI) and anonymous access to
a public-read bucket only.
"""

import base64
import datetime
import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request

import s3harness
from harness import CAIRN, MiB, assert_bytes_equal, run, seeded_rng
from s3harness import ClientError, ObjectdTestCase, error_code


def crc32c(data):
    """CRC32C (Castagnoli, reflected 0x82F63B78), a second implementation for the checks."""
    table = crc32c.table
    if table is None:
        table = []
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            table.append(c)
        crc32c.table = table
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


crc32c.table = None


def b64(raw):
    return base64.b64encode(raw).decode()


def quoted_md5(data):
    return '"' + hashlib.md5(data).hexdigest() + '"'


def no_proxy_opener():
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Boto3(ObjectdTestCase):
    def setUp(self):
        self.s3 = self.server.client()
        self.rng, _ = seeded_rng(self.id().rsplit(".", 1)[-1])

    # ------------------------------------------------------------------ objects

    def test_put_get_head_delete_various_sizes(self):
        b = self.new_bucket()
        # Stripe = 4 x 256 KiB: cover empty, tiny, partial stripe, exact stripes, several.
        # The empty object goes last: see test_put_after_empty_put_on_same_connection.
        sizes = [1, 4095, 256 * 1024 + 3, MiB, 3 * MiB + 77, 0]
        stored = {}
        for i, n in enumerate(sizes):
            data = self.rng.randbytes(n)
            key = f"obj/{i}-{n}"
            r = self.s3.put_object(Bucket=b, Key=key, Body=data)
            self.assertEqual(r["ETag"], quoted_md5(data))
            stored[key] = data
        for key, data in stored.items():
            r = self.s3.get_object(Bucket=b, Key=key)
            assert_bytes_equal(self, r["Body"].read(), data, key)
            self.assertEqual(r["ContentLength"], len(data))
            self.assertEqual(r["ETag"], quoted_md5(data))
            h = self.s3.head_object(Bucket=b, Key=key)
            self.assertEqual(h["ContentLength"], len(data))
        # Overwrite, then delete.
        key = "obj/0-1"
        new = self.rng.randbytes(1000)
        self.s3.put_object(Bucket=b, Key=key, Body=new)
        self.assertEqual(self.s3.get_object(Bucket=b, Key=key)["Body"].read(), new)
        self.s3.delete_object(Bucket=b, Key=key)
        self.assertClientError(lambda: self.s3.get_object(Bucket=b, Key=key), 404, "NoSuchKey")
        self.assertClientError(lambda: self.s3.head_object(Bucket=b, Key=key), 404)
        self.s3.delete_object(Bucket=b, Key=key)  # deleting a missing key is fine
        self.assertClientError(lambda: self.s3.get_object(Bucket="no-such-bucket-x", Key="k"),
                               404, "NoSuchBucket")

    def test_put_after_empty_put_on_same_connection(self):
        """botocore sends `Expect: 100-continue` with every PutObject. When a server answers
        one without `100 Continue` and keeps the connection, botocore 1.29 keeps a stale
        response parser on that pooled connection and the next PUT with a body on it hangs
        and returns garbage. So the empty PUT must get its `100 Continue` too (or the
        connection must close), as S3 does."""
        b = self.new_bucket()
        s3 = self.server.client(read_timeout=10)
        s3.put_object(Bucket=b, Key="empty", Body=b"")
        t0 = time.monotonic()
        data = self.rng.randbytes(100)
        r = s3.put_object(Bucket=b, Key="after-empty", Body=data)
        self.assertLess(time.monotonic() - t0, 5, "the PUT after an empty PUT was slow")
        self.assertEqual(r.get("ETag"), quoted_md5(data), r["ResponseMetadata"])
        self.assertEqual(s3.get_object(Bucket=b, Key="after-empty")["Body"].read(), data)
        self.assertEqual(s3.get_object(Bucket=b, Key="empty")["Body"].read(), b"")

    def test_range_reads_and_416(self):
        b = self.new_bucket()
        data = self.rng.randbytes(2 * MiB + 333)
        self.s3.put_object(Bucket=b, Key="r", Body=data)
        n = len(data)
        cases = [("bytes=0-0", 0, 1), ("bytes=0-99", 0, 100), (f"bytes={n - 1}-", n - 1, n),
                 ("bytes=1048570-1048590", 1048570, 1048591), ("bytes=-500", n - 500, n),
                 (f"bytes=100-{n + 1000}", 100, n), ("bytes=262140-", 262140, n)]
        for _ in range(5):
            a = self.rng.randrange(n)
            z = self.rng.randrange(a, n)
            cases.append((f"bytes={a}-{z}", a, z + 1))
        for spec, start, end in cases:
            r = self.s3.get_object(Bucket=b, Key="r", Range=spec)
            self.assertEqual(r["ResponseMetadata"]["HTTPStatusCode"], 206, spec)
            self.assertEqual(r["ContentRange"], f"bytes {start}-{end - 1}/{n}", spec)
            assert_bytes_equal(self, r["Body"].read(), data[start:end], spec)
        for spec in (f"bytes={n}-", f"bytes={n + 10}-{n + 20}"):
            e = self.assertClientError(lambda: self.s3.get_object(Bucket=b, Key="r", Range=spec),
                                       416, "InvalidRange", spec)
            self.assertEqual(e.response["ResponseMetadata"]["HTTPHeaders"].get("content-range"),
                             f"bytes */{n}")
        self.s3.put_object(Bucket=b, Key="empty", Body=b"")
        self.assertClientError(
            lambda: self.s3.get_object(Bucket=b, Key="empty", Range="bytes=0-0"), 416,
            "InvalidRange")

    def test_copy_with_copy_and_replace_directives(self):
        src_b, dst_b = self.new_bucket(), self.new_bucket()
        data = self.rng.randbytes(MiB + 5)
        self.s3.put_object(Bucket=src_b, Key="src/a b+c", Body=data, ContentType="text/x-src",
                           Metadata={"origin": "first", "n": "1"})
        r = self.s3.copy_object(Bucket=dst_b, Key="copy1",
                                CopySource={"Bucket": src_b, "Key": "src/a b+c"})
        self.assertEqual(r["CopyObjectResult"]["ETag"], quoted_md5(data))
        g = self.s3.get_object(Bucket=dst_b, Key="copy1")
        assert_bytes_equal(self, g["Body"].read(), data, "COPY")
        self.assertEqual(g["Metadata"], {"origin": "first", "n": "1"})
        self.assertEqual(g["ContentType"], "text/x-src")

        self.s3.copy_object(Bucket=dst_b, Key="copy2", CopySource=f"{src_b}/src/a b+c",
                            MetadataDirective="REPLACE", Metadata={"origin": "replaced"},
                            ContentType="application/x-new")
        g = self.s3.get_object(Bucket=dst_b, Key="copy2")
        assert_bytes_equal(self, g["Body"].read(), data, "REPLACE")
        self.assertEqual(g["Metadata"], {"origin": "replaced"})
        self.assertEqual(g["ContentType"], "application/x-new")

        # Onto itself: only with REPLACE.
        self.assertClientError(lambda: self.s3.copy_object(
            Bucket=dst_b, Key="copy2", CopySource={"Bucket": dst_b, "Key": "copy2"}), 400)
        self.s3.copy_object(Bucket=dst_b, Key="copy2", CopySource={"Bucket": dst_b,
                                                                    "Key": "copy2"},
                            MetadataDirective="REPLACE", Metadata={"v": "2"})
        g = self.s3.get_object(Bucket=dst_b, Key="copy2")
        self.assertEqual(g["Metadata"], {"v": "2"})
        assert_bytes_equal(self, g["Body"].read(), data, "self copy")
        self.assertClientError(lambda: self.s3.copy_object(
            Bucket=dst_b, Key="x", CopySource={"Bucket": src_b, "Key": "missing"}), 404,
            "NoSuchKey")

    def test_multipart_etag_list_parts_and_abort(self):
        b = self.new_bucket()
        parts = [self.rng.randbytes(5 * MiB), self.rng.randbytes(5 * MiB + 1234),
                 self.rng.randbytes(700 * 1024 + 9)]
        up = self.s3.create_multipart_upload(Bucket=b, Key="mp/obj", ContentType="video/x-test",
                                             Metadata={"kind": "multipart"})
        uid = up["UploadId"]
        uploads = self.s3.list_multipart_uploads(Bucket=b).get("Uploads", [])
        self.assertIn(("mp/obj", uid), [(u["Key"], u["UploadId"]) for u in uploads])
        # Upload out of order, and part 2 twice (the second replaces the first).
        r = self.s3.upload_part(Bucket=b, Key="mp/obj", UploadId=uid, PartNumber=2,
                                Body=b"x" * (5 * MiB))
        self.assertEqual(r["ETag"], quoted_md5(b"x" * (5 * MiB)))
        for n in (1, 3, 2):
            r = self.s3.upload_part(Bucket=b, Key="mp/obj", UploadId=uid, PartNumber=n,
                                    Body=parts[n - 1])
            self.assertEqual(r["ETag"], quoted_md5(parts[n - 1]))
        lp = self.s3.list_parts(Bucket=b, Key="mp/obj", UploadId=uid)
        self.assertEqual([(p["PartNumber"], p["Size"], p["ETag"]) for p in lp["Parts"]],
                         [(i + 1, len(d), quoted_md5(d)) for i, d in enumerate(parts)])
        lp1 = self.s3.list_parts(Bucket=b, Key="mp/obj", UploadId=uid, MaxParts=1)
        self.assertTrue(lp1["IsTruncated"])
        self.assertEqual([p["PartNumber"] for p in lp1["Parts"]], [1])
        lp2 = self.s3.list_parts(Bucket=b, Key="mp/obj", UploadId=uid,
                                 PartNumberMarker=lp1["NextPartNumberMarker"])
        self.assertEqual([p["PartNumber"] for p in lp2["Parts"]], [2, 3])

        # Not visible before completion.
        self.assertClientError(lambda: self.s3.head_object(Bucket=b, Key="mp/obj"), 404)
        done = self.s3.complete_multipart_upload(
            Bucket=b, Key="mp/obj", UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": quoted_md5(d)}
                                       for i, d in enumerate(parts)]})
        want_etag = '"' + hashlib.md5(b"".join(hashlib.md5(d).digest()
                                               for d in parts)).hexdigest() + '-3"'
        self.assertEqual(done["ETag"], want_etag)
        g = self.s3.get_object(Bucket=b, Key="mp/obj")
        self.assertEqual(g["ETag"], want_etag)
        self.assertEqual(g["ContentType"], "video/x-test")
        self.assertEqual(g["Metadata"], {"kind": "multipart"})
        whole = b"".join(parts)
        assert_bytes_equal(self, g["Body"].read(), whole, "completed multipart object")
        r = self.s3.get_object(Bucket=b, Key="mp/obj", Range=f"bytes={5 * MiB - 10}-{5 * MiB + 9}")
        assert_bytes_equal(self, r["Body"].read(), whole[5 * MiB - 10:5 * MiB + 10],
                           "range across a part boundary")
        self.assertClientError(lambda: self.s3.list_parts(Bucket=b, Key="mp/obj", UploadId=uid),
                               404, "NoSuchUpload")

        # Abort: the upload and its parts are gone, nothing becomes visible.
        up2 = self.s3.create_multipart_upload(Bucket=b, Key="mp/aborted")
        self.s3.upload_part(Bucket=b, Key="mp/aborted", UploadId=up2["UploadId"], PartNumber=1,
                            Body=self.rng.randbytes(MiB))
        self.s3.abort_multipart_upload(Bucket=b, Key="mp/aborted", UploadId=up2["UploadId"])
        self.assertClientError(lambda: self.s3.list_parts(Bucket=b, Key="mp/aborted",
                                                          UploadId=up2["UploadId"]),
                               404, "NoSuchUpload")
        uploads = self.s3.list_multipart_uploads(Bucket=b).get("Uploads", [])
        self.assertNotIn(up2["UploadId"], [u["UploadId"] for u in uploads])
        self.assertClientError(lambda: self.s3.head_object(Bucket=b, Key="mp/aborted"), 404)

        # A small non-last part is refused at completion.
        up3 = self.s3.create_multipart_upload(Bucket=b, Key="mp/small")
        small = [self.rng.randbytes(1000), self.rng.randbytes(1000)]
        for i, d in enumerate(small):
            self.s3.upload_part(Bucket=b, Key="mp/small", UploadId=up3["UploadId"],
                                PartNumber=i + 1, Body=d)
        self.assertClientError(lambda: self.s3.complete_multipart_upload(
            Bucket=b, Key="mp/small", UploadId=up3["UploadId"],
            MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": quoted_md5(d)}
                                       for i, d in enumerate(small)]}), 400, "EntityTooSmall")
        self.assertClientError(lambda: self.s3.head_object(Bucket=b, Key="mp/small"), 404)
        self.s3.abort_multipart_upload(Bucket=b, Key="mp/small", UploadId=up3["UploadId"])

    def test_conditional_get_and_head(self):
        b = self.new_bucket()
        data = self.rng.randbytes(10000)
        self.s3.put_object(Bucket=b, Key="c", Body=data)
        h = self.s3.head_object(Bucket=b, Key="c")
        etag, mtime = h["ETag"], h["LastModified"]
        past = mtime - datetime.timedelta(days=1)
        future = mtime + datetime.timedelta(days=1)
        ok = [dict(IfMatch=etag), dict(IfNoneMatch='"0123"'), dict(IfModifiedSince=past),
              dict(IfUnmodifiedSince=future), dict(IfMatch="*")]
        for kw in ok:
            r = self.s3.get_object(Bucket=b, Key="c", **kw)
            self.assertEqual(r["Body"].read(), data, kw)
            self.s3.head_object(Bucket=b, Key="c", **kw)
        not_modified = [dict(IfNoneMatch=etag), dict(IfNoneMatch="*"),
                        dict(IfModifiedSince=future),
                        # If-None-Match decides over If-Modified-Since
                        dict(IfNoneMatch=etag, IfModifiedSince=past)]
        for kw in not_modified:
            e = self.assertClientError(lambda: self.s3.get_object(Bucket=b, Key="c", **kw), 304,
                                       msg=str(kw))
            self.assertEqual(e.response["ResponseMetadata"]["HTTPHeaders"].get("etag"), etag)
            self.assertClientError(lambda: self.s3.head_object(Bucket=b, Key="c", **kw), 304,
                                   msg=str(kw))
        failed = [dict(IfMatch='"deadbeef"'), dict(IfUnmodifiedSince=past),
                  # If-Match decides over If-Unmodified-Since... when it fails, 412 anyway
                  dict(IfMatch='"deadbeef"', IfUnmodifiedSince=future)]
        for kw in failed:
            self.assertClientError(lambda: self.s3.get_object(Bucket=b, Key="c", **kw), 412,
                                   "PreconditionFailed", str(kw))
            self.assertClientError(lambda: self.s3.head_object(Bucket=b, Key="c", **kw), 412,
                                   msg=str(kw))
        # If-Match passing wins over a failing If-Unmodified-Since.
        r = self.s3.get_object(Bucket=b, Key="c", IfMatch=etag, IfUnmodifiedSince=past)
        self.assertEqual(r["Body"].read(), data)

    # ------------------------------------------------------------------ listing

    def test_list_objects_v2_pagination_delimiter_continuation(self):
        b = self.new_bucket()
        keys = ["photos/2023/a.jpg", "photos/2023/b.jpg", "photos/2024/c.jpg",
                "photos/readme.txt", "photos/zz/deep/d.txt", "music/x.mp3", "top.txt",
                "a", "a/", "a//b"]
        keys += [f"many/k{i:03d}" for i in range(self.rng.randrange(20, 31))]
        for k in keys:
            self.s3.put_object(Bucket=b, Key=k, Body=k.encode())
        want = sorted(keys, key=lambda k: k.encode())

        got, token, pages = [], None, 0
        while True:
            kw = dict(Bucket=b, MaxKeys=7)
            if token:
                kw["ContinuationToken"] = token
            r = self.s3.list_objects_v2(**kw)
            pages += 1
            page = [o["Key"] for o in r.get("Contents", [])]
            self.assertLessEqual(len(page), 7)
            self.assertEqual(r["KeyCount"], len(page))
            got += page
            if not r["IsTruncated"]:
                self.assertNotIn("NextContinuationToken", r)
                break
            token = r["NextContinuationToken"]
            self.assertLess(pages, 100, "listing does not end")
        self.assertEqual(got, want)
        self.assertEqual(pages, (len(keys) + 6) // 7)
        # Sizes and ETags of the listing match what was stored.
        r = self.s3.list_objects_v2(Bucket=b, Prefix="music/")
        self.assertEqual([(o["Key"], o["Size"], o["ETag"]) for o in r["Contents"]],
                         [("music/x.mp3", 11, quoted_md5(b"music/x.mp3"))])

        r = self.s3.list_objects_v2(Bucket=b, Prefix="photos/", Delimiter="/")
        self.assertEqual([p["Prefix"] for p in r["CommonPrefixes"]],
                         ["photos/2023/", "photos/2024/", "photos/zz/"])
        self.assertEqual([o["Key"] for o in r["Contents"]], ["photos/readme.txt"])
        self.assertEqual(r["KeyCount"], 4)

        # Delimiter with MaxKeys=1: one entry per page, prefixes and keys interleaved in
        # order, each common prefix exactly once.
        entries, token = [], None
        for _ in range(50):
            kw = dict(Bucket=b, Delimiter="/", MaxKeys=1)
            if token:
                kw["ContinuationToken"] = token
            r = self.s3.list_objects_v2(**kw)
            page = ([o["Key"] for o in r.get("Contents", [])] +
                    [p["Prefix"] for p in r.get("CommonPrefixes", [])])
            self.assertEqual(len(page), 1, r)
            entries += page
            if not r["IsTruncated"]:
                break
            token = r["NextContinuationToken"]
        self.assertEqual(entries, ["a", "a/", "many/", "music/", "photos/", "top.txt"])

        r = self.s3.list_objects_v2(Bucket=b, StartAfter="photos/2024/c.jpg")
        self.assertEqual([o["Key"] for o in r["Contents"]],
                         [k for k in want if k > "photos/2024/c.jpg"])
        r = self.s3.list_objects_v2(Bucket=b, Prefix="nothing/")
        self.assertEqual(r["KeyCount"], 0)
        self.assertNotIn("Contents", r)
        # v1 listing with a marker agrees.
        r = self.s3.list_objects(Bucket=b, Prefix="many/", Marker="many/k004", MaxKeys=3)
        self.assertEqual([o["Key"] for o in r["Contents"]], ["many/k005", "many/k006",
                                                             "many/k007"])
        self.assertTrue(r["IsTruncated"])

    # ------------------------------------------------------------------ metadata, checksums

    def test_user_metadata_and_headers_round_trip(self):
        b = self.new_bucket()
        meta = {"color": "blue", "multi-word": "a b  c", "empty": "", "dash-and_under": "x=y;z"}
        data = self.rng.randbytes(5000)
        self.s3.put_object(Bucket=b, Key="m", Body=data, Metadata=meta, ContentType="text/plain",
                           CacheControl="max-age=60", ContentDisposition='attachment; filename="x"',
                           ContentLanguage="en", ContentEncoding="identity")
        for r in (self.s3.get_object(Bucket=b, Key="m"), self.s3.head_object(Bucket=b, Key="m")):
            self.assertEqual(r["Metadata"], meta)
            self.assertEqual(r["ContentType"], "text/plain")
            self.assertEqual(r["CacheControl"], "max-age=60")
            self.assertEqual(r["ContentDisposition"], 'attachment; filename="x"')
            self.assertEqual(r["ContentLanguage"], "en")
            self.assertEqual(r["ContentEncoding"], "identity")
        self.assertEqual(self.s3.get_object(Bucket=b, Key="m")["Body"].read(), data)
        self.s3.put_object(Bucket=b, Key="d", Body=b"x")
        self.assertEqual(self.s3.head_object(Bucket=b, Key="d")["ContentType"],
                         "binary/octet-stream")
        self.assertClientError(lambda: self.s3.put_object(
            Bucket=b, Key="big-meta", Body=b"x", Metadata={"k": "v" * 3000}), 400,
            "MetadataTooLarge")
        self.assertClientError(lambda: self.s3.head_object(Bucket=b, Key="big-meta"), 404)

    def test_additional_checksums(self):
        b = self.new_bucket()
        data = self.rng.randbytes(MiB + 99)
        want_crc = b64(crc32c(data).to_bytes(4, "big"))
        want_sha = b64(hashlib.sha256(data).digest())

        r = self.s3.put_object(Bucket=b, Key="crc", Body=data, ChecksumAlgorithm="CRC32C")
        self.assertEqual(r.get("ChecksumCRC32C"), want_crc)
        r = self.s3.put_object(Bucket=b, Key="sha", Body=data, ChecksumAlgorithm="SHA256")
        self.assertEqual(r.get("ChecksumSHA256"), want_sha)
        # A value given by the caller is checked by the server.
        r = self.s3.put_object(Bucket=b, Key="given", Body=data, ChecksumCRC32C=want_crc)
        self.assertEqual(r.get("ChecksumCRC32C"), want_crc)

        g = self.s3.get_object(Bucket=b, Key="crc", ChecksumMode="ENABLED")
        self.assertEqual(g.get("ChecksumCRC32C"), want_crc)
        assert_bytes_equal(self, g["Body"].read(), data, "crc object")
        g = self.s3.get_object(Bucket=b, Key="sha", ChecksumMode="ENABLED")
        self.assertEqual(g.get("ChecksumSHA256"), want_sha)
        assert_bytes_equal(self, g["Body"].read(), data, "sha object")
        h = self.s3.head_object(Bucket=b, Key="sha", ChecksumMode="ENABLED")
        self.assertEqual(h.get("ChecksumSHA256"), want_sha)
        # Without ChecksumMode no checksum is returned; a range gets none either.
        self.assertNotIn("ChecksumSHA256", self.s3.get_object(Bucket=b, Key="sha"))

        wrong = b64((crc32c(data) ^ 1).to_bytes(4, "big"))
        self.assertClientError(lambda: self.s3.put_object(Bucket=b, Key="bad", Body=data,
                                                          ChecksumCRC32C=wrong), 400, "BadDigest")
        self.assertClientError(lambda: self.s3.head_object(Bucket=b, Key="bad"), 404)
        wrong_sha = b64(hashlib.sha256(data + b"x").digest())
        self.assertClientError(lambda: self.s3.put_object(Bucket=b, Key="crc", Body=data,
                                                          ChecksumSHA256=wrong_sha),
                               400, "BadDigest")
        # The failed overwrite left the old object as it was.
        g = self.s3.get_object(Bucket=b, Key="crc", ChecksumMode="ENABLED")
        self.assertEqual(g.get("ChecksumCRC32C"), want_crc)
        assert_bytes_equal(self, g["Body"].read(), data, "object after a failed overwrite")
        # Content-MD5 is checked too.
        self.assertClientError(lambda: self.s3.put_object(
            Bucket=b, Key="md5", Body=data, ContentMD5=b64(hashlib.md5(b"other").digest())),
            400, "BadDigest")

    def test_delete_objects(self):
        b = self.new_bucket()
        keys = [f"del/{i}" for i in range(8)]
        for k in keys:
            self.s3.put_object(Bucket=b, Key=k, Body=k.encode())
        doomed = keys[:5] + ["del/missing"]
        r = self.s3.delete_objects(Bucket=b, Delete={
            "Objects": [{"Key": k} for k in doomed], "Quiet": False})
        self.assertEqual(sorted(d["Key"] for d in r["Deleted"]), sorted(doomed))
        self.assertEqual(r.get("Errors", []), [])
        listed = [o["Key"] for o in self.s3.list_objects_v2(Bucket=b)["Contents"]]
        self.assertEqual(listed, keys[5:])
        for k in keys[:5]:
            self.assertClientError(lambda: self.s3.get_object(Bucket=b, Key=k), 404, "NoSuchKey")
        for k in keys[5:]:
            self.assertEqual(self.s3.get_object(Bucket=b, Key=k)["Body"].read(), k.encode())
        r = self.s3.delete_objects(Bucket=b, Delete={
            "Objects": [{"Key": k} for k in keys[5:]], "Quiet": True})
        self.assertEqual(r.get("Deleted", []), [])
        self.assertEqual(self.s3.list_objects_v2(Bucket=b)["KeyCount"], 0)
        self.s3.delete_bucket(Bucket=b)
        self.assertClientError(lambda: self.s3.head_bucket(Bucket=b), 404)

    # ------------------------------------------------------------------ presigned URLs

    def test_presigned_put_get_and_expiry(self):
        b = self.new_bucket()
        data = self.rng.randbytes(300 * 1024 + 1)
        opener = no_proxy_opener()
        put_url = self.s3.generate_presigned_url("put_object", Params={"Bucket": b, "Key": "p/1"},
                                                 ExpiresIn=60)
        req = urllib.request.Request(put_url, data=data, method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})
        with opener.open(req, timeout=60) as r:
            self.assertEqual(r.status, 200)
            self.assertEqual(r.headers["ETag"], quoted_md5(data))
        get_url = self.s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "p/1"},
                                                 ExpiresIn=60)
        with opener.open(get_url, timeout=60) as r:
            assert_bytes_equal(self, r.read(), data, "presigned GET")
        self.assertEqual(self.s3.get_object(Bucket=b, Key="p/1")["Body"].read(), data)

        short_get = self.s3.generate_presigned_url("get_object",
                                                   Params={"Bucket": b, "Key": "p/1"},
                                                   ExpiresIn=1)
        short_put = self.s3.generate_presigned_url("put_object",
                                                   Params={"Bucket": b, "Key": "p/late"},
                                                   ExpiresIn=1)
        time.sleep(2.1)
        for url, body, method in ((short_get, None, "GET"), (short_put, b"late", "PUT")):
            with self.assertRaises(urllib.error.HTTPError, msg=method) as cm:
                opener.open(urllib.request.Request(url, data=body, method=method), timeout=30)
            self.assertEqual(cm.exception.code, 403, method)
            text = cm.exception.read()
            self.assertIn(b"<Code>AccessDenied</Code>", text)
            self.assertIn(b"expired", text)
        self.assertClientError(lambda: self.s3.head_object(Bucket=b, Key="p/late"), 404)

    # ------------------------------------------------------------------ tenants and access

    def test_tenant_isolation(self):
        srv = self.server
        suffix = f"{self.rng.randrange(1 << 30):x}"
        ak1, sk1 = srv.new_tenant(f"acme-{suffix}")
        ak2, sk2 = srv.new_tenant(f"globex-{suffix}")
        tenants = [t["name"] for t in srv.cairn("tenant", "list")["tenants"]]
        self.assertIn(f"acme-{suffix}", tenants)
        self.assertIn(f"globex-{suffix}", tenants)
        t1, t2 = srv.client(ak1, sk1), srv.client(ak2, sk2)
        b1 = self.new_bucket("acme", client=t1)
        b2 = self.new_bucket("globex", client=t2)
        data = self.rng.randbytes(4096)
        t1.put_object(Bucket=b1, Key="secret", Body=data)
        self.assertEqual(t1.get_object(Bucket=b1, Key="secret")["Body"].read(), data)

        denied = [lambda: t2.get_object(Bucket=b1, Key="secret"),
                  lambda: t2.put_object(Bucket=b1, Key="intruder", Body=b"x"),
                  lambda: t2.delete_object(Bucket=b1, Key="secret"),
                  lambda: t2.list_objects_v2(Bucket=b1),
                  lambda: t2.copy_object(Bucket=b2, Key="stolen",
                                         CopySource={"Bucket": b1, "Key": "secret"}),
                  lambda: t2.delete_bucket(Bucket=b1)]
        for i, fn in enumerate(denied):
            self.assertClientError(fn, 403, "AccessDenied", f"cross-tenant call {i}")
        self.assertClientError(lambda: t2.head_object(Bucket=b1, Key="secret"), 403)
        self.assertClientError(lambda: t2.create_bucket(Bucket=b1), 409, "BucketAlreadyExists")
        self.assertClientError(lambda: t1.create_bucket(Bucket=b1), 409,
                               "BucketAlreadyOwnedByYou")
        # Nothing changed in tenant 1's bucket.
        self.assertEqual(t1.get_object(Bucket=b1, Key="secret")["Body"].read(), data)
        self.assertEqual([o["Key"] for o in t1.list_objects_v2(Bucket=b1)["Contents"]],
                         ["secret"])
        self.assertClientError(lambda: t2.head_object(Bucket=b2, Key="stolen"), 404)

        names1 = [x["Name"] for x in t1.list_buckets()["Buckets"]]
        names2 = [x["Name"] for x in t2.list_buckets()["Buckets"]]
        names_root = [x["Name"] for x in srv.client().list_buckets()["Buckets"]]
        self.assertEqual(names1, [b1])
        self.assertEqual(names2, [b2])
        self.assertNotIn(b1, names_root)
        self.assertNotIn(b2, names_root)

        # A tenant key may not use the admin API; a made-up key is refused.
        p = srv.cairn("tenant", "list", json=False, check=False,
                      env={"CAIRN_S3_ACCESS_KEY": ak1})
        self.assertEqual(p.returncode, 0)  # flags take precedence over the environment
        p = run([CAIRN, "--s3-endpoint", srv.endpoint, "--access-key", ak1, "--secret-key", sk1,
                 "tenant", "list"], check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("AccessDenied", p.stderr)
        bogus = srv.client("AKNOSUCHKEY000000000", "x" * 40)
        self.assertClientError(lambda: bogus.list_buckets(), 403, "InvalidAccessKeyId")
        wrong_secret = srv.client(ak1, sk2)
        self.assertClientError(lambda: wrong_secret.list_buckets(), 403, "SignatureDoesNotMatch")

    def test_cairn_cli_admin_errors_and_credentials_lookup(self):
        srv = self.server
        name = f"dup-{self.rng.randrange(1 << 30):x}"
        self.assertEqual(srv.cairn("tenant", "create", name), {"name": name})
        p = srv.cairn("tenant", "create", "Bad Name!", json=False, check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertRegex(p.stderr, r"^cairn: error: InvalidArgument: .*\n$")
        p = srv.cairn("tenant", "key", "create", f"missing-{name}", json=False, check=False)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertTrue(p.stderr.startswith("cairn: error: "), p.stderr)
        self.assertEqual(p.stdout, "")
        # Human output: a table, and the key's fields.
        p = srv.cairn("tenant", "list", json=False)
        self.assertEqual(p.stdout.splitlines()[0], "NAME")
        self.assertIn(name, p.stdout.splitlines())
        p = srv.cairn("tenant", "key", "create", name, json=False)
        ak = re.search(r"^access key id: +(\S+)$", p.stdout, re.M).group(1)
        sk = re.search(r"^secret access key: +(\S+)$", p.stdout, re.M).group(1)
        self.assertEqual(srv.client(ak, sk).list_buckets()["Buckets"], [])

        # Without flags: CAIRN_S3_ENDPOINT and ./var/objectd/s3.credentials.
        cwd = srv.tmp_path("cli-cwd")
        os.makedirs(os.path.join(cwd, "var"))
        os.symlink(srv.data_dir, os.path.join(cwd, "var", "objectd"))
        env = {"CAIRN_S3_ENDPOINT": srv.endpoint, "CAIRN_S3_ACCESS_KEY": "",
               "CAIRN_S3_SECRET_KEY": "", "CAIRN_S3_CREDENTIALS": ""}
        p = run([CAIRN, "--json", "tenant", "list"], env=env, cwd=cwd)
        self.assertIn(name, [t["name"] for t in json.loads(p.stdout)["tenants"]])
        p = run([CAIRN, "objects", "heal", "--status"], env=env, cwd=cwd)
        self.assertIn("drives online:   6", p.stdout)
        p = run([CAIRN, "tenant", "list"], env=env, cwd=srv.tmp, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn("no S3 credentials", p.stderr)

        # The admin API documents 409 AlreadyExists for an existing tenant.
        p = srv.cairn("tenant", "create", name, json=False, check=False)
        self.assertEqual(p.returncode, 1, f"creating tenant {name} twice succeeded: {p.stdout}")
        self.assertIn("AlreadyExists", p.stderr)

    def test_anonymous_access_only_to_public_read_bucket(self):
        anon = self.server.client(anonymous=True)
        private = self.new_bucket("private")
        public = self.new_bucket("public", ACL="public-read")
        data = self.rng.randbytes(20000)
        self.s3.put_object(Bucket=private, Key="k", Body=data)
        self.s3.put_object(Bucket=public, Key="k", Body=data)

        r = anon.get_object(Bucket=public, Key="k")
        assert_bytes_equal(self, r["Body"].read(), data, "anonymous GET of a public object")
        self.assertEqual(anon.head_object(Bucket=public, Key="k")["ContentLength"], len(data))
        self.assertEqual([o["Key"] for o in anon.list_objects_v2(Bucket=public)["Contents"]],
                         ["k"])
        r = anon.get_object(Bucket=public, Key="k", Range="bytes=10-19")
        self.assertEqual(r["Body"].read(), data[10:20])
        # Plain urllib without any signature works too.
        with no_proxy_opener().open(f"{self.server.endpoint}/{public}/k", timeout=30) as r:
            self.assertEqual(r.read(), data)

        for fn in (lambda: anon.get_object(Bucket=private, Key="k"),
                   lambda: anon.list_objects_v2(Bucket=private),
                   lambda: anon.put_object(Bucket=public, Key="anon", Body=b"x"),
                   lambda: anon.delete_object(Bucket=public, Key="k"),
                   lambda: anon.put_object(Bucket=private, Key="anon", Body=b"x"),
                   lambda: anon.create_bucket(Bucket="anon-bucket-x"),
                   lambda: anon.list_buckets()):
            with self.assertRaises(ClientError) as cm:
                fn()
            self.assertEqual(error_code(cm.exception), (403, "AccessDenied"))
        self.assertClientError(lambda: anon.head_object(Bucket=private, Key="k"), 403)
        self.assertClientError(lambda: self.s3.head_object(Bucket=public, Key="anon"), 404)
        self.assertEqual(self.s3.get_object(Bucket=public, Key="k")["Body"].read(), data)

        # Making the bucket private again closes it; PutBucketAcl opens the other.
        self.s3.put_bucket_acl(Bucket=public, ACL="private")
        self.assertClientError(lambda: anon.get_object(Bucket=public, Key="k"), 403,
                               "AccessDenied")
        self.s3.put_bucket_acl(Bucket=private, ACL="public-read")
        self.assertEqual(anon.get_object(Bucket=private, Key="k")["Body"].read(), data)


if __name__ == "__main__":
    s3harness.main()
