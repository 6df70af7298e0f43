"""Worker side of live output: per-thread capture of sys.stdout/sys.stderr, sent as Dask events.

This module travels to the workers pickled by value (workers need not have afar installed), so it
imports only the standard library and ``distributed``, imports no other afar module, and keeps
nothing in module globals that must outlive one task: each task gets its own copy of them.

How it works
------------
Once per worker process, ``sys.stdout`` and ``sys.stderr`` are replaced by routers. A router looks
up the writing thread in a table of active captures: a thread without a capture writes straight to
the stream the router replaced; a thread inside ``capture_output`` writes there too (the worker's
own streams keep showing everything) and its capture records the text. Captures batch text for at
most ``BATCH_SECONDS`` or ``BATCH_MAX_CHARS`` characters, whichever comes first, and send each
batch with ``Worker.log_event`` on the client's topic. Only writes through the ``sys.stdout`` and
``sys.stderr`` objects made by the block's own thread are captured: threads the block starts, writes
to ``sys.__stdout__``, to ``sys.stdout.buffer`` and to file descriptors 1 and 2 are not.

Message layout
--------------
Every event is one msgpack-friendly dict::

    {
        "afar": PROTOCOL,         # layout version; clients ignore versions they do not know
        "block": "afar-x.py:3-…", # task key of the block
        "label": "x.py:3",        # human label, for notices
        "attempt": "9f…",         # random token per run of the block: a new one means a restart
        "worker": "tcp://…",      # address of the worker running this attempt
        "seq": 0,                 # 0, 1, 2, … per attempt
        "items": [[kind, data], …],
    }

Item kinds (``KINDS``): ``STDOUT`` and ``STDERR`` with a str (consecutive writes to one stream
merged; at most ``BATCH_MAX_CHARS`` characters of text per event); ``DISPLAY`` with whatever the
runner sends (e.g. a mimebundle dict); ``LIMIT`` with ``{"chars": limit}`` when the block's output
reaches its limit; ``DROPPED`` with ``{"chars": n, "lines": n}`` when the block ends after output
was dropped; ``PROGRESS`` with the counts of the block's Dask work (``afar._worker.progress``);
``NOTICE`` with a line of afar's own for the client's stderr (a block being stopped), shown even
for a block whose output the client no longer shows. ``Emitter.send`` may add other kinds;
clients ignore kinds they do not know.

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

import contextlib
import logging
import secrets
import sys
import threading
import types
from typing import Any

from distributed import get_worker

PROTOCOL = 1

# Item kinds: the only place they are spelled out; the client side imports these.
STDOUT = "stdout"
STDERR = "stderr"
DISPLAY = "display"
LIMIT = "limit"
DROPPED = "dropped"
PROGRESS = "progress"
NOTICE = "notice"
KINDS = (STDOUT, STDERR, DISPLAY, LIMIT, DROPPED, PROGRESS, NOTICE)
TEXT_KINDS = (STDOUT, STDERR)

# Latency of live output: a line reaches the client within about this long.
BATCH_SECONDS = 0.05
# Upper bound on the text in one event, so that a flood becomes a few large events, and the
# scheduler's per-topic event log (a bounded number of events) stays bounded in bytes.
BATCH_MAX_CHARS = 32_768
# Text one attempt of a block may send in total (about 4 MB of ASCII).
MAX_BLOCK_CHARS = 4_000_000

# Per-process state lives in a module object in sys.modules, not in this module's globals, which
# are fresh for every task. Its name and its `lock` attribute are shared by all versions of this
# code; everything else lives under a versioned attribute, and routers of different versions
# stack (each forwards to the stream it replaced). Bump _ROUTER_VERSION whenever `_Router` or the
# capture methods it calls (`record`, `teeing`) change.
_ROOT_NAME = "_afar_output"
_ROUTER_VERSION = 2
_STATE_ATTR = f"v{_ROUTER_VERSION}"
# Attribute every afar router of any version has: the stream it replaced. Installation follows it
# to tell whether its router is still in the chain below a router of another version.
_INNER_ATTR = "_afar_inner"
# Routers followed at most down such a chain: a guard against a cycle someone else made.
_MAX_CHAIN = 64

_logger = logging.getLogger("afar.output")

_get_ident = threading.get_ident


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
    unechoed = shared_streams(client_streams) if client_streams else frozenset()
    return _Capture(worker, topic, block, label, max_chars, unechoed)


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


class _Capture(Emitter):
    """Output of one block's thread on the way to the client: a batch, a timer, a budget."""

    __slots__ = (
        "_accepted",
        "_block",
        "_broken",
        "_closed",
        "_dropped_chars",
        "_dropped_lines",
        "_header",
        "_held",
        "_ident",
        "_label",
        "_last",
        "_limited",
        "_lock",
        "_max_chars",
        "_pending",
        "_pending_chars",
        "_previous",
        "_seq",
        "_state",
        "_timer_armed",
        "_topic",
        "_worker",
        "teeing",
        "unechoed",
    )

    def __init__(
        self,
        worker: Any,
        topic: str,
        block: str,
        label: str,
        max_chars: int,
        unechoed: frozenset[str] = frozenset(),
    ) -> None:
        # Streams not written to on the worker: they are the client's own (see capture_output).
        self.unechoed = unechoed
        self._worker = worker
        self._topic = topic
        self._block = block
        self._label = label
        self._max_chars = max_chars
        self._lock = threading.Lock()
        self._pending: list[list[Any]] = []  # [kind, data]; text data is a list of parts
        self._last: list[Any] | None = None  # last pending text item, to merge writes into
        self._pending_chars = 0
        self._accepted = 0
        self._limited = False
        self._dropped_chars = 0
        self._dropped_lines = 0
        self._header: dict[str, Any] | None = None
        self._seq = 0
        self._timer_armed = False
        self._held = False  # the last timer held back an unfinished line
        self._closed = False
        self._broken = False
        # Set by a router while it writes to the stream it replaced, so that a router of this
        # version further down (left below a wrapper someone put on top of it, which made us
        # install another in front) does not record the same text twice.
        self.teeing = False

    def __enter__(self) -> _Capture:
        self._state = state = _router_state()
        self._ident = ident = _get_ident()
        # A block inside a block in the same thread: the inner one captures until it ends.
        self._previous = state.captures.get(ident)
        state.captures[ident] = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        captures = self._state.captures
        if self._previous is None:
            captures.pop(self._ident, None)
        else:
            captures[self._ident] = self._previous
        with self._lock:
            self._closed = True
            if self._dropped_chars:
                self._pending.append(
                    [DROPPED, {"chars": self._dropped_chars, "lines": self._dropped_lines}]
                )
            if self._pending and not self._broken:
                try:
                    self._flush_locked(from_loop=False)
                except Exception:
                    # Never replace the block's own outcome with a failure to report its output.
                    self._break_locked()

    # Called by routers, on the block's thread.
    def record(self, stream: str, text: str) -> None:
        if not text or self._broken:
            return
        with self._lock:
            if self._closed:
                return
            size = len(text)
            if self._accepted + size > self._max_chars:
                self._overflow_locked(stream, text)
                return
            self._accepted += size
            self._append_locked(stream, text)
            try:
                if self._pending_chars >= BATCH_MAX_CHARS:
                    self._flush_locked(from_loop=False, keep_tail=True)
                elif not self._timer_armed:
                    self._timer_armed = True
                    # call_later must run on the loop; add_callback is the thread-safe way there.
                    self._worker.loop.add_callback(self._arm_timer)
            except Exception:
                # A print must not fail because its output could not be forwarded (e.g. the
                # worker is closing): stop forwarding instead.
                self._break_locked()

    def send(self, kind: str, payload: Any = None) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"output capture of {self._label} has ended; cannot send {kind}")
            if self._broken:
                return
            worker = self._worker
            from_loop = worker.thread_id == _get_ident()
            try:
                if self._pending:
                    self._flush_locked(from_loop=from_loop)
                message = self._message([[kind, payload]])
                if from_loop:
                    # Queued behind the batches the block's thread has queued (see _flush_locked).
                    worker.loop.add_callback(worker.log_event, self._topic, message)
                else:
                    # From a task thread, log_event checks that the payload serialises before
                    # queueing anything: a bad payload raises here and costs no sequence number.
                    worker.log_event(self._topic, message)
            except TypeError:
                raise
            except Exception:
                self._break_locked()
                return
            self._seq += 1

    def stop(self, *, keep: bool, notice: str | None = None) -> None:
        """The block is being stopped: capture nothing more of it, from any thread.

        With ``keep``, output written so far is still sent (a block past its time limit); else
        it is dropped (a cancelled block: nobody waits for it). ``notice`` (a line of afar's) is
        sent on the block's stderr even after the capture has stopped.
        """
        with self._lock:
            if self._broken:
                return
            try:
                if not self._closed:
                    self._closed = True
                    if keep and self._pending:
                        self._flush_locked(from_loop=False)
                    self._pending, self._last, self._pending_chars = [], None, 0
                    self._dropped_chars = 0
                if notice is not None:
                    self._worker.log_event(self._topic, self._message([[NOTICE, notice]]))
                    self._seq += 1
            except Exception:
                self._break_locked()

    def _append_locked(self, stream: str, text: str) -> None:
        last = self._last
        if last is not None and last[0] == stream:
            last[1].append(text)
        else:
            self._last = last = [stream, [text]]
            self._pending.append(last)
        self._pending_chars += len(text)

    def _overflow_locked(self, stream: str, text: str) -> None:
        if not self._limited:
            self._limited = True
            room = self._max_chars - self._accepted
            if room > 0:
                self._append_locked(stream, text[:room])
                self._accepted += room
                text = text[room:]
            self._pending.append([LIMIT, {"chars": self._max_chars}])
            self._last = None
            try:
                self._flush_locked(from_loop=False)
            except Exception:
                self._break_locked()
        self._dropped_chars += len(text)
        self._dropped_lines += text.count("\n")

    def _arm_timer(self) -> None:
        self._worker.loop.call_later(BATCH_SECONDS, self._on_timer)

    def _on_timer(self) -> None:
        with self._lock:
            self._timer_armed = False
            if self._pending and not self._broken:
                try:
                    tail = self._unfinished_line_locked()
                    if self._pending:
                        self._flush_locked(from_loop=True)
                    if tail is not None:
                        self._append_locked(*tail)
                        self._timer_armed = True
                        self._arm_timer()  # on the loop already
                except Exception:
                    self._break_locked()

    def _unfinished_line_locked(self) -> tuple[str, str] | None:
        """Take the batch's unfinished last line out of it, to send at the next tick.

        print() writes its text and then its newline: a batch cut between the two would split
        the line, and a console that shows several blocks (the client's default sink) could put
        another block's text in the middle of it. A line is held back for one tick only: one
        still unfinished then (a progress indicator) is sent as it is.
        """
        texts = [data for kind, data in self._pending if kind in TEXT_KINDS]
        if self._held and not any("\n" in part for parts in texts for part in parts):
            self._held = False  # the line held back last time is still unfinished: send it
            return None
        last = self._pending[-1]
        if last[0] not in TEXT_KINDS:
            self._held = False
            return None
        text = "".join(last[1])
        head, newline, tail = text.rpartition("\n")
        self._held = bool(tail)
        if not tail:
            return None
        if newline:
            last[1] = [head + newline]
        else:
            self._pending.pop()
            if not self._pending:
                self._pending, self._last, self._pending_chars = [], None, 0
        return last[0], tail

    def _flush_locked(self, *, from_loop: bool, keep_tail: bool = False) -> None:
        pending, self._pending, self._last, self._pending_chars = self._pending, [], None, 0
        events = _split(pending)
        if keep_tail and events and _is_partial_text(events[-1]):
            # Flushed because the batch is full: send full events only, and let the rest wait
            # for more text or the timer, instead of sending a sliver of a line on its own.
            for stream, text in events.pop():
                self._append_locked(stream, text)
        worker, topic = self._worker, self._topic
        for items in events:
            message = self._message(items)
            if from_loop:
                # Worker.log_event sends at once on the loop thread, but queues a callback from a
                # task thread; a direct send here could overtake a batch the block's thread has
                # queued already. Queueing this one too keeps batches in sequence order.
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
        self._pending, self._last, self._pending_chars = [], None, 0
        # Logged after _broken is set: this record may come back through the router.
        _logger.warning("afar: stopped forwarding the output of %s", self._label, exc_info=True)


def _split(pending: list[list[Any]]) -> list[list[list[Any]]]:
    """Group pending items into events holding at most BATCH_MAX_CHARS characters of text."""
    events: list[list[list[Any]]] = []
    items: list[list[Any]] = []
    room = BATCH_MAX_CHARS
    for kind, data in pending:
        if kind in TEXT_KINDS:
            text = _sendable("".join(data))
            while len(text) > room:
                if room:
                    items.append([kind, text[:room]])
                    text = text[room:]
                events.append(items)
                items, room = [], BATCH_MAX_CHARS
            if text:
                items.append([kind, text])
                room -= len(text)
        else:
            items.append([kind, data])
    if items:
        events.append(items)
    return events


def _is_partial_text(items: list[list[Any]]) -> bool:
    """Whether an event holds only text, less than BATCH_MAX_CHARS characters of it."""
    return all(kind in TEXT_KINDS for kind, _ in items) and (
        sum(len(text) for _, text in items) < BATCH_MAX_CHARS
    )


def _sendable(text: str) -> str:
    """Text msgpack can encode: lone surrogates (from surrogateescape'd bytes) become escapes."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class _Router:
    """Stands in for sys.stdout or sys.stderr, recording the writes of threads being captured."""

    def __init__(self, inner: Any, stream: str, captures: dict[int, Any]) -> None:
        setattr(self, _INNER_ATTR, inner)
        self._afar_stream = stream
        self._afar_captures = captures

    def write(self, text: str) -> int:
        capture = self._afar_captures.get(_get_ident())
        inner = self._afar_inner
        if capture is None or capture.teeing:
            return _write(inner, text)
        if self._afar_stream in capture.unechoed:
            if not isinstance(text, str):
                raise TypeError(f"write() argument must be str, not {type(text).__name__}")
            capture.record(self._afar_stream, text)
            return len(text)
        capture.teeing = True
        try:
            written = _write(inner, text)
        finally:
            capture.teeing = False
        # Recorded after the worker's stream accepted it: text a stream rejects (bytes, say)
        # raises as it would without afar, and is not sent either.
        capture.record(self._afar_stream, text)
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._afar_inner is not None:
            self._afar_inner.flush()

    def __getattr__(self, name: str) -> Any:
        # Everything else (encoding, isatty, fileno, buffer, …) is the replaced stream's.
        if name.startswith("_afar_"):
            raise AttributeError(name)
        return getattr(self._afar_inner, name)

    def __repr__(self) -> str:
        return f"<afar output router for {self._afar_inner!r}>"


def _write(stream: Any, text: str) -> int:
    if stream is not None:
        return stream.write(text)
    # sys.stdout is None (e.g. a worker started without a console): print() is silent then,
    # and a captured block's output still reaches the client.
    if not isinstance(text, str):
        raise TypeError(f"write() argument must be str, not {type(text).__name__}")
    return len(text)


def _router_state() -> Any:
    """Install this version's routers (once per process, again if replaced) and return its state."""
    root = sys.modules.get(_ROOT_NAME)
    if root is None:
        fresh = types.ModuleType(_ROOT_NAME, "afar: per-process output routing state")
        fresh.lock = threading.Lock()  # type: ignore[attr-defined]
        # setdefault is atomic: of two threads racing here, both get the same module.
        root = sys.modules.setdefault(_ROOT_NAME, fresh)
    state = getattr(root, _STATE_ATTR, None)
    if (
        state is not None
        and _in_chain(sys.stdout, state.stdout)
        and _in_chain(sys.stderr, state.stderr)
    ):
        return state
    with root.lock:
        state = getattr(root, _STATE_ATTR, None)
        if state is None:
            state = types.SimpleNamespace(captures={}, stdout=None, stderr=None)
            setattr(root, _STATE_ATTR, state)
        for name in TEXT_KINDS:
            current = getattr(sys, name)
            if not _in_chain(current, getattr(state, name)):
                # Missing, or replaced since (e.g. by something that restored the stream it had
                # saved): stand in front of whatever is there now.
                router = _Router(current, name, state.captures)
                setattr(state, name, router)
                setattr(sys, name, router)
        return state


def _in_chain(stream: Any, router: Any) -> bool:
    """Whether ``router`` is ``stream`` or below it in a stack of afar routers of any version."""
    if router is None:
        return False
    for _ in range(_MAX_CHAIN):
        if stream is router:
            return True
        if stream is None:
            return False
        # Looked up in the instance dict: getattr() on a router without the attribute would
        # fall through to its __getattr__, and answer for the stream below.
        stream = getattr(stream, "__dict__", {}).get(_INNER_ATTR)
    return False
