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
from collections.abc import Callable, Generator
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

    A stop raises the stop exception in the block's thread only while the block's function
    runs. The window is the block's call run as a generator: its ``gi_running``, which CPython
    sets when the call starts and clears when it returns, in C, between two bytecodes of the
    block's thread. The block's thread takes no lock (on CPython 3.14 an exception raised in a
    thread right after ``with lock:`` took the lock skips the ``with``'s exit: cpython#148874);
    the threads that stop it share ``lock`` among themselves. After the call, ``call`` waits
    for a stopping thread that saw the window open and withdraws what it raised, so that when
    ``call`` returns nothing is pending for the thread and nothing can be raised in it any more.
    """

    __slots__ = (
        "_finished",
        "_generator",
        "_raising",
        "emitter",
        "error",
        "grace",
        "label",
        "limit",
        "lock",
        "reason",
        "thread",
    )

    def __init__(self, label: str, error: type[BaseException], limit: float | None) -> None:
        self.thread = threading.get_ident()
        self.label = label
        self.error = error
        self.limit = limit
        self.lock = threading.Lock()  # the stopping threads', never the block's thread
        self.reason: str | None = None  # "cancelled" or "timeout"
        self.emitter: Any = None
        self.grace = STOP_GRACE_SECONDS  # seconds between the watchdog's raises
        self._generator: Any = None  # the block's call once it has started
        self._raising = False  # a stopping thread between its look at the window and its raise
        self._finished = False

    def call(self, function: Callable[[], Any]) -> tuple[bool, Any]:
        """Run ``function()`` in the window, on the block's thread: ``(True, its result)``, or
        ``(False, the exception it raised)``, the stop exception included.

        A stop asked for before the call starts is raised at its start. A stop that lands
        after the function returned (raised just before, delivered just after) is the outcome
        too: the block was stopped. At most two can land after the function returned: the one
        pending then, and the one of a stopping thread that saw the window still open; so the
        window is shut (``_shut``) up to three times, each inside a ``try``.
        """
        self.thread = threading.get_ident()
        self._generator = generator = self._window(function)
        try:
            try:
                next(generator)
            except StopIteration as returned:
                outcome: tuple[bool, Any] = returned.value
            finally:
                self._shut()
        except BaseException as landed:
            try:
                self._shut()
            except BaseException:
                self._shut()
            outcome = (False, landed)
        return outcome

    def _window(self, function: Callable[[], Any]) -> Generator[None, None, tuple[bool, Any]]:
        if self.reason is not None:
            raise self.error  # stopped before it started (``stop`` saw the window closed)
        try:
            return True, function()
        except BaseException as error:
            # Without this frame's entry: the traceback starts at the block's own lines.
            if error.__traceback__ is not None:
                error.__traceback__ = error.__traceback__.tb_next
            return False, error
        yield  # never reached: it makes this a generator, whose ``gi_running`` is the window

    def _shut(self) -> None:
        """After the call, on the block's thread: nothing pending for it, nothing to come."""
        self._finished = True
        while self._raising:  # a stopping thread saw the window open: let it raise, then
            time.sleep(0)
        _set_async_exc(self.thread, None)  # withdraw what is pending, if anything

    def stop(self, reason: str) -> None:
        """Stop the block (from any thread but the block's): raise the stop in its thread."""
        with self.lock:
            if self.reason is not None or self._finished:
                return
            self.reason = reason
            raised = self._raise_locked()
            emitter = self.emitter
        if emitter is not None:
            emitter.stop(keep=reason == "timeout")
        if raised:
            threading.Thread(target=self._watch, name="afar-stop-watchdog", daemon=True).start()

    def _raise_locked(self) -> bool:
        """Raise the stop in the block's thread if its call runs (under ``lock``)."""
        # The order matters: ``_raising`` is set before the look at the window, which ``_shut``
        # clears before it looks at ``_raising``. One of the two threads sees the other's write.
        self._raising = True
        try:
            generator = self._generator
            if self._finished or generator is None or not generator.gi_running:
                return False
            _set_async_exc(self.thread, ctypes.py_object(self.error))
            return True
        finally:
            self._raising = False

    def _watch(self) -> None:
        """Say so when the block does not stop at once (a long call in C), and insist."""
        told = False
        while True:
            time.sleep(self.grace)
            with self.lock:
                if not self._raise_locked():
                    return
                emitter = self.emitter
            if not told and emitter is not None:
                told = True
                emitter.stop(keep=False, notice=self._notice())

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
