#!/usr/bin/env python3
"""Real NBD clients against the server: nbdinfo, qemu-io, nbdcopy, qemu-img, fio, libnbd.

Every test checks the bytes it reads back (through a second client where it can), not
only exit codes.
"""

import json
import os
import struct
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import KiB, MiB, nbd, run  # noqa: E402


def qemu_io(uri, *cmds, check=True, timeout=120):
    args = ["qemu-io", "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    args.append(uri)
    p = run(args, timeout=timeout, check=check)
    if check and ("Pattern verification failed" in p.stdout or "failed:" in p.stdout):
        raise AssertionError(f"qemu-io reported a failure:\n{p.stdout}\n{p.stderr}")
    return p


def pattern(byte, n):
    return bytes([byte]) * n


class NbdClientsTest(harness.ServerTestCase):
    def uri(self, name, unix=False):
        return self.server.unix_uri(name) if unix else self.server.tcp_uri(name)

    def unknown_tcp_uri(self, known, name):
        host, port = self.server.tcp_address(known)
        return f"nbd://{host}:{port}/{name}"

    # ------------------------------------------------------------------ nbdinfo

    def test_nbdinfo_features_and_size(self):
        size = 96 * MiB
        name = self.new_volume(size)
        for unix in (False, True):
            with self.subTest(unix=unix):
                p = run(["nbdinfo", "--json", self.uri(name, unix)], timeout=30)
                info = json.loads(p.stdout)
                self.assertTrue(info["structured"], "structured replies not negotiated")
                exp = info["exports"][0]
                self.assertEqual(exp["export-name"], name)
                self.assertEqual(exp["export-size"], size)
                self.assertIn("base:allocation", exp.get("contexts", []))
                for k, v in self.server.expect_features.items():
                    self.assertEqual(exp.get(k), v, f"nbdinfo {k}")
                p = run(["nbdinfo", "--size", self.uri(name, unix)], timeout=30)
                self.assertEqual(int(p.stdout.strip()), size)

    def test_nbdinfo_list(self):
        a = self.new_volume(16 * MiB, "la")
        b = self.new_volume(32 * MiB, "lb")
        for unix in (False, True):
            with self.subTest(unix=unix):
                if unix:
                    uri = f"nbd+unix:///?socket={self.server.unix_address(a)}"
                else:
                    host, port = self.server.tcp_address(a)
                    uri = f"nbd://{host}:{port}"
                p = run(["nbdinfo", "--list", "--json", uri], timeout=30)
                exports = {e["export-name"]: e for e in json.loads(p.stdout)["exports"]}
                want = {a: 16 * MiB} if self.server.kind == "qemu-nbd" else {a: 16 * MiB, b: 32 * MiB}
                for n, sz in want.items():
                    self.assertIn(n, exports, f"nbdinfo --list lacks {n}: {sorted(exports)}")
                    self.assertEqual(exports[n]["export-size"], sz)

    def test_nbdinfo_map_after_writes_and_trim(self):
        name = self.new_volume(16 * MiB)
        h = harness.nbd_connect(self.uri(name))
        try:
            h.pwrite(pattern(0x01, 1 * MiB), 0)
            h.pwrite(pattern(0x02, 64 * KiB), 4 * MiB)
            h.pwrite(pattern(0x03, 2 * MiB), 8 * MiB)
            h.trim(1 * MiB, 8 * MiB + 512 * KiB)
            h.flush()
            self.assertEqual(h.pread(4 * KiB, 8 * MiB + 512 * KiB - 4 * KiB), pattern(0x03, 4 * KiB))
            self.assertEqual(h.pread(4 * KiB, 9 * MiB + 512 * KiB), pattern(0x03, 4 * KiB))
        finally:
            harness.nbd_close(h)
        p = run(["nbdinfo", "--map", "--json", self.uri(name)], timeout=30)
        extents = json.loads(p.stdout)
        runs = []  # merged (offset, length, is_hole, is_zero)
        for e in extents:
            hole, zero = bool(e["type"] & 1), bool(e["type"] & 2)
            if runs and runs[-1][2] == hole and runs[-1][3] == zero and \
                    runs[-1][0] + runs[-1][1] == e["offset"]:
                runs[-1] = (runs[-1][0], runs[-1][1] + e["length"], hole, zero)
            else:
                runs.append((e["offset"], e["length"], hole, zero))
        want = [(0, 1 * MiB, False, False),
                (1 * MiB, 3 * MiB, True, True),
                (4 * MiB, 64 * KiB, False, False),
                (4 * MiB + 64 * KiB, 4 * MiB - 64 * KiB, True, True),
                (8 * MiB, 512 * KiB, False, False),
                (8 * MiB + 512 * KiB, 1 * MiB, True, True),
                (9 * MiB + 512 * KiB, 512 * KiB, False, False),
                (10 * MiB, 6 * MiB, True, True)]
        fmt = lambda rs: "\n".join(f"  {o:>10} {ln:>10} {'hole' if h else 'data'}{',zero' if z else ''}"
                                   for o, ln, h, z in rs)
        self.assertEqual(runs, want, f"nbdinfo --map runs:\n{fmt(runs)}\nexpected:\n{fmt(want)}")

    def test_unknown_export_refused(self):
        known = self.new_volume(8 * MiB)
        uri = self.unknown_tcp_uri(known, "no-such-volume")
        p = run(["nbdinfo", uri], timeout=30, check=False)
        self.assertNotEqual(p.returncode, 0, f"nbdinfo on unknown export succeeded:\n{p.stdout}")
        p = run(["qemu-io", "-f", "raw", "-c", "read 0 512", uri], timeout=30, check=False)
        self.assertNotEqual(p.returncode, 0, "qemu-io on unknown export succeeded")
        h = nbd.NBD()
        with self.assertRaises(nbd.Error):
            h.connect_uri(uri)
        del h
        # and the server still serves the known one
        self.assertEqual(harness.nbd_read_all(self.uri(known), 4096), bytes(4096))

    # ------------------------------------------------------------------ qemu-io

    def test_qemu_io_patterns(self):
        size = 128 * MiB
        name = self.new_volume(size)
        model = bytearray(size)

        def w(byte, off, ln):
            model[off:off + ln] = pattern(byte, ln)
            return f"write -P {byte:#x} {off} {ln}"

        def r(byte, off, ln):
            self.assertEqual(model[off:off + ln], pattern(byte, ln), "test model")
            return f"read -P {byte:#x} {off} {ln}"

        # aligned
        qemu_io(self.uri(name), w(0xAB, 0, 64 * KiB), r(0xAB, 0, 64 * KiB))
        # unaligned inside the aligned area: qemu does read-modify-write at 512 bytes
        qemu_io(self.uri(name), w(0xCD, 1000, 3000), r(0xCD, 1000, 3000), r(0xAB, 0, 1000),
                r(0xAB, 4000, 64 * KiB - 4000))
        # unaligned straddling a 64 KiB and a 4 KiB boundary, over the unix socket
        qemu_io(self.uri(name, True), w(0x5E, 64 * KiB - 333, 5000), r(0x5E, 64 * KiB - 333, 5000),
                r(0xAB, 0, 1000))
        # 8 MiB requests, one of them unaligned, and a 40 MiB one (split at the 32 MiB max)
        qemu_io(self.uri(name),
                w(0x11, 4 * MiB, 8 * MiB), r(0x11, 4 * MiB, 8 * MiB),
                w(0x22, 12 * MiB + 512, 8 * MiB), r(0x22, 12 * MiB + 512, 8 * MiB),
                r(0x11, 4 * MiB, 8 * MiB), timeout=180)
        qemu_io(self.uri(name, True), w(0x33, 24 * MiB, 40 * MiB), r(0x33, 24 * MiB, 40 * MiB),
                timeout=180)
        # a write at the very end
        qemu_io(self.uri(name), w(0x44, size - 4096, 4096), r(0x44, size - 4096, 4096))
        # independent check with libnbd over the whole volume
        got = harness.nbd_read_all(self.uri(name), size)
        harness.assert_bytes_equal(self, got, bytes(model), "volume after qemu-io writes")

    def test_qemu_io_discard_and_write_zeroes(self):
        size = 16 * MiB
        name = self.new_volume(size)
        qemu_io(self.uri(name), f"write -P 0xee 0 {4 * MiB}")
        qemu_io(self.uri(name),
                "discard 0 256k", "write -z 256k 256k", f"write -z -u {1 * MiB} 64k",
                "read -P 0 0 512k", "read -P 0xee 512k 512k",
                f"read -P 0 {1 * MiB} 64k", f"read -P 0xee {1 * MiB + 64 * KiB} 64k")
        # unaligned write-zeroes and discard of a whole unaligned-ended MiB
        qemu_io(self.uri(name, True), f"write -z {2 * MiB + 1000} 3000",
                f"read -P 0xee {2 * MiB} 1000", f"read -P 0 {2 * MiB + 1000} 3000",
                f"read -P 0xee {2 * MiB + 4000} 96")
        model = bytearray(pattern(0xEE, 4 * MiB) + bytes(size - 4 * MiB))
        model[0:512 * KiB] = bytes(512 * KiB)
        model[1 * MiB:1 * MiB + 64 * KiB] = bytes(64 * KiB)
        model[2 * MiB + 1000:2 * MiB + 4000] = bytes(3000)
        got = harness.nbd_read_all(self.uri(name), size)
        harness.assert_bytes_equal(self, got, bytes(model), "volume after discard/write-zeroes")

    # ------------------------------------------------------------------ libnbd

    def test_multi_conn_flush_visibility(self):
        name = self.new_volume(8 * MiB)
        a = harness.nbd_connect(self.uri(name))
        b = harness.nbd_connect(self.uri(name, True))
        try:
            self.assertTrue(a.can_multi_conn())
            for i in range(16):
                data = harness.pattern_block(f"mc{i}", 64 * KiB)
                (a if i % 2 else b).pwrite(data, i * 64 * KiB,
                                          nbd.CMD_FLAG_FUA if i % 4 == 0 else 0)
                (a if i % 2 else b).flush()
                self.assertEqual((b if i % 2 else a).pread(64 * KiB, i * 64 * KiB), data,
                                 f"write {i} not visible on the other connection after flush")
        finally:
            harness.nbd_close(a)
            harness.nbd_close(b)

    # ------------------------------------------------------------------ nbdcopy / qemu-img

    def _nbdcopy_round_trip(self, unix):
        size = 256 * MiB
        rng, _ = harness.seeded_rng(f"nbdcopy-{'unix' if unix else 'tcp'}")
        name = self.new_volume(size)
        src = self.server.tmp_path(f"src-{name}.img")
        dst = self.server.tmp_path(f"dst-{name}.img")
        try:
            harness.write_random_image(src, size, rng)
            src_sha = harness.sha256_file(src)
            uri = self.uri(name, unix)
            run(["nbdcopy", "--flush", src, uri], timeout=300)
            run(["nbdcopy", uri, dst], timeout=300)
            self.assertEqual(os.path.getsize(dst), size)
            self.assertEqual(harness.sha256_file(dst), src_sha, "image copied out differs from image copied in")
            p = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri], timeout=300,
                    check=False)
            self.assertEqual(p.returncode, 0, f"qemu-img compare: {p.stdout}{p.stderr}")
            self.assertIn("Images are identical", p.stdout)
            # one changed byte must be seen by qemu-img compare (the comparison is real)
            h = harness.nbd_connect(uri)
            try:
                old = h.pread(512, 100 * MiB)
                h.pwrite(bytes([old[0] ^ 0xFF]) + old[1:], 100 * MiB)
            finally:
                harness.nbd_close(h)
            p = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri], timeout=300,
                    check=False)
            self.assertEqual(p.returncode, 1, f"qemu-img compare missed a changed byte: {p.stdout}")
            self.assertIn(f"offset {100 * MiB}", p.stdout)
        finally:
            for f in (src, dst):
                if os.path.exists(f):
                    os.unlink(f)

    def test_nbdcopy_256m_tcp(self):
        self._nbdcopy_round_trip(unix=False)

    def test_nbdcopy_256m_unix(self):
        self._nbdcopy_round_trip(unix=True)

    # ------------------------------------------------------------------ fio

    def test_fio_randrw_verify_4_connections(self):
        jobs, region = 4, 16 * MiB
        name = self.new_volume(jobs * region)
        uri = self.uri(name)
        common = ["fio", "--name=cairn", "--ioengine=nbd", f"--uri={uri}", "--rw=randrw",
                  "--bs=4k", f"--size={region}", f"--offset_increment={region}",
                  f"--numjobs={jobs}", "--iodepth=8", "--verify=crc32c", "--verify_fatal=1",
                  "--randseed=4242", "--verify_state_save=0", "--output-format=json"]
        for phase, extra in (("write+verify", []), ("verify_only", ["--verify_only"])):
            out = self.server.tmp_path(f"fio-{phase}.json")
            p = run(common + extra + [f"--output={out}"], timeout=300, check=False,
                    cwd=self.server.tmp)
            with open(out) as f:
                text = f.read()
            res = json.loads(text[text.index("{"):])
            errs = [(j["jobname"], j["error"]) for j in res["jobs"] if j["error"]]
            verify_lines = [ln for ln in (p.stdout + p.stderr).splitlines() if "verify" in ln.lower()]
            self.assertEqual(p.returncode, 0, f"fio {phase} exit {p.returncode}; job errors {errs};"
                                              f" verify messages: {verify_lines[:10]}")
            self.assertEqual(errs, [], f"fio {phase} job errors")
            self.assertEqual(verify_lines, [], f"fio {phase} verify errors")
            self.assertEqual(len(res["jobs"]), jobs)
            read_bytes = sum(j["read"]["io_bytes"] for j in res["jobs"])
            self.assertGreater(read_bytes, 0, f"fio {phase} read nothing back")
        # Our own look at the bytes: fio's verify headers (magic 0xacca, little-endian)
        # name the block's own offset and length.
        data = harness.nbd_read_all(uri, jobs * region)
        headers = 0
        for off in range(0, len(data), 4096):
            magic, vtype, ln, _seed, hoff = struct.unpack_from("<HHIQQ", data, off)
            if magic == 0xACCA:
                headers += 1
                self.assertEqual((ln, hoff), (4096, off), f"fio block at {off} has a header for "
                                                          f"offset {hoff} length {ln}")
            else:
                self.assertEqual(data[off:off + 4096], bytes(4096),
                                 f"block at {off} is neither a fio block nor zeros")
        harness.log(f"fio left {headers} verified blocks of {len(data) // 4096}")
        self.assertGreater(headers, len(data) // 4096 // 4, "fio wrote fewer blocks than expected")


if __name__ == "__main__":
    harness.main()
