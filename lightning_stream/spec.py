"""What to read: the :class:`Source` and :class:`Mix` specs users write, and :func:`as_source`.

Specs are plain data mirroring ``datasets.load_dataset``'s arguments; nothing here opens a file.
``stores.open_store`` turns a spec into the store that reads its rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

__all__ = ["Mix", "Remote", "Source", "as_source"]

# Lives here, not with the file resolving in ``stores``: a plain string is parsed without I/O.
_EXT_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv", ".tar": "webdataset"}


@dataclass(frozen=True)
class Remote:
    """How remote files (``https://``, ``hf://``, ``s3://``... through fsspec) are read.

    Args:
        retries: tries per range request before giving up (transient failures only: 5xx, 429,
            timeouts, resets; a 403 or 404 fails at once).
        timeout: seconds to connect, and to wait between bytes of an answer, before a try fails.
        give_up_after: seconds after which a request stops retrying, whatever ``retries`` says.
        backoff: seconds before the first retry; doubled each time (with jitter), at most 30 s.
        read_ahead: row groups each reader fetches ahead of use, as requests in flight at once
            (0: none). They are the reader's next row groups in its lane's order.

    Example:
        >>> Source(path="parquet", data_files=urls, remote=Remote(retries=10, read_ahead=32))  # doctest: +SKIP
    """

    retries: int = 6
    timeout: float = 30.0
    give_up_after: float = 300.0
    backoff: float = 0.5
    read_ahead: int = 32

    def __post_init__(self) -> None:
        if self.retries < 1 or self.timeout <= 0 or self.give_up_after <= 0 or self.backoff < 0 or self.read_ahead < 0:
            raise ValueError(f"Remote needs retries >= 1, timeout > 0, give_up_after > 0, backoff >= 0, read_ahead >= 0; got {self}")


@dataclass
class Source:
    """A dataset to stream, described with ``datasets.load_dataset``'s arguments.

    Args:
        path: a builder name for local files (``"parquet"``, ``"json"``, ``"csv"``, ``"arrow"``,
            ``"webdataset"``), a ``save_to_disk`` folder, a single local file, or a hub id
            (opened with ``streaming=True``).
        name: dataset configuration name (hub datasets).
        data_files: file(s) or glob pattern(s), as in ``load_dataset``.
        data_dir: data directory, as in ``load_dataset``.
        split: split to read.
        streaming: force stream reading (front to back) even for a random-access format.
        num_shards: for ``save_to_disk`` / arrow sources, the number of contiguous pieces whose
            order is shuffled each epoch (default: pieces of 128 rows).
        columns: read only these columns.
        load_kwargs: extra keyword arguments for ``load_dataset`` (``revision``, ``token``,
            ``storage_options``...); ``token`` and ``storage_options`` also reach fsspec for
            remote parquet files.
        remote: retries, timeouts and read-ahead for remote files (:class:`Remote`).

    Example:
        >>> Source(path="parquet", data_files="data/train-*.parquet")  # doctest: +ELLIPSIS
        Source(path='parquet', ...)
    """

    path: str
    name: Optional[str] = None
    data_files: Union[str, list[str], None] = None
    data_dir: Optional[str] = None
    split: str = "train"
    streaming: Optional[bool] = None
    num_shards: Optional[int] = None
    columns: Optional[list[str]] = None
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    remote: Remote = field(default_factory=Remote)

    def __post_init__(self) -> None:
        if isinstance(self.remote, dict):  # from YAML or a plain dict
            self.remote = Remote(**self.remote)


@dataclass
class Mix:
    """Sources mixed with ``probabilities`` (uniform by default).

    Args:
        sources: the sources to mix (each a :class:`Source` or a string).
        probabilities: share of each source in the mixture; uniform when omitted.
        stopping_strategy: ``"first_exhausted"`` or ``"all_exhausted"``, as in
            ``datasets.interleave_datasets``.

    Example:
        >>> Mix(["captions.parquet", "vqa.parquet"], probabilities=[0.7, 0.3])  # doctest: +ELLIPSIS
        Mix(sources=['captions.parquet', 'vqa.parquet'], ...)
    """

    sources: list[Union[Source, str]]
    probabilities: Optional[list[float]] = None
    stopping_strategy: Literal["first_exhausted", "all_exhausted"] = "first_exhausted"

    @property
    def path(self) -> str:
        return "mix(" + ", ".join(as_source(s).path for s in self.sources) + ")"


def as_source(spec: Union[Source, Mix, str, dict]) -> Union[Source, Mix]:
    """Accept a :class:`Source`, a plain string (path, file or hub id) or a dict of its fields.

    A :class:`Mix` is returned as it is.
    """
    if isinstance(spec, (Source, Mix)):
        return spec
    if isinstance(spec, dict):
        return Source(**spec)
    if isinstance(spec, str):
        ext = os.path.splitext(spec[:-3] if spec.endswith(".gz") else spec)[1]
        if ext in _EXT_BUILDERS and not os.path.isdir(spec):
            return Source(path=_EXT_BUILDERS[ext], data_files=spec)
        return Source(path=spec)
    raise TypeError(f"expected a Source, a string or a dict, got {type(spec).__name__}")
