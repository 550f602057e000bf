"""The torch DataLoader workers, where we reach into torch: stopping them, their end with the
training process, and telling how one ended.

:func:`die_with_parent` is each worker's ``worker_init_fn``: it asks the kernel (Linux's
``prctl(PR_SET_PDEATHSIG)``) to SIGKILL the worker when the training process dies, whatever kills
it. Without it, a worker whose batch is on its way to a SIGKILLed trainer (the out-of-memory
killer, a preemption) blocks forever writing to the result pipe, whose read end its sibling
workers still hold open: it keeps its memory and the launcher's stdout (measured: 2 of 2 workers
alive 10 s after the kill, forever; with it, none).

:func:`shutdown_workers` stops a loader's workers now (torch's private ``_shutdown_workers``:
torch has no public way to stop persistent workers before the iterator is garbage, and a loader
freed by the cycle collector waits 5 s per worker in torch's shutdown).

How a worker ended is told from torch's error: its own exception, or a death.

torch re-raises a worker's exception in the main process as the same type, its message
``Caught X in DataLoader worker process N`` followed by the worker's traceback: that is the
error to report, unchanged (its file and row included). A worker that dies without an exception
shows up as a ``RuntimeError`` about ``DataLoader worker (pid ...)`` (from torch's SIGCHLD handler:
``is killed by signal: Killed``, or ``exited unexpectedly``), or as an ``EOFError`` /
``ConnectionError`` on the queue it was writing to. Only a signal is called a kill, and only
SIGKILL the out-of-memory killer's likely work; the exit code, where the message lacks it, is
read from the worker processes torch keeps (``_workers``, a private attribute).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

__all__ = ["die_with_parent", "shutdown_workers", "worker_death"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int, worker_id: int = 0) -> None:
    """``worker_init_fn``: SIGKILL this worker when the process ``parent`` dies (Linux; elsewhere
    torch's watchdog, which checks the parent between batches, is what there is)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # a libc without prctl: keep torch's watchdog only
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


_HINTS = {
    "SIGKILL": "most often the out-of-memory killer: lower num_workers, batch_size or buffer_size",
    "SIGBUS": "most often too little shared memory for the batches in flight (/dev/shm; docker: --shm-size): "
    "lower num_workers or prefetch_factor",
}


def shutdown_workers(iterator: Any) -> None:
    """Stop the workers of a torch DataLoader iterator (a no-op for one without workers)."""
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()


def worker_death(err: BaseException, iterator: Any, num_workers: int, where: str) -> str | None:
    """The message for a worker that died without an exception, or None for any other error."""
    text = str(err)
    if num_workers == 0 or "in DataLoader worker process" in text:
        return None  # no worker to die, or the worker's own exception
    if isinstance(err, RuntimeError) and "DataLoader worker (pid" not in text:
        return None
    name = _signal_in(text)
    codes = [w.exitcode for w in getattr(iterator, "_workers", ()) if w.exitcode not in (None, 0)]
    if name is None and codes and codes[0] < 0:
        name = signal.Signals(-codes[0]).name
    if name is not None:
        hint = _HINTS.get(
            name, "a crash in native code (a C extension, a decoder); run with num_workers=0 to see where"
        )
        return f"a DataLoader worker reading {where} died (killed by {name}): {hint} [{text}]"
    if codes:
        return f"a DataLoader worker reading {where} died (exit code {codes[0]}, no exception): os._exit, or a library that exits [{text}]"
    if not isinstance(err, RuntimeError):
        return None  # a queue error with every worker alive: not a death
    return f"a DataLoader worker reading {where} died (cause unknown): run with num_workers=0 to see an error there [{text}]"


def _signal_in(text: str) -> str | None:
    """The signal named in torch's ``is killed by signal: <strsignal>`` message."""
    marker = "is killed by signal: "
    if marker not in text:
        return None
    said = text.split(marker, 1)[1].rstrip(". ")
    for sig in signal.Signals:
        if signal.strsignal(sig) == said:
            return sig.name
    return said
