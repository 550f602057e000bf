"""From a :class:`~lightning_stream.spec.Source` to files and a format, before any store opens.

File globbing, builder detection (``save_to_disk`` folder, ``arrow``, ``parquet``) and the
discovery of the parquet files behind a hub id or a local repo.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import datasets

from ..spec import Source

log = logging.getLogger(__name__)

__all__ = ["STREAM_BUILDERS", "builder_of", "parquet_repo_files", "resolve_files"]

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
            found = datasets.data_files.resolve_pattern(pattern, base_path=base)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"Source(path={source.path!r}): no file matches {pattern!r} (under {os.path.abspath(base)})") from err
        files.extend(sorted(found))
    return files


def builder_of(source: Source) -> Optional[str]:
    """``"save_to_disk"``, ``"arrow"`` or ``"parquet"`` when known without ``datasets``' help, else None."""
    if os.path.isdir(source.path) and (
        os.path.exists(os.path.join(source.path, "state.json")) or os.path.exists(os.path.join(source.path, "dataset_dict.json"))
    ):
        return "save_to_disk"
    return source.path if source.path in {"parquet", "arrow"} else None


def parquet_repo_files(source: Source) -> Optional[list[str]]:
    """The parquet files of a hub id or local repo, when ``datasets`` resolves it to parquet."""
    kwargs = {k: v for k, v in source.load_kwargs.items() if k in ("revision", "token")}
    try:
        builder = datasets.load_dataset_builder(source.path, source.name, data_dir=source.data_dir, data_files=source.data_files, **kwargs)
    except Exception as err:  # noqa: BLE001 - anything else is read as a stream, which reports its own errors
        log.debug("no parquet layout for %s: %s", source.path, err)
        return None
    files = (builder.config.data_files or {}).get(source.split)
    if builder.name != "parquet" or not files:
        return None
    return [str(f) for f in files]
