#!/usr/bin/env python3
"""objectd against bad input: every bad request gets a clear S3 error (or a closed
connection), the daemon stays up (a normal PUT/GET round trip works after each case), and
nothing partial becomes visible.

Signatures: wrong secret, unknown key, tampered, malformed, SigV2, skewed clock, payload
hash mismatch; presigned URLs expired or with a bad expiry. Bodies: malformed XML to
CompleteMultipartUpload and DeleteObjects (incl. an entity-expansion document). Names:
invalid bucket names; keys with `../`, `%00`, 1025 bytes, control and non-UTF-8 bytes (and
nothing appears outside the data dir). Transport: oversized header sections and request
lines, garbage request lines, a truncated body (Content-Length larger than what was sent,
then close), and slow clients that send nothing or stop halfway (the server closes them
after its 60 s idle timeout while serving others).

Requests that boto3 would refuse to send are made with botocore's SigV4 signer and
http.client or raw sockets (s3harness.raw_signed_request / sign_headers).
"""

import contextlib
import hashlib
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import s3harness
from harness import MiB, log, seeded_rng, wait_for
from s3harness import ObjectdTestCase, http_request, sign_headers, xml_code

IDLE_TIMEOUT_S = 60          # docs/S3_API.md, "Limits and timeouts"
IDLE_CLOSE_GRACE_S = 30      # how much later than that the close may come


def quote_key(key):
    """A key as a client puts it in the path (S3 URI encoding, '/' kept)."""
    if isinstance(key, str):
        key = key.encode("utf-8")
    return urllib.parse.quote_from_bytes(key, safe="/~")


def recv_all(sock, timeout_s):
    """Everything the server sends until it closes (b'' + closed=True) or timeout_s of
    silence (closed=False)."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except socket.timeout:
        return data, False
    except (ConnectionResetError, BrokenPipeError):
        return data, True


def status_of(raw):
    if not raw.startswith(b"HTTP/1.1 "):
        return None
    return int(raw[9:12])


class BadInput(ObjectdTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        srv = cls.server
        cls.bucket = "badinput"
        srv.client().create_bucket(Bucket=cls.bucket)
        cls.tmp_entries = sorted(os.listdir(srv.tmp))
        # Slow clients, opened first so that their idle timeout runs while the other tests
        # do: one sends nothing, one stops inside the header section, one stops inside a
        # signed PUT body. test_zz_slow_clients checks that the server closed them.
        cls.slow = {}
        cls.slow_opened = time.monotonic()
        s = socket.create_connection(("127.0.0.1", srv.port))
        cls.slow["silent"] = s
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(f"GET /{cls.bucket} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ".encode())
        cls.slow["half-header"] = s
        body = b"s" * (2 * MiB)
        headers = sign_headers(srv.endpoint, "PUT", f"/{cls.bucket}/slow-body", body,
                               {"Content-Length": str(len(body))}, srv.access_key,
                               srv.secret_key)
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(raw_head("PUT", f"/{cls.bucket}/slow-body", srv.port, headers) + body[:50000])
        cls.slow["half-body"] = s

    @classmethod
    def tearDownClass(cls):
        for s in cls.slow.values():
            s.close()
        super().tearDownClass()

    def setUp(self):
        self.s3 = self.server.client()
        self.rng, _ = seeded_rng(self.id().rsplit(".", 1)[-1])

    def tearDown(self):
        super().tearDown()
        if not self._test_failed():
            self.server.assert_healthy(self, self.bucket)

    def assert_s3_error(self, resp, status, codes, what):
        got_status, _, body = resp
        code = xml_code(body)
        if isinstance(codes, str):
            codes = (codes,)
        self.assertEqual(got_status, status, f"{what}: {body[:300]!r}")
        self.assertIn(code, codes, f"{what}: {body[:300]!r}")
        self.assertIn(b"<RequestId>", body, what)

    def temp_files(self):
        out = set()
        for i in range(6):
            tmp = os.path.join(self.server.data_dir, f"drive{i}", "tmp")
            out |= {f"drive{i}/{n}" for n in os.listdir(tmp)}
        return out

    def assert_not_visible(self, key, what):
        self.assertClientError(lambda: self.s3.head_object(Bucket=self.bucket, Key=key), 404,
                               msg=what)
        listed = [o["Key"] for o in
                  self.s3.list_objects_v2(Bucket=self.bucket, Prefix=key).get("Contents", [])]
        self.assertNotIn(key, listed, what)

    # ------------------------------------------------------------------ authentication

    def test_bad_signatures(self):
        srv = self.server
        b = self.bucket
        wrong = srv.client(srv.access_key, srv.secret_key[:-1] + "x")
        self.assertClientError(lambda: wrong.put_object(Bucket=b, Key="sig", Body=b"x"), 403,
                               "SignatureDoesNotMatch")
        self.assertClientError(lambda: wrong.list_buckets(), 403, "SignatureDoesNotMatch")
        unknown = srv.client("AKUNKNOWN00000000000", "s" * 40)
        self.assertClientError(lambda: unknown.get_object(Bucket=b, Key="sig"), 403,
                               "InvalidAccessKeyId")
        self.assert_not_visible("sig", "PUT with a wrong signature")

        # Tampered after signing: a header value, the path, the signature itself.
        body = b"payload"
        h = sign_headers(srv.endpoint, "PUT", f"/{b}/tamper", body,
                         {"Content-Type": "text/plain"}, srv.access_key, srv.secret_key)
        t = dict(h, **{"Content-Type": "text/html"})
        self.assert_s3_error(http_request(srv.endpoint, "PUT", f"/{b}/tamper", body, t), 403,
                             "SignatureDoesNotMatch", "tampered signed header")
        self.assert_s3_error(http_request(srv.endpoint, "PUT", f"/{b}/tampe2", body, h), 403,
                             "SignatureDoesNotMatch", "tampered path")
        auth = h["Authorization"]
        t = dict(h, Authorization=auth[:-4] + ("0000" if not auth.endswith("0000") else "1111"))
        self.assert_s3_error(http_request(srv.endpoint, "PUT", f"/{b}/tamper", body, t), 403,
                             "SignatureDoesNotMatch", "tampered signature")
        # The body does not match the signed x-amz-content-sha256.
        self.assert_s3_error(http_request(srv.endpoint, "PUT", f"/{b}/tamper", b"payloaX", h),
                             400, "XAmzContentSHA256Mismatch", "body changed after signing")
        self.assert_not_visible("tamper", "tampered PUTs")

        # Malformed and unsupported Authorization headers.
        for value, codes in [
                ("AWS4-HMAC-SHA256 garbage", ("AuthorizationHeaderMalformed",)),
                ("AWS4-HMAC-SHA256 Credential=AK/20200101/us-east-1/s3/aws4_request, "
                 "SignedHeaders=host, Signature=zz", ("AuthorizationHeaderMalformed",
                                                      "InvalidArgument")),
                (f"AWS {srv.access_key}:c2lnbmF0dXJl", ("InvalidRequest",)),
                ("Bearer token", ("AuthorizationHeaderMalformed", "InvalidArgument",
                                  "InvalidRequest", "AccessDenied"))]:
            resp = http_request(srv.endpoint, "GET", f"/{b}", headers={
                "Authorization": value, "x-amz-date": time.strftime("%Y%m%dT%H%M%SZ",
                                                                    time.gmtime()),
                "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
            self.assertIn(resp[0], (400, 403), f"{value}: {resp[2][:300]!r}")
            self.assertIn(xml_code(resp[2]), codes, f"{value}: {resp[2][:300]!r}")

        # A request signed 20 minutes ago (clock skew over 15 minutes).
        import botocore.auth
        real_time = botocore.auth.datetime.datetime
        skewed = real_time.utcnow() - __import__("datetime").timedelta(minutes=20)

        class Past(real_time):
            @classmethod
            def utcnow(cls):
                return skewed
        botocore.auth.datetime.datetime = Past
        try:
            h = sign_headers(srv.endpoint, "GET", f"/{b}", b"", None, srv.access_key,
                             srv.secret_key)
        finally:
            botocore.auth.datetime.datetime = real_time
        self.assert_s3_error(http_request(srv.endpoint, "GET", f"/{b}", b"", h), 403,
                             "RequestTimeTooSkewed", "request signed 20 minutes ago")

    def test_presigned_urls_expired_or_malformed(self):
        b = self.bucket
        self.s3.put_object(Bucket=b, Key="pre", Body=b"presigned")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        short = self.s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "pre"},
                                               ExpiresIn=1)
        good = self.s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "pre"},
                                              ExpiresIn=600)
        with opener.open(good, timeout=30) as r:
            self.assertEqual(r.read(), b"presigned")
        time.sleep(2.1)
        with self.assertRaises(urllib.error.HTTPError) as cm:
            opener.open(short, timeout=30)
        self.assertEqual(cm.exception.code, 403)
        text = cm.exception.read()
        self.assertEqual(xml_code(text), "AccessDenied")
        self.assertIn(b"expired", text)
        for old, new, codes in [("X-Amz-Expires=600", "X-Amz-Expires=604801",
                                 ("AuthorizationQueryParametersError",)),
                                ("X-Amz-Expires=600", "X-Amz-Expires=abc",
                                 ("AuthorizationQueryParametersError",)),
                                ("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=MD5",
                                 ("AuthorizationQueryParametersError", "InvalidRequest",
                                  "NotImplemented")),
                                ("X-Amz-Expires=600", "X-Amz-Expires=601",
                                 ("SignatureDoesNotMatch",))]:
            self.assertIn(old, good)
            url = good.replace(old, new)
            with self.assertRaises(urllib.error.HTTPError, msg=new) as cm:
                opener.open(url, timeout=30)
            self.assertIn(cm.exception.code, (400, 403, 501), new)
            self.assertIn(xml_code(cm.exception.read()), codes, new)

    # ------------------------------------------------------------------ XML bodies

    def test_malformed_xml_bodies(self):
        srv, b = self.server, self.bucket
        part = self.rng.randbytes(1000)
        up = self.s3.create_multipart_upload(Bucket=b, Key="mpx")
        uid = up["UploadId"]
        etag = self.s3.upload_part(Bucket=b, Key="mpx", UploadId=uid, PartNumber=1,
                                   Body=part)["ETag"]
        bomb = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "' + b"A" * 1000 + b'">' +
                b"".join(b'<!ENTITY a%d "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">' % i
                         for i in range(8)) +
                b']><CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&a7;'
                b'</ETag></Part></CompleteMultipartUpload>')
        bodies = [b"", b"not xml at all", b"<CompleteMultipartUpload>",
                  b"<CompleteMultipartUpload></CompleteMultipartUpload>",
                  b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber>",
                  b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>" +
                  etag.encode() + b"</ETag></Part></CompleteMultipartUpload>",
                  b"<Wrong><Part><PartNumber>1</PartNumber></Part></Wrong>",
                  b"\xff\xfe<\x00C\x00", bomb]
        path = f"/{b}/mpx?uploadId={urllib.parse.quote(uid, safe='')}"
        for body in bodies:
            with self.subTest(complete_body=body[:60]):
                resp = srv.signed("POST", path, body)
                self.assertEqual(resp[0], 400, f"{body[:60]!r}: {resp[2][:300]!r}")
                self.assertIn(xml_code(resp[2]), ("MalformedXML", "InvalidPart",
                                                  "InvalidArgument", "InvalidRequest"))
        self.assert_not_visible("mpx", "after malformed completes")
        parts = self.s3.list_parts(Bucket=b, Key="mpx", UploadId=uid)["Parts"]
        self.assertEqual([p["PartNumber"] for p in parts], [1], "the upload was damaged")
        # A well-formed complete still works afterwards.
        self.s3.complete_multipart_upload(Bucket=b, Key="mpx", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": etag}]})
        self.assertEqual(self.s3.get_object(Bucket=b, Key="mpx")["Body"].read(), part)

        # A document whose end tag does not match must not complete the upload.
        up2 = self.s3.create_multipart_upload(Bucket=b, Key="mpx2")
        etag2 = self.s3.upload_part(Bucket=b, Key="mpx2", UploadId=up2["UploadId"],
                                    PartNumber=1, Body=part)["ETag"]
        for body in (b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>" +
                     etag2.encode() + b"</ETag></Part></Wrong>",
                     b"<CompleteMultipartUpload><Part><PartNumber>1</Wrong><ETag>" +
                     etag2.encode() + b"</ETag></Part></CompleteMultipartUpload>"):
            with self.subTest(complete_body=body[:60]):
                resp = srv.signed("POST", f"/{b}/mpx2?uploadId=" +
                                  urllib.parse.quote(up2["UploadId"], safe=""), body)
                self.assert_s3_error(resp, 400, "MalformedXML", f"{body!r}")
        with self.subTest("mismatched end tag completed the upload"):
            self.assert_not_visible("mpx2", "after a mismatched-tag complete")
        with contextlib.suppress(s3harness.ClientError):
            self.s3.abort_multipart_upload(Bucket=b, Key="mpx2", UploadId=up2["UploadId"])
        self.s3.delete_object(Bucket=b, Key="mpx2")

        keep = [f"keep/{i}" for i in range(3)]
        for k in keep:
            self.s3.put_object(Bucket=b, Key=k, Body=k.encode())
        delete_bodies = [b"", b"garbage", b"<Delete>",
                         b"<Delete><Object><Key>keep/0</Key></Object>",
                         b"<Delete><Object><Key>keep/0</Key></Object></Wrong>",
                         b"<Delete><Object><Key>keep/0</Wrong></Object></Delete>",
                         b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>",
                         bomb.replace(b"CompleteMultipartUpload", b"Delete")]
        for body in delete_bodies:
            with self.subTest(delete_body=body[:60]):
                resp = srv.signed("POST", f"/{b}?delete", body,
                                  headers={"Content-MD5": b64md5(body)})
                self.assertEqual(resp[0], 400, f"{body[:60]!r}: {resp[2][:300]!r}")
                self.assertIn(xml_code(resp[2]), ("MalformedXML", "InvalidArgument",
                                                  "InvalidRequest"))
        # A wrong Content-MD5 is refused too.
        good = b"<Delete><Object><Key>keep/0</Key></Object></Delete>"
        resp = srv.signed("POST", f"/{b}?delete", good, headers={"Content-MD5": b64md5(b"x")})
        self.assert_s3_error(resp, 400, ("BadDigest", "InvalidDigest"), "DeleteObjects bad MD5")
        for k in keep:
            self.assertEqual(self.s3.get_object(Bucket=b, Key=k)["Body"].read(), k.encode())

    # ------------------------------------------------------------------ names

    def test_invalid_bucket_names(self):
        srv = self.server
        names = ["ab", "a" * 64, "UPPER", "under_score", "-lead", "trail-", "a..b",
                 "192.168.0.1", ".dot", "dot.", "sp ace", "a/b"]
        for name in names:
            resp = srv.signed("PUT", "/" + quote_key(name))
            if name == "a/b":  # a key in bucket "a": a missing (and invalid) bucket
                self.assertIn(resp[0], (400, 404), resp[2][:300])
                continue
            self.assert_s3_error(resp, 400, "InvalidBucketName", f"bucket {name!r}")
        listed = [x["Name"] for x in self.s3.list_buckets()["Buckets"]]
        self.assertEqual(listed, sorted(listed))
        for name in names:
            self.assertNotIn(name, listed)
        self.assertClientError(lambda: self.s3.create_bucket(Bucket="ab"), 400,
                               "InvalidBucketName")

    def test_odd_keys_stay_inside_the_data_dir(self):
        srv, b = self.server, self.bucket
        odd = ["../escape", "../../../../../../tmp/cairn-escape", "..", ".", "./dot",
               "a/./b", "a/../b", "..\\..\\cairnwin", "//double//slash//", "trailing/",
               "sp ace & amp?q=1#frag", "\x01\x02\x1f\x7f", "caf\u00e9/\u65e5\u672c/\u043a",
               "percent%2F%00literal", "k" * 1024, "tab\there", "new\nline"]
        stored = {}
        for i, key in enumerate(odd):
            data = f"{i}:{key}".encode("utf-8", "surrogateescape")
            resp = srv.signed("PUT", f"/{b}/" + quote_key(key), data)
            self.assertEqual(resp[0], 200, f"PUT {key!r}: {resp[2][:300]!r}")
            stored[key] = data
        # A key that is not UTF-8 is not one an SDK can list; objectd stores it byte for byte
        # or refuses it with a 400. Either way nothing leaks.
        raw_key = b"bin\xff\xfe\x80"
        resp = srv.signed("PUT", f"/{b}/" + quote_key(raw_key), b"binary key")
        self.assertIn(resp[0], (200, 400), resp[2][:300])
        if resp[0] == 200:
            back = srv.signed("GET", f"/{b}/" + quote_key(raw_key))
            self.assertEqual(back[2], b"binary key")
            srv.signed("DELETE", f"/{b}/" + quote_key(raw_key))

        for key, data in stored.items():
            resp = srv.signed("GET", f"/{b}/" + quote_key(key))
            self.assertEqual((resp[0], resp[2]), (200, data), f"GET {key!r}")
            got = self.s3.get_object(Bucket=b, Key=key)["Body"].read()
            self.assertEqual(got, data, f"boto3 GET {key!r}")
        listed = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=b):
            listed += [o["Key"] for o in page.get("Contents", [])]
        for key in stored:
            self.assertIn(key, listed, f"{key!r} not listed as stored")

        # Refused keys: NUL, over 1024 bytes.
        for key, code in [("a\x00b", ("InvalidArgument", "InvalidRequest", "KeyTooLongError")),
                          ("k" * 1025, ("KeyTooLongError",))]:
            resp = srv.signed("PUT", f"/{b}/" + quote_key(key), b"x")
            self.assert_s3_error(resp, 400, code, f"PUT {key[:20]!r}")
        self.assertClientError(lambda: self.s3.put_object(Bucket=b, Key="k" * 1025, Body=b"x"),
                               400, "KeyTooLongError")
        self.assertFalse([k for k in listed if "\x00" in k or len(k.encode()) > 1024])

        # Nothing outside the data dir: the test dir holds what it held, objectd's working
        # dir is empty, no file anywhere is named after a key, /tmp has no escapee.
        self.assertEqual(sorted(os.listdir(srv.tmp)), self.tmp_entries)
        self.assertEqual(os.listdir(srv.cwd), [])
        self.assertEqual(sorted(os.listdir(srv.data_dir)),
                         sorted(["index", "s3.credentials"] +
                                [f"drive{i}" for i in range(6)]))
        for root, dirs, files in os.walk(srv.tmp):
            for name in dirs + files:
                self.assertNotIn("escape", name, os.path.join(root, name))
                self.assertNotIn("cairnwin", name, os.path.join(root, name))
        for p in ("/tmp/cairn-escape", os.path.join(os.path.dirname(srv.tmp), "escape"),
                  os.path.join(os.path.dirname(srv.data_dir), "escape")):
            self.assertFalse(os.path.exists(p), p)
        for key in stored:
            self.s3.delete_object(Bucket=b, Key=key)

    # ------------------------------------------------------------------ transport

    def test_oversized_and_garbage_requests(self):
        srv = self.server
        port = srv.port
        cases = {
            "20 KiB header": (f"GET /{self.bucket} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              f"X-Big: {'a' * 20000}\r\n\r\n").encode(),
            "2000 headers": (f"GET /{self.bucket} HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
                             "".join(f"X-H{i}: v\r\n" for i in range(2000)) + "\r\n").encode(),
            "20 KiB request line": (f"GET /{self.bucket}/{'k' * 20000} HTTP/1.1\r\n"
                                    "Host: 127.0.0.1\r\n\r\n").encode(),
            "garbage": b"HELLO THERE\r\n\r\n",
            "binary": bytes(range(256)) * 4,
            "bad version": b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
            "bad content-length": (f"PUT /{self.bucket}/cl HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                   "Content-Length: -5\r\n\r\n").encode(),
            "two content-lengths": (f"PUT /{self.bucket}/cl HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                    "Content-Length: 5\r\nContent-Length: 7\r\n\r\nabcde").encode(),
            "bad chunked": (f"PUT /{self.bucket}/ch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n").encode(),
        }
        for what, raw in cases.items():
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            try:
                try:
                    s.sendall(raw)
                except (ConnectionResetError, BrokenPipeError):
                    pass  # the server already gave up on us: fine
                data, closed = recv_all(s, 20)
            finally:
                s.close()
            st = status_of(data)
            log(f"{what}: status {st}, closed={closed}, {data[:80]!r}")
            self.assertTrue(st is None or 400 <= st < 600, f"{what}: {data[:300]!r}")
            self.assertTrue(closed or st is not None, f"{what}: neither an answer nor a close")
            if st == 431:
                self.assertIn(b"<Code>RequestHeaderSectionTooLarge</Code>", data, what)
            self.assertTrue(srv.alive(), f"objectd died on {what}")
            self.assertEqual(srv.healthz()[0], 200, f"after {what}")
        for key in ("cl", "ch"):
            self.assert_not_visible(key, "after malformed framing")

    def test_truncated_body_is_not_stored(self):
        srv, b = self.server, self.bucket
        before = self.temp_files()
        body = self.rng.randbytes(2 * MiB)
        up = self.s3.create_multipart_upload(Bucket=b, Key="trunc-mp")
        uid = up["UploadId"]
        targets = [("PUT", f"/{b}/trunc", "trunc"),
                   ("PUT", f"/{b}/trunc-mp?partNumber=1&uploadId={urllib.parse.quote(uid)}",
                    None)]
        for method, path, key in targets:
            for sent in (0, 1000, MiB + 7):
                headers = sign_headers(srv.endpoint, method, path, body,
                                       {"Content-Length": str(len(body))}, srv.access_key,
                                       srv.secret_key)
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
                try:
                    s.sendall(raw_head(method, path, srv.port, headers) + body[:sent])
                    s.shutdown(socket.SHUT_WR)  # the client is gone
                    data, closed = recv_all(s, 30)
                finally:
                    s.close()
                st = status_of(data)
                log(f"{path} after {sent} of {len(body)} bytes: status {st}, {data[:60]!r}")
                self.assertTrue(closed, "the server kept a truncated request's connection")
                self.assertTrue(st is None or st == 400, data[:300])
                if st == 400:
                    self.assertIn(xml_code(data[data.find(b"\r\n\r\n"):]),
                                  ("IncompleteBody", "BadRequest", "InvalidRequest"))
                if key:
                    self.assert_not_visible(key, f"after a truncated PUT ({sent} bytes)")
        parts = self.s3.list_parts(Bucket=b, Key="trunc-mp", UploadId=uid).get("Parts", [])
        self.assertEqual(parts, [], "a truncated part was stored")
        self.s3.abort_multipart_upload(Bucket=b, Key="trunc-mp", UploadId=uid)
        # No temp files stay behind once the writers are gone (the stalled PUT of
        # test_zz_slow_clients still holds its own until the server drops it).
        wait_for(lambda: self.temp_files() == before, 10,
                 "the temp files of the truncated writes to go")

    def test_zz_slow_clients_are_disconnected(self):
        """Runs last: the connections opened in setUpClass have been idle meanwhile."""
        srv = self.server
        # The server keeps serving while they hang.
        self.s3.put_object(Bucket=self.bucket, Key="while-slow", Body=b"fine")
        self.assertEqual(self.s3.get_object(Bucket=self.bucket, Key="while-slow")["Body"].read(),
                         b"fine")
        deadline = self.slow_opened + IDLE_TIMEOUT_S + IDLE_CLOSE_GRACE_S
        for what, s in self.slow.items():
            left = max(1.0, deadline - time.monotonic())
            data, closed = recv_all(s, left)
            took = time.monotonic() - self.slow_opened
            log(f"slow client {what}: closed={closed} after {took:.0f} s, {data[:80]!r}")
            self.assertTrue(closed, f"slow client {what} still connected after {took:.0f} s")
            st = status_of(data)
            self.assertTrue(st is None or 400 <= st < 600, data[:300])
        self.assert_not_visible("slow-body", "after a stalled PUT body")
        wait_for(lambda: self.temp_files() == set(), 10,
                 "the temp files of the stalled PUT to go")
        self.assertTrue(srv.alive())


def raw_head(method, path, port, headers):
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def b64md5(body):
    import base64
    return base64.b64encode(hashlib.md5(body).digest()).decode()


if __name__ == "__main__":
    s3harness.main()
