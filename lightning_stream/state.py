"""The loader state saved in checkpoints: :class:`LoaderState`, a versioned record of plain types.

It is the one form of the position: the loader writes it (``StreamingDataLoader.state_dict``),
Lightning stores it in the fit loop's state of the checkpoint (``loops.fit_loop.state_dict.
combined_loader``, whatever the datamodule's class is called) and hands it back to
``load_state_dict`` on ``fit(ckpt_path=...)``. It is parsed once, with every key's type checked,
so an edited or foreign checkpoint fails at load naming the key, not later in a worker.

A state is only meaningful for the data and order it was written for. Resuming on other files,
other row counts, another seed or another shuffle setting would silently train on a different
sequence, so :func:`check_state` refuses it and says what differs; ``strict=False`` (the
datamodule's ``strict_resume=False``) accepts it for users who mean it, keeping the epoch and a
position clipped to the new data.

Version history:
    1: epoch, position, steps, num_rows, fingerprint, seed, shuffle, window, batch_size, world_size.
    2: adds ``lanes``, the number of lanes the epoch order is cut into (``order.py``). It is chosen
       when training starts and kept by every resume, so the order stays the same on another
       topology. A version-1 state resumes with one lane: the order it was written with. For a
       stream dealt to lanes, ``anchors`` (``[shard, row]`` per lane) says where each lane resumes
       reading: the shard its current window begins in. Token-budget steps (``budget.py``) add
       ``batch_tokens`` and ``max_images`` (absent otherwise, so older states read unchanged);
       their ``position`` counts rows in the plan's order. Token blocks (``blocks.py``) add
       ``block_size``; their ``position`` counts batches of blocks.

``batch_size`` and ``world_size`` are written for diagnosis; ``batch_size`` must also match when
there are several lanes, since the lanes interleave batch by batch.
"""

from __future__ import annotations

import dataclasses
import logging
import reprlib
from dataclasses import dataclass
from typing import Any

__all__ = ["STATE_VERSION", "LoaderState", "StateMismatchError", "check_state"]

log = logging.getLogger(__name__)

STATE_VERSION = 2


class StateMismatchError(ValueError):
    """A checkpoint's loader state does not belong to the data or order it is loaded into."""


@dataclass(frozen=True)
class LoaderState:
    """Where a train loader stands: the epoch, the steps trained in it, and what the order was made of.

    ``position`` is the epoch position after the last trained step (``split.Layout.position_after``);
    ``steps`` counts the epoch's trained steps, including those before an earlier resume.
    """

    version: int
    epoch: int
    position: int
    steps: int
    num_rows: int | None = None
    fingerprint: str | None = None
    seed: int | None = None
    shuffle: bool | None = None
    window: int | None = None
    lanes: int = 1  # version 1 had one lane
    batch_size: int | None = None
    world_size: int | None = None
    anchors: tuple[tuple[int, int], ...] | None = None
    batch_tokens: int | None = None  # token-budget steps: positions count rows in plan order
    max_images: int | None = None
    block_size: int | None = None  # token blocks: positions count batches of blocks

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the checkpoint (``anchors`` only for a stream dealt to lanes)."""
        out = dataclasses.asdict(self)
        for key in ("anchors", "batch_tokens", "max_images", "block_size"):
            if out[key] is None:
                del out[key]  # absent, as in a state written before these keys existed
        if self.anchors is not None:
            out["anchors"] = [list(a) for a in self.anchors]
        return out

    @classmethod
    def from_dict(cls, saved: Any) -> LoaderState:
        """Parse a checkpoint's state, refusing it with the key at fault when a value has the wrong type."""
        if not isinstance(saved, dict) or any(k not in saved for k in _REQUIRED):
            raise StateMismatchError(
                f"not a lightning_stream loader state (expected the keys {list(_REQUIRED)}): {_short(saved)}"
            )
        version = saved["version"]
        if isinstance(version, int) and not isinstance(version, bool) and version > STATE_VERSION:
            raise StateMismatchError(
                f"the checkpoint's loader state has version {version}, newer than this lightning_stream's {STATE_VERSION}; "
                "upgrade lightning_stream to resume from it"
            )
        values = {}
        for f in dataclasses.fields(cls):
            if f.name not in saved:
                continue
            value = saved[f.name]
            check = _CHECKS[f.name]
            if not (value is None and f.name in _OPTIONAL) and not check[0](value):
                raise StateMismatchError(
                    f"the checkpoint's loader state has {f.name}={_short(value)} ({type(value).__name__}); expected {check[1]}. "
                    "The checkpoint was edited or written by other code: restore its original 'combined_loader' state "
                    "(loops.fit_loop.state_dict), or resume without it (strict_resume=False restarts the epoch)"
                )
            values[f.name] = value
        if values.get("anchors") is not None:
            values["anchors"] = tuple(tuple(a) for a in values["anchors"])
        state = cls(**values)
        if state.num_rows is not None and state.position > state.num_rows and state.block_size is None:
            raise StateMismatchError(
                f"the checkpoint's loader state has position={state.position}, past the end of its {state.num_rows} rows; "
                "the checkpoint was edited or is corrupt"
            )
        return state


# Bounds on what a state may hold: an edited checkpoint's 10**100 or 50 MB string is refused by
# name, not met later as an OverflowError or MemoryError (positions and counts fit in int64).
_MAX_INT = 1 << 62
_MAX_TEXT = 256
_MAX_LANES = 1 << 16


def _int(minimum: int) -> Any:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and minimum <= v < _MAX_INT


def _anchors(v: Any) -> bool:
    return (
        isinstance(v, (list, tuple))
        and len(v) <= _MAX_LANES
        and all(isinstance(a, (list, tuple)) and len(a) == 2 and all(_int(0)(x) for x in a) for a in v)
    )


_REPR = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlong = 3, 80, 80, 6, 8, 40


def _short(value: Any) -> str:
    """A bounded repr for messages: a 50 MB string or a deeply nested edit is cut, not echoed."""
    return _REPR.repr(value)


_REQUIRED = ("version", "epoch", "position", "steps")
_OPTIONAL = {"num_rows", "fingerprint", "seed", "shuffle", "window", "batch_size", "world_size", "anchors"}
_OPTIONAL |= {"batch_tokens", "max_images", "block_size"}
# Each key's check and what it expects, for the message.
_CHECKS = {
    "version": (_int(1), f"an int from 1 to {STATE_VERSION}"),
    "epoch": (_int(0), "an int >= 0"),
    "position": (_int(0), "an int >= 0"),
    "steps": (_int(0), "an int >= 0"),
    "num_rows": (_int(0), "an int >= 0 or None"),
    "fingerprint": (
        lambda v: isinstance(v, str) and len(v) <= _MAX_TEXT,
        f"a string of at most {_MAX_TEXT} characters",
    ),
    "seed": (_int(0), "an int >= 0"),
    "shuffle": (lambda v: isinstance(v, bool), "a bool"),
    "window": (_int(1), "an int >= 1"),
    "lanes": (_int(1), "an int >= 1"),
    "batch_size": (_int(1), "an int >= 1"),
    "world_size": (_int(1), "an int >= 1"),
    "anchors": (_anchors, "a list of [shard, row] pairs"),
    "batch_tokens": (_int(1), "an int >= 1"),
    "max_images": (_int(0), "an int >= 0"),
    "block_size": (_int(1), "an int >= 1"),
}
# Keys whose difference means the saved position points into another sequence of rows.
_MUST_MATCH = {
    "fingerprint": "the data (file list or row counts)",
    "num_rows": "the number of rows",
    "seed": "the shuffle seed",
    "shuffle": "the shuffle setting",
    "window": "the shuffle window (buffer_size)",
}
# Keys that must match even when one side is None: a position in token-budget steps counts rows in
# the plan's order, one in fixed batches in the epoch order.
_MUST_MATCH_EXACTLY = {
    "batch_tokens": "the token budget (batch_tokens)",
    "max_images": "the image budget (max_images)",
    "block_size": "the token block size (block_size)",
}
# Keys that must match only when the saved order has several lanes (or token-budget steps or blocks).
_MUST_MATCH_WITH_LANES = {"batch_size": "the batch size (the lanes interleave batch by batch)"}


def check_state(saved: LoaderState, current: LoaderState, *, strict: bool = True) -> LoaderState:
    """The state to resume from: ``saved`` itself, or with ``strict=False`` a copy whose position is
    clipped to the data now; raises :class:`StateMismatchError` when ``saved`` cannot resume the
    loader described by ``current`` (with ``strict=False``, it warns instead)."""
    planned = saved.lanes > 1 or saved.batch_tokens or saved.block_size
    keys = {**_MUST_MATCH, **(_MUST_MATCH_WITH_LANES if planned else {})}
    diffs = [
        f"{what}: checkpoint has {getattr(saved, key)!r}, now {getattr(current, key)!r}"
        for key, what in keys.items()
        if getattr(saved, key) is not None and getattr(saved, key) != getattr(current, key)
    ]
    diffs += [
        f"{what}: checkpoint has {getattr(saved, key)!r}, now {getattr(current, key)!r}"
        for key, what in _MUST_MATCH_EXACTLY.items()
        if getattr(saved, key) != getattr(current, key)
    ]
    if not diffs:
        return saved
    message = "the checkpoint was written for other data or another order; " + "; ".join(diffs)
    if strict:
        raise StateMismatchError(message + ". Pass strict_resume=False to resume anyway (the order will differ).")
    log.warning("%s. Resuming anyway (strict_resume=False).", message)
    if current.num_rows is not None and saved.position > current.num_rows:
        return dataclasses.replace(saved, position=current.num_rows)
    return saved
