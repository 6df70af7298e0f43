"""What a block's text becomes as events: a pure object, text in, item lists out.

``Batcher`` owns the decisions of live output and nothing else: merging consecutive writes to a
stream, cutting batches at ``BATCH_MAX_CHARS``, the per-attempt budget (``LIMIT`` once, then
``DROPPED`` at the end), and holding an unfinished line back for one tick. It has no threads, no
timers, no lock and no Dask: the caller passes the time in (``now``, any monotonic clock in
seconds), asks ``deadline`` when to call ``tick``, and sends the item lists it gets back, each one
event (see ``afar._worker.protocol``). ``afar._worker.output`` wraps it with the lock, the timer on
the worker's event loop and ``Worker.log_event``; tests drive it directly, without a cluster.

Like the rest of ``afar._worker`` this module travels to workers by value.
"""

from __future__ import annotations

from typing import Any

from afar._worker.protocol import (
    BATCH_MAX_CHARS,
    BATCH_SECONDS,
    DROPPED,
    LIMIT,
    MAX_BLOCK_CHARS,
    STDOUT,
    TEXT_KINDS,
)

# One event's items: [[kind, data], …].
Items = list[list[Any]]


class Batcher:
    """Batches one attempt's text into events, within a budget; the caller keeps the time.

    Examples
    --------
    >>> batcher = Batcher()
    >>> batcher.write("stdout", "hello\\n", now=0.0)
    []
    >>> batcher.deadline
    0.05
    >>> batcher.tick(now=0.05)
    [[['stdout', 'hello\\n']]]
    """

    __slots__ = (
        "_accepted",
        "_dropped_chars",
        "_dropped_lines",
        "_held",
        "_last",
        "_limited",
        "_pending",
        "_pending_chars",
        "batch_chars",
        "batch_seconds",
        "deadline",
        "max_chars",
    )

    def __init__(
        self,
        max_chars: int = MAX_BLOCK_CHARS,
        *,
        batch_chars: int = BATCH_MAX_CHARS,
        batch_seconds: float = BATCH_SECONDS,
    ) -> None:
        self.max_chars = max_chars
        self.batch_chars = batch_chars
        self.batch_seconds = batch_seconds
        # When ``tick`` is due (the time a write started the batch), or None: nothing waits.
        self.deadline: float | None = None
        self._pending: list[list[Any]] = []  # [kind, data]; text data is a list of parts
        self._last: list[Any] | None = None  # last pending text item, to merge writes into
        self._pending_chars = 0
        self._accepted = 0
        self._limited = False
        self._dropped_chars = 0
        self._dropped_lines = 0
        self._held = False  # the last tick held back an unfinished line

    @property
    def pending(self) -> bool:
        """Whether anything waits to be sent."""
        return bool(self._pending)

    def write(self, stream: str, text: str, now: float) -> list[Items]:
        """Take ``text`` written to ``stream``; return the events due at once.

        Events are due at once when the batch is full (its unfinished tail keeps waiting) or when
        the text reaches the budget (everything up to it, and a ``LIMIT`` item).
        """
        if not text:
            return []
        size = len(text)
        if self._accepted + size > self.max_chars:
            return self._overflow(stream, text)
        self._accepted += size
        self._append(stream, text)
        if self._pending_chars >= self.batch_chars:
            return self._take(keep_tail=True)
        if self.deadline is None:
            self.deadline = now + self.batch_seconds
        return []

    def tick(self, now: float) -> list[Items]:
        """The events due at ``now``: the batch, less an unfinished last line held one tick."""
        if self.deadline is None or now < self.deadline:
            return []
        self.deadline = None
        if not self._pending:
            return []
        tail = self._unfinished_line()
        events = self._take() if self._pending else []
        if tail is not None:
            self._append(*tail)
            self.deadline = now + self.batch_seconds
        return events

    def take(self) -> list[Items]:
        """Everything pending, as events (before an item sent out of band, such as a display)."""
        return self._take() if self._pending else []

    def take_prompt(self) -> str:
        """Take the unfinished last line of stdout out of the batch: the prompt of a read.

        ``input()`` and pdb write their prompt and then read a line: the client asks with that
        prompt, instead of showing it as output too. "" when the batch does not end so.
        """
        if not self._pending or self._pending[-1][0] != STDOUT:
            return ""
        last = self._pending[-1]
        text = "".join(last[1])
        head, newline, tail = text.rpartition("\n")
        if not tail:
            return ""
        if newline:
            last[1] = [head + newline]
        else:
            self._pending.pop()
            self._last = None
        self._pending_chars -= len(tail)
        if not self._pending:
            self._clear()
        return tail

    def close(self) -> list[Items]:
        """The last events of the attempt: what is pending, and how much was dropped."""
        if self._dropped_chars:
            self._pending.append(
                [DROPPED, {"chars": self._dropped_chars, "lines": self._dropped_lines}]
            )
        events = self.take()
        self.deadline = None
        return events

    def stop(self, *, keep: bool) -> list[Items]:
        """The attempt is being stopped: what is pending if ``keep``; nothing is said of drops."""
        events = self.take() if keep else []
        self._clear()
        self._dropped_chars = 0
        self.deadline = None
        return events

    def _append(self, stream: str, text: str) -> None:
        last = self._last
        if last is not None and last[0] == stream:
            last[1].append(text)
        else:
            self._last = last = [stream, [text]]
            self._pending.append(last)
        self._pending_chars += len(text)

    def _clear(self) -> None:
        self._pending, self._last, self._pending_chars = [], None, 0

    def _overflow(self, stream: str, text: str) -> list[Items]:
        events: list[Items] = []
        if not self._limited:
            self._limited = True
            room = self.max_chars - self._accepted
            if room > 0:
                self._append(stream, text[:room])
                self._accepted += room
                text = text[room:]
            self._pending.append([LIMIT, {"chars": self.max_chars}])
            self._last = None
            events = self._take()
        self._dropped_chars += len(text)
        self._dropped_lines += text.count("\n")
        return events

    def _unfinished_line(self) -> tuple[str, str] | None:
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
                self._clear()
        return last[0], tail

    def _take(self, *, keep_tail: bool = False) -> list[Items]:
        pending = self._pending
        self._clear()
        events = _split(pending, self.batch_chars)
        if keep_tail and events and _is_partial_text(events[-1], self.batch_chars):
            # Taken because the batch is full: send full events only, and let the rest wait
            # for more text or the tick, instead of sending a sliver of a line on its own.
            for stream, text in events.pop():
                self._append(stream, text)
        return events


def _split(pending: list[list[Any]], batch_chars: int) -> list[Items]:
    """Group pending items into events holding at most ``batch_chars`` characters of text."""
    events: list[Items] = []
    items: Items = []
    room = batch_chars
    for kind, data in pending:
        if kind in TEXT_KINDS:
            text = _sendable("".join(data))
            while len(text) > room:
                if room:
                    items.append([kind, text[:room]])
                    text = text[room:]
                events.append(items)
                items, room = [], batch_chars
            if text:
                items.append([kind, text])
                room -= len(text)
        else:
            items.append([kind, data])
    if items:
        events.append(items)
    return events


def _is_partial_text(items: Items, batch_chars: int) -> bool:
    """Whether an event holds only text, less than ``batch_chars`` characters of it."""
    return all(kind in TEXT_KINDS for kind, _ in items) and (
        sum(len(text) for _, text in items) < batch_chars
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
