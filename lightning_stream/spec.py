"""What to read: the :class:`Source` and :class:`Mix` specs users write, and :func:`as_source`.

Specs are plain data mirroring ``datasets.load_dataset``'s arguments; nothing here opens a file.
``stores.open_store`` turns a spec into the store that reads its rows.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["DatasetSource", "Mix", "Remote", "Source", "as_source", "named_sources"]

# Lives here, not with the file resolving in ``stores``: a plain string is parsed without I/O.
_EXT_BUILDERS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".tar": "webdataset",
}


@dataclass(frozen=True)
class Remote:
    """How remote files (``https://``, ``hf://``, ``s3://``... through fsspec) are read.

    Args:
        retries: tries per range request before giving up (transient failures only: 5xx, 429,
            timeouts, resets; a 403 or 404 fails at once).
        timeout: seconds to connect, and to wait between bytes of an answer, before a try fails.
        give_up_after: seconds after which a request stops retrying, whatever ``retries`` says.
        backoff: seconds before the first retry; doubled each time (with jitter), at most 30 s.
            A short first wait keeps a lone 503 from stalling the reader that needs the row
            group (the reads ahead hide ~0.1 s, not 0.5 s); an outage still backs off, to
            ~50 s over 10 tries.
        read_ahead: row groups each reader fetches ahead of use, in flight or waiting (0: none).
            They are the reader's next row groups in its lane's order, and hold at most 64 MiB
            (or two shuffle windows' compressed bytes, when ``buffer_size`` makes that more).
        max_request_bytes: largest range request when row groups next to each other in a file
            are fetched together (a larger row group is still one request). None: a quarter of
            the read-ahead bytes (16 MiB, or half a shuffle window).
        cache_dir: a folder on the node's local disk where row groups read over the network are
            kept, shared by the workers and ranks of the node, so that later epochs read them
            from disk. None (the default): nothing is written to disk.
        cache_bytes: the most the cache folder holds (least recently used row groups go first);
            it may pass this by a sixteenth per process writing, between two trims. 10 GiB.

    Example:
        >>> Source(path="parquet", data_files=urls, remote=Remote(retries=10, read_ahead=32))  # doctest: +SKIP
    """

    retries: int = 10
    timeout: float = 30.0
    give_up_after: float = 300.0
    backoff: float = 0.1
    read_ahead: int = 32
    max_request_bytes: int | None = None
    cache_dir: str | None = None
    cache_bytes: int = 10 << 30

    def __post_init__(self) -> None:
        if (
            self.retries < 1
            or self.timeout <= 0
            or self.give_up_after <= 0
            or self.backoff < 0
            or self.read_ahead < 0
            or (self.max_request_bytes is not None and self.max_request_bytes < 1)
            or self.cache_bytes < 1
        ):
            raise ValueError(
                f"Remote needs retries >= 1, timeout > 0, give_up_after > 0, backoff >= 0, read_ahead >= 0, max_request_bytes >= 1, cache_bytes >= 1; got {self}"
            )


@dataclass
class Source:
    """A dataset to stream, described with ``datasets.load_dataset``'s arguments.

    Args:
        path: a builder name for local files (``"parquet"``, ``"json"``, ``"csv"``, ``"arrow"``,
            ``"webdataset"``), a ``save_to_disk`` folder, a single local file, or a hub id
            (opened with ``streaming=True``).
        name: dataset configuration name (hub datasets).
        data_files: file(s) or glob pattern(s), as in ``load_dataset``; a dict of them by split
            (``{"train": ..., "validation": ...}``) is read for ``split``.
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
    name: str | None = None
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    data_dir: str | None = None
    split: str = "train"
    streaming: bool | None = None
    num_shards: int | None = None
    columns: list[str] | None = None
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    remote: Remote = field(default_factory=Remote)

    def __post_init__(self) -> None:
        if isinstance(self.remote, dict):  # from YAML or a plain dict
            self.remote = Remote(**self.remote)
        _check_source(self)


@dataclass
class DatasetSource:
    """A ``datasets.Dataset`` or ``datasets.IterableDataset`` the user already holds.

    Made by :func:`as_source`; users pass the object itself. A ``Dataset`` is read by index from
    its arrow table (memory-mapped cache files or memory), through its indices mapping when it
    has one (``shuffle``/``select``/``filter``), with its format (``with_format``,
    ``with_transform``) applied in the workers. An ``IterableDataset`` whose rows come from files
    that can be read by index (``Dataset.to_iterable_dataset``, parquet or arrow files) is read
    by index from those files, and its own ``map``/``filter``/column chain is replayed in the
    workers on each batch's rows (``stores/objects.py``); any other one is read as a stream.

    Args:
        dataset: the object.
        split: its split name (for messages), optionally with ``datasets``' slicing
            (``"train[:90%]"``, ``"train[1000:]"``).
    """

    dataset: Any
    split: str = "train"

    @property
    def path(self) -> str:
        kind = type(self.dataset).__name__
        info = getattr(self.dataset, "info", None)
        name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
        return f"{kind}({name or 'in memory'}, split={self.split!r})"


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

    sources: list[Source | str]
    probabilities: list[float] | None = None
    stopping_strategy: Literal["first_exhausted", "all_exhausted"] = "first_exhausted"

    def __post_init__(self) -> None:
        _check_mix(self)

    @property
    def path(self) -> str:
        return "mix(" + ", ".join(as_source(s).path for s in self.sources) + ")"


def _check_source(source: Source) -> None:
    """Wrong arguments fail here, each named with what it must be: later they would surface as an
    IndexError deep in the epoch order, or as an epoch of 0 steps (``columns=[]``)."""

    def fail(error: type, arg: str, must: str) -> None:
        raise error(f"Source({arg}={getattr(source, arg)!r}): {arg} must be {must}")

    if isinstance(source.path, os.PathLike):
        source.path = os.fspath(source.path)
    if not isinstance(source.path, str) or not source.path:
        fail(
            TypeError if not isinstance(source.path, str) else ValueError,
            "path",
            "a builder name, a folder, a file or a hub id (a non-empty string)",
        )
    if isinstance(source.data_dir, os.PathLike):
        source.data_dir = os.fspath(source.data_dir)
    for arg in ("name", "data_dir"):
        if getattr(source, arg) is not None and not isinstance(getattr(source, arg), str):
            fail(TypeError, arg, "a string or None")
    files = source.data_files
    if isinstance(files, Mapping) and isinstance(source.split, str):  # load_dataset's {split: files}
        name = source.split.split("[")[0]
        if name not in files:
            raise ValueError(
                f"Source(data_files={files!r}, split={source.split!r}): no files for split {name!r}; "
                f"the splits given are {list(files)}: pick one with split="
            )
        files = source.data_files = files[name]
    if isinstance(files, (str, os.PathLike)):
        source.data_files = os.fspath(files)
    elif isinstance(files, (list, tuple)) and files and all(isinstance(f, (str, os.PathLike)) for f in files):
        source.data_files = [os.fspath(f) for f in files]
    elif files is not None:
        fail(
            TypeError if not isinstance(files, (list, tuple)) else ValueError,
            "data_files",
            "a file or glob pattern, a non-empty list of them, a dict of them by split (as in load_dataset), or None",
        )
    if not isinstance(source.split, str) or not source.split:
        fail(
            TypeError if not isinstance(source.split, str) else ValueError,
            "split",
            'a split name such as "train" (a non-empty string)',
        )
    if source.streaming is not None and not isinstance(source.streaming, bool):
        fail(TypeError, "streaming", "True, False or None")
    shards = source.num_shards
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int)):
        fail(
            TypeError,
            "num_shards",
            "an int (the pieces whose order is shuffled each epoch) or None (pieces of 128 rows)",
        )
    if shards is not None and shards < 1:
        fail(
            ValueError,
            "num_shards",
            "at least 1 (the pieces whose order is shuffled each epoch), or None (pieces of 128 rows)",
        )
    columns = source.columns
    if isinstance(columns, str):
        raise TypeError(f"Source(columns={columns!r}): columns must be a list of column names: columns=[{columns!r}]")
    if columns is not None and (not isinstance(columns, (list, tuple)) or not all(isinstance(c, str) for c in columns)):
        fail(TypeError, "columns", "a list of column names, or None for all of them")
    if columns is not None and not columns:
        fail(
            ValueError,
            "columns",
            "a non-empty list of column names (an empty one reads no column: every epoch would train 0 steps), or None for all",
        )
    if columns is not None and len(set(columns)) < len(columns):
        fail(ValueError, "columns", "a list of distinct column names")
    if not isinstance(source.load_kwargs, dict):
        fail(TypeError, "load_kwargs", "a dict of keyword arguments for datasets.load_dataset")
    if not isinstance(source.remote, Remote):
        fail(TypeError, "remote", "a Remote (or a dict of its fields)")


def _check_mix(mix: Mix) -> None:
    """A Mix's own arguments; its sources are checked as they are made, and an empty one (0 rows)
    when the stores open (``stores/mixture.py``)."""
    sources = mix.sources
    if isinstance(sources, (str, Source)) or not isinstance(sources, (list, tuple)):
        raise TypeError(
            f"Mix(sources={sources!r}): sources must be a list of at least two sources (Source objects, paths or dicts)"
        )
    if len(sources) < 2:
        raise ValueError(f"Mix(sources={sources!r}): a Mix needs at least two sources; read a single one without Mix")
    if mix.stopping_strategy not in ("first_exhausted", "all_exhausted"):
        raise ValueError(
            f"Mix(stopping_strategy={mix.stopping_strategy!r}): stopping_strategy must be 'first_exhausted' or 'all_exhausted'"
        )
    probs = mix.probabilities
    if probs is None:
        return
    if (
        isinstance(probs, (str, bytes))
        or not isinstance(probs, (list, tuple))
        or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in probs)
    ):
        raise TypeError(f"Mix(probabilities={probs!r}): probabilities must be a list of numbers, one per source")
    if len(probs) != len(sources):
        raise ValueError(
            f"Mix(probabilities={probs!r}): {len(probs)} probabilities for {len(sources)} sources; give one per source"
        )
    if any(not math.isfinite(p) or p < 0 for p in probs) or not sum(probs) > 0:
        raise ValueError(
            f"Mix(probabilities={probs!r}): probabilities must be finite, non-negative and not all zero (they are normalised to sum to 1)"
        )


def as_source(spec: Any, *, split: str = "train") -> Source | Mix | DatasetSource:
    """Accept a :class:`Source`, a plain string (path, file or hub id), a dict of its fields, or a
    ``datasets`` object (``Dataset``, ``IterableDataset``, or a ``DatasetDict`` /
    ``IterableDatasetDict`` whose ``split`` is taken). A :class:`Mix` is returned as it is.
    """
    if isinstance(spec, (Source, Mix, DatasetSource)):
        return spec
    if _is_datasets_object(spec):
        import datasets

        if isinstance(spec, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            name = split.partition("[")[0]
            if name not in spec:
                raise KeyError(
                    f"the {type(spec).__name__} has no split {name!r}; its splits are {list(spec)}: pass one as "
                    f"dataset_dict[{next(iter(spec), 'train')!r}]"
                )
            return DatasetSource(spec[name], split=split)
        return DatasetSource(
            spec, split=split if "[" in split else (str(spec.split) if spec.split is not None else split)
        )
    if isinstance(spec, dict):
        return Source(**spec)
    if isinstance(spec, str):
        ext = os.path.splitext(spec[:-3] if spec.endswith(".gz") else spec)[1]
        if ext in _EXT_BUILDERS and not os.path.isdir(spec):
            return Source(path=_EXT_BUILDERS[ext], data_files=spec)
        return Source(path=spec)
    raise TypeError(
        f"expected a Source, a Mix, a string, a dict of Source fields or a datasets Dataset / IterableDataset / "
        f"DatasetDict, got {type(spec).__name__}"
    )


def named_sources(spec: Any, *, split: str) -> dict[str, Source | Mix | DatasetSource]:
    """``{name: source}`` for an evaluation argument: None, one source, a list or a dict of them."""
    if spec is None:
        return {}
    if isinstance(spec, dict) and not _is_source_fields(spec) and not _is_datasets_object(spec):
        return {str(name): as_source(s, split=split) for name, s in spec.items()}
    if isinstance(spec, (list, tuple)):
        sources = [as_source(s, split=split) for s in spec]
        names = [_short_name(s) for s in sources]
        if len(set(names)) < len(names):
            names = [f"{n}_{i}" for i, n in enumerate(names)]
        return dict(zip(names, sources))
    source = as_source(spec, split=split)
    return {_short_name(source): source}


def _is_datasets_object(spec: Any) -> bool:
    datasets = sys.modules.get("datasets")  # not imported for plain specs
    kinds = ("Dataset", "IterableDataset", "DatasetDict", "IterableDatasetDict")
    return datasets is not None and isinstance(spec, tuple(getattr(datasets, k) for k in kinds))


def _is_source_fields(spec: dict) -> bool:
    return "path" in spec and isinstance(spec["path"], str)


def _short_name(source: Source | Mix | DatasetSource) -> str:
    if isinstance(source, Source):
        files = source.data_files
        if isinstance(files, str) and not any(c in files for c in "*?["):
            return os.path.basename(files).split(".")[0]
        return os.path.basename(source.path.rstrip("/")) or source.path
    if isinstance(source, DatasetSource):
        return source.split.partition("[")[0]
    return "mix"
