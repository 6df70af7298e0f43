"""Worker side of progress: how far the Dask work a running block submitted has come.

This module travels to the workers pickled by value, like ``afar._worker.output``: it imports only
the standard library, ``distributed`` and modules shipped by value.

How it works
------------
``watch_progress`` starts a ``Watcher`` for a block whose client asked for progress. The watcher
costs the block a look at the worker's client and one callback on the worker's event loop; it
then looks, every ``TICK_SECONDS`` from ``START_SECONDS`` on and on the loop only, at the
Futures of the worker's own client (the one ``distributed.get_client()`` returns in a task):
those that were not there when the block
started and are still pending are the block's computations (``compute``, ``persist``,
``dask.compute``, ``client.submit``...). For each, it holds a Future of the same key (so that the
scheduler keeps it until the watcher has counted it) and follows it with a
``distributed.diagnostics.progressbar.ProgressBar``: the scheduler's ``Progress`` plugin counts
the key's tasks and those done, as ``distributed.progress`` does. The counts of all the block's
computations are added up and sent as a ``PROGRESS`` item through the block's output capture,
at most every ``SEND_SECONDS``, and once more, marked ``"end"``, when the block ends.

A block that submits nothing to Dask, or whose Dask work ends within ``START_SECONDS``, sends
nothing. Blocks running at the same time on one worker share that worker's client: each then
counts the other's computations as well.

Item payload: ``{"done": int, "total": int, "computations": int, "end": bool}``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from distributed import get_worker
from distributed.diagnostics.progressbar import ProgressBar

from afar._worker.output import Emitter
from afar._worker.protocol import PROGRESS

# The first look comes this long after the block started: quick blocks cost one timer.
START_SECONDS = 0.5
TICK_SECONDS = 0.25
# Counts are sent at most this often (and only when they changed).
SEND_SECONDS = 0.5
# How often the scheduler sends a computation's counts to the watcher.
FEED_INTERVAL = "200ms"


def watch_progress(emitter: Any) -> Watcher | None:
    """Follow the Dask work of the block running in this thread; call ``stop()`` at its end.

    ``emitter`` is the block's output capture (``capture_output``); None when it captures
    nothing (quiet, or not in a worker's task thread): nothing would reach the client.
    """
    if type(emitter) is Emitter:
        return None
    try:
        worker = get_worker()
    except ValueError:
        return None
    return Watcher(emitter, worker)


class Watcher:
    """Follows the computations a block submits to its worker's client, and reports counts."""

    def __init__(self, emitter: Any, worker: Any) -> None:
        self._emitter = emitter
        self._worker = worker
        self._lock = threading.Lock()
        self._stopped = False
        self._baseline: frozenset[Any] = frozenset()
        self._bars: dict[Any, Any] = {}
        self._sent: tuple[int, int] | None = None
        self._sent_at = 0.0
        client = _worker_client(worker)
        # Futures the worker's client held before the block started are not the block's.
        self._baseline = frozenset(_futures(client)) if client is not None else frozenset()
        worker.loop.add_callback(self._arm, START_SECONDS)

    def _arm(self, delay: float) -> None:
        self._worker.loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        # On the worker's event loop: the client's futures change on this loop too.
        with self._lock:
            if self._stopped:
                return
            client = _worker_client(self._worker)
            if client is not None:
                self._follow_new(client)
            done, total = self._counts()
            now = time.monotonic()
            due = now - self._sent_at >= SEND_SECONDS
            if total and due and (done, total) != self._sent:
                self._send(done, total, end=False)
                self._sent_at = now
        self._arm(TICK_SECONDS)

    def _follow_new(self, client: Any) -> None:
        from distributed import Future

        for key, state in _futures(client).items():
            if key in self._baseline or key in self._bars:
                continue
            if getattr(state, "status", None) != "pending":
                continue
            held: Any = Future(key, client)
            bar = _Bar([held], self._worker.scheduler.address)
            bar.held = held
            self._bars[key] = bar
            bar.task = _start(bar)

    def _counts(self, final: bool = False) -> tuple[int, int]:
        done = total = 0
        for bar in self._bars.values():
            if bar.total is None:
                continue
            finished = bar.status == "finished" or (final and bar.held.status == "finished")
            total += bar.total
            done += bar.total if finished else bar.done
        return done, total

    def _send(self, done: int, total: int, *, end: bool) -> None:
        payload = {"done": done, "total": total, "computations": len(self._bars), "end": end}
        try:
            self._emitter.send(PROGRESS, payload)
        except RuntimeError:
            self._stopped = True  # the block's capture has ended

    def stop(self) -> None:
        """The block has ended (in its own thread): send the final counts, let go of the rest."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            bars = list(self._bars.values())
            done, total = self._counts(final=True)
            if total:
                self._send(done, total, end=True)
        for bar in bars:
            bar.held.release()
            self._worker.loop.add_callback(bar.close)


def _worker_client(worker: Any) -> Any:
    """The client a task on ``worker`` gets from ``get_client()``, if it has one already."""
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:
        return None
    scheduler = getattr(client, "scheduler", None)
    if scheduler is None or getattr(scheduler, "address", None) != worker.scheduler.address:
        return None
    return client


def _futures(client: Any) -> dict[Any, Any]:
    for _ in range(8):
        try:
            return dict(client.futures)
        except RuntimeError:  # changed size while copied (from a task thread)
            continue
    return {}


def _start(bar: Any) -> Any:
    import asyncio

    return asyncio.ensure_future(bar.listen())


class _Bar(ProgressBar):
    """A progress bar that only keeps the counts the scheduler sends."""

    def __init__(self, keys: list[Any], scheduler: str) -> None:
        super().__init__(keys, scheduler=scheduler, interval=FEED_INTERVAL, complete=True)
        self.total: int | None = None
        self.done = 0
        self.status = "pending"
        self.held: Any = None
        self.task: Any = None

    def _draw_bar(self, remaining: int = 0, all: int = 0, status: str = "", **_: Any) -> None:
        self.total, self.done, self.status = all, all - remaining, status

    def _draw_stop(self, **_: Any) -> None:
        if self.held is not None:
            self.held.release()

    def close(self) -> None:
        comm = getattr(self, "comm", None)
        if comm is not None:
            comm.abort()
        if self.task is not None and not self.task.done():
            self.task.cancel()
