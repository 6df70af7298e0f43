"""Client side of live output: one event subscription per client, each block's output to its sink.

Workers send a block's output as events on the client's topic (``topic_for``; layout and limits
in ``afar._worker.output``). ``router_for(client)`` subscribes once per client; the core then
brackets each block with ``register``/``unregister``::

    router = router_for(client)          # before submitting: the subscription goes first
    router.register(key, sink)
    future = client.submit(..., key=key)
    future.add_done_callback(lambda _: router.unregister(key))

Unregistering when the block's Future completes loses nothing: a worker queues a block's events
before the task returns, and worker → scheduler → client keep that order, so the client handles
the last batch before it learns that the task finished (the Future's done-callbacks run after
that, in another thread). Output that arrives for a block without a sink, such as from an attempt
still running on a worker the scheduler has given up on, goes to the router's default sink.

Per-block state: a registered block holds its sink and the attempt tokens seen (at most
``MAX_ATTEMPTS``) until ``unregister``; blocks without a sink are remembered only for restart
notices, at most ``MAX_UNREGISTERED`` of them, least recently heard from forgotten first.

What stays on the scheduler: see ``afar._worker.output``; in short, the last 1000 events of each
client's topic (``distributed.admin.low-level-log-length``) until the scheduler stops, readable by
any client. Quiet blocks send nothing.
"""

from __future__ import annotations

import logging
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from afar._worker.protocol import (
    DISPLAY,
    DROPPED,
    LIMIT,
    NOTICE,
    PROGRESS,
    PROTOCOL,
    STDERR,
    STDOUT,
    TEXT_KINDS,
)

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "DefaultSink",
    "OutputRouter",
    "Sink",
    "failure_report",
    "print_plain",
    "progress_text",
    "report_failure",
    "restart_notice",
    "router_for",
    "silence",
    "topic_for",
]

TOPIC_PREFIX = "afar-output-"
# Starts every line afar itself writes among a block's output.
NOTICE_PREFIX = "[afar] "
# Attempt tokens remembered per block: enough for any sensible `retries=`.
MAX_ATTEMPTS = 16
# Blocks without a sink remembered for restart notices.
MAX_UNREGISTERED = 256

logger = logging.getLogger(__name__)


class Sink(Protocol):
    """Where one block's output goes on the client. Called on the client's event loop: be quick."""

    def write(self, stream: str, text: str) -> None:
        """Write ``text`` (any number of lines, maybe partial) to ``STDOUT`` or ``STDERR``."""

    def display(self, payload: Any) -> None:
        """Show a payload the block sent with ``Emitter.send(DISPLAY, ...)``, e.g. a mimebundle."""

    # Optional: ``progress(label, counts)`` shows the counts of the block's Dask work
    # (``afar._worker.progress``); a sink without it shows none.


def print_plain(payload: Any) -> None:
    """Default display hook: print a mimebundle's ``text/plain`` entry (or the payload)."""
    text = payload.get("text/plain") if isinstance(payload, dict) else None
    print(payload if text is None else text, file=sys.stdout, flush=True)


class DefaultSink:
    """Writes to this process's current ``sys.stdout``/``sys.stderr``; displays through a hook.

    Parameters
    ----------
    display_hook
        Called with each display payload; ``print_plain`` by default.

    Examples
    --------
    >>> router_for(client).default_sink = DefaultSink(IPython.display.display)  # doctest: +SKIP
    """

    def __init__(self, display_hook: Callable[[Any], None] | None = None) -> None:
        self.display_hook = display_hook or print_plain
        # The progress line drawn last on a terminal's stderr, and not ended yet.
        self._progress_line = ""

    def write(self, stream: str, text: str) -> None:
        if self._progress_line:
            self._clear_progress()
        # Looked up at every write: whoever replaced sys.stdout since (pytest, IPython) gets it.
        file = sys.stdout if stream == STDOUT else sys.stderr
        file.write(text)
        # Flushed so that output shows while the block runs even when stdout is a pipe.
        file.flush()

    def display(self, payload: Any) -> None:
        if self._progress_line:
            self._clear_progress()
        self.display_hook(payload)

    def progress(self, label: str, counts: dict[str, Any]) -> None:
        """Draw the block's progress on one line of stderr, if it is a terminal."""
        if not _is_terminal(sys.stderr):
            return
        line = progress_text(label, counts)
        end = bool(counts.get("end"))
        sys.stderr.write(f"\r{line}\x1b[K" + ("\n" if end else ""))
        sys.stderr.flush()
        self._progress_line = "" if end else line

    def end_progress(self) -> None:
        """End the progress line drawn last, keeping it: what follows starts on a new line."""
        if self._progress_line:
            self._progress_line = ""
            if _is_terminal(sys.stderr):
                sys.stderr.write("\n")
                sys.stderr.flush()

    def _clear_progress(self) -> None:
        # The block's own output goes where the progress line was; the next update redraws it.
        self._progress_line = ""
        if _is_terminal(sys.stderr):
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _is_terminal(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):
        return False


PROGRESS_BAR_WIDTH = 24


def progress_text(label: str, counts: dict[str, Any]) -> str:
    """One line telling how far a block's Dask work has come.

    Examples
    --------
    >>> progress_text("x.py:3", {"done": 100, "total": 400, "computations": 1})
    '[afar] x.py:3 [######------------------] 100/400 tasks (25%)'
    """
    done, total = int(counts.get("done", 0)), int(counts.get("total", 0))
    share = done / total if total > 0 else 0.0
    filled = round(share * PROGRESS_BAR_WIDTH)
    bar = "#" * filled + "-" * (PROGRESS_BAR_WIDTH - filled)
    computations = int(counts.get("computations", 1))
    more = f", {computations} computations" if computations > 1 else ""
    return f"{NOTICE_PREFIX}{label} [{bar}] {done:,}/{total:,} tasks ({share:.0%}{more})"


def topic_for(client: Client) -> str:
    """The event topic carrying the output of ``client``'s blocks."""
    return TOPIC_PREFIX + client.id


def restart_notice(label: str, worker: str) -> str:
    """The line telling that output from here on comes from a new attempt of a block."""
    return f"{NOTICE_PREFIX}{label} restarted on {worker}\n"


def report_failure(label: str, text: str) -> None:
    """Print a report of a failed block to this process's stderr, each line prefixed.

    Parameters
    ----------
    label
        The block's label, such as ``"script.py:12"``.
    text
        What to report, typically a formatted traceback.

    Examples
    --------
    >>> report_failure("script.py:12", "ZeroDivisionError: division by zero")  # doctest: +SKIP
    [afar] script.py:12 failed:
    [afar]   ZeroDivisionError: division by zero
    """
    sys.stderr.write(failure_report(label, text))
    sys.stderr.flush()


def failure_report(label: str, text: str) -> str:
    """The text ``report_failure`` prints: each line prefixed, the first naming the block."""
    lines = [f"{NOTICE_PREFIX}{label} failed:"]
    lines += [f"{NOTICE_PREFIX}  {line}" for line in text.rstrip("\n").splitlines()]
    return "\n".join(lines) + "\n"


def _limit_notice(label: str, data: dict[str, Any]) -> str:
    return (
        f"{NOTICE_PREFIX}{label}: output reached the limit of {data.get('chars', 0):,} "
        "characters; the rest is not sent (it still goes to the worker's own output)\n"
    )


def _dropped_notice(label: str, data: dict[str, Any]) -> str:
    return (
        f"{NOTICE_PREFIX}{label}: dropped {data.get('chars', 0):,} characters "
        f"({data.get('lines', 0):,} lines) of output past the limit\n"
    )


class _Block:
    """Client-side state of one block: its sink (None: the default sink) and attempts seen."""

    __slots__ = ("attempts", "silenced", "sink")

    def __init__(self, sink: Sink | None) -> None:
        self.sink = sink
        self.attempts: list[str] = []
        self.silenced = False  # stopped: only afar's notices are shown

    def restarted(self, attempt: str) -> bool:
        """Note ``attempt``; whether it is a new attempt after another one."""
        if attempt in self.attempts:
            return False
        self.attempts.append(attempt)
        if len(self.attempts) > MAX_ATTEMPTS:
            del self.attempts[0]
        return len(self.attempts) > 1


class OutputRouter:
    """Hands the output events of one client's blocks to each block's sink.

    Use ``router_for(client)``, which makes one per client and subscribes it to ``topic_for``.
    ``register``/``unregister`` may be called from any thread; sinks are called on the client's
    event loop, in the order the block wrote.

    Examples
    --------
    >>> router = router_for(client)  # doctest: +SKIP
    >>> router.register(future_key, sink)  # doctest: +SKIP
    """

    def __init__(self, client: Client) -> None:
        self.topic = topic_for(client)
        self.default_sink: Sink = DefaultSink()
        self._lock = threading.Lock()
        self._blocks: dict[str, _Block] = {}
        self._unregistered: OrderedDict[str, _Block] = OrderedDict()
        # Blocks whose Futures are done (at most MAX_UNREGISTERED, a name each): an event of
        # theirs that arrives after that, on a busy client, is shown and leaves no state.
        self._finished: OrderedDict[str, None] = OrderedDict()
        # Weak: the router is cached per client in a weak mapping, which a strong reference
        # from the value to its key would keep alive forever.
        self._client = weakref.ref(client)

    def register(self, block: str, sink: Sink) -> None:
        """Send the output of ``block`` (a task key) to ``sink`` until ``unregister(block)``."""
        with self._lock:
            state = self._unregistered.pop(block, None) or self._blocks.get(block) or _Block(sink)
            state.sink = sink
            self._blocks[block] = state

    def unregister(self, block: str) -> None:
        """Forget ``block`` (again is fine). Call it when the block's Future is done."""
        with self._lock:
            self._blocks.pop(block, None)
            self._unregistered.pop(block, None)
            self._finished[block] = None
            if len(self._finished) > MAX_UNREGISTERED:
                self._finished.popitem(last=False)

    def silence(self, block: str) -> None:
        """Show nothing more of ``block`` (it was cancelled) but afar's notices; from any thread.

        Its output still on the way is dropped. Remembered like a block without a sink (at most
        ``MAX_UNREGISTERED`` of them).
        """
        with self._lock:
            state = self._blocks.pop(block, None) or self._unregistered.pop(block, None)
            state = state or _Block(None)
            state.silenced = True
            state.sink = None
            self._unregistered[block] = state
            if len(self._unregistered) > MAX_UNREGISTERED:
                self._unregistered.popitem(last=False)
        # A progress line the block drew on the terminal stays; a traceback goes below it.
        end_progress = getattr(self.default_sink, "end_progress", None)
        if end_progress is not None:
            end_progress()

    def __len__(self) -> int:
        """Number of blocks the router holds state for."""
        with self._lock:
            return len(self._blocks) + len(self._unregistered)

    def handle(self, event: tuple[float, Any]) -> None:
        """The topic's event handler: ``event`` is ``(timestamp, message)``."""
        _, message = event
        if (
            not isinstance(message, dict)
            or message.get("afar") != PROTOCOL
            or not isinstance(message.get("block"), str)
        ):
            logger.debug("afar: ignoring an output event it cannot read: %.200r", message)
            return
        block: str = message["block"]
        label = str(message.get("label", block))
        with self._lock:
            state = self._blocks.get(block)
            if state is None and block in self._finished and block not in self._unregistered:
                state = _Block(None)  # a late event of a finished block: shown, not kept
            elif state is None:
                state = self._unregistered.pop(block, None) or _Block(None)
                self._unregistered[block] = state
                if len(self._unregistered) > MAX_UNREGISTERED:
                    self._unregistered.popitem(last=False)
            restarted = state.restarted(str(message.get("attempt")))
            sink = state.sink or self.default_sink
            silenced = state.silenced
        items = message.get("items", ())
        if silenced:
            items = [item for item in items if item and item[0] == NOTICE]
        try:
            if restarted and not silenced:
                worker = str(message.get("worker", "another worker"))
                sink.write(STDERR, restart_notice(label, worker))
            _deliver(sink, label, items)
        except Exception:
            # The handler runs on the client's event loop: a failing sink must not disturb it.
            logger.exception("afar: the output sink of %s failed", label)

    def close(self) -> None:
        """Unsubscribe from the topic and stop being ``router_for``'s answer for the client."""
        client = self._client()
        if client is None:
            return
        with _routers_lock:
            if _routers.get(client) is self:
                del _routers[client]
        gone: tuple[type[BaseException], ...] = (ValueError, *_closed_client_errors())
        try:
            client.unsubscribe_topic(self.topic)
        except gone:
            pass  # not subscribed any more, or the client is closed


def _closed_client_errors() -> tuple[type[BaseException], ...]:
    """What unsubscribing from a closed client raises (ClosedClientError from distributed 2025)."""
    import distributed.client

    closed = getattr(distributed.client, "ClosedClientError", None)
    return (closed,) if closed is not None else (RuntimeError,)


def _deliver(sink: Sink, label: str, items: Iterable[Any]) -> None:
    for kind, data in items:
        if kind in TEXT_KINDS:
            sink.write(kind, data)
        elif kind == DISPLAY:
            sink.display(data)
        elif kind == NOTICE:
            sink.write(STDERR, data)
        elif kind == LIMIT:
            sink.write(STDERR, _limit_notice(label, data))
        elif kind == DROPPED:
            sink.write(STDERR, _dropped_notice(label, data))
        elif kind == PROGRESS:
            progress = getattr(sink, "progress", None)
            if progress is not None and isinstance(data, dict):
                progress(label, data)
        else:
            logger.debug("afar: ignoring output item of unknown kind %r", kind)


_routers: weakref.WeakKeyDictionary[Client, OutputRouter] = weakref.WeakKeyDictionary()
_routers_lock = threading.Lock()


def silence(client: Client, block: str) -> None:
    """Show nothing more of ``block``'s output, if ``client`` has a router (see ``silence``)."""
    with _routers_lock:
        router = _routers.get(client)
    if router is not None:
        router.silence(block)


def router_for(client: Client) -> OutputRouter:
    """The output router of ``client``, subscribed on first use; thread-safe.

    Call it before submitting a block: the subscription then reaches the scheduler first.

    Examples
    --------
    >>> router_for(client) is router_for(client)  # doctest: +SKIP
    True
    """
    with _routers_lock:
        router = _routers.get(client)
        if router is None:
            router = OutputRouter(client)
            # Works from any thread and inside the client's loop: subscribe_topic only queues
            # a message; the handler runs on the loop and does not block it.
            client.subscribe_topic(router.topic, router.handle)
            _routers[client] = router
    return router
