"""The loader state saved in checkpoints: a versioned dict of plain types, and its checks.

A state is only meaningful for the data and order it was written for. Resuming on other files,
other row counts, another seed or another shuffle setting would silently train on a different
sequence, so :func:`check_state` refuses it and says what differs; ``strict=False`` (the
datamodule's ``strict_resume=False``, held by the loader so that every path that restores it,
Lightning's own included, applies it) accepts it for users who mean it, keeping the epoch and a
position clipped to the new data.

Version history:
    1: epoch, position, steps, num_rows, fingerprint, seed, shuffle, window, batch_size, world_size.
    2: adds ``lanes``, the number of lanes the epoch order is cut into (``order.py``). It is chosen
       when training starts and kept by every resume, so the order stays the same on another
       topology. A version-1 state resumes with one lane: the order it was written with. For a
       stream dealt to lanes, ``anchors`` (``[shard, row]`` per lane) says where each lane resumes
       reading: the shard its current window begins in.

``batch_size`` and ``world_size`` are written for diagnosis; ``batch_size`` must also match when
there are several lanes, since the lanes interleave batch by batch.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["STATE_VERSION", "StateMismatchError", "check_state"]

log = logging.getLogger(__name__)

STATE_VERSION = 2
_REQUIRED = ("version", "epoch", "position", "steps")
# Keys whose difference means the saved position points into another sequence of rows.
_MUST_MATCH = {
    "fingerprint": "the data (file list or row counts)",
    "num_rows": "the number of rows",
    "seed": "the shuffle seed",
    "shuffle": "the shuffle setting",
    "window": "the shuffle window (buffer_size)",
}
# Keys that must match only when the saved order has several lanes.
_MUST_MATCH_WITH_LANES = {"batch_size": "the batch size (the lanes interleave batch by batch)"}


class StateMismatchError(ValueError):
    """A checkpoint's loader state does not belong to the data or order it is loaded into."""


def check_state(saved: dict[str, Any], current: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """The state to resume from: ``saved`` itself, or with ``strict=False`` a copy whose position is
    clipped to the data now; raises :class:`StateMismatchError` when ``saved`` cannot resume the
    loader described by ``current`` (with ``strict=False``, it warns instead)."""
    if not isinstance(saved, dict) or any(k not in saved for k in _REQUIRED):
        raise StateMismatchError(f"not a lightning_stream loader state (expected keys {_REQUIRED}): {saved!r:.200}")
    version = saved["version"]
    if not isinstance(version, int) or version > STATE_VERSION:
        raise StateMismatchError(
            f"the checkpoint's loader state has version {version}, newer than this lightning_stream's {STATE_VERSION}; "
            "upgrade lightning_stream to resume from it"
        )
    keys = {**_MUST_MATCH, **(_MUST_MATCH_WITH_LANES if saved.get("lanes", 1) > 1 else {})}
    diffs = [
        f"{what}: checkpoint has {saved[key]!r}, now {current[key]!r}"
        for key, what in keys.items()
        if key in saved and saved[key] != current.get(key)
    ]
    if not diffs:
        return saved
    message = "the checkpoint was written for other data or another order; " + "; ".join(diffs)
    if strict:
        raise StateMismatchError(message + ". Pass strict_resume=False to resume anyway (the order will differ).")
    log.warning("%s. Resuming anyway (strict_resume=False).", message)
    num_rows = current.get("num_rows")
    if num_rows is not None and saved["position"] > num_rows:
        return {**saved, "position": num_rows}
    return saved
