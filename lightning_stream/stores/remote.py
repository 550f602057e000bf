"""Remote files (``https://``, ``hf://``, ``s3://``... through fsspec) read by range, with retries.

A multi-day run meets transient failures (5xx, 429, a reset connection, a timeout) routinely;
one of them must not end it. :class:`RemoteFile` is the seekable, read-only file pyarrow reads a
parquet footer and row groups from: every read is one range request (``fs.cat_file``), retried
on a transient failure with exponential backoff and jitter, up to ``Remote.retries`` tries and
``Remote.give_up_after`` seconds (:class:`~lightning_stream.spec.Remote`), then a clear error
naming the URL. A permanent failure (403,
404, a missing file) fails at once, naming the URL. A range read either returns all its bytes or
raises, so no row is lost or repeated.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Optional

from ..spec import Remote

log = logging.getLogger(__name__)

__all__ = ["RemoteFile", "RemoteReadError", "fetch", "is_remote", "open_remote", "retried"]

# Statuses worth another try (as in huggingface_hub's and s3fs's own retry rules).
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


class RemoteReadError(OSError):
    """A remote read failed for good: permanently, or after its retries."""


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _status(err: BaseException) -> Optional[int]:
    for holder in (err, getattr(err, "response", None)):
        for name in ("status", "status_code", "code"):
            value = getattr(holder, name, None)
            if isinstance(value, int):
                return value
    return None


def _transient(err: BaseException) -> bool:
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    status = _status(err)
    if status is not None:
        return status in _TRANSIENT_STATUS
    # Timeouts, resets and refused connections carry no status.
    return isinstance(err, (TimeoutError, ConnectionError, OSError)) or "Timeout" in type(err).__name__ or "Connection" in type(err).__name__


class _RangeFile(io.RawIOBase):
    """A read-only, seekable file of ``size`` bytes whose reads are byte ranges (``_range``)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self._pos + n)
        if end <= self._pos:
            return b""
        data = self._range(self._pos, end)
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _range(self, start: int, end: int) -> bytes:
        raise NotImplementedError


class RemoteFile(_RangeFile):
    """One remote file; each ``read`` is one retried range request."""

    def __init__(self, fs: Any, path: str, size: int, settings: Remote) -> None:
        super().__init__(size)
        self.fs, self.path, self.settings = fs, path, settings

    def _range(self, start: int, end: int) -> bytes:
        return fetch(self.fs, self.path, start, end, self.settings)


def retried(call: Callable[[], Any], what: str, settings: Remote) -> Any:
    """``call()``, tried again on transient failures; a :class:`RemoteReadError` naming ``what`` else."""
    began, wait = time.monotonic(), settings.backoff
    for attempt in range(1, settings.retries + 1):
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - classified here: transient ones are tried again
            spent = time.monotonic() - began
            if not _transient(err):
                raise RemoteReadError(f"cannot read {what}: {type(err).__name__}: {err}") from err
            if attempt == settings.retries or spent + wait > settings.give_up_after:
                raise RemoteReadError(
                    f"cannot read {what} after {attempt} tries in {spent:.0f} s: {type(err).__name__}: {err}. "
                    "For a flaky link, raise Source(remote=Remote(retries=..., give_up_after=...))."
                ) from err
            log.info("retrying %s in %.1f s after %s: %s", what, wait, type(err).__name__, err)
            time.sleep(wait * random.uniform(0.5, 1.5))
            wait = min(30.0, wait * 2)
    raise AssertionError("unreachable")


def fetch(fs: Any, path: str, start: int, end: int, settings: Remote) -> bytes:
    """Bytes ``[start, end)`` of ``path``, retried on transient failures."""

    def once() -> bytes:
        data = fs.cat_file(path, start=start, end=end)
        if len(data) != end - start:
            raise ConnectionError(f"short read: {len(data)} of {end - start} bytes")
        return data

    return retried(once, f"{path} (bytes {start}-{end})", settings)


def open_remote(path: str, settings: Remote, storage_options: dict) -> RemoteFile:
    """The file at ``path`` (its size asked once, with the same retries)."""
    import fsspec

    options = dict(storage_options)
    if path.startswith(("http://", "https://")):
        # aiohttp waits 5 minutes by default: bound the connect and each read instead (not the
        # whole answer, which a slow link may take longer to send).
        import aiohttp

        client = dict(options.pop("client_kwargs", {}))
        client.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=settings.timeout, sock_read=settings.timeout))
        options["client_kwargs"] = client
    fs, resolved = fsspec.core.url_to_fs(path, **options)

    def size() -> int:
        try:
            return int(fs.size(resolved))
        except FileNotFoundError:
            # fsspec's HTTP info reports any failure (a timeout too) as a missing file: one byte
            # by GET tells the real error, transient or not.
            if resolved.startswith(("http://", "https://")):
                fs.cat_file(resolved, start=0, end=1)
            raise

    return RemoteFile(fs, resolved, retried(size, path, settings), settings)


class Span(_RangeFile):
    """Bytes ``[start, start + len(data))`` of a file of ``size`` bytes, fetched before pyarrow asks:
    a row group read from it needs no request of its own."""

    def __init__(self, data: bytes, start: int, size: int, where: str) -> None:
        super().__init__(size)
        self.data, self.start, self.where = data, start, where

    def _range(self, start: int, end: int) -> bytes:
        lo, hi = start - self.start, end - self.start
        if lo < 0 or hi > len(self.data):
            raise OSError(f"{self.where}: bytes {start}-{end} were not fetched (fetched {self.start}-{self.start + len(self.data)})")
        return self.data[lo:hi]


def row_group_span(meta: Any, group: int, columns: Optional[list[str]]) -> tuple[int, int]:
    """Byte range ``[start, end)`` of the column chunks of row group ``group`` (of ``columns``)."""
    rg = meta.row_group(group)
    starts, ends = [], []
    for c in range(rg.num_columns):
        chunk = rg.column(c)
        if columns is not None and chunk.path_in_schema.split(".")[0] not in columns:
            continue
        first = chunk.data_page_offset
        if chunk.has_dictionary_page and chunk.dictionary_page_offset is not None and chunk.dictionary_page_offset > 0:
            first = min(first, chunk.dictionary_page_offset)
        starts.append(first)
        ends.append(first + chunk.total_compressed_size)
    return min(starts), max(ends)
