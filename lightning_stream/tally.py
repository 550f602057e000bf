"""One pass's row counts, the bad-row policy, and the errors a pass ends with.

In the worker, :func:`transform_rows` runs a batch's rows through decoding and the pipeline. An
exception may be one row's fault: the batch is then re-run row by row to name the row
(``on_error="raise"``, a :class:`RowError` naming file and row) or to skip it
(``on_error="skip"``, counted). A :class:`~lightning_stream.transforms.TransformError` is the
function's fault, whatever the rows: it is raised at once, never re-run, never skipped.

In the main process, :class:`EpochTally` adds up each batch's header. An epoch that reads rows but
trains on none is an error, not a finished epoch: every row filtered out, every row skipped as
bad, or a transform that returns no row. Lightning would "complete" an epoch of 0 steps, or a
whole run of them; the tally raises :class:`EmptyEpochError` naming the cause, the filters (by
function) or the first bad rows. A flood of skips is refused early: when the first ``FLOOD`` rows
of a pass were all skipped, the function is broken, not the data. A pass that resumed mid-epoch
is not checked at its end: what is left of an epoch may be small enough for a selective filter
to empty it. ``max_skipped`` caps the skips of an epoch (a count, or a fraction of its rows).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from .decode import Rows, concat
from .transforms import TransformError
from .wire import BatchHeader

__all__ = ["FLOOD", "EmptyEpochError", "EpochTally", "RowError", "transform_rows"]

FLOOD = 1000  # rows skipped, with none yet out, after which a pass stops early
_CULPRITS = 5  # bad rows a message names


class RowError(ValueError):
    """A row could not be decoded or transformed; the message names its file and row."""


class EmptyEpochError(RuntimeError):
    """A pass over a loader read rows and yielded no batch."""


def transform_rows(
    rows: Rows,
    transform: Callable[[Rows], dict[str, Any]],
    describe: Callable[[int], str],
    on_error: Literal["raise", "skip"],
) -> tuple[dict[str, Any], list[str]]:
    """``transform(rows)``, and the bad rows skipped (``on_error="skip"``) as ``describe`` names them."""
    if rows.num_rows == 0:
        return {}, []  # an evaluation rank's empty last batch: no function sees an empty batch
    if not rows.num_columns:
        raise ValueError(f"the rows of {describe(0)} have no column: select at least one (Source(columns=...))")
    try:
        return transform(rows), []
    except TransformError as err:
        raise _located(err, f"the batch that begins at {describe(0)}")  # noqa: B904 - err itself, located
    except Exception:  # noqa: BLE001 - narrowed to the culprit row below
        pass
    outputs, skipped = [], []
    for i in range(rows.num_rows):
        try:
            outputs.append(transform(rows.row(i)))
        except TransformError as err:
            raise _located(err, describe(i))  # noqa: B904 - err itself, located
        except Exception as err:  # noqa: BLE001
            culprit = f"{describe(i)}: {type(err).__name__}: {err}"
            if on_error == "raise":
                raise RowError(f"bad row in {culprit} (pass on_error='skip' to skip and count such rows)") from err
            skipped.append(culprit)
    keys = list(outputs[0]) if outputs else []
    return {k: concat([out[k] for out in outputs]) for k in keys}, skipped


def _located(err: TransformError, where: str) -> TransformError:
    """``err``, its message saying which rows showed the bug (its traceback and cause kept)."""
    err.args = (f"{err.args[0]} (seen on {where})", *err.args[1:])
    return err


class EpochTally:
    """Row counts of one pass over a loader, its caps, and the error when it trains on nothing.

    Args:
        where: the source, as messages name it.
        epoch: the pass's epoch.
        resumed: the pass began mid-epoch (not checked at its end).
        length: the steps ``len()`` promised, or ``None`` (a stream).
        filters: the pipeline's filters, as messages name them.
        max_skipped: the cap on skipped rows: a count, or a fraction (< 1) of ``total_rows``.
        total_rows: the epoch's rows, or ``None`` (a stream: the rows read so far, from 1000 on).
    """

    def __init__(
        self,
        where: str = "",
        *,
        epoch: int = 0,
        resumed: bool = False,
        length: int | None = None,
        filters: list[str] | None = None,
        max_skipped: float | None = None,
        total_rows: int | None = None,
    ) -> None:
        self.where, self.epoch, self.resumed, self.length = where, epoch, resumed, length
        self.filters = filters or []
        self.max_skipped, self.total_rows = max_skipped, total_rows
        self.rows_read = self.rows_out = self.skipped = 0
        self.culprits: list[str] = []

    @property
    def filtered(self) -> int:
        """Rows a filter (or a transform returning fewer rows) removed."""
        return self.rows_read - self.rows_out - self.skipped

    def add(self, header: BatchHeader) -> None:
        """Count a batch's header; raise on a flood of skipped rows or more than ``max_skipped``."""
        self.rows_read += header.rows_read
        self.rows_out += header.rows_out
        self.skipped += len(header.skipped)
        self.culprits.extend(header.skipped[: max(0, _CULPRITS - len(self.culprits))])
        if not self.rows_out and self.skipped >= FLOOD:
            raise EmptyEpochError(
                f"{self._what()}: its first {self.skipped} rows were all skipped as bad rows, none trained; {self._skips()}"
            )
        if header.skipped and self.max_skipped is not None:
            self._check_cap()

    def _check_cap(self) -> None:
        cap = self.max_skipped
        if cap < 1:  # a fraction of the epoch's rows (of the rows read so far, for a stream)
            total = self.total_rows
            if total is None:
                total = self.rows_read if self.rows_read >= 1000 else None
            limit = None if total is None else cap * total
        else:
            limit = cap
        if limit is not None and self.skipped > limit:
            raise RuntimeError(
                f"lightning_stream skipped {self.skipped} bad rows in this epoch, more than max_skipped={cap}; "
                f"first culprits: {self.culprits}"
            )

    def finished(self) -> None:
        """At the end of the pass: raise when it read rows, or was promised steps, and yielded nothing."""
        if self.resumed or self.rows_out or not (self.rows_read or self.length):
            return
        said = f" where len() said {self.length}" if self.length else ""
        if not self.rows_read:
            raise EmptyEpochError(
                f"{self._what()} trained 0 steps{said}: its batches held no row, as when a source selects no "
                "column (Source(columns=[])); select at least one column"
            )
        removed = self.rows_read - self.skipped
        causes = []
        if removed:
            by = f"filter {', '.join(self.filters)}" if self.filters else "the transform (it returned no row)"
            causes.append(f"{removed} were removed by {by}: check that it keeps rows (right column, right value type)")
        if self.skipped:
            causes.append(f"{self.skipped} were skipped as bad rows: {self._skips()}")
        raise EmptyEpochError(
            f"{self._what()} trained 0 steps{said}: of the {self.rows_read} rows it read, {'; '.join(causes)}"
        )

    def _what(self) -> str:
        return f"epoch {self.epoch} of {self.where}"

    def _skips(self) -> str:
        return (
            f"first culprits: {'; '.join(self.culprits[:3])}. A function that fails on every row is broken, not the "
            "data: run with on_error='raise' to see the first failure and its traceback"
        )
