#!/usr/bin/env python3
"""Volume lifecycle through the `cairn` CLI (tables and --json) and the raw HTTP control
API, checked against what NBD clients then see. blockd only (the reference NBD servers
have no control API)."""

import os
import stat
import sys
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import GiB, KiB, MiB, nbd, run  # noqa: E402


def volumes_of(body):
    if isinstance(body, list):
        return body
    if isinstance(body, dict):
        return body.get("volumes", [])
    raise AssertionError(f"unexpected volume list body: {body!r}")


def u64(v, field):
    """protobuf's JSON mapping prints uint64 as a string; absent means 0 (default)."""
    if v is None:
        return 0
    if not isinstance(v, str):
        raise AssertionError(f"{field} should be a JSON string (protobuf uint64 mapping), got {v!r}")
    return int(v)


class CliApiTest(harness.ServerTestCase):
    @classmethod
    def setUpClass(cls):
        if harness.TARGET != "blockd":
            raise unittest.SkipTest("control API tests need blockd")
        super().setUpClass()

    def name(self, prefix="c"):
        harness.ServerTestCase._names += 1
        return f"{prefix}{harness.ServerTestCase._names}-{os.getpid() % 10000}"

    def info(self, name):
        j = self.server.cairn("volume", "info", name)
        self.assertIsInstance(j, dict, f"volume info --json: {j!r}")
        return j

    def assert_cli_error(self, p, what):
        self.assertNotEqual(p.returncode, 0, f"{what}: cairn exited 0\n{p.stdout}")
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        self.assertEqual(len(lines), 1, f"{what}: expected one error line on stderr, got {p.stderr!r}")

    def nbd_size(self, name):
        p = run(["nbdinfo", "--size", self.server.tcp_uri(name)], timeout=30)
        return int(p.stdout.strip())

    # ------------------------------------------------------------------ CLI

    def test_cli_create_info_list_table_and_json(self):
        a, b = self.name(), self.name()
        p = self.server.cairn("volume", "create", a, "--size", "256M", json=False)
        self.assertIn(a, p.stdout, "create (table) does not mention the volume")
        j = self.server.cairn("volume", "create", b, "--size", "1G")
        self.assertEqual(j.get("name"), b, f"create --json: {j}")
        self.assertEqual(u64(j.get("sizeBytes"), "sizeBytes"), 1 * GiB)

        ia = self.info(a)
        self.assertEqual(ia.get("name"), a)
        self.assertEqual(u64(ia.get("sizeBytes"), "sizeBytes"), 256 * MiB)
        self.assertEqual(u64(ia.get("allocatedBytes"), "allocatedBytes"), 0, "a new volume is thin")
        self.assertTrue(ia.get("id"), f"volume has no id: {ia}")
        self.assertIn(a, str(ia.get("nbdExport", "")), f"nbdExport does not name the export: {ia}")
        self.assertEqual(ia.get("attachedConnections", 0), 0)

        p = self.server.cairn("volume", "info", a, json=False)
        self.assertIn(a, p.stdout)
        p = self.server.cairn("volume", "list", json=False)
        rows = [ln for ln in p.stdout.splitlines() if a in ln.split() or b in ln.split()]
        self.assertEqual(len(rows), 2, f"volume list (table) rows for {a}, {b}:\n{p.stdout}")

        vols = {v["name"]: v for v in volumes_of(self.server.cairn("volume", "list"))}
        self.assertIn(a, vols)
        self.assertIn(b, vols)
        self.assertEqual(u64(vols[b].get("sizeBytes"), "sizeBytes"), 1 * GiB)
        self.assertNotEqual(vols[a].get("id"), vols[b].get("id"), "two volumes share an id")

        # what NBD clients see matches
        self.assertEqual(self.nbd_size(a), 256 * MiB)
        self.assertEqual(harness.nbd_read_all(self.server.unix_uri(b), 1 * MiB), bytes(1 * MiB))

    def test_cli_errors(self):
        a = self.name()
        self.server.cairn("volume", "create", a, "--size", "64M")
        cases = [
            ("info of unknown volume", ("volume", "info", "no-such-volume"), {}),
            ("duplicate create", ("volume", "create", a, "--size", "64M"), {}),
            ("bad size", ("volume", "create", self.name(), "--size", "lots"), {}),
            ("zero size", ("volume", "create", self.name(), "--size", "0"), {}),
            ("delete unknown", ("volume", "delete", "no-such-volume"), {}),
            ("wrong token", ("volume", "list"), {"token": "not-the-token"}),
        ]
        for what, args, kw in cases:
            with self.subTest(case=what):
                p = self.server.cairn(*args, json=True, check=False, **kw)
                self.assert_cli_error(p, what)
        self.assertEqual(u64(self.info(a).get("sizeBytes"), "sizeBytes"), 64 * MiB,
                         "failed duplicate create changed the volume")

    def test_cli_resize_grows_and_new_connection_sees_it(self):
        a = self.name()
        self.server.cairn("volume", "create", a, "--size", "256M")
        data = harness.pattern_block("before-resize", 1 * MiB)
        h = harness.nbd_connect(self.server.tcp_uri(a))
        h.pwrite(data, 255 * MiB)
        h.flush()
        harness.nbd_close(h)

        j = self.server.cairn("volume", "resize", a, "--size", "512M")
        if j is not None:
            self.assertEqual(u64(j.get("sizeBytes"), "sizeBytes"), 512 * MiB, f"resize --json: {j}")
        self.assertEqual(u64(self.info(a).get("sizeBytes"), "sizeBytes"), 512 * MiB)
        self.assertEqual(self.nbd_size(a), 512 * MiB, "a new NBD connection sees the old size")

        h = harness.nbd_connect(self.server.unix_uri(a))
        try:
            self.assertEqual(h.get_size(), 512 * MiB)
            self.assertEqual(h.pread(1 * MiB, 255 * MiB), data, "data below the old size changed")
            self.assertEqual(h.pread(1 * MiB, 300 * MiB), bytes(1 * MiB), "grown space is not zero")
            tail = harness.pattern_block("after-resize", 64 * KiB)
            h.pwrite(tail, 512 * MiB - 64 * KiB)
            self.assertEqual(h.pread(64 * KiB, 512 * MiB - 64 * KiB), tail)
        finally:
            harness.nbd_close(h)

        p = self.server.cairn("volume", "resize", "no-such-volume", "--size", "1G", check=False)
        self.assert_cli_error(p, "resize of unknown volume")

    def test_allocated_bytes_follow_writes_and_trim(self):
        a = self.name()
        self.server.cairn("volume", "create", a, "--size", "256M")
        h = harness.nbd_connect(self.server.tcp_uri(a))
        try:
            h.pwrite(harness.pattern_block("alloc", 8 * MiB), 16 * MiB)
            h.flush()

            def allocated():
                return u64(self.info(a).get("allocatedBytes"), "allocatedBytes")

            harness.wait_for(lambda: allocated() >= 8 * MiB, 10, "allocatedBytes >= 8 MiB after writes")
            self.assertLessEqual(allocated(), 16 * MiB, "allocation far above what was written")
            h.trim(8 * MiB, 16 * MiB)
            h.flush()
            harness.wait_for(lambda: allocated() < 1 * MiB, 10, "allocatedBytes to drop after trim")
            self.assertEqual(h.pread(4096, 16 * MiB), bytes(4096), "trimmed space does not read zero")
        finally:
            harness.nbd_close(h)

    def test_delete_refused_while_connected_then_forced(self):
        a = self.name()
        self.server.cairn("volume", "create", a, "--size", "64M")
        secret = harness.pattern_block("secret", 1 * MiB)
        h = harness.nbd_connect(self.server.tcp_uri(a))
        try:
            h.pwrite(secret, 0)
            h.flush()
            self.assertGreaterEqual(self.info(a).get("attachedConnections", 0), 1,
                                    "attachedConnections does not count the open connection")
            p = self.server.cairn("volume", "delete", a, check=False)
            self.assert_cli_error(p, "delete while connected")
            status, body = self.server.http("DELETE", f"/v1/volumes/{a}")
            self.assertTrue(400 <= status < 500 and status not in (401, 404),
                            f"HTTP DELETE while connected: {status} {body}")
            harness.log(f"HTTP DELETE while connected -> {status}")
            self.assertEqual(h.pread(4096, 0), secret[:4096], "refused delete broke the connection")
            self.assertEqual(self.info(a).get("name"), a)

            self.server.cairn("volume", "delete", a, "--force", json=False)

            def connection_dead():
                try:
                    h.pread(4096, 0)
                    return False
                except nbd.Error:
                    return True
            harness.wait_for(connection_dead, 10, "the open connection to fail after forced delete")
        finally:
            harness.nbd_close(h)
        p = self.server.cairn("volume", "info", a, check=False)
        self.assert_cli_error(p, "info after delete")
        self.assertNotIn(a, [v["name"] for v in volumes_of(self.server.cairn("volume", "list"))])
        status, _ = self.server.http("GET", f"/v1/volumes/{a}")
        self.assertEqual(status, 404)
        p = run(["nbdinfo", self.server.tcp_uri(a)], timeout=30, check=False)
        self.assertNotEqual(p.returncode, 0, "deleted volume still exported")

        # a new volume of the same name never reads the old bytes
        self.server.cairn("volume", "create", a, "--size", "64M")
        got = harness.nbd_read_all(self.server.unix_uri(a), 64 * MiB)
        self.assertEqual(got, bytes(64 * MiB), "recreated volume reads data of the deleted one")
        self.server.cairn("volume", "delete", a, json=False)

    # ------------------------------------------------------------------ HTTP

    def test_http_auth(self):
        a = self.name()
        self.server.create_volume(a, 16 * MiB)
        for method, path, body in (("GET", "/v1/volumes", None), ("GET", f"/v1/volumes/{a}", None),
                                   ("POST", "/v1/volumes", {"name": self.name(), "sizeBytes": MiB}),
                                   ("POST", f"/v1/volumes/{a}/resize", {"sizeBytes": 32 * MiB}),
                                   ("DELETE", f"/v1/volumes/{a}", None)):
            for token in (None, "wrong-token"):
                with self.subTest(method=method, path=path, token=token):
                    status, resp = self.server.http(method, path, body, token=token)
                    self.assertEqual(status, 401, f"{method} {path} with token {token!r}: {status} {resp}")
        status, body = self.server.http("GET", f"/v1/volumes/{a}")
        self.assertEqual(status, 200)
        self.assertEqual(u64(body.get("sizeBytes"), "sizeBytes"), 16 * MiB, "unauthorized resize applied")

    def test_admin_token_file_is_private(self):
        mode = os.stat(self.server.endpoints["token_file"]).st_mode
        self.assertEqual(mode & 0o077, 0, f"admin.token is readable by others: {stat.filemode(mode)}")

    def test_http_lifecycle_and_status_codes(self):
        a = self.name()
        status, body = self.server.http("POST", "/v1/volumes", {"name": a, "sizeBytes": str(128 * MiB)})
        self.assertIn(status, (200, 201), f"create with string sizeBytes: {status} {body}")
        self.assertEqual(body.get("name"), a)
        self.assertEqual(u64(body.get("sizeBytes"), "sizeBytes"), 128 * MiB)

        status, body = self.server.http("POST", "/v1/volumes", {"name": a, "sizeBytes": 64 * MiB})
        self.assertEqual(status, 409, f"duplicate create: {status} {body}")

        status, body = self.server.http("GET", "/v1/volumes")
        self.assertEqual(status, 200)
        self.assertIn(a, [v["name"] for v in volumes_of(body)])

        status, body = self.server.http("GET", f"/v1/volumes/{a}")
        self.assertEqual(status, 200)
        cli = self.info(a)
        for k in ("name", "id", "sizeBytes"):
            self.assertEqual(body.get(k), cli.get(k), f"HTTP and CLI disagree on {k}")

        for path in ("/v1/volumes/no-such-volume",):
            for method in ("GET", "DELETE"):
                status, body = self.server.http(method, path)
                self.assertEqual(status, 404, f"{method} {path}: {status} {body}")
        status, body = self.server.http("POST", "/v1/volumes/no-such-volume/resize", {"sizeBytes": MiB})
        self.assertEqual(status, 404, f"resize unknown: {status} {body}")

        status, body = self.server.http("POST", f"/v1/volumes/{a}/resize", {"sizeBytes": 256 * MiB})
        self.assertEqual(status, 200, f"resize: {status} {body}")
        self.assertEqual(self.nbd_size(a), 256 * MiB)
        # only growth is allowed (volume.proto): a shrink is refused and changes nothing
        status, body = self.server.http("POST", f"/v1/volumes/{a}/resize", {"sizeBytes": 64 * MiB})
        self.assertTrue(400 <= status < 500 and status not in (401, 404), f"shrink: {status} {body}")
        p = self.server.cairn("volume", "resize", a, "--size", "64M", check=False)
        self.assert_cli_error(p, "shrink via CLI")
        self.assertEqual(self.nbd_size(a), 256 * MiB, "refused shrink changed the size")

        status, body = self.server.http("DELETE", f"/v1/volumes/{a}")
        self.assertIn(status, (200, 204), f"delete: {status} {body}")
        status, body = self.server.http("GET", f"/v1/volumes/{a}")
        self.assertEqual(status, 404)

    def test_http_bad_requests(self):
        good = self.name()
        bad_sizes = [0, -1, "abc", 1.5, None, "", 1 << 70]
        for size in bad_sizes:
            with self.subTest(size=size):
                body = {"name": self.name()}
                if size is not None:
                    body["sizeBytes"] = size
                status, resp = self.server.http("POST", "/v1/volumes", body)
                self.assertEqual(status, 400, f"create with sizeBytes={size!r}: {status} {resp}")
        for name in ("", "a/b", "../etc", "bad name", "x" * 300, "nul\0byte", "volume@snap"):
            with self.subTest(name=name):
                status, resp = self.server.http("POST", "/v1/volumes", {"name": name, "sizeBytes": MiB})
                self.assertEqual(status, 400, f"create with name {name!r}: {status} {resp}")
        for raw in (b"{", b"not json", b"[]", b'{"name": 5, "sizeBytes": 1048576}'):
            with self.subTest(body=raw):
                status, resp = self.server.http("POST", "/v1/volumes", raw)
                self.assertEqual(status, 400, f"create with body {raw!r}: {status} {resp}")
        # a size that is not a multiple of 512: refused, or rounded up to one
        status, resp = self.server.http("POST", "/v1/volumes", {"name": good, "sizeBytes": 1000})
        if status in (200, 201):
            sz = u64(resp.get("sizeBytes"), "sizeBytes")
            self.assertTrue(sz >= 1000 and sz % 512 == 0, f"size 1000 became {sz}")
            self.assertEqual(self.nbd_size(good), sz)
        else:
            self.assertEqual(status, 400, f"create with sizeBytes=1000: {status} {resp}")
        # nothing of the above left a volume behind
        status, body = self.server.http("GET", "/v1/volumes")
        names = [v["name"] for v in volumes_of(body)]
        self.assertFalse([n for n in names if n in ("a/b", "../etc", "bad name", "")],
                         f"bad names were created: {names}")


if __name__ == "__main__":
    harness.main()
