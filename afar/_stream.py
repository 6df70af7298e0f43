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
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from afar._sinks import DefaultSink, Sink, dropped_notice, limit_notice, restart_notice
from afar._worker.protocol import (
    DISPLAY,
    DROPPED,
    FIGURE,
    INPUT,
    KEPT_FAILURE,
    LIMIT,
    NOTICE,
    PROGRESS,
    PROTOCOL,
    STDERR,
    TEXT_KINDS,
)

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["OutputRouter", "router_for", "silence", "topic_for"]

TOPIC_PREFIX = "afar-output-"
# Attempt tokens remembered per block: enough for any sensible `retries=`.
MAX_ATTEMPTS = 16
# Blocks without a sink remembered for restart notices.
MAX_UNREGISTERED = 256

logger = logging.getLogger(__name__)


def topic_for(client: Client) -> str:
    """The event topic carrying the output of ``client``'s blocks."""
    return TOPIC_PREFIX + client.id


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
        # Who hears a block's reads of input and its kept failure (afar._debugging), by block.
        self._listeners: dict[str, Callable[[str, Any, str], None]] = {}
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

    def listen(self, block: str, listener: Callable[[str, Any, str], None]) -> None:
        """Hand ``block``'s ``INPUT`` and ``KEPT_FAILURE`` items to ``listener(kind, data,
        worker)``, in order with its output, until ``unregister(block)`` or ``silence(block)``."""
        with self._lock:
            self._listeners[block] = listener

    def unregister(self, block: str) -> None:
        """Forget ``block`` (again is fine). Call it when the block's Future is done."""
        with self._lock:
            self._listeners.pop(block, None)
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
            self._listeners.pop(block, None)
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
            listener = self._listeners.get(block)
        items = message.get("items", ())
        if silenced:
            items = [item for item in items if item and item[0] == NOTICE]
        try:
            if restarted and not silenced:
                worker = str(message.get("worker", "another worker"))
                sink.write(STDERR, restart_notice(label, worker))
            _deliver(sink, label, items, listener, str(message.get("worker", "")))
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


def _deliver(
    sink: Sink,
    label: str,
    items: Iterable[Any],
    listener: Callable[[str, Any, str], None] | None = None,
    worker: str = "",
) -> None:
    for kind, data in items:
        if kind in TEXT_KINDS:
            sink.write(kind, data)
        elif kind == DISPLAY:
            sink.display(data)
        elif kind == NOTICE:
            sink.write(STDERR, data)
        elif kind == LIMIT:
            sink.write(STDERR, limit_notice(label, data))
        elif kind == DROPPED:
            sink.write(STDERR, dropped_notice(label, data))
        elif kind == PROGRESS:
            progress = getattr(sink, "progress", None)
            if progress is not None and isinstance(data, dict):
                progress(label, data)
        elif kind == FIGURE:
            figure = getattr(sink, "figure", None)
            if figure is not None:
                figure(data)
        elif kind in (INPUT, KEPT_FAILURE):
            if listener is not None:
                listener(kind, data, worker)
            elif kind == INPUT:
                logger.debug("afar: %s reads input, and nobody here can answer it", label)
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
