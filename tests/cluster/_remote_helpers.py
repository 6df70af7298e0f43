"""What the remote behaviour tests share: timeouts, waiting until the scheduler caught up
(``flush``), a sink that records a block's output, a log of the graphs the scheduler receives,
client-side objects that report being pickled, and a SIGINT handler that interrupts only while
armed (``armed_sigint``).

Workers cannot import this file (nor the test files): blocks in the tests read only plain values,
the standard library and installed packages, and define inside the block whatever they need.
"""

from __future__ import annotations

import re
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from distributed import Client
from distributed.diagnostics.plugin import SchedulerPlugin

from afar._worker.output import DISPLAY  # the kind a sink records a display under

# Seconds. Bounds on every wait for the cluster; far above what any step takes on 2 cores.
RESULT_TIMEOUT = 30
# How long a block may wait on a gate (a distributed.Event) that the test opens.
GATE_TIMEOUT = 30
# What a hex token in a key looks like (afar-<file>:<line>-<token>[-<name>]).
TOKEN = "[0-9a-f]+"


def lineno() -> int:
    """The caller's current line: ``line = lineno() + 1`` just above a ``with`` gives its line."""
    return sys._getframe(1).f_lineno


def label(filename: str, line: int) -> str:
    """How afar names the block at ``filename``:``line`` (file name without its folder)."""
    return f"{filename.rsplit('/', 1)[-1]}:{line}"


def body_key_pattern(block_label: str) -> re.Pattern[str]:
    return re.compile(rf"afar-{re.escape(block_label)}-{TOKEN}")


def new_gate_name() -> str:
    return f"afar-test-gate-{uuid.uuid4().hex}"


@dataclass
class GuardedSigint:
    """While ``armed`` is set, SIGINT raises KeyboardInterrupt; else it is noted in ``stray``."""

    armed: threading.Event = field(default_factory=threading.Event)
    stray: list[int] = field(default_factory=list)


@contextmanager
def armed_sigint() -> Iterator[GuardedSigint]:
    """Handle SIGINT with Python's own handler (``signal.default_int_handler``) only while armed.

    A signal sent too late, after the code under test has left, lands in ``stray`` instead of
    interrupting pytest itself. The previous handler is back on exit.
    """
    guard = GuardedSigint()

    def on_sigint(signum: int, frame: Any) -> None:
        if guard.armed.is_set():
            signal.default_int_handler(signum, frame)
        guard.stray.append(signum)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield guard
    finally:
        guard.armed.clear()
        signal.signal(signal.SIGINT, previous)


class GraphLog(SchedulerPlugin):
    """Remembers every task the scheduler receives: its key, dependencies and priority.

    ``priority`` is the scheduler's ordering tuple: the smaller runs first, and a higher
    ``priority=`` given to ``client.submit`` makes it smaller.
    """

    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.calls = 0

    def update_graph(self, scheduler: Any, *, tasks: list[Any], **kwargs: Any) -> None:
        self.calls += 1
        for key in tasks:
            state = scheduler.tasks.get(key)
            if state is None:
                continue
            self.tasks[str(key)] = {
                "dependencies": sorted(str(d.key) for d in state.dependencies),
                "priority": tuple(state.priority or ()),
                "call": self.calls,
            }


def _read_graph_log(name: str, dask_scheduler: Any = None) -> dict[str, dict[str, Any]]:
    return dict(dask_scheduler.plugins[name].tasks)


def flush(client: Client) -> None:
    """Wait until the scheduler has handled what this client sent so far, and the
    done-callbacks of the Futures finished so far have run.

    The client sends to the scheduler over one ordered stream, and Dask runs done-callbacks in
    one thread in the order the Futures finished: a task submitted now finishes after both.
    """
    ran = threading.Event()
    marker = client.submit(int, 0, pure=False)
    marker.add_done_callback(lambda _: ran.set())
    assert ran.wait(RESULT_TIMEOUT), "the scheduler did not run a marker task in time"


class RecordingSink:
    """A block's sink that remembers what arrived, in order, and lets a test wait for text."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []
        self._changed = threading.Condition()

    def write(self, stream: str, text: str) -> None:
        with self._changed:
            self.items.append((stream, text))
            self._changed.notify_all()

    def display(self, payload: Any) -> None:
        with self._changed:
            self.items.append((DISPLAY, payload))
            self._changed.notify_all()

    def text(self, stream: str) -> str:
        with self._changed:
            return "".join(data for kind, data in self.items if kind == stream)

    def wait_for(self, stream: str, text: str) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: text in self.text(stream), timeout=RESULT_TIMEOUT)


class GraphRecorder:
    """The client side of ``GraphLog``: install it, then ask which tasks a block produced."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.name = f"afar-test-graph-log-{uuid.uuid4().hex}"
        client.register_plugin(GraphLog(), name=self.name)

    def close(self) -> None:
        self.client.unregister_scheduler_plugin(self.name)

    def flush(self) -> None:
        """Wait until the scheduler has handled everything this client sent so far.

        The client sends graphs over one ordered stream: once a task sent after them has
        finished, the scheduler has seen every graph sent before it.
        """
        flush(self.client)

    def tasks_of(self, block_label: str) -> dict[str, dict[str, Any]]:
        """Tasks whose key names the block at ``block_label`` (after a flush)."""
        self.flush()
        log = self.client.run_on_scheduler(_read_graph_log, self.name)
        prefix = f"afar-{block_label}-"
        return {key: info for key, info in log.items() if key.startswith(prefix)}


class RefusesPickling:
    """A client-side value whose pickling raises: proof that it was never sent."""

    def __init__(self, what: str = "an unrelated variable") -> None:
        self.what = what

    def __reduce__(self) -> Any:
        raise TypeError(f"{self.what} was pickled: afar sent something the block does not read")


class CountsPickles:
    """A client-side value that counts how often it is pickled; it arrives as ``bytes(size)``.

    It unpickles to a builtin, so workers need nothing of this file.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.times_pickled = 0

    def __reduce__(self) -> Any:
        self.times_pickled += 1
        return (bytes, (self.size,))
