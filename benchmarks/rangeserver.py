"""A loopback HTTP server that honours ``Range`` requests, with latency, a bandwidth cap and failures.

It stands in for an object store or a CDN when measuring (``benchmarks/remote.py``) or testing
(``tests/test_remote.py``) remote sources: the bytes that cross the wire are counted where they
leave the server, not inside lightning_stream.

    with RangeServer(root, latency=0.05, fail_rate=0.02) as server:
        urls = [f"{server.url}/{name}" for name in os.listdir(root)]
        ...
        server.sent, server.requests, server.failures   # Counters per file name

Knobs (fixed for the life of the server):

- ``latency``: seconds slept before each answer (HEAD and GET), i.e. added to every round trip.
- ``bandwidth``: bytes/s cap *per response*: the body is written in 64 KiB chunks, sleeping so
  that no response goes faster (several responses in flight each get the full rate). Without a
  cap, bodies go out by ``sendfile`` (zero copy).
- ``fail_rate``: fraction of GET requests answered with ``fail_status`` (503 by default) instead
  of data, drawn from ``random.Random(seed)`` under a lock (the sequence of draws is seeded; which
  request gets which draw depends on timing: the order in which requests get past their latency).
- ``cut_rate``: fraction of GET requests whose answer is cut: the headers promise the whole body,
  half of it is sent, and the connection is closed (the client reads a short body). Same draws as
  ``fail_rate``: one per GET, below ``fail_rate`` a failure, then ``cut_rate`` above it a cut.
- ``silent``: accept connections and never answer (to test timeouts and hangs).

HTTP/1.1 with keep-alive, as real object stores (HTTP/1.0 too; a malformed or unsupported request
gets a short text error, 400, 431, 501 or 505, and the connection closes). Only ``127.0.0.1``, on
a free port (bound, with a backlog of 256, when the server is made: ``url`` is known before the
``with``).

Design: one asyncio event loop in one daemon thread; the request line and headers parsed by hand;
bodies sent by ``os.sendfile`` straight to the socket when its
buffer is empty, else by ``loop.sendfile`` (zero copy either way). Why: the server shares the
machine with the readers it serves (2 cores where the benchmark runs), while a real object store's
CPU is elsewhere, so its own CPU per request must stay small beside theirs. Measured on 2 cores,
1,028 requests (4 HEADs, then 1,024 range GETs of 205 KB, 16 in flight on keep-alive connections), user +
system CPU of the server's process: the former ``http.server.ThreadingHTTPServer`` (a thread,
buffered files and ``email`` header parsing per connection) 320-700 us per request, median ~500;
this one 90-160 us, median ~135, about half of it the kernel's (sendfile, loopback TCP).

Leaving the ``with`` block stops the server promptly, ``silent`` included: every wait (latency,
bandwidth, silence) is an ``await`` in a handler task, which the stop cancels; the listening
socket and every open connection are closed, so that clients blocked on a keep-alive read see the
connection end; then the loop's thread ends.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import io
import os
import random
import re
import socket
import stat
import sys
import threading
import time
import traceback
from collections import Counter

__all__ = ["RangeServer"]

_CHUNK = 64 * 1024
_BACKLOG = 256  # several readers with requests in flight open many connections at once
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_REASONS = {status.value: status.phrase for status in http.HTTPStatus}
_CLOSE = "Connection: close\r\n"
_SERVER = f"RangeServer (asyncio) Python/{sys.version.split()[0]}"


class _Close(Exception):
    """Answered (or not): close the connection."""


class RangeServer:
    """Serves the files of ``root`` on ``127.0.0.1`` (a free port) while in a ``with`` block.

    Args:
        root: folder whose files are served (``/name`` is ``root/name``; nothing outside it).
        latency: seconds slept before answering each request.
        bandwidth: bytes/s cap per response (``None``: as fast as the loopback goes).
        fail_rate: fraction of GET requests answered with ``fail_status`` and no data.
        fail_status: the HTTP status of an injected failure (503: a transient error to retry).
        cut_rate: fraction of GET requests whose body stops halfway, the connection closed.
        seed: seed of the failure draws.
        silent: accept connections, read nothing, answer nothing, until the server stops.

    Counters (``collections.Counter`` keyed by file name, updated under a lock):
        ``sent``: body bytes sent; ``requests``: GET requests answered with data;
        ``failures``: GET requests answered with ``fail_status``. ``cuts``: answers cut short.
        ``heads``: HEAD requests.
        ``largest``: the largest body sent, in bytes (all files).
    """

    def __init__(
        self,
        root: str,
        *,
        latency: float = 0.0,
        bandwidth: float | None = None,
        fail_rate: float = 0.0,
        fail_status: int = 503,
        cut_rate: float = 0.0,
        seed: int = 0,
        silent: bool = False,
    ) -> None:
        if (
            latency < 0
            or not 0.0 <= fail_rate <= fail_rate + cut_rate <= 1.0
            or cut_rate < 0
            or (bandwidth is not None and bandwidth <= 0)
        ):
            raise ValueError(
                f"bad knobs: latency={latency}, fail_rate={fail_rate}, cut_rate={cut_rate}, bandwidth={bandwidth}"
            )
        self.cut_rate = cut_rate
        self.root = os.path.realpath(root)
        self.latency, self.bandwidth, self.fail_rate, self.fail_status, self.silent = (
            latency,
            bandwidth,
            fail_rate,
            fail_status,
            silent,
        )
        self.sent: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.heads: Counter[str] = Counter()
        self.cuts: Counter[str] = Counter()
        self.largest = 0
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.bind(("127.0.0.1", 0))
            self._sock.listen(_BACKLOG)
        except OSError:
            self._sock.close()
            raise
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None  # set on the loop's thread: the loop winds down
        self._writers: set[asyncio.StreamWriter] = set()  # open connections (loop thread only)
        self._date = (0, "")  # the Date header, made once a second

    # -- counters ---------------------------------------------------------------------------------
    @property
    def failed(self) -> int:
        """Failures injected so far, all files."""
        return sum(self.failures.values())

    def reset(self) -> None:
        """Zero the counters."""
        with self._lock:
            for counter in (self.sent, self.requests, self.failures, self.heads, self.cuts):
                counter.clear()
            self.largest = 0

    # -- start, stop ------------------------------------------------------------------------------
    def __enter__(self) -> RangeServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as err:  # noqa: BLE001 - handed to __enter__, or printed
                if not ready.is_set():
                    failure.append(err)
                else:
                    traceback.print_exc()
            finally:
                try:
                    loop.run_until_complete(loop.shutdown_asyncgens())
                finally:
                    loop.close()
                    self._sock.close()
                    ready.set()

        self._thread = threading.Thread(target=run, name=f"RangeServer {self.url}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        return self

    def __exit__(self, *exc) -> None:
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if thread is None:  # never entered
            self._sock.close()
            return
        try:
            loop.call_soon_threadsafe(stopping.set)
        except RuntimeError:  # the loop is closed already
            pass
        thread.join(5)

    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._handle, sock=self._sock, backlog=_BACKLOG)
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()  # no more connections
            for _ in range(2):  # the connections just accepted start their tasks (cancelled before
                await asyncio.sleep(0)  # their first step, asyncio 3.11 would log them as errors)
            current = asyncio.current_task()
            tasks = [task for task in asyncio.all_tasks() if task is not current]
            for task in tasks:  # every wait: latency, bandwidth, silence, a keep-alive read, a sendfile
                task.cancel()
            for writer in list(self._writers):  # the clients see the end of their connections at once
                try:
                    writer.transport.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
                except (OSError, AttributeError):
                    pass
                writer.transport.abort()
            self._writers.clear()
            if tasks:
                await asyncio.wait(tasks, timeout=1.0)
            await asyncio.sleep(0)  # the transports' connection_lost callbacks close their sockets

    # -- one connection ---------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        self._writers.add(writer)
        try:
            sock = transport.get_extra_info("socket")
            # No Nagle: a body's last partial segment must not wait for the client's delayed ACK
            # (~40 ms on Linux), which would add a latency nobody asked for.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fileno = sock.fileno()
            if self.silent:  # accept, read nothing, never answer: wait for the server to stop
                transport.pause_reading()
                await asyncio.get_running_loop().create_future()
            while not transport.is_closing():
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.LimitOverrunError:
                    self._error(writer, 431)
                    break
                if not await self._request(head, writer, fileno):
                    break
        except (_Close, asyncio.IncompleteReadError, ConnectionError, OSError):  # the client went away, or we close
            pass
        except RuntimeError:  # loop.sendfile on a transport that is closing: the client went away
            if not transport.is_closing():
                traceback.print_exc()
        except asyncio.CancelledError:  # the server stops. Not raised on: asyncio 3.11 logs a
            transport.abort()  # connection task that ends cancelled as an error
        except Exception:  # noqa: BLE001 - a bug of ours: say so, close the connection, serve on
            traceback.print_exc()
        finally:
            self._writers.discard(writer)
            transport.close()

    async def _request(self, head: bytes, writer: asyncio.StreamWriter, fileno: int) -> bool:
        """Answer the request whose line and headers are ``head``; False: close the connection."""
        lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
        words = lines[0].split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            self._error(writer, 400)
            return False
        method, target, version = words
        try:
            major, minor = (int(part) for part in version[5:].split("."))
        except ValueError:
            self._error(writer, 400)
            return False
        if major >= 2:
            self._error(writer, 505)
            return False
        headers: dict[str, str] = {}
        for line in lines[1:]:
            key, colon, value = line.partition(":")
            if colon:
                headers.setdefault(key.strip().lower(), value.strip())
        keep = (major, minor) >= (1, 1)
        connection = headers.get("connection", "").lower()
        if connection == "close":
            keep = False
        elif connection == "keep-alive":
            keep = True
        if method not in ("GET", "HEAD"):
            self._error(writer, 501)
            return False
        if headers.get("expect", "").lower() == "100-continue" and (major, minor) >= (1, 1):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        if self.latency:
            await asyncio.sleep(self.latency)
        found = self._open(target, head_only=method == "HEAD")
        if found is None:
            self._answer(writer, 404)
            return keep
        name, opened = found
        if method == "HEAD":
            with self._lock:
                self.heads[name] += 1
            self._answer(writer, 200, opened)
            return keep

        fd = opened
        with io.FileIO(fd, "rb") as f:
            with self._lock:  # one draw per GET of a file, as many as before
                draw = self._random.random() if self.fail_rate or self.cut_rate else 1.0
                fail, cut = draw < self.fail_rate, self.fail_rate <= draw < self.fail_rate + self.cut_rate
                if fail:
                    self.failures[name] += 1
                if cut:
                    self.cuts[name] += 1
            if fail:
                self._answer(writer, self.fail_status, body=b"injected failure\n")
                return keep
            size = os.fstat(fd).st_size
            start, end = 0, size - 1
            match = _RANGE.fullmatch(headers.get("range", ""))
            if match and (match.group(1) or match.group(2)):
                if match.group(1):
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                else:  # a suffix: the last N bytes
                    start = max(0, size - int(match.group(2)))
                if start >= size or end < start:
                    self._answer(writer, 416, extra=f"Content-Range: bytes */{size}\r\n")
                    return keep
            else:
                match = None
            count = end - start + 1
            extra = f"Content-Range: bytes {start}-{end}/{size}\r\n" if match else ""
            self._answer(writer, 206 if match else 200, count, extra=extra)
            if cut:  # half the body, then the connection closes under the client
                await self._sendfile(writer, fileno, f, start, count // 2)
                return False
            if self.bandwidth is None:  # the kernel copies the file to the socket: little CPU of ours
                sent = await self._sendfile(writer, fileno, f, start, count)
            else:
                sent = await self._paced(writer, fd, start, count)
        with self._lock:
            self.sent[name] += sent
            self.requests[name] += 1
            self.largest = max(self.largest, sent)
        return keep

    async def _paced(self, writer: asyncio.StreamWriter, fd: int, start: int, count: int) -> int:
        """Write ``count`` bytes of ``fd`` from ``start`` in 64 KiB chunks, no faster than ``bandwidth``."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sent = 0
        while sent < count:
            chunk = os.pread(fd, min(_CHUNK, count - sent), start + sent)
            if not chunk:  # the file shrank under us
                raise _Close
            ahead = (sent + len(chunk)) / self.bandwidth - (loop.time() - t0)  # this chunk is due then
            if ahead > 0:
                await asyncio.sleep(ahead)
            if writer.transport.is_closing():
                raise _Close
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        return sent

    # -- helpers ----------------------------------------------------------------------------------
    def _open(self, target: str, head_only: bool):
        """``(name, size)`` (``head_only``) or ``(name, fd)`` (open for reading) of the regular file
        under ``root`` that ``target`` names, or None: missing, no regular file, outside ``root``."""
        try:
            path = os.path.realpath(os.path.join(self.root, target.split("?")[0].lstrip("/")))
        except ValueError:  # a NUL byte
            return None
        if not path.startswith(self.root + os.sep):
            return None
        name = os.path.basename(path)
        try:
            if head_only:
                info = os.stat(path)
                return (name, info.st_size) if stat.S_ISREG(info.st_mode) else None
            # O_NONBLOCK: a fifo does not hang us (fstat then says it is no regular file)
            return self._regular(name, os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            return None

    @staticmethod
    def _regular(name: str, fd: int):
        """``(name, fd)``, or None (``fd`` closed) if ``fd`` is no regular file."""
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return name, fd
        except OSError:
            pass
        os.close(fd)
        return None

    async def _sendfile(self, writer: asyncio.StreamWriter, fileno: int, f, offset: int, count: int) -> int:
        """Send ``count`` bytes of ``f`` from ``offset`` (zero copy): at once by ``os.sendfile`` when
        the transport has nothing buffered and the socket takes it all (the common case, and the
        cheap one), the rest by ``loop.sendfile`` (which waits for the socket)."""
        sent = 0
        if count and not writer.transport.get_write_buffer_size() and not writer.transport.is_closing():
            try:
                sent = os.sendfile(fileno, f.fileno(), offset, count)
            except BlockingIOError:
                pass
        if sent < count:
            sent += await asyncio.get_running_loop().sendfile(writer.transport, f, offset + sent, count - sent)
        return sent

    def _answer(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        length: int | None = None,
        *,
        body: bytes = b"",
        extra: str = "",
        close: bool = False,
    ) -> None:
        """Write a status line and headers (``Content-Length``: ``length``, else ``len(body)``), then ``body``."""
        if writer.transport.is_closing():
            raise _Close
        now = int(time.time())
        if now != self._date[0]:
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        writer.write(
            (
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nServer: {_SERVER}\r\nDate: {self._date[1]}\r\n"
                f"Content-Length: {len(body) if length is None else length}\r\nAccept-Ranges: bytes\r\n{extra}"
                f"{_CLOSE if close else ''}\r\n"
            ).encode("latin-1")
            + body
        )

    def _error(self, writer: asyncio.StreamWriter, status: int) -> None:
        """A malformed or unsupported request: say so, the connection then closes."""
        self._answer(writer, status, body=f"{status} {_REASONS.get(status, '')}\n".encode(), close=True)
