"""Worker side of live output: per-thread capture of sys.stdout/sys.stderr, sent as Dask events.

This module travels to the workers pickled by value (workers need not have afar installed), so it
imports only the standard library, ``distributed`` and modules shipped by value with it, and keeps
nothing in module globals that must outlive one task: each task gets its own copy of them.

How it works
------------
The worker plugin's routers (``afar._worker.routing``) stand in front of ``sys.stdout`` and
``sys.stderr``; a thread inside ``capture_output`` has its writes reach the worker's own streams
and its forwarder, which records the text. Where no plugin installed the routers (a process that
is not an afar worker), nothing is captured. What the text becomes as events (merging, batches
of at most ``BATCH_SECONDS`` or ``BATCH_MAX_CHARS`` characters, the budget, unfinished lines) is
decided by the pure ``afar._worker.batching.Batcher``; the forwarder here adds the lock, the
timer on the worker's event loop and ``Worker.log_event`` on the client's topic. Only writes
through the ``sys.stdout`` and ``sys.stderr`` objects made by the block's own thread are
captured: threads the block starts, writes to ``sys.__stdout__``, to ``sys.stdout.buffer`` and
to file descriptors 1 and 2 are not.

Message layout
--------------
See ``afar._worker.protocol``, which both sides import; its names are re-exported here.

A block that writes nothing sends nothing, not even an end marker: the client learns that a block
has ended from its Future, and Dask delivers a worker's events to the client before the result of
the task that logged them (both travel worker → scheduler → client over the same ordered
connections, and the events are queued on the worker before the task returns).

What stays on the scheduler
---------------------------
The scheduler keeps the last ``distributed.admin.low-level-log-length`` events (1000 by default) of
every topic, readable by any client with ``Client.get_events(topic)``, until it shuts down: Dask
clears only the topic named after the client itself when a client leaves, not afar's topic. So up
to that many batches of a client's output (each at most ``BATCH_MAX_CHARS`` characters plus
displays) stay there. ``capture_output(..., quiet=True)`` sends nothing: the output then appears
only in the worker's own streams.

Limits
------
A block sends at most ``MAX_BLOCK_CHARS`` characters of text per attempt (``max_chars=`` to change
it); beyond that its output still reaches the worker's streams but is dropped from capture, and the
client is told when the limit is hit and, at the end, how much was dropped.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import secrets
import threading
import time
from typing import Any

from distributed import get_worker

from afar._worker.batching import Batcher
from afar._worker.protocol import (  # noqa: F401 (re-exported: tests and older imports)
    BATCH_MAX_CHARS,
    BATCH_SECONDS,
    DISPLAY,
    DROPPED,
    INPUT,
    KINDS,
    LIMIT,
    MAX_BLOCK_CHARS,
    NOTICE,
    PROGRESS,
    PROTOCOL,
    STDERR,
    STDOUT,
    TEXT_KINDS,
)
from afar._worker.routing import active_captures

_logger = logging.getLogger("afar.output")

_get_ident = threading.get_ident
_now = time.monotonic


class Emitter:
    """Sends messages in order with a block's captured output; this base class sends nothing.

    ``capture_output`` yields an ``Emitter``; without a worker, or when quiet, its ``send`` does
    nothing.
    """

    __slots__ = ()

    def send(self, kind: str, payload: Any = None) -> None:
        """Send ``payload`` as an item of ``kind`` after all output written so far.

        May be called from the block's thread or from the worker's event loop.

        Parameters
        ----------
        kind
            Item kind, e.g. ``DISPLAY``.
        payload
            Anything msgpack can serialise (``TypeError`` otherwise).

        Examples
        --------
        >>> with capture_output(topic, key, "x.py:3") as emitter:  # doctest: +SKIP
        ...     emitter.send(DISPLAY, {"text/plain": "42"})
        """


_NULL_EMITTER = Emitter()
_NULL_CONTEXT: contextlib.AbstractContextManager[Emitter] = contextlib.nullcontext(_NULL_EMITTER)


def capture_output(
    topic: str,
    block: str,
    label: str,
    *,
    quiet: bool = False,
    max_chars: int = MAX_BLOCK_CHARS,
    client_streams: tuple[Any, ...] | None = None,
) -> contextlib.AbstractContextManager[Emitter]:
    """Stream what the current thread writes to sys.stdout/sys.stderr to a client, live.

    Inside the ``with``, the thread's writes still reach the worker's own streams, and are also
    batched into events on ``topic`` (see the module docstring for the layout). On exit, pending
    output is sent. Outside a Dask worker, or with ``quiet=True``, nothing is captured or sent and
    the emitter's ``send`` does nothing.

    Parameters
    ----------
    topic
        Event topic of the client waiting for the output.
    block
        Task key of the block.
    label
        Human label of the block, such as ``"script.py:12"``.
    quiet
        Capture and send nothing.
    max_chars
        Characters of text sent at most; later output is dropped with a notice.
    client_streams
        ``stream_identity()`` of the client: a worker stream that is the very file of the
        client's stream (a LocalCluster's workers inherit the terminal or the notebook kernel's
        pipes) is not written to as well, or the client would show every line twice.

    Examples
    --------
    >>> with capture_output("afar-output-Client-…", key, "script.py:12"):  # doctest: +SKIP
    ...     print("hello")
    """
    if quiet:
        return _NULL_CONTEXT
    try:
        worker = get_worker()
    except ValueError:
        return _NULL_CONTEXT
    if worker.thread_id == _get_ident():
        # On the event loop thread (an async task) capture would take everything the worker's
        # loop writes, and the batching timer would run on the thread being captured.
        return _NULL_CONTEXT
    captures = active_captures()
    if captures is None:
        return _NULL_CONTEXT  # no afar worker plugin in this process: no routers to capture
    unechoed = shared_streams(client_streams) if client_streams else frozenset()
    return _Forwarder(worker, captures, topic, block, label, max_chars, unechoed)


def stream_identity() -> tuple[Any, ...]:
    """(host, stdout's file, stderr's file) of this process: files as (device, inode) or None."""
    import socket

    return (socket.gethostname(), _file_identity(1), _file_identity(2))


def shared_streams(client_streams: Any) -> frozenset[str]:
    """The streams (STDOUT, STDERR) this process shares with a client of ``stream_identity``."""
    try:
        host, stdout, stderr = client_streams
        mine = stream_identity()
    except (TypeError, ValueError):
        return frozenset()
    if host != mine[0]:
        return frozenset()
    pairs = ((STDOUT, stdout, mine[1]), (STDERR, stderr, mine[2]))
    return frozenset(name for name, theirs, ours in pairs if theirs and list(theirs) == ours)


def _file_identity(descriptor: int) -> list[int] | None:
    import os

    try:
        status = os.fstat(descriptor)
    except OSError:
        return None
    return [status.st_dev, status.st_ino]


class _Forwarder(Emitter):
    """One block thread's output on its way to the client: an inbox the block's thread fills
    without a lock, a ``Batcher`` that the worker's event loop feeds from it, a timer on that
    loop, and ``Worker.log_event``; stops forwarding if sending fails.

    The block's thread never takes the lock while the block runs: a stop is raised there at any
    bytecode (``afar._worker.stopping``), and on CPython 3.14 one raised right after ``with
    lock:`` took the lock skips the ``with``'s exit (cpython#148874), which would leave the lock
    taken and the worker's event loop waiting for it. Its writes go into a ``deque`` (an append
    is one C call: it happens whole or not at all) and the loop batches them. The lock is the
    loop's, the stopping thread's, and the block's thread's only before and after the block.
    """

    __slots__ = (
        "_batcher",
        "_block",
        "_broken",
        "_captures",
        "_closed",
        "_header",
        "_ident",
        "_inbox",
        "_label",
        "_lock",
        "_previous",
        "_seq",
        "_timer_armed",
        "_topic",
        "_woken",
        "_worker",
        "teeing",
        "unechoed",
    )

    def __init__(
        self,
        worker: Any,
        captures: dict[int, Any],
        topic: str,
        block: str,
        label: str,
        max_chars: int,
        unechoed: frozenset[str] = frozenset(),
    ) -> None:
        # Streams not written to on the worker: they are the client's own (see capture_output).
        self.unechoed = unechoed
        self._worker = worker
        self._captures = captures
        self._topic = topic
        self._block = block
        self._label = label
        self._lock = threading.Lock()
        self._batcher = Batcher(max_chars)
        # (kind, data, time of the write) from the block's thread, in order; taken under the lock.
        self._inbox: collections.deque[tuple[str, Any, float]] = collections.deque()
        self._woken = False  # a drain of the inbox is queued on the loop
        self._header: dict[str, Any] | None = None
        self._seq = 0
        self._timer_armed = False
        self._closed = False
        self._broken = False
        # Set by a router while it writes to the stream it replaced, so that a router of this
        # version further down (left below a wrapper someone put on top of it, which made us
        # install another in front) does not record the same text twice.
        self.teeing = False

    def __enter__(self) -> _Forwarder:
        self._ident = ident = _get_ident()
        # A block inside a block in the same thread: the inner one captures until it ends.
        self._previous = self._captures.get(ident)
        self._captures[ident] = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        # On the block's thread after the block: no stop can come any more (see the class).
        captures = self._captures
        if self._previous is None:
            captures.pop(self._ident, None)
        else:
            captures[self._ident] = self._previous
        with self._lock:
            if self._broken:
                self._closed = True
                return
            try:
                self._drain_locked(from_loop=False)
                self._closed = True
                events = self._batcher.close()
                if events:
                    self._send_locked(events, from_loop=False)
            except Exception:
                # Never replace the block's own outcome with a failure to report its output.
                self._break_locked()
            self._closed = True

    # Called by routers, on the block's thread: no lock (see the class).
    def record(self, stream: str, text: str) -> None:
        if not text or self._closed or self._broken:
            return
        self._inbox.append((stream, text, _now()))
        self._wake()

    def send(self, kind: str, payload: Any = None) -> None:
        if self._closed:
            raise RuntimeError(f"output capture of {self._label} has ended; cannot send {kind}")
        if self._broken:
            return
        _check_sendable(kind, payload)  # here, so that a bad payload raises where it is sent
        self._inbox.append((kind, payload, _now()))
        self._wake()

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True  # before the callback: the drain clears it before it reads
            try:
                # add_callback is the thread-safe way onto the loop.
                self._worker.loop.add_callback(self._drain)
            except Exception:
                # A print must not fail because its output could not be forwarded (e.g. the
                # worker is closing): what is in the inbox goes with the block's end.
                self._woken = False

    def _drain(self) -> None:
        """On the loop: feed the inbox to the batcher, send what is due, arm the timer."""
        with self._lock:
            self._woken = False
            if self._closed or self._broken:
                return
            try:
                self._drain_locked(from_loop=True)
                if self._batcher.deadline is not None and not self._timer_armed:
                    self._timer_armed = True
                    self._arm_timer()
            except Exception:
                self._break_locked()

    def _drain_locked(self, *, from_loop: bool) -> None:
        inbox, batcher = self._inbox, self._batcher
        while inbox:
            kind, data, when = inbox.popleft()
            if kind in TEXT_KINDS:
                events = batcher.write(kind, data, when)
            elif kind == INPUT:
                # The prompt input() or pdb wrote just before reading goes with the request.
                data = {**data, "prompt": batcher.take_prompt()}
                events = [*batcher.take(), [[kind, data]]]
            else:
                # After all text written before it, in an event of its own.
                events = [*batcher.take(), [[kind, data]]]
            if events:
                self._send_locked(events, from_loop=from_loop)

    def stop(self, *, keep: bool, notice: str | None = None) -> None:
        """The block is being stopped: capture nothing more of it, from any thread.

        With ``keep``, output written so far is still sent (a block past its time limit); else
        it is dropped (a cancelled block: nobody waits for it). ``notice`` (a line of afar's) is
        sent on the block's stderr even after the capture has stopped. Not called on the block's
        thread while the block runs (``afar._worker.stopping`` calls it from the stopping one).
        """
        with self._lock:
            if self._broken:
                return
            try:
                if not self._closed:
                    self._closed = True
                    if keep:
                        self._drain_locked(from_loop=False)
                    else:
                        self._inbox.clear()
                    events = self._batcher.stop(keep=keep)
                    if events:
                        self._send_locked(events, from_loop=False)
                if notice is not None:
                    self._send_locked([[[NOTICE, notice]]], from_loop=False)
            except Exception:
                self._break_locked()

    def _arm_timer(self) -> None:
        deadline = self._batcher.deadline
        delay = BATCH_SECONDS if deadline is None else max(0.0, deadline - _now())
        self._worker.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        with self._lock:
            self._timer_armed = False
            if self._broken or self._closed:
                return
            try:
                self._drain_locked(from_loop=True)
                events = self._batcher.tick(_now())
                if events:
                    self._send_locked(events, from_loop=True)
                if self._batcher.deadline is not None:
                    self._timer_armed = True
                    self._arm_timer()  # on the loop already
            except Exception:
                self._break_locked()

    def _send_locked(self, events: list[list[list[Any]]], *, from_loop: bool) -> None:
        worker, topic = self._worker, self._topic
        for items in events:
            message = self._message(items)
            if from_loop:
                # Worker.log_event sends at once on the loop thread, but queues a callback from
                # another thread; a direct send here could overtake a batch queued from there
                # already. Queueing this one too keeps batches in sequence order.
                worker.loop.add_callback(worker.log_event, topic, message)
            else:
                worker.log_event(topic, message)
            self._seq += 1

    def _message(self, items: list[list[Any]]) -> dict[str, Any]:
        header = self._header
        if header is None:
            # The attempt token is made only when there is something to send: silent blocks
            # cost nothing.
            self._header = header = {
                "afar": PROTOCOL,
                "block": self._block,
                "label": self._label,
                "attempt": secrets.token_hex(8),
                "worker": self._worker.address,
            }
        return {**header, "seq": self._seq, "items": items}

    def _break_locked(self) -> None:
        self._broken = True
        self._inbox.clear()
        self._batcher.stop(keep=False)
        # Logged after _broken is set: this record may come back through the router.
        _logger.warning("afar: stopped forwarding the output of %s", self._label, exc_info=True)


def _check_sendable(kind: str, payload: Any) -> None:
    """A payload msgpack cannot send raises TypeError where it is sent, as log_event would."""
    import msgpack

    try:
        msgpack.dumps(payload)
    except (TypeError, ValueError, OverflowError) as error:
        raise TypeError(
            f"afar: the {kind} item cannot be sent to the client (msgpack: {error})"
        ) from None
