"""objectd for the integration tests: the `Objectd` server class, S3 client factories
(boto3, aws CLI, s3cmd, rclone environments), and raw signed requests for protocol tests.

Builds on harness.py (run(), seeded_rng(), temp dirs, log tails, the watchdog). Every
test starts its own objectd on an ephemeral 127.0.0.1 port in its own temp dir and stops
it by PID. The S3 clients are Debian's (awscli, python3-boto3, s3cmd, rclone) and talk only
to 127.0.0.1.

Environment (besides harness.py's):
  CAIRN_S3_TEST_TIMEOUT_S  watchdog for one test file (default 280 s)
"""

import http.client
import json as jsonlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import unittest
import warnings

import harness
from harness import BUILD_DIR, CAIRN, READY_TIMEOUT_S, _tail, log, run

# Debian's python3-boto3 lives in the system interpreter's dist-packages.
for _d in ("/usr/lib/python3/dist-packages",):
    if os.path.isdir(_d) and _d not in sys.path:
        sys.path.append(_d)
import boto3  # noqa: E402
from botocore import UNSIGNED  # noqa: E402
from botocore.auth import S3SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

OBJECTD = os.path.join(BUILD_DIR, "objectd", "objectd")
REGION = "us-east-1"

# The clients: Debian's packages by absolute path (a pyenv shim named `aws` may come first on
# PATH).
AWS = "/usr/bin/aws" if os.path.exists("/usr/bin/aws") else shutil.which("aws")
S3CMD = "/usr/bin/s3cmd" if os.path.exists("/usr/bin/s3cmd") else shutil.which("s3cmd")
RCLONE = "/usr/bin/rclone" if os.path.exists("/usr/bin/rclone") else shutil.which("rclone")


def no_proxy_env():
    """Environment overrides that keep every client on 127.0.0.1 (no proxy, no instance
    metadata, no user config)."""
    env = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
           "AWS_EC2_METADATA_DISABLED": "true"}
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY",
              "all_proxy"):
        env[k] = ""
    return env


for _k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    os.environ.pop(_k, None)
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
# Plain HTTP only: a CA bundle from the environment makes rclone's AWS SDK refuse to start
# ("unable to load custom CA bundle"), and no client needs one here.
os.environ.pop("AWS_CA_BUNDLE", None)
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


class Objectd(harness.DaemonProcess, harness.Server):
    """The real objectd: temp data dir, ephemeral port, readiness from its log line.

    drives: None for the default K+M directories under the data dir, or a number of
    explicit drive directories (DIR/drives/dN, created here and passed as --drive).
    objectd runs with its working directory in an empty sandbox dir, so that a request
    that escaped the data dir would show up there."""

    kind = "objectd"

    def __init__(self, label="objectd", ec="4+2", drives=None, threads=None, env=None,
                 args=()):
        super().__init__(label)
        self.data_dir = os.path.join(self.tmp, "data")
        self.cwd = os.path.join(self.tmp, "cwd")
        os.makedirs(self.data_dir)
        os.makedirs(self.cwd)
        self.log_path = os.path.join(self.tmp, "objectd.log")
        self.ec = ec
        k, m = (int(x) for x in ec.split("+"))
        self.k, self.m = k, m
        if drives:
            self.drive_dirs = [os.path.join(self.tmp, "drives", f"d{i}") for i in range(drives)]
            for d in self.drive_dirs:
                os.makedirs(d)
            self.explicit_drives = True
        else:
            self.drive_dirs = [os.path.join(self.data_dir, f"drive{i}") for i in range(k + m)]
            self.explicit_drives = False
        self.threads = threads
        self.env = dict(env or {})
        self.args = list(args)       # extra flags for every start
        self.proc = None
        self.starts = 0
        self.start_offset = 0        # where the log of the latest start begins
        self.port = None
        self.endpoint = None
        self.access_key = None
        self.secret_key = None
        self.credentials_path = None
        self.ready_fields = {}

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def command(self, args=()):
        cmd = [OBJECTD, "--data-dir", self.data_dir, "--listen",
               f"127.0.0.1:{self.port or 0}", "--ec", self.ec]
        if self.explicit_drives:
            for d in self.drive_dirs:
                cmd += ["--drive", d]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        return cmd + self.args + list(args)

    def start(self, env=None, same_port=False, args=()):
        """Starts objectd and waits for its ready line. env: extra environment for this
        start (e.g. CAIRN_FAULTS); args: extra flags for this start."""
        assert self.proc is None, "already running"
        if not os.path.exists(OBJECTD):
            raise AssertionError(
                f"objectd binary not found at {OBJECTD} (CAIRN_BUILD_DIR={BUILD_DIR})")
        if not same_port:
            self.port = None
        self.starts += 1
        cmd = self.command(args)
        full_env = dict(os.environ)
        full_env.update(no_proxy_env())
        full_env.pop("CAIRN_FAULTS", None)  # armed only through env=
        full_env.update(self.env)
        if env:
            full_env.update(env)
        with open(self.log_path, "a") as lf:
            extra = f" env+={env}" if env else ""
            lf.write(f"===== start #{self.starts}: {shlex.join(cmd)}{extra}\n")
            start_offset = lf.tell()
        self.start_offset = start_offset
        logf = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                         env=full_env, cwd=self.cwd,
                                         preexec_fn=harness._die_with_parent)
        finally:
            logf.close()
        log(f"[{self.label}] started objectd pid={self.proc.pid} (start #{self.starts})")
        line = self._wait_ready(start_offset)
        fields = dict(re.findall(r"(\w+)=(\S+)", line.split("objectd ready", 1)[1]))
        for k in ("endpoint", "credentials", "drives", "ec"):
            if k not in fields:
                self.kill9()
                raise AssertionError(f"ready line lacks {k}=...: {line!r}")
        self.ready_fields = fields
        self.endpoint = fields["endpoint"].rstrip("/")
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self.credentials_path = fields["credentials"]
        creds = read_credentials(self.credentials_path)
        self.access_key = creds["access_key_id"]
        self.secret_key = creds["secret_access_key"]
        return self

    def _wait_ready(self, offset):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode("utf-8", "replace")
            for line in text.splitlines():
                if "objectd ready" in line:
                    return line
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                raise AssertionError(
                    f"objectd exited with status {rc} before logging 'objectd ready'; "
                    f"log tail:\n{_tail(text)}")
            if time.monotonic() > deadline:
                self.kill9()
                raise AssertionError(
                    f"objectd did not log 'objectd ready' within {READY_TIMEOUT_S}s; "
                    f"log tail:\n{_tail(text)}")
            time.sleep(0.05)

    def log_text(self):
        with open(self.log_path, "r", errors="replace") as f:
            return f.read()

    def log_since_start(self):
        """The log of the latest start."""
        with open(self.log_path, "rb") as f:
            f.seek(self.start_offset)
            return f.read().decode("utf-8", "replace")

    def wait_log(self, pattern, timeout_s=60, what=None):
        """Waits until the log of the latest start matches the regex; returns the match."""
        def found():
            if not self.alive():
                raise AssertionError(f"objectd exited while waiting for {what or pattern!r}")
            return re.search(pattern, self.log_since_start())
        return harness.wait_for(found, timeout_s, what or f"objectd to log {pattern!r}")

    def wait_startup_sweep(self, timeout_s=60):
        """Until the store's start-up sweep (leftovers of an earlier run removed) is done;
        returns how many files it removed."""
        m = self.wait_log(r"start-up sweep done in [0-9.]+ s: (\d+) leftover files",
                          timeout_s, "the start-up sweep")
        return int(m.group(1))

    def restart(self, env=None):
        """Stops (SIGTERM) and starts again on the same port."""
        if self.proc is not None:
            self.stop()
        return self.start(env=env, same_port=True)

    # ---- clients
    def client(self, access_key=None, secret_key=None, anonymous=False, **config):
        """A boto3 S3 client (path style, SigV4, no retries) for the root key or the given
        one; anonymous=True sends unsigned requests."""
        return s3_client(self.endpoint, access_key or self.access_key,
                         secret_key or self.secret_key, anonymous=anonymous, **config)

    def cairn(self, *args, json=True, check=True, timeout=120, env=None):
        """Runs the cairn CLI against this objectd with the root key. With json and check,
        returns the parsed JSON output; otherwise the CompletedProcess."""
        cmd = [CAIRN, "--s3-endpoint", self.endpoint, "--access-key", self.access_key,
               "--secret-key", self.secret_key]
        if json:
            cmd.append("--json")
        cmd += list(args)
        p = run(cmd, timeout=timeout, check=check, env=env)
        if json and check:
            try:
                return jsonlib.loads(p.stdout) if p.stdout.strip() else None
            except ValueError:
                raise AssertionError(
                    f"cairn --json printed non-JSON:\n{_tail(p.stdout)}") from None
        return p

    def new_tenant(self, name):
        """Creates a tenant and one access key for it through the cairn CLI; returns
        (access_key_id, secret)."""
        t = self.cairn("tenant", "create", name)
        assert t == {"name": name}, t
        k = self.cairn("tenant", "key", "create", name)
        assert k["tenant"] == name and k["accessKeyId"] and k["secretKey"], k
        return k["accessKeyId"], k["secretKey"]

    def heal_status(self):
        return self.cairn("objects", "heal", "--status")

    def signed(self, method, path, body=b"", headers=None, access_key=None, secret_key=None,
               timeout=30):
        """One request signed with botocore's SigV4 signer (an implementation independent of
        ours), sent with http.client. path is as sent (already %-encoded). Returns
        (status, headers dict with lower-case names, body bytes)."""
        return raw_signed_request(self.endpoint, method, path, body, headers,
                                  access_key or self.access_key, secret_key or self.secret_key,
                                  timeout=timeout)

    def healthz(self):
        status, _, body = http_request(self.endpoint, "GET", "/healthz")
        return status, body.decode("utf-8", "replace")

    def assert_healthy(self, tc, bucket):
        """The daemon is up and a normal PUT/GET round trip works."""
        tc.assertTrue(self.alive(), "objectd is no longer running")
        s3 = self.client()
        key = f"health-{time.monotonic_ns()}"
        data = os.urandom(1000)
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        tc.assertEqual(got, data, "health check object read back differently")
        s3.delete_object(Bucket=bucket, Key=key)


def read_credentials(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if "=" in line:
                k, v = line.split("=", 1)
                out[k] = v
    for k in ("access_key_id", "secret_access_key"):
        if not out.get(k):
            raise AssertionError(f"{path} lacks {k}=")
    return out


def s3_client(endpoint, access_key, secret_key, anonymous=False, **config):
    cfg = dict(signature_version=UNSIGNED if anonymous else "s3v4",
               s3={"addressing_style": "path"},
               retries={"max_attempts": 1, "mode": "standard"},
               connect_timeout=10, read_timeout=120)
    cfg.update(config)
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint, region_name=REGION,
                          aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                          config=Config(**cfg))


def error_code(exc):
    """(HTTP status, S3 error code) of a botocore ClientError."""
    return (exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
            exc.response.get("Error", {}).get("Code"))


def http_request(endpoint, method, path, body=b"", headers=None, timeout=30):
    host, port = endpoint[len("http://"):].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def sign_headers(endpoint, method, path, body=b"", headers=None, access_key="",
                 secret_key=""):
    """The request's headers signed by botocore's S3 SigV4 signer (over plain HTTP it
    always signs the payload's SHA-256)."""
    url = endpoint + path
    hdrs = dict(headers or {})
    req = AWSRequest(method=method, url=url, data=body, headers=hdrs)
    S3SigV4Auth(Credentials(access_key, secret_key), "s3", REGION).add_auth(req)
    return dict(req.headers.items())


def raw_signed_request(endpoint, method, path, body=b"", headers=None, access_key="",
                       secret_key="", timeout=30):
    signed = sign_headers(endpoint, method, path, body, headers, access_key, secret_key)
    return http_request(endpoint, method, path, body, signed, timeout=timeout)


def xml_code(body):
    m = re.search(rb"<Code>([^<]*)</Code>", body or b"")
    return m.group(1).decode() if m else None


# --------------------------------------------------------------------------- drives


def temp_files(drive_dir):
    """Names of the files in a drive's tmp/ directory (shard files being written or healed)."""
    tmp = os.path.join(drive_dir, "tmp")
    return sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []


def remove_tree(path):
    """rm -rf that wins against objectd finishing a straggling write in there."""
    for _ in range(20):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(0.1)
    raise AssertionError(f"could not remove {path}")


def shard_files(drive_dir):
    """{object id: path} of the shard files under a drive's objects/ directory."""
    out = {}
    root = os.path.join(drive_dir, "objects")
    if not os.path.isdir(root):
        return out
    for sub in sorted(os.listdir(root)):
        d = os.path.join(root, sub)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            out[name] = os.path.join(d, name)
    return out


# --------------------------------------------------------------------------- unittest glue


class ObjectdTestCase(harness.ServerTestCase):
    """One objectd per test class (server_kwargs for Objectd), stopped cleanly in
    tearDownClass; a failing test prints the log tail."""

    server_kwargs = {}

    @classmethod
    def setUpClass(cls):
        cls.server = Objectd(label=cls.__name__.lower()[:12], **cls.server_kwargs)
        try:
            cls.server.start()
        except BaseException:
            cls.server.failed = True
            cls.server.cleanup()
            raise

    _buckets = 0

    def new_bucket(self, prefix="bkt", client=None, **kw):
        ObjectdTestCase._buckets += 1
        name = f"{prefix}-{ObjectdTestCase._buckets}-{os.getpid() % 10000}"
        (client or self.server.client()).create_bucket(Bucket=name, **kw)
        return name

    def assertClientError(self, fn, status, code=None, msg=None):
        """fn() must raise a botocore ClientError with this HTTP status (and S3 code)."""
        with self.assertRaises(ClientError, msg=msg) as cm:
            fn()
        got_status, got_code = error_code(cm.exception)
        self.assertEqual(got_status, status, f"{msg or ''}: {cm.exception.response}")
        if code is not None:
            self.assertEqual(got_code, code, f"{msg or ''}: {cm.exception.response}")
        return cm.exception


def main():
    harness._watchdog(int(os.environ.get("CAIRN_S3_TEST_TIMEOUT_S", "280")))
    # boto3 clients keep pooled connections until collected: not worth a warning each.
    warnings.simplefilter("default")
    warnings.filterwarnings("ignore", category=ResourceWarning)
    unittest.main(verbosity=2, warnings=False)
