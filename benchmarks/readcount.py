"""Bytes a command reads from the files under a directory, counted by the operating system.

Two counters, neither of which looks inside the program being measured:

- :func:`strace_reads` runs the command under ``strace -f -ff -y`` and sums the return values of
  ``read``/``pread64``/``readv``/``preadv``/``preadv2`` per file, over every process and thread of
  the command (DDP ranks, DataLoader workers). This counts bytes *copied out of the kernel*, page
  cache hits included: a file read twice counts twice. It cannot see memory-mapped files, which
  are read by page faults.
- :func:`storage_reads` drops the files from the page cache (``posix_fadvise(DONTNEED)``), runs
  the command as a child of a wrapper that is a child subreaper, and reports the wrapper's
  ``/proc/self/io`` ``read_bytes`` after every descendant has been reaped (the kernel adds a
  reaped child's I/O to its reaper). This counts bytes brought in *from storage*, by ``read`` or
  by page faults, readahead included, for every file the command reads; the page cache is
  shared, so a file read by several processes comes in once.

Standalone: ``python benchmarks/readcount.py --under DIR -- python script.py ...`` prints the
bytes read per file under ``DIR`` and the ratio to the files' sizes. Independent of
``lightning_stream``.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "READ_CALLS",
    "Reads",
    "drop_from_page_cache",
    "find_strace",
    "parse_strace_logs",
    "storage_reads",
    "strace_reads",
]

READ_CALLS = ("read", "pread64", "readv", "preadv", "preadv2")
_START = re.compile(r"^(?:\[pid\s+\d+\]\s+)?(?P<call>" + "|".join(READ_CALLS) + r")\((?P<fd>\d+)<(?P<path>[^>]*)>")
_RESUMED = re.compile(r"^(?:\[pid\s+\d+\]\s+)?<\.\.\. (?P<call>\w+) resumed>")
_RETURN = re.compile(r"\)\s+=\s+(-?\d+|\?)")  # strace pads before "=" to align the returns


@dataclass
class Reads:
    """What one traced run read."""

    per_file: dict[str, int] = field(default_factory=dict)  # bytes returned by read calls, per path
    calls: dict[str, int] = field(default_factory=dict)  # read calls that returned > 0 bytes, per path
    per_task: dict[str, int] = field(default_factory=dict)  # bytes per traced task (log file suffix: a pid or tid)
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""

    def total(self, files: Iterable[str] | None = None) -> int:
        """Bytes read from ``files`` (real paths), or from every file counted."""
        if files is None:
            return sum(self.per_file.values())
        return sum(self.per_file.get(os.path.realpath(f), 0) for f in files)


def find_strace() -> str | None:
    """Path of a working ``strace``, or None (not installed, or ptrace not permitted)."""
    path = shutil.which("strace") or ("/usr/bin/strace" if os.path.exists("/usr/bin/strace") else None)
    if path is None:
        return None
    try:
        probe = subprocess.run(
            [path, "-f", "-e", "trace=read", "-o", os.devnull, "true"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if probe.returncode == 0 else None


def _return_value(line: str) -> int | None:
    """The syscall's return value: the last ``) = N``; None for ``= ?`` (process killed)."""
    found = _RETURN.findall(line)
    if not found or found[-1] == "?":
        return None
    return int(found[-1])


def parse_strace_logs(paths: Iterable[str], under: str | None = None) -> Reads:
    """Sum read return values per path in ``strace -y`` logs (one per pid with ``-ff``).

    ``under``: keep only paths inside this directory (compared as real paths). Calls split by
    ``<unfinished ...>`` / ``<... resumed>`` are joined within each log (with ``-ff`` a split only
    happens inside one pid's log; lines prefixed ``[pid N]`` from a single ``-f`` log are joined per
    pid). Failed calls (negative returns) and calls cut by the process's death (``= ?``) add 0.
    """
    prefix = os.path.join(os.path.realpath(under), "") if under is not None else None
    reads = Reads()
    for log in paths:
        task = log.rsplit(".", 1)[-1]
        pending: dict[str, tuple[str, str]] = {}  # pid tag -> (call, path) awaiting its "resumed" line
        with open(log, errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                tag_match = re.match(r"^\[pid\s+(\d+)\]", line)
                tag = tag_match.group(1) if tag_match else ""
                m = _START.match(line)
                if m is not None:
                    if line.endswith("<unfinished ...>"):
                        pending[tag] = (m.group("call"), m.group("path"))
                        continue
                    path = m.group("path")
                else:
                    r = _RESUMED.match(line)
                    if r is None or r.group("call") not in READ_CALLS:
                        continue
                    started = pending.pop(tag, None)
                    if started is None or started[0] != r.group("call"):
                        continue
                    path = started[1]
                if path.endswith(" (deleted)"):
                    path = path[: -len(" (deleted)")]
                if prefix is not None and not path.startswith(prefix):
                    continue
                n = _return_value(line)
                if n is None or n <= 0:
                    continue
                reads.per_file[path] = reads.per_file.get(path, 0) + n
                reads.calls[path] = reads.calls.get(path, 0) + 1
                reads.per_task[task] = reads.per_task.get(task, 0) + n
    return reads


def strace_reads(
    cmd: list[str],
    under: str,
    *,
    env: dict | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    strace: str | None = None,
    keep_logs: str | None = None,
) -> Reads:
    """Run ``cmd`` under strace and count the bytes it reads from files under ``under``.

    Raises ``RuntimeError`` when strace is missing; the command's own failure is reported in
    ``Reads.returncode`` / ``stderr`` (its output is captured).
    """
    strace = strace or find_strace()
    if strace is None:
        raise RuntimeError("strace is not installed (or ptrace is not permitted)")
    logdir = keep_logs or tempfile.mkdtemp(prefix="readcount-")
    os.makedirs(logdir, exist_ok=True)
    try:
        trace = [
            strace,
            "-f",
            "-ff",
            "-y",
            "-s",
            "0",
            "-e",
            "trace=" + ",".join(READ_CALLS),
            "-e",
            "signal=none",
            "-o",
            os.path.join(logdir, "trace"),
        ]
        proc = subprocess.run(
            trace + ["--"] + list(cmd), env=env, cwd=cwd, timeout=timeout, capture_output=True, text=True
        )
        reads = parse_strace_logs(sorted(glob.glob(os.path.join(logdir, "trace.*"))), under)
        reads.returncode, reads.stdout, reads.stderr = proc.returncode, proc.stdout, proc.stderr
        return reads
    finally:
        if keep_logs is None:
            shutil.rmtree(logdir, ignore_errors=True)


def drop_from_page_cache(files: Iterable[str]) -> None:
    """Write back and evict ``files`` from the page cache, so the next read comes from storage."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _proc_io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k.strip(): int(v) for k, v in (line.split(":") for line in f if ":" in line)}


def _io_wrap(cmd: list[str], report: str) -> int:
    """Run ``cmd`` as a subreaper, reap every descendant, write this process's I/O delta."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    before = _proc_io()
    rc = subprocess.call(cmd)
    while True:  # orphaned descendants are ours now: wait for them so their I/O is counted
        try:
            os.wait()
        except ChildProcessError:
            break
    after = _proc_io()
    with open(report, "w") as f:
        json.dump({"returncode": rc, **{k: after[k] - before.get(k, 0) for k in after}}, f)
    return rc


def storage_reads(
    cmd: list[str],
    files: Iterable[str],
    *,
    env: dict | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
) -> dict[str, int]:
    """``/proc/<pid>/io`` of ``cmd``'s whole process tree after evicting ``files`` from the cache.

    Returns ``read_bytes`` (from storage, every file the tree read, readahead included), ``rchar``
    (bytes returned by read calls, every fd: pipes and sockets too), ``returncode`` and the
    command's captured ``stdout`` / ``stderr``.
    """
    drop_from_page_cache(list(files))
    fd, report = tempfile.mkstemp(prefix="readcount-io-", suffix=".json")
    os.close(fd)
    try:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--io-wrap", report, "--", *cmd],
            env=env,
            cwd=cwd,
            timeout=timeout,
            check=False,
            capture_output=True,
            text=True,
        )
        with open(report) as f:
            return {**json.load(f), "stdout": proc.stdout, "stderr": proc.stderr}
    finally:
        os.unlink(report)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--under", help="count files under this directory")
    p.add_argument("--io-wrap", metavar="REPORT", help=argparse.SUPPRESS)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("give a command after --")
    if a.io_wrap:
        return _io_wrap(cmd, a.io_wrap)
    if not a.under:
        p.error("--under DIR is required")
    reads = strace_reads(cmd, a.under)
    sys.stdout.write(reads.stdout)
    sys.stderr.write(reads.stderr)
    size = 0
    for path in sorted(reads.per_file):
        n = os.path.getsize(path) if os.path.exists(path) else 0
        size += n
        print(
            f"{reads.per_file[path]:>14,} B  {reads.calls[path]:>7,} calls  {reads.per_file[path] / max(n, 1):6.2f}x  {path}"
        )
    total = reads.total()
    print(f"{total:>14,} B in all, {total / max(size, 1):.2f}x the {size:,} B of the files read")
    return reads.returncode


if __name__ == "__main__":
    sys.exit(main())
