"""A loopback HTTP server that honours ``Range`` requests and counts the bytes it sends per file.

Used to check what remote (``https://``) sources cost the user: the bytes that cross the wire,
counted where they leave the server, not inside lightning_stream.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["RangeServer"]


class RangeServer:
    """Serves the files of ``root`` on ``127.0.0.1`` (a free port) while in a ``with`` block."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.sent: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _file(self):
                path = os.path.join(server.root, self.path.lstrip("/").split("?")[0])
                return path if os.path.isfile(path) else None

            def do_HEAD(self):
                path = self._file()
                if path is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(os.path.getsize(path)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self):
                path = self._file()
                if path is None:
                    self.send_error(404)
                    return
                size = os.path.getsize(path)
                start, end = 0, size - 1
                match = re.match(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
                if match:
                    if match.group(1):
                        start = int(match.group(1))
                        end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                    else:  # a suffix: the last N bytes
                        start = max(0, size - int(match.group(2)))
                with open(path, "rb") as f:
                    f.seek(start)
                    body = f.read(end - start + 1)
                self.send_response(206 if match else 200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if match:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                self.wfile.write(body)
                name = os.path.basename(path)
                server.sent[name] += len(body)
                server.requests[name] += 1

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> "RangeServer":
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
