"""An epoch that reads rows but trains on none is an error, not a finished epoch.

Every row filtered out, every row skipped as bad (``on_error="skip"``), or a transform that
returns no row: the loader's length promised steps, the pass yields none, and Lightning would
"complete" an epoch of 0 steps, or a whole run of them. :class:`EpochCheck` counts one pass's
rows from the batch headers and, at its end, raises :class:`EmptyEpochError` naming the cause:
the filters (by function), or the first bad rows. A flood of skips is refused early: when the
first ``FLOOD`` rows of a pass were all skipped, the function is broken, not the data.

A pass that resumed mid-epoch is not checked at its end: what is left of an epoch may be small
enough for a selective filter to empty it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EmptyEpochError", "EpochCheck"]

FLOOD = 1000  # rows skipped, with none yet out, after which a pass stops early


class EmptyEpochError(RuntimeError):
    """A pass over a loader read rows and yielded no batch."""


class EpochCheck:
    """Row counts of one pass over a loader, and the error when the pass trains on nothing."""

    def __init__(self, dataset: Any, *, epoch: int, resumed: bool, length: int | None) -> None:
        self.dataset, self.epoch, self.resumed, self.length = dataset, epoch, resumed, length
        self.rows_read = self.rows_out = self.skipped = 0
        self.culprits: list[str] = []

    @classmethod
    def of(cls, loader: Any) -> EpochCheck:
        """The check of the pass ``loader`` (a ``StreamingDataLoader``) has just begun."""
        p = loader._progress
        try:
            length: int | None = len(loader)
        except TypeError:  # a stream: its length is known once it has been read
            length = None
        return cls(loader.dataset, epoch=p["epoch"], resumed=bool(p["start"] or p["steps_before"]), length=length)

    def add(self, header: Any) -> None:
        """Count a batch's header (``BatchHeader``); raise on a flood of skipped rows."""
        self.rows_read += header.rows_read
        self.rows_out += header.rows_out
        self.skipped += len(header.skipped)
        self.culprits.extend(header.skipped[: max(0, 3 - len(self.culprits))])
        if not self.rows_out and self.skipped >= FLOOD:
            raise EmptyEpochError(
                f"{self._what()}: its first {self.skipped} rows were all skipped as bad rows, none trained; {self._skips()}"
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
            filters = self.dataset.options.pipeline.filters
            by = f"filter {', '.join(filters)}" if filters else "the transform (it returned no row)"
            causes.append(f"{removed} were removed by {by}: check that it keeps rows (right column, right value type)")
        if self.skipped:
            causes.append(f"{self.skipped} were skipped as bad rows: {self._skips()}")
        raise EmptyEpochError(
            f"{self._what()} trained 0 steps{said}: of the {self.rows_read} rows it read, {'; '.join(causes)}"
        )

    def _what(self) -> str:
        return f"epoch {self.epoch} of {self.dataset.store.where}"

    def _skips(self) -> str:
        return (
            f"first culprits: {'; '.join(self.culprits)}. A function that fails on every row is broken, not the data: "
            "run with on_error='raise' to see the first failure and its traceback"
        )
