"""What to read: the :class:`Source` and :class:`Mix` specs users write, and :func:`as_source`.

Specs are plain data mirroring ``datasets.load_dataset``'s arguments; nothing here opens a file.
``stores.open_store`` turns a spec into the store that reads its rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

__all__ = ["Mix", "Source", "as_source"]

# Lives here, not with the file resolving in ``stores``: a plain string is parsed without I/O.
_EXT_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv", ".tar": "webdataset"}


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
        load_kwargs: extra keyword arguments for ``load_dataset`` (``revision``, ``token``...).

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
