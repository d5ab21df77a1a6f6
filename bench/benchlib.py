"""Helpers every benchmark script shares: processes and ports, machine facts, and splicing a
report into docs/BENCHMARKS.md between a bench's markers. Stdlib only."""

import os
import platform
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cmd_output(argv):
    """A command's output (stdout, else stderr), stripped; "?" when it cannot run."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (p.stdout or p.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def proc_cpu_s(pid):
    """utime+stime of a whole process (all threads, exited ones included; io_uring's iou-wrk
    and sqpoll threads belong to the process and are counted too); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except OSError:
        return None


def fs_type(path):
    """"ext4 on /dev/vda (/)": the filesystem holding path."""
    best, kind = "", "?"
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, typ = line.split()[:3]
            mnt = mnt.replace("\\040", " ")
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, f"{typ} on {dev} ({mnt})"
    return kind


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout_s, what, proc=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with status {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not ready after {timeout_s} s")


def tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def base_facts():
    """What every report says about the machine; each bench adds its tools' versions."""
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {"nproc": os.cpu_count(), "CPU": cpu, "RAM": f"{mem_kib / (1 << 20):.0f} GiB",
            "kernel": platform.release(),
            "loadavg at start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def splice(doc_path, section, begin, end, heading=""):
    """Puts section between the markers begin and end of doc_path; when they are missing,
    appends `heading` (a few lines introducing the bench) and the markers."""
    text = open(doc_path).read() if os.path.exists(doc_path) else "# Benchmarks\n"
    block = f"{begin}\n{section.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + (heading.rstrip() + "\n\n" if heading else "") + block + "\n"
    with open(doc_path, "w") as f:
        f.write(text)
