"""A node-local cache of remote row groups, on disk, shared by the processes of a node.

For multi-epoch runs over remote data that fits on a local disk (``Remote(cache_dir=...)``; off
by default, as the mission's data may not fit). Each row group's bytes are one file named by a
hash of the remote file's URL, its footer (a rewritten file misses) and the byte range. Files are
written under a temporary name and renamed, so a reader sees a whole entry or none, and any
process of the node (workers, ranks) can read what another wrote. The folder is kept under
``max_bytes`` by removing the least recently used entries (a read touches its entry).
"""

from __future__ import annotations

import hashlib
import os
import tempfile

__all__ = ["BlockCache"]

_SUFFIX = ".rg"


class BlockCache:
    """Bytes of remote byte ranges under ``folder``, at most ``max_bytes`` of them."""

    def __init__(self, folder: str, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        os.makedirs(folder, exist_ok=True)
        self._written = 0  # bytes this process wrote since it last measured the folder

    def key(self, url: str, footer: str, start: int, end: int) -> str:
        return hashlib.sha1(f"{url}\0{footer}\0{start}\0{end}".encode()).hexdigest()

    def get(self, key: str, size: int) -> bytes | None:
        """The cached bytes, or None (absent, or not ``size`` bytes: then dropped)."""
        path = os.path.join(self.folder, key + _SUFFIX)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        if len(data) != size:  # not written by this cache: never trusted
            _remove(path)
            return None
        try:
            os.utime(path)  # most recently used
        except OSError:
            pass
        return data

    def put(self, key: str, data: bytes) -> None:
        """Store ``data``; a full disk or a folder gone only means no cache for it."""
        if len(data) > self.max_bytes:
            return
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, os.path.join(self.folder, key + _SUFFIX))
        except OSError:
            if tmp is not None:
                _remove(tmp)
            return
        self._written += len(data)
        if self._written >= max(1, self.max_bytes // 16):  # measure the folder now and then, not per write
            self._written = 0
            self.trim()

    def trim(self) -> None:
        """Remove the least recently used entries until the folder holds at most ``max_bytes``."""
        entries = []
        with os.scandir(self.folder) as it:
            for entry in it:
                if entry.name.endswith(_SUFFIX):
                    try:
                        st = entry.stat()
                    except OSError:
                        continue
                    entries.append((st.st_mtime, st.st_size, entry.path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            _remove(path)
            total -= size

    def size(self) -> int:
        """Bytes held now."""
        with os.scandir(self.folder) as it:
            return sum(e.stat().st_size for e in it if e.name.endswith(_SUFFIX))


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
