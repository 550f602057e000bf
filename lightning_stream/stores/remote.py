"""Remote files (``https://``, ``hf://``, ``s3://``... through fsspec) read by range, with retries.

A multi-day run meets transient failures (5xx, 429, a reset connection, a timeout) routinely;
one of them must not end it. :class:`RemoteFile` is the seekable, read-only file pyarrow reads a
parquet footer and row groups from: every read is one range request (``fs.cat_file``), retried
on a transient failure with exponential backoff and jitter, up to ``Remote.retries`` tries and
``Remote.give_up_after`` seconds (:class:`~lightning_stream.spec.Remote`), then a clear error
naming the URL. A permanent failure (403,
404, a missing file) fails at once, naming the URL. A range read either returns all its bytes or
raises, so no row is lost or repeated.

Reads ahead of use (:meth:`RemoteFile.fetch_later`) are coroutines on fsspec's event loop, one
per process, for the filesystems that have one (http, s3, gcs): many requests in flight, no
thread each. Others (``hf://``) get a small thread pool per process.

A worker forked from a process that opened remote files inherits its filesystems, whose sessions
belong to the parent's event loop, a loop with no thread in the child. Dropping them there runs
fsspec's finalizer, which waits on that loop (1 s, with its read-ahead stalled behind it); so
each process keeps the filesystems it made for its whole life (``_FILESYSTEMS``), and a child
leaves its parent's alone and makes its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

from .._compat import datasets_streaming_retries
from ..spec import Remote

log = logging.getLogger(__name__)

__all__ = [
    "RemoteFile",
    "RemoteReadError",
    "fetch",
    "fetch_async",
    "is_remote",
    "open_remote",
    "opened",
    "over_network",
    "retried",
    "retried_tables",
]

# Statuses worth another try (as in huggingface_hub's and s3fs's own retry rules).
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
# Errors without a status that are worth another try, by class name anywhere in their class tree:
# aiohttp's ServerDisconnectedError and ClientPayloadError (a body cut short) are not OSErrors.
_TRANSIENT_NAMES = ("Timeout", "Connection", "Disconnected", "Payload")

# The filesystems each process made, by pid (see the module docstring), and its read-ahead threads.
_FILESYSTEMS: dict[int, list[Any]] = {}
_THREADS: dict[int, ThreadPoolExecutor] = {}


class RemoteReadError(OSError):
    """A remote read failed for good: permanently, or after its retries."""


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _status(err: BaseException) -> int | None:
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
    return isinstance(err, OSError) or any(
        word in cls.__name__ for cls in type(err).__mro__ for word in _TRANSIENT_NAMES
    )


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
    """One remote file; each ``read`` is one retried range request, but for the bytes of ``tail``
    (the file's last bytes, fetched with its size when it was opened: where a footer is)."""

    def __init__(self, fs: Any, path: str, size: int, settings: Remote, tail: bytes = b"") -> None:
        super().__init__(size)
        self.fs, self.path, self.settings, self.tail = fs, path, settings, tail

    def _range(self, start: int, end: int) -> bytes:
        lo = self.size - len(self.tail)
        if not self.tail or end <= lo:
            return fetch(self.fs, self.path, start, end, self.settings)
        if start >= lo:
            return self.tail[start - lo : end - lo]
        return fetch(self.fs, self.path, start, lo, self.settings) + self.tail[: end - lo]

    def fetch_later(self, start: int, end: int) -> Future[bytes]:
        """Bytes ``[start, end)``, fetched in the background with the same retries."""
        return _later(self.fs, self.path, start, end, self.settings)


def _later(fs: Any, path: str, start: int, end: int | None, settings: Remote) -> Future[bytes]:
    """:func:`fetch` in the background: a coroutine on the event loop of an async filesystem, else
    a thread of this process's pool."""
    import fsspec.asyn

    if isinstance(fs, fsspec.asyn.AsyncFileSystem):
        return asyncio.run_coroutine_threadsafe(fetch_async(fs, path, start, end, settings), fs.loop)
    pool = _THREADS.get(os.getpid())
    if pool is None:
        pool = _THREADS[os.getpid()] = ThreadPoolExecutor(
            max(1, settings.read_ahead), thread_name_prefix="lightning_stream-fetch"
        )
    return pool.submit(fetch, fs, path, start, end, settings)


class _Tries:
    """The retries of one request: after each failure, how long to wait, or the error that ends it."""

    def __init__(self, what: str, settings: Remote, transient: Callable[[BaseException], bool] = _transient) -> None:
        self.what, self.settings, self.transient = what, settings, transient
        self.began, self.wait, self.attempt = time.monotonic(), settings.backoff, 0

    def after(self, err: BaseException) -> float:
        """Seconds to wait before trying again after ``err``; a :class:`RemoteReadError` when not to."""
        self.attempt += 1
        spent = time.monotonic() - self.began
        if not self.transient(err):
            raise RemoteReadError(f"cannot read {self.what}: {type(err).__name__}: {err}") from err
        if self.attempt >= self.settings.retries or spent + self.wait > self.settings.give_up_after:
            raise RemoteReadError(
                f"cannot read {self.what} after {self.attempt} tries in {spent:.0f} s: {type(err).__name__}: {err}. "
                "For a flaky link, raise Source(remote=Remote(retries=..., give_up_after=...))."
            ) from err
        # "Full jitter": any wait up to the doubled bound, so that readers who failed together do not
        # come back together, and a lone failure (the common case) is tried again soon.
        wait, self.wait = random.uniform(0, self.wait), min(30.0, self.wait * 2)
        log.info("retrying %s in %.2f s after %s: %s", self.what, wait, type(err).__name__, err)
        return wait


def retried(call: Callable[[], Any], what: str, settings: Remote) -> Any:
    """``call()``, tried again on transient failures; a :class:`RemoteReadError` naming ``what`` else."""
    tries = _Tries(what, settings)
    while True:
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - classified by _Tries: transient ones are tried again
            time.sleep(tries.after(err))


def _whole(data: bytes, start: int, end: int | None) -> bytes:
    if end is not None and len(data) != end - start:  # a suffix (``start < 0``, no end): its caller checks it
        raise ConnectionError(f"short read: {len(data)} of {end - start} bytes")
    return data


def fetch(fs: Any, path: str, start: int, end: int | None, settings: Remote) -> bytes:
    """Bytes ``[start, end)`` of ``path``, retried on transient failures; ``start=-n, end=None``:
    its last ``n`` bytes (a suffix range, no size needed)."""
    return retried(
        lambda: _whole(fs.cat_file(path, start=start, end=end), start, end), f"{path} (bytes {start}-{end})", settings
    )


async def fetch_async(fs: Any, path: str, start: int, end: int | None, settings: Remote) -> bytes:
    """:func:`fetch` as a coroutine of an async filesystem, on its event loop."""
    tries = _Tries(f"{path} (bytes {start}-{end})", settings)
    while True:
        try:
            # Public despite the underscore: fsspec documents an async filesystem's coroutines as
            # its blocking methods' names with a leading "_".
            return _whole(await fs._cat_file(path, start=start, end=end), start, end)
        except Exception as err:  # noqa: BLE001 - classified by _Tries
            await asyncio.sleep(tries.after(err))


def _with_timeout(options: dict, settings: Remote) -> dict:
    """HTTP ``storage_options`` with aiohttp's timeouts bounded by ``settings.timeout``: it waits
    5 minutes by default, then ``datasets`` tries again, and a server that stops answering held a
    run for over 5 minutes a read. The connect and each read are bounded, not the whole answer,
    which a slow link may take longer to send. A timeout the user gave is kept."""
    import aiohttp

    options = dict(options)
    client = dict(options.pop("client_kwargs", {}))
    client.setdefault(
        "timeout", aiohttp.ClientTimeout(total=None, sock_connect=settings.timeout, sock_read=settings.timeout)
    )
    options["client_kwargs"] = client
    return options


def stream_storage_options(source: Any) -> dict | None:
    """The ``storage_options`` for ``datasets.load_dataset`` of a stream over HTTP(S) URLs: the
    user's, with :func:`_with_timeout` for the http and https protocols (``datasets`` keys them by
    protocol, or takes unkeyed ones for every protocol). None when nothing is read over HTTP."""
    files = source.data_files
    urls = [files] if isinstance(files, str) else list(files or [])
    if not any(str(f).startswith(("http://", "https://")) for f in urls):
        return None
    import fsspec

    given = dict(source.load_kwargs.get("storage_options") or {})
    keyed = any(key in fsspec.available_protocols() for key in given)
    options = dict(given) if keyed else {}
    for protocol in ("http", "https"):
        options[protocol] = _with_timeout(given.get(protocol, {}) if keyed else given, source.remote)
    return options


def open_remote(
    path: str, settings: Remote, storage_options: dict, size: int | None = None, tail: int = 0
) -> RemoteFile:
    """The file at ``path``; its size asked once, with the same retries, unless given. With
    ``tail``, its last ``tail`` bytes are fetched too, at the same time as the size (a footer in
    one round trip where asking the size, then reading the end, takes two); a tail that fails or
    comes back short is left out, and those bytes are read by range when asked."""
    import fsspec

    options = (
        _with_timeout(storage_options, settings) if path.startswith(("http://", "https://")) else dict(storage_options)
    )
    fs, resolved = fsspec.core.url_to_fs(path, **options)
    kept = _FILESYSTEMS.setdefault(os.getpid(), [])
    if not any(fs is other for other in kept):
        kept.append(fs)
    if size is not None:
        return RemoteFile(fs, resolved, size, settings)
    ending = _later(fs, resolved, -tail, None, settings) if tail > 0 else None

    def ask_size() -> int:
        try:
            return int(fs.size(resolved))
        except FileNotFoundError:
            # fsspec's HTTP info reports any failure (a timeout too) as a missing file: one byte
            # by GET tells the real error, transient or not.
            if resolved.startswith(("http://", "https://")):
                fs.cat_file(resolved, start=0, end=1)
            raise

    size = retried(ask_size, path, settings)
    return RemoteFile(fs, resolved, size, settings, _tail_of(ending, size, tail))


def _tail_of(ending: Future[bytes] | None, size: int, tail: int) -> bytes:
    """The last ``min(tail, size)`` bytes from ``ending``, or nothing if it failed or does not check
    (a server that ignores the range sends the whole file: its end is kept)."""
    if ending is None:
        return b""
    try:
        data = ending.result()
    except RemoteReadError as err:
        log.debug("no tail: %s", err)
        return b""
    n = min(tail, size)
    if len(data) == size:
        data = data[size - n :]
    return data if len(data) == n else b""


class Span(_RangeFile):
    """Bytes ``[start, start + len(data))`` of a file of ``size`` bytes, fetched before pyarrow asks:
    a row group read from it needs no request of its own."""

    def __init__(self, data: bytes, start: int, size: int, where: str) -> None:
        super().__init__(size)
        self.data, self.start, self.where = data, start, where

    def _range(self, start: int, end: int) -> bytes:
        lo, hi = start - self.start, end - self.start
        if lo < 0 or hi > len(self.data):
            raise OSError(
                f"{self.where}: bytes {start}-{end} were not fetched (fetched {self.start}-{self.start + len(self.data)})"
            )
        return self.data[lo:hi]


def row_group_span(meta: Any, group: int, columns: list[str] | None) -> tuple[int, int]:
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


# -- streams read by ``datasets`` (json, csv... over HTTP) ------------------------------------------
_URL = re.compile(r"https?://[^\s'\"]+")


def over_network(source: Any) -> bool:
    """Whether ``source`` (a :class:`~lightning_stream.spec.Source`) reads files over a network:
    URLs in its ``data_files``, or a hub id (no such local folder)."""
    files = source.data_files
    if files is None:
        return not os.path.exists(source.path)
    return any(is_remote(f) for f in ([files] if isinstance(files, str) else files))


def _probe(url: str, source: Any) -> BaseException | None:
    """Whether ``url`` answers (one try): None if it does, else the error (a FileNotFoundError when
    it is missing). A file ``datasets`` said was missing may be on a server that did not answer."""
    options = source.load_kwargs.get("storage_options", {})
    try:
        open_remote(url, dataclasses.replace(source.remote, retries=1), options)
    except RemoteReadError as err:
        return err.__cause__ or err
    return None


def _stream_transient(err: BaseException, source: Any) -> BaseException | None:
    """For a stream's error, the transient failure to count and report (``err``, or what a URL that
    ``datasets`` called missing really did), or None for a permanent one. Transient: :func:`_transient`,
    also down its causes (``raise ... from``), or a failed request that ``datasets`` reported as
    something else. Its file checks take a failed GET for a missing file: it says
    ``FileNotFoundError`` naming a URL that does answer (or that timed out), or, having then listed
    the URL as a folder, aiohttp's ``NonHttpUrlClientError``."""
    chain: list[BaseException] = []
    while err is not None and len(chain) < 10:
        chain.append(err)
        err = err.__cause__
    if any(_transient(e) or type(e).__name__ == "NonHttpUrlClientError" for e in chain):
        return chain[0]
    missing = chain[0]
    urls = _URL.findall(str(missing)) if isinstance(missing, FileNotFoundError) else []
    probes = {url: _probe(url, source) for url in urls}
    if not urls or any(isinstance(p, FileNotFoundError) for p in probes.values()):
        return None
    silent = {url: p for url, p in probes.items() if p is not None}
    if not silent:
        return missing
    return ConnectionError(
        "; ".join(f"{url} did not answer ({type(p).__name__}: {str(p) or 'timed out'})" for url, p in silent.items())
    )


def opened(load: Callable[[], Any], source: Any) -> Any:
    """``load()`` (``datasets.load_dataset`` of a stream), tried again while it fails transiently
    (``Remote`` settings of ``source``, for a source read over a network, not offline). A
    permanent error is raised as it is, so that a missing file still reads as one."""
    import datasets.config

    if not over_network(source) or datasets.config.HF_HUB_OFFLINE:
        return load()
    files = source.data_files
    what = f"{source.path} ({', '.join([files] if isinstance(files, str) else files)})" if files else str(source.path)
    tries = _Tries(what, source.remote, transient=lambda err: True)  # classified here
    while True:
        try:
            with _datasets_retries(source.remote):
                return load()
        except Exception as err:  # noqa: BLE001 - transient ones are tried again
            counted = _stream_transient(err, source)
            if counted is None:
                raise
            time.sleep(tries.after(counted))


def _datasets_retries(settings: Remote) -> AbstractContextManager[None]:
    """``datasets``' own retries of a stream's opens and reads (20 tries, 5 s apart) take
    ``settings``' count and first wait while ours read; then back as they were."""
    return datasets_streaming_retries(settings.retries, settings.backoff)


def retried_tables(read: Callable[[], Iterator[Any]], what: str, source: Any) -> Iterator[Any]:
    """The arrow tables of ``read()`` (a shard of ``source`` read front to back); after a transient
    failure the shard is read again from its start and the rows already given are skipped, so
    each row comes once. ``Remote.retries`` counts the failures in a row, without a table between."""
    settings = source.remote
    tables: Iterator[Any] | None = None
    given = skip = 0
    tries: _Tries | None = None
    while True:
        try:
            with _datasets_retries(settings):
                if tables is None:
                    tables, skip = read(), given
                table = next(tables, None)
        except Exception as err:  # noqa: BLE001 - transient ones are tried again, others raised as they are
            counted = _stream_transient(err, source)
            if counted is None:
                raise
            tries = tries or _Tries(what, settings, transient=lambda err: True)
            time.sleep(tries.after(counted))
            tables = None
            continue
        if table is None:
            return
        if skip >= table.num_rows:
            skip -= table.num_rows
            continue
        table, skip = table.slice(skip), 0
        given += table.num_rows
        tries = None
        yield table
