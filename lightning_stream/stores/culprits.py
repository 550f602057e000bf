"""Naming the culprit: whether a file is whole, and which file, line or column an error comes from.

``datasets`` reads some damaged files short without a word (an arrow stream cut at a record
batch boundary, a tar cut inside a member), and reports other errors without the file (a JSON
parse error "in row 50" of a chunk, a 0-row parquet file, schemas that differ somewhere). The
checks here are cheap (a few bytes at a file's end); the searches for a culprit (the bad JSON
line) run only once an error has happened.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
from collections import Counter
from typing import IO

import pyarrow as pa

__all__ = ["check_whole", "json_culprit", "no_data_files", "read_error", "schema_difference"]

# An arrow IPC stream ends with this marker (continuation token, then a 0 length): datasets writes
# it when it closes a file (``ArrowWriter.finalize``); a stream cut anywhere lacks it.
_ARROW_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
# A tar ends with two zero blocks of 512 bytes (then zero padding to its record size).
_TAR_BLOCK = 512


def check_whole(path: str) -> None:
    """Raise a ValueError naming ``path`` if it is a local ``.arrow`` or ``.tar`` file cut short."""
    if "://" in path or not os.path.isfile(path):
        return
    if path.endswith(".arrow"):
        _check_arrow(path)
    elif path.endswith(".tar"):
        _check_tar(path)


def _tail(path: str, n: int) -> tuple[int, bytes]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        f.seek(max(0, size - n))
        return size, f.read()


def _check_arrow(path: str) -> None:
    size, tail = _tail(path, len(_ARROW_EOS))
    if tail != _ARROW_EOS:
        raise ValueError(
            f"arrow file {path} is truncated ({size} bytes): it does not end with the arrow stream's end-of-stream "
            "marker, so rows are missing after the last record batch that was read whole. Restore the file from a "
            "copy, or write the dataset again (save_to_disk)"
        )


def _check_tar(path: str) -> None:
    size, tail = _tail(path, 2 * _TAR_BLOCK)
    if size % _TAR_BLOCK or size < 2 * _TAR_BLOCK or tail.strip(b"\0"):
        raise ValueError(
            f"tar file {path} is truncated ({size} bytes): it does not end with a tar's two empty 512-byte blocks, "
            "so it was cut inside a member and the samples after the cut would be lost. Restore the file from a "
            "copy, or write the shard again"
        )


def schema_difference(a: pa.Schema, b: pa.Schema, name_a: str, name_b: str) -> str:
    """The columns that differ between two schemas, with their types in each file."""
    fields_a = {f.name: f.type for f in a}
    fields_b = {f.name: f.type for f in b}
    parts = [
        f"column {c!r} is {fields_a[c]} in {name_a} but {fields_b[c]} in {name_b}"
        for c in fields_a
        if c in fields_b and fields_a[c] != fields_b[c]
    ]
    parts += [f"column {c!r} ({fields_a[c]}) is only in {name_a}" for c in fields_a if c not in fields_b]
    parts += [f"column {c!r} ({fields_b[c]}) is only in {name_b}" for c in fields_b if c not in fields_a]
    if not parts and list(fields_a) != list(fields_b):
        parts.append(f"the columns come in another order: {list(fields_a)} in {name_a}, {list(fields_b)} in {name_b}")
    if not parts:  # nullability or field metadata
        parts.append(f"{a} in {name_a}; {b} in {name_b}")
    return "; ".join(parts)


def _open_text(path: str) -> IO[str]:
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(os.path.splitext(path)[1], open)
    return opener(path, "rt", encoding="utf-8", errors="replace")


def json_culprit(path: str) -> str | None:
    """``"line N is not JSON (<error>)"`` for the first line of a local JSON-lines file that is not a JSON value,
    or None (not JSON lines, or no such line). ``datasets`` counts the row of its current chunk."""
    name = path[: -len(os.path.splitext(path)[1])] if path.endswith((".gz", ".bz2", ".xz")) else path
    if "://" in path or not os.path.isfile(path) or not name.endswith((".jsonl", ".ndjson", ".json")):
        return None
    try:
        with _open_text(path) as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    json.loads(line)
                except ValueError as err:
                    # A .json file holding one multi-line value is not JSON lines: nothing to point at.
                    return None if number == 1 and name.endswith(".json") else f"line {number} is not JSON ({err})"
    except (OSError, EOFError):  # the error itself was about reading the file: it is named already
        return None
    return None


def read_error(path: str, err: BaseException) -> str:
    """What went wrong reading local file ``path``: for an arrow parse error in JSON lines, the first
    line that is not JSON (``datasets`` counts rows of its chunk), else the error itself."""
    line = json_culprit(path) if isinstance(err, pa.ArrowInvalid) else None
    return line or f"{type(err).__name__}: {err}"


def no_data_files(folder: str, supported: dict[str, list[str]]) -> str | None:
    """A message for a local folder that holds no file ``datasets`` reads as data, else None.

    ``supported`` maps builders to their extensions. Documentation and config files (``.md``,
    ``.toml``) do not count: ``datasets`` would guess a builder from them (``harbor``) and then
    complain of files the user never meant to have.
    """
    if not os.path.isdir(folder):
        return None
    found: Counter = Counter()
    for _root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.update(os.path.splitext(f)[1] or f for f in files if not f.startswith("."))
    data = {ext for builder, exts in supported.items() if builder != "harbor" for ext in exts if ext != ".zip"}
    if any(ext in data for ext in found):
        return None
    seen = ", ".join(f"{ext} ({n})" for ext, n in found.most_common(8)) or "nothing"
    common = ".parquet, .arrow, .jsonl/.json/.ndjson, .csv/.tsv, .txt, .tar (webdataset), images, audio, video"
    return (
        f"no supported data files in folder {folder} (found: {seen}). lightning_stream reads {common}, "
        "or a save_to_disk folder (with state.json); point Source(data_files=...) at the data files"
    )
