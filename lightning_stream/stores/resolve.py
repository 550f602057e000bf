"""From a :class:`~lightning_stream.spec.Source` to files and a format, before any store opens.

File globbing, builder detection (``save_to_disk`` folder, ``arrow``, ``parquet``), the
discovery of the parquet files behind a hub id or a local repo, and the files of a local stream,
listed once in the main process.
"""

from __future__ import annotations

import logging
import os

import datasets

from .._compat import builder_extensions, resolve_data_files
from ..spec import Source
from .culprits import no_data_files
from .hub import is_hub_id

log = logging.getLogger(__name__)

__all__ = ["STREAM_BUILDERS", "builder_of", "local_data_files", "parquet_repo_files", "resolve_files", "split_files"]

# Builders that are only ever read front to back, never looked up as a parquet repo.
STREAM_BUILDERS = {"json", "csv", "text", "webdataset", "imagefolder", "audiofolder", "videofolder"}


def resolve_files(source: Source) -> list[str]:
    """The files ``source.data_files`` matches (under ``data_dir``), pattern by pattern, sorted."""
    patterns = source.data_files
    if patterns is None:
        raise ValueError(f"Source(path={source.path!r}) needs data_files")
    if isinstance(patterns, str):
        patterns = [patterns]
    base = source.data_dir or "."
    files: list[str] = []
    for pattern in patterns:
        if "://" in pattern and not any(c in pattern for c in "*?["):
            # A plain URL names one file: resolving it would list it over HTTP (a whole download).
            files.append(pattern)
            continue
        try:
            found = resolve_data_files(pattern, base)
        except FileNotFoundError as err:
            raise FileNotFoundError(
                f"Source(path={source.path!r}): no file matches {pattern!r} (under {os.path.abspath(base)})"
            ) from err
        files.extend(sorted(found))
    return files


def builder_of(source: Source) -> str | None:
    """``"save_to_disk"``, ``"arrow"`` or ``"parquet"`` when known without ``datasets``' help, else None."""
    if os.path.isdir(source.path) and (
        os.path.exists(os.path.join(source.path, "state.json"))
        or os.path.exists(os.path.join(source.path, "dataset_dict.json"))
    ):
        return "save_to_disk"
    return source.path if source.path in {"parquet", "arrow"} else None


def parquet_repo_files(source: Source) -> list[str] | None:
    """The parquet files of a hub id or local repo, when ``datasets`` resolves it to parquet."""
    try:
        builder = _builder(source)
    except Exception as err:  # noqa: BLE001 - anything else is read as a stream, which reports its own errors
        if _unreachable(err):
            raise  # the stream would only ask the network again, as long
        log.debug("no parquet layout for %s: %s", source.path, err)
        return None
    files = (builder.config.data_files or {}).get(source.split)
    if builder.name != "parquet" or not files:
        return None
    return [str(f) for f in files]


def local_data_files(source: Source) -> list[str] | None:
    """The local files ``datasets`` reads for ``source.split``, listed once: a stream opened again in
    each worker is given this list, not the pattern, so a file that appears mid-run is read by no
    process rather than by some. None for files on a network (a hub id, URLs)."""
    patterns = [source.data_files] if isinstance(source.data_files, str) else source.data_files or []
    if is_hub_id(source) or any("://" in p for p in patterns):
        return None
    files = (_builder(source).config.data_files or {}).get(source.split)
    return [str(f) for f in files] if files else None


def split_files(source: Source) -> dict | None:
    """``source.data_files`` keyed by its split, as ``datasets`` takes them: files given without a
    split are read as ``"train"`` there, and ``split="validation"`` would find none."""
    return None if source.data_files is None else {source.split: source.data_files}


def _builder(source: Source) -> datasets.DatasetBuilder:
    """``datasets``' builder of ``source``; a local folder with no data file in it says so."""
    kwargs = {k: v for k, v in source.load_kwargs.items() if k in ("revision", "token")}
    try:
        return datasets.load_dataset_builder(
            source.path, source.name, data_dir=source.data_dir, data_files=split_files(source), **kwargs
        )
    except FileNotFoundError as err:
        message = no_data_files(source.path, builder_extensions()) if source.data_files is None else None
        if message is None:
            raise
        raise FileNotFoundError(message) from err


def _unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or an error it comes from) is a network that did not answer, or offline mode."""
    seen = 0
    while err is not None and seen < 10:
        names = {cls.__name__ for cls in type(err).__mro__}
        if isinstance(err, (ConnectionError, TimeoutError)) or names & {
            "TimeoutException",
            "NetworkError",
            "OfflineModeIsEnabled",
        }:
            return True
        err, seen = err.__cause__, seen + 1
    return False
