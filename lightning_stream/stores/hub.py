"""A hub id opens in bounded time, or fails with a clear error; SIGTERM ends the wait.

``datasets`` resolves a hub id through ``huggingface_hub``, whose requests each retry 5 times, and
on a network that accepts connections but never answers wait 10 s, then 60 s, a try: an
unreachable hub took minutes to report, twice over (the parquet-layout probe, then the stream).
And under Lightning, whose SIGTERM handler only takes note, nothing stopped the wait.

So before ``datasets`` asks the hub anything, :func:`opening` asks it once itself, for the
dataset's info: each try bounded by ``HF_HUB_ETAG_TIMEOUT`` (the hub's own timeout for metadata,
10 s) or ``Remote.timeout`` if smaller, ``Remote.retries`` tries, none begun after
``Remote.give_up_after`` or 15 s (the smaller): a hub that does not answer is reported within
about 25 s. This is once, at the start of a run; the reads that follow have the patience of
``Remote`` in full.
Any answer, a 404 included, means the hub is there (``datasets`` then says what the answer means);
none means a ``ConnectionError`` naming the source, the endpoint and what to do. Offline
(``HF_HUB_OFFLINE``), nothing is asked: ``datasets`` reads its cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from .._compat import is_packaged_builder
from ..spec import Source
from .remote import RemoteReadError, retried

__all__ = ["is_hub_id", "opening"]

_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
# No try of the start-up probe begins later than this (seconds): see the module.
_PROBE_GIVE_UP = 15.0


def is_hub_id(source: Source) -> bool:
    """Whether ``datasets`` would look ``source.path`` up on the hub: not a local path, not a URL,
    not one of its builders (``json``, ``parquet``...)."""
    path = source.path
    return not (os.path.exists(path) or "://" in path or is_packaged_builder(path))


@contextlib.contextmanager
def opening(source: Any) -> Iterator[None]:
    """Around the opening of ``source``: for a hub id, the hub asked first (see the module), SIGTERM
    heard while waiting on it, and an offline miss explained. Anything else passes through."""
    if not isinstance(source, Source) or not is_hub_id(source):
        yield
        return
    import datasets.config

    with _sigterm_ends_wait():
        if not datasets.config.HF_HUB_OFFLINE:
            _ask_hub(source)
        try:
            yield
        except ConnectionError as err:
            if not datasets.config.HF_HUB_OFFLINE:
                raise
            raise ConnectionError(
                f"Source(path={source.path!r}): {err}. HF_HUB_OFFLINE is set and the dataset is not in the cache "
                f"({datasets.config.HF_DATASETS_CACHE}): load it once with the network, or unset HF_HUB_OFFLINE"
            ) from err


def _ask_hub(source: Source) -> None:
    import datasets.config
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    endpoint = datasets.config.HF_ENDPOINT
    settings = dataclasses.replace(
        source.remote,
        timeout=min(source.remote.timeout, float(constants.HF_HUB_ETAG_TIMEOUT)),
        give_up_after=min(source.remote.give_up_after, _PROBE_GIVE_UP),
    )
    api = HfApi(endpoint=endpoint)
    kwargs = {k: source.load_kwargs[k] for k in ("revision", "token") if source.load_kwargs.get(k) is not None}

    tries: list[float] = []  # when each try began

    def ask() -> None:
        tries.append(time.monotonic())
        try:
            api.dataset_info(source.path, timeout=settings.timeout, expand=["sha"], **kwargs)
        except HFValidationError:
            return  # not a valid repo id: datasets reports it as a missing path, without a request
        except HfHubHTTPError as err:
            status = getattr(err.response, "status_code", None)
            if status in _TRANSIENT_STATUS:
                raise ConnectionError(f"HTTP {status}") from err
            return  # an answer (404, 401...): datasets says what it means
        except Exception as err:  # noqa: BLE001 - no answer (refused, reset, timed out): tried again
            raise ConnectionError(f"{type(err).__name__}: {err}") from err

    try:
        retried(ask, f"the hub at {endpoint}", settings)
    except RemoteReadError as err:
        raise ConnectionError(
            f"Source(path={source.path!r}): the hub at {endpoint} did not answer {len(tries)} tries in "
            f"{time.monotonic() - tries[0]:.0f} s ({err.__cause__ or err}). "
            f"Check the network (HF_ENDPOINT, proxies); a dataset already in the cache reads with HF_HUB_OFFLINE=1; "
            f"a slow or flaky link needs Source(remote=Remote(timeout=..., retries=...)) (each try waits at most "
            f"{settings.timeout:g} s: Remote.timeout or HF_HUB_ETAG_TIMEOUT, the smaller)"
        ) from err


@contextlib.contextmanager
def _sigterm_ends_wait() -> Iterator[None]:
    """While the hub is asked, SIGTERM runs the handler in place (Lightning's takes note of it), then
    ends the process as SIGTERM's default would (exit status 143) instead of leaving it waiting on a
    network. Only in the main thread, where handlers run; with no Python handler SIGTERM ends the
    process anyway, and an ignored one stays ignored."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        previous(signum, frame)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)
