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
  cap, bodies go out by ``sendfile``: the server's own CPU stays small beside the readers' (it
  shares the machine with them).
- ``fail_rate``: fraction of GET requests answered with ``fail_status`` (503 by default) instead
  of data, drawn from ``random.Random(seed)`` under a lock (the sequence of draws is seeded; which
  request gets which draw depends on thread timing).
- ``cut_rate``: fraction of GET requests whose answer is cut: the headers promise the whole body,
  half of it is sent, and the connection is closed (a reset mid-answer). Same draws as
  ``fail_rate``: one per GET, below ``fail_rate`` a failure, then ``cut_rate`` above it a cut.
- ``silent``: accept connections and never answer (to test timeouts and hangs).

HTTP/1.1 with keep-alive, as real object stores. Only ``127.0.0.1``, on a free port. Leaving the
``with`` block stops the server promptly, ``silent`` included: the handler threads are daemons,
every wait (latency, bandwidth, silence) is on a stop event that ``__exit__`` sets, and the open
connections are shut down so that handlers blocked on a keep-alive read return.
"""

from __future__ import annotations

import os
import random
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

__all__ = ["RangeServer"]

_CHUNK = 64 * 1024


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

    def __init__(self, root: str, *, latency: float = 0.0, bandwidth: Optional[float] = None, fail_rate: float = 0.0,
                 fail_status: int = 503, cut_rate: float = 0.0, seed: int = 0, silent: bool = False) -> None:
        if latency < 0 or not 0.0 <= fail_rate <= fail_rate + cut_rate <= 1.0 or cut_rate < 0 or (bandwidth is not None and bandwidth <= 0):
            raise ValueError(f"bad knobs: latency={latency}, fail_rate={fail_rate}, cut_rate={cut_rate}, bandwidth={bandwidth}")
        self.cut_rate = cut_rate
        self.root = os.path.realpath(root)
        self.latency, self.bandwidth, self.fail_rate, self.fail_status, self.silent = latency, bandwidth, fail_rate, fail_status, silent
        self.sent: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.heads: Counter[str] = Counter()
        self.cuts: Counter[str] = Counter()
        self.largest = 0
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._stop = threading.Event()
        self._connections: set[socket.socket] = set()
        self._thread: Optional[threading.Thread] = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                # No Nagle: a body's last partial segment must not wait for the client's delayed ACK
                # (~40 ms on Linux), which would add a latency nobody asked for.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with server._lock:
                    server._connections.add(self.connection)

            def finish(self):
                with server._lock:
                    server._connections.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def handle(self):
                if server.silent:  # accept, never answer: wait for the server to stop
                    server._stop.wait()
                    return
                try:
                    super().handle()
                except OSError:  # the client went away, or __exit__ shut the connection
                    pass

            def _file(self) -> Optional[str]:
                name = self.path.split("?")[0].lstrip("/")
                path = os.path.realpath(os.path.join(server.root, name))
                if not path.startswith(server.root + os.sep) or not os.path.isfile(path):
                    self._answer(404)
                    return None
                return path

            def _answer(self, status: int, headers: Optional[dict] = None, body: bytes = b"") -> None:
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), "Accept-Ranges": "bytes", **(headers or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                if body and self.command != "HEAD":
                    server._write(self.wfile, body)

            def do_HEAD(self):
                if server._stop.wait(server.latency):
                    return
                path = self._file()
                if path is None:
                    return
                with server._lock:
                    server.heads[os.path.basename(path)] += 1
                self.send_response(200)
                self.send_header("Content-Length", str(os.path.getsize(path)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self):
                if server._stop.wait(server.latency):
                    return
                path = self._file()
                if path is None:
                    return
                name = os.path.basename(path)
                with server._lock:
                    draw = server._random.random() if server.fail_rate or server.cut_rate else 1.0
                    fail, cut = draw < server.fail_rate, server.fail_rate <= draw < server.fail_rate + server.cut_rate
                    if fail:
                        server.failures[name] += 1
                    if cut:
                        server.cuts[name] += 1
                if fail:
                    self._answer(server.fail_status, body=b"injected failure\n")
                    return
                size = os.path.getsize(path)
                start, end = 0, size - 1
                match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
                if match and (match.group(1) or match.group(2)):
                    if match.group(1):
                        start = int(match.group(1))
                        end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                    else:  # a suffix: the last N bytes
                        start = max(0, size - int(match.group(2)))
                    if start >= size or end < start:
                        self._answer(416, {"Content-Range": f"bytes */{size}"})
                        return
                else:
                    match = None
                headers = {"Content-Range": f"bytes {start}-{end}/{size}"} if match else {}
                with open(path, "rb") as f:
                    if server.bandwidth is None or cut:  # the kernel copies the file to the socket: little CPU of ours
                        self.send_response(206 if match else 200)
                        for key, value in {"Content-Length": str(end - start + 1), "Accept-Ranges": "bytes", **headers}.items():
                            self.send_header(key, value)
                        self.end_headers()
                        if cut:  # half the body, then the connection closes under the client
                            self.connection.sendfile(f, start, (end - start + 1) // 2)
                            self.close_connection = True
                            return
                        sent = self.connection.sendfile(f, start, end - start + 1)
                    else:
                        f.seek(start)
                        body = f.read(end - start + 1)
                        self._answer(206 if match else 200, headers, body)
                        sent = len(body)
                with server._lock:
                    server.sent[name] += sent
                    server.requests[name] += 1
                    server.largest = max(server.largest, sent)

        class Server(ThreadingHTTPServer):
            # socketserver's default backlog of 5 drops simultaneous connects (a client retries
            # after 1 s): several readers with requests in flight open more than 5 at once.
            request_queue_size = 256

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def _write(self, wfile, body: bytes) -> None:
        """Write ``body``, no faster than ``bandwidth`` bytes/s when set."""
        if self.bandwidth is None:
            wfile.write(body)
            return
        t0 = time.perf_counter()
        for i in range(0, len(body), _CHUNK):
            chunk = body[i:i + _CHUNK]
            ahead = (i + len(chunk)) / self.bandwidth - (time.perf_counter() - t0)  # this chunk is due then
            if ahead > 0 and self._stop.wait(ahead):
                return
            wfile.write(chunk)

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

    def __enter__(self) -> "RangeServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()  # wakes every sleep and every silent handler
        self._httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # handlers blocked on a keep-alive read return at once
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
