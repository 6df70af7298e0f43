"""Stopping a block on the worker: the stop window of its thread, and the table of running blocks.

A block is stopped by raising ``BlockStopped`` in its thread (``PyThreadState_SetAsyncExc``, the
one way CPython offers to interrupt another thread) when Dask no longer wants its task or its
time limit passes. The table of running blocks lives under ``sys``: each task may run its own
copy of this module, and the worker plugin that stops blocks must find them all.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from typing import Any

# Process-wide table of the blocks running in this worker process, by task key (see Running).
RUNNING_ATTRIBUTE = "_afar_running_blocks_v1"
# A block being stopped that is still running after this long is in a call Python cannot
# interrupt (C code): afar says so in its output and raises the stop again every this long.
STOP_GRACE_SECONDS = 0.5
# Worker-side states of a task that Dask no longer wants (cancelled, released, forgotten).
UNWANTED_STATES = frozenset({"cancelled", "released", "forgotten"})
# The first item of what a block stopped at its time limit returns instead of its names.
TIMED_OUT = "@afar_timed_out"


class BlockStopped(BaseException):
    """Raised asynchronously in the thread of a block that is being stopped.

    A BaseException, as KeyboardInterrupt is: ``except Exception`` in the block does not catch
    it.
    """


def running_blocks() -> dict[str, Any]:
    """The process-wide table of running blocks and the one class of the stop exception.

    Every copy of this module (each task may get its own) uses the same ones.
    """
    table = sys.__dict__.get(RUNNING_ATTRIBUTE)
    if table is None:
        table = sys.__dict__.setdefault(RUNNING_ATTRIBUTE, {"blocks": {}, "error": BlockStopped})
    return table


def _set_async_exc(thread: int, error: Any) -> None:
    """Raise ``error`` (a ``py_object`` of a class) in ``thread`` at its next Python line.

    None withdraws an exception not delivered yet.
    """
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), error)


class Running:
    """One block running in a worker thread, and the stop window of that thread.

    The stop exception is raised into the block's thread only while the block's own function
    runs: ``start`` opens the window right before the call, ``close`` shuts it right after and
    withdraws an exception not delivered yet. They and ``stop`` hold the lock, so an exception
    never lands in Dask's code after the block returned. A stop raises it once (the watchdog
    again, under the lock, while the window is open), so after ``close`` none is pending.
    """

    __slots__ = (
        "emitter",
        "error",
        "label",
        "limit",
        "lock",
        "reason",
        "state",
        "thread",
    )

    def __init__(self, label: str, error: type[BaseException], limit: float | None) -> None:
        self.thread = threading.get_ident()
        self.label = label
        self.error = error
        self.limit = limit
        self.lock = threading.Lock()
        self.state = "starting"  # starting, running, stopping, done
        self.reason: str | None = None  # "cancelled" or "timeout"
        self.emitter: Any = None

    def start(self) -> None:
        """Open the window; a stop asked for before it opened is raised here, at once."""
        with self.lock:
            if self.reason is None:
                self.state = "running"
                return
            self.state = "stopping"
        raise self.error

    def stop(self, reason: str) -> None:
        """Stop the block (from any thread): raise the stop exception in its thread."""
        with self.lock:
            if self.reason is not None or self.state == "done":
                return
            self.reason = reason
            if self.state != "running":
                return  # not started yet: ``start`` raises it
            self.state = "stopping"
            _set_async_exc(self.thread, ctypes.py_object(self.error))
            if self.emitter is not None:
                self.emitter.stop(keep=reason == "timeout")
        threading.Thread(target=self._watch, name="afar-stop-watchdog", daemon=True).start()

    def close(self) -> None:
        """Shut the window (on the block's thread, right after its function); idempotent."""
        with self.lock:
            if self.state == "stopping":
                _set_async_exc(self.thread, None)
            self.state = "done"

    def _watch(self) -> None:
        """Say so when the block does not stop at once (a long call in C), and insist."""
        told = False
        while True:
            time.sleep(STOP_GRACE_SECONDS)  # checks again, also after the block stopped: cheap
            with self.lock:
                if self.state != "stopping":
                    return
                if not told and self.emitter is not None:
                    told = True
                    self.emitter.stop(keep=False, notice=self._notice())
                _set_async_exc(self.thread, ctypes.py_object(self.error))

    def _notice(self) -> str:
        why = (
            f"it ran past its time limit of {self.limit:g} s"
            if self.reason == "timeout"
            else "it was cancelled"
        )
        return (
            f"[afar] {self.label}: stopping the block ({why}); it is in a call that Python "
            "cannot interrupt (C code such as time.sleep or a NumPy operation) and stops at "
            "its next Python line\n"
        )

    def timed_out(self) -> tuple[str, str]:
        """What the block's task returns when stopped at its limit: ``(TIMED_OUT, message)``."""
        return (
            TIMED_OUT,
            f"the block at {self.label} ran past its time limit of {self.limit:g} s "
            f"(remotely(timeout=...)) on {worker_address()} and was stopped",
        )


def worker_address() -> str:
    """Where this runs, for messages: "worker tcp://..." or "this process"."""
    try:
        from distributed import get_worker

        return f"worker {get_worker().address}"
    except (ImportError, ValueError):
        return "this process"
