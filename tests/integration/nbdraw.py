"""A small, deliberately literal NBD client for protocol tests (fixed newstyle handshake,
options, simple and structured replies), following NetworkBlockDevice/nbd doc/proto.md.
It sends exactly the bytes a test asks for, including wrong ones; libnbd would refuse to.
"""

import socket
import struct
import time

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# handshake flags
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

# options
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

# option replies
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_PLATFORM = (1 << 31) + 4
REP_ERR_TLS_REQD = (1 << 31) + 5
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_SHUTDOWN = (1 << 31) + 7
REP_ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
REP_ERR_TOO_BIG = (1 << 31) + 9

REP_NAMES = {v: k for k, v in globals().items() if k.startswith("REP_")}

# NBD_INFO_*
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# transmission flags
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_CACHE = 1 << 10
TF_SEND_FAST_ZERO = 1 << 11

# commands
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

# structured reply chunk types
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

# errors
EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN = 1, 5, 12, 22, 28, 75, 95, 108


class Closed(Exception):
    """The server closed the connection."""


class ProtocolError(Exception):
    """The server sent something the spec does not allow."""


class Reply:
    def __init__(self, handle):
        self.handle = handle
        self.error = 0
        self.message = b""
        self.data = None
        self.simple = None
        self.chunks = []
        self.extents = {}  # context id -> [(length, flags)]

    def __repr__(self):
        return (f"Reply(handle={self.handle}, error={self.error}, message={self.message!r}, "
                f"simple={self.simple}, data_len={None if self.data is None else len(self.data)})")


class RawNbd:
    def __init__(self, sock, timeout_s=30):
        self.sock = sock
        self.sock.settimeout(timeout_s)
        self.handshake_flags = None
        self.structured = False
        self.pending = {}
        self.next_handle = 1
        self.export = None
        self.export_size = None
        self.tflags = None
        self.block_sizes = None
        self.no_zeroes = False

    # ---- connecting
    @classmethod
    def tcp(cls, address, timeout_s=30):
        s = socket.create_connection(address, timeout=timeout_s)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(s, timeout_s)

    @classmethod
    def unix(cls, path, timeout_s=30):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout_s)
        s.connect(path)
        return cls(s, timeout_s)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # ---- bytes
    def send(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed(str(e)) from None

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            except ConnectionResetError as e:
                raise Closed(str(e)) from None
            if not chunk:
                raise Closed(f"EOF after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def closed_by_server(self, timeout_s=5):
        """True if the server closes the connection within timeout_s (any data it still
        sends is drained)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not chunk:
                return True
        return False

    # ---- handshake
    def greeting(self):
        magic, opt_magic, hflags = struct.unpack(">QQH", self.recv_exact(18))
        if magic != NBDMAGIC or opt_magic != IHAVEOPT:
            raise ProtocolError(f"bad greeting magic {magic:#x} {opt_magic:#x}")
        self.handshake_flags = hflags
        return hflags

    def handshake(self, client_flags=None):
        hflags = self.greeting()
        if client_flags is None:
            client_flags = FLAG_C_FIXED_NEWSTYLE
            if hflags & FLAG_NO_ZEROES:
                client_flags |= FLAG_C_NO_ZEROES
        self.no_zeroes = bool(client_flags & FLAG_C_NO_ZEROES)
        self.send(struct.pack(">I", client_flags))
        return hflags

    def send_option(self, opt, data=b"", magic=IHAVEOPT, length=None):
        if length is None:
            length = len(data)
        self.send(struct.pack(">QII", magic, opt, length) + data)

    def recv_option_reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        if magic != REPLY_MAGIC:
            raise ProtocolError(f"bad option reply magic {magic:#x}")
        if length > 64 << 20:
            raise ProtocolError(f"option reply length {length} too large")
        data = self.recv_exact(length) if length else b""
        return opt, rtype, data

    def option(self, opt, data=b""):
        """Sends one option; returns the list of (reply type, data) up to and including
        the final reply (ACK or an error)."""
        self.send_option(opt, data)
        replies = []
        while True:
            ropt, rtype, rdata = self.recv_option_reply()
            if ropt != opt:
                raise ProtocolError(f"reply for option {ropt}, expected {opt}")
            replies.append((rtype, rdata))
            if rtype not in (REP_SERVER, REP_INFO, REP_META_CONTEXT):
                return replies

    def opt_list(self):
        replies = self.option(OPT_LIST)
        final = replies[-1][0]
        if final != REP_ACK:
            raise ProtocolError(f"NBD_OPT_LIST ended with {REP_NAMES.get(final, final)}")
        names = []
        for rtype, data in replies[:-1]:
            if rtype == REP_SERVER:
                (n,) = struct.unpack(">I", data[:4])
                names.append(data[4:4 + n].decode())
        return names

    def opt_structured_reply(self):
        replies = self.option(OPT_STRUCTURED_REPLY)
        if replies[-1][0] == REP_ACK:
            self.structured = True
        return replies[-1][0]

    def opt_set_meta_context(self, export, queries):
        data = struct.pack(">I", len(export.encode())) + export.encode()
        data += struct.pack(">I", len(queries))
        for q in queries:
            data += struct.pack(">I", len(q.encode())) + q.encode()
        replies = self.option(OPT_SET_META_CONTEXT, data)
        contexts = {}
        for rtype, rdata in replies[:-1]:
            if rtype == REP_META_CONTEXT:
                (cid,) = struct.unpack(">I", rdata[:4])
                contexts[cid] = rdata[4:].decode()
        return replies[-1][0], contexts

    def opt_info_or_go(self, opt, export, info_requests=(INFO_BLOCK_SIZE,)):
        name = export.encode()
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", len(info_requests))
        for r in info_requests:
            data += struct.pack(">H", r)
        replies = self.option(opt, data)
        info = {"final": replies[-1][0], "final_data": replies[-1][1]}
        for rtype, rdata in replies[:-1]:
            if rtype != REP_INFO:
                continue
            (itype,) = struct.unpack(">H", rdata[:2])
            if itype == INFO_EXPORT:
                info["size"], info["flags"] = struct.unpack(">QH", rdata[2:12])
            elif itype == INFO_BLOCK_SIZE:
                info["block_sizes"] = struct.unpack(">III", rdata[2:14])
            elif itype == INFO_NAME:
                info["name"] = rdata[2:].decode()
            elif itype == INFO_DESCRIPTION:
                info["description"] = rdata[2:].decode()
        if opt == OPT_GO and info["final"] == REP_ACK:
            self.export = export
            self.export_size = info.get("size")
            self.tflags = info.get("flags")
            self.block_sizes = info.get("block_sizes")
        return info

    def opt_export_name(self, export):
        self.send_option(OPT_EXPORT_NAME, export.encode())
        size, flags = struct.unpack(">QH", self.recv_exact(10))
        if not self.no_zeroes:
            self.recv_exact(124)
        self.export, self.export_size, self.tflags = export, size, flags
        return size, flags

    def connect_export(self, export, structured=True, block_size=True):
        """Full handshake up to transmission with NBD_OPT_GO."""
        self.handshake()
        if structured:
            self.opt_structured_reply()
        info = self.opt_info_or_go(OPT_GO, export, (INFO_BLOCK_SIZE,) if block_size else ())
        if info["final"] != REP_ACK:
            raise ProtocolError(f"NBD_OPT_GO {export!r} failed: "
                                f"{REP_NAMES.get(info['final'], info['final'])} {info['final_data']!r}")
        return info

    # ---- transmission
    def send_request(self, cmd, offset, length, flags=0, data=b"", handle=None, send_payload=True):
        if handle is None:
            handle = self.next_handle
            self.next_handle += 1
        self.pending[handle] = (cmd, offset, length)
        msg = struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, handle, offset, length)
        self.send(msg + (data if send_payload else b""))
        return handle

    def recv_reply(self):
        (magic,) = struct.unpack(">I", self.recv_exact(4))
        if magic == SIMPLE_REPLY_MAGIC:
            error, handle = struct.unpack(">IQ", self.recv_exact(12))
            if handle not in self.pending:
                raise ProtocolError(f"simple reply for unknown handle {handle}")
            cmd, offset, length = self.pending.pop(handle)
            r = Reply(handle)
            r.simple = True
            r.error = error
            if cmd == CMD_READ and error == 0:
                if self.structured:
                    raise ProtocolError("simple reply to READ after structured replies negotiated")
                r.data = self.recv_exact(length)
            return r
        if magic != STRUCTURED_REPLY_MAGIC:
            raise ProtocolError(f"bad reply magic {magic:#x}")
        if not self.structured:
            raise ProtocolError("structured reply chunk without negotiation")
        # A structured reply: read chunks until DONE (all for the same handle here, as
        # the tests keep at most one request of a given handle outstanding).
        first = True
        r = None
        while True:
            if not first:
                (magic,) = struct.unpack(">I", self.recv_exact(4))
                if magic != STRUCTURED_REPLY_MAGIC:
                    raise ProtocolError(f"bad chunk magic {magic:#x}")
            first = False
            cflags, ctype, handle, length = struct.unpack(">HHQI", self.recv_exact(16))
            payload = self.recv_exact(length) if length else b""
            if handle not in self.pending:
                raise ProtocolError(f"structured chunk for unknown handle {handle}")
            cmd, offset, rlen = self.pending[handle]
            if r is None:
                r = Reply(handle)
                r.simple = False
                if cmd == CMD_READ:
                    r.data = bytearray(rlen)
                    r.covered = 0
            elif r.handle != handle:
                raise ProtocolError("interleaved replies are not expected by this test client")
            r.chunks.append((ctype, cflags, length))
            if ctype == REPLY_TYPE_OFFSET_DATA:
                (coff,) = struct.unpack(">Q", payload[:8])
                d = payload[8:]
                if coff < offset or coff + len(d) > offset + rlen:
                    raise ProtocolError(f"data chunk {coff}+{len(d)} outside request {offset}+{rlen}")
                r.data[coff - offset:coff - offset + len(d)] = d
                r.covered += len(d)
            elif ctype == REPLY_TYPE_OFFSET_HOLE:
                coff, hlen = struct.unpack(">QI", payload[:12])
                if coff < offset or coff + hlen > offset + rlen:
                    raise ProtocolError(f"hole chunk {coff}+{hlen} outside request {offset}+{rlen}")
                r.data[coff - offset:coff - offset + hlen] = bytes(hlen)
                r.covered += hlen
            elif ctype == REPLY_TYPE_BLOCK_STATUS:
                (cid,) = struct.unpack(">I", payload[:4])
                ext = []
                for i in range(4, len(payload), 8):
                    ext.append(struct.unpack(">II", payload[i:i + 8]))
                r.extents[cid] = ext
            elif ctype & (1 << 15):
                err, mlen = struct.unpack(">IH", payload[:6])
                r.error = r.error or err
                r.message = payload[6:6 + mlen]
                if err == 0:
                    raise ProtocolError("error chunk with error 0")
            elif ctype != REPLY_TYPE_NONE:
                raise ProtocolError(f"unknown chunk type {ctype}")
            if cflags & REPLY_FLAG_DONE:
                self.pending.pop(handle)
                if r.data is not None:
                    if r.error:
                        r.data = None
                    elif r.covered != rlen:
                        raise ProtocolError(f"read reply covered {r.covered} of {rlen} bytes")
                    else:
                        r.data = bytes(r.data)
                return r

    def command(self, cmd, offset, length, flags=0, data=b""):
        self.send_request(cmd, offset, length, flags, data)
        return self.recv_reply()

    def read(self, offset, length, flags=0):
        return self.command(CMD_READ, offset, length, flags)

    def write(self, offset, data, flags=0):
        return self.command(CMD_WRITE, offset, len(data), flags, data)

    def flush(self):
        return self.command(CMD_FLUSH, 0, 0)

    def trim(self, offset, length, flags=0):
        return self.command(CMD_TRIM, offset, length, flags)

    def write_zeroes(self, offset, length, flags=0):
        return self.command(CMD_WRITE_ZEROES, offset, length, flags)

    def block_status(self, offset, length, flags=0):
        return self.command(CMD_BLOCK_STATUS, offset, length, flags)

    def disconnect(self):
        self.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
