"""Remote blocks' output in IPython kernels: each block's output in the cell that ran it.

A Jupyter front end (and nbclient, which saves executed notebooks) files every output message
under the request that its ``parent_header`` names, and stops listening to a request once it
has replied. A block's output, though, reaches the client on Dask's event-loop thread, whose
context still names the cell that created the ``Client``; and it may arrive after the cell that
ran the block has finished. So, for each block, ``sink_for_block`` (called by the core when it
submits the block, in the thread running the ``with``) returns a ``CellSink`` that:

- while the block's cell runs, writes to ``sys.stdout``/``sys.stderr`` and displays values as a
  ``print``/``display`` in that cell would: ordinary stream and display outputs of the cell.
  Each call runs in an empty ``contextvars.Context``, where ipykernel falls back to the parent
  of the request executing now: the block's cell;
- once the cell has finished, updates one display of that cell, which the cell's
  ``post_run_cell`` hook (it runs before the kernel replies, so its outputs are the cell's)
  creates empty for the blocks still running then, and which they share. An update names its
  display id, and front ends (and nbclient) apply it to every output with that id, whichever
  cell runs when it arrives. An update sent while no cell runs is dropped by nbclient; it
  carries the whole text, so it is sent again when the next cell starts.

A lock shared with the cell hooks keeps a write from straddling the switch between the two.

Two kinds of output get displays of their own, updated in place: the progress of the block's
Dask work (``CellSink.progress``; after the cell has finished, a part of the late display), and
a line the block keeps rewriting with carriage returns, such as a tqdm bar (``_OverwrittenLines``):
front ends apply ``\\r`` only within one output, and such a line arrives in many.

Costs: a block that finishes while its cell runs (the core calls ``CellSink.close`` when its
Future is done) adds only its own output. A cell whose blocks are still running when it ends
gets one empty display (``{"data": {}}`` in the saved notebook, which front ends draw as
nothing), whatever the number of blocks. Output arriving after the last cell of a headless run
has finished cannot be saved: nothing listens any more.

The final expression of a block is shown with ``display(bundle, raw=True)``, a display_data
output, not with ``sys.displayhook`` (an execute_result with ``Out[n]``): the value itself stays
on the worker, so ``Out``/``_`` would hold a stand-in; the displayhook obeys the trailing
semicolon of the *running* cell and must run on the main thread; and it works the same after
the cell has finished.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

from afar._ipython import shell as running_shell
from afar._ipython.kernel import current_stream, display_bundle, in_empty_context, kernel_shell
from afar._ipython.rendering import (
    EMPTY_BUNDLE,
    as_bundle,
    line_bundle,
    progress_html,
    render,
    shown_line,
    shown_text,
)
from afar._sinks import NOTICE_PREFIX, progress_text
from afar._worker.protocol import STDERR

__all__ = ["CellSink", "sink_for_block"]

# Late output of a cell updates its display at most this often (ipykernel flushes its streams
# every 0.2 s too): each update carries the whole text, so a flood must not send it every batch.
UPDATE_INTERVAL_SECONDS = 0.2
# Characters of late output a cell's display shows at most; the rest is counted in a notice.
LATE_OUTPUT_LIMIT = 500_000


class _Cell:
    """One run of a cell: the sinks of the blocks it submitted that are still open."""

    __slots__ = ("assumed", "sinks")

    def __init__(self, assumed: bool = False) -> None:
        self.sinks: set[CellSink] = set()
        # Made when afar started following the shell, supposing that a cell was running.
        self.assumed = assumed


class _Tracker:
    """Which cell of one shell is running, from IPython's pre/post_run_cell events."""

    def __init__(self, shell: Any, running: bool) -> None:
        # Reentrant: a display update flushes the streams, which may come back to a sink.
        self.lock = threading.RLock()
        # The cells running now, innermost last (a cell may run another with run_cell).
        self.cells: list[_Cell] = [_Cell(assumed=True)] if running else []
        self.stale: set[_LateOutput] = set()
        shell.events.register("pre_run_cell", self.pre_run_cell)
        shell.events.register("post_run_cell", self.post_run_cell)

    @property
    def current(self) -> _Cell | None:
        return self.cells[-1] if self.cells else None

    def pre_run_cell(self, *args: Any) -> None:
        with self.lock:
            # A cell supposed to run when afar began to follow the shell, and still here, was
            # none (the first block came from, say, a widget's callback): forget it.
            self.cells = [cell for cell in self.cells if not cell.assumed]
            self.cells.append(_Cell())
            stale, self.stale = self.stale, set()
            for late in stale:
                # Sent while no cell ran, so nbclient dropped it: send it again now.
                late.send(self)

    def post_run_cell(self, *args: Any) -> None:
        # Runs on the main thread before the kernel replies: outputs made here are the cell's.
        with self.lock:
            if not self.cells:
                return
            cell = self.cells.pop()
            open_sinks = [sink for sink in cell.sinks if not sink.closed]
            cell.sinks.clear()
            if open_sinks:
                # The kernel's own publisher, as it is between cells: a later cell's %%capture
                # replaces the shell's for a while, and must not take this cell's updates.
                publisher = running_shell().display_pub
                late = _LateOutput(display_bundle(EMPTY_BUNDLE, display_id=True), publisher)
                for sink in open_sinks:
                    sink.late = late


_trackers: weakref.WeakKeyDictionary[Any, _Tracker] = weakref.WeakKeyDictionary()
_trackers_lock = threading.Lock()


def tracker_for(shell: Any) -> _Tracker:
    """The cell tracker of ``shell``, hooked into its events on first use."""
    with _trackers_lock:
        tracker = _trackers.get(shell)
        if tracker is None:
            # First use: from the kernel's main thread, that is inside a cell (this one's
            # pre_run_cell has passed already); from another thread, no telling.
            running = threading.current_thread() is threading.main_thread()
            tracker = _trackers[shell] = _Tracker(shell, running)
    return tracker


class _LateOutput:
    """The display that holds a cell's block output arriving after the cell finished."""

    def __init__(self, handle: Any, publisher: Any) -> None:
        self.handle = handle
        self.publisher = publisher
        # [owner, kind, data]: consecutive text of one stream from one sink is merged.
        self.segments: list[list[Any]] = []
        self.chars = 0
        self.omitted = 0
        self.sent_at = 0.0
        self.timer: threading.Timer | None = None

    def add_text(self, owner: object, stream: str, text: str) -> None:
        room = LATE_OUTPUT_LIMIT - self.chars
        if len(text) > room:
            self.omitted += len(text) - max(room, 0)
            text = text[: max(room, 0)]
        if not text:
            return
        self.chars += len(text)
        last = self.segments[-1] if self.segments else None
        if last is not None and last[0] is owner and last[1] == stream:
            last[2].append(text)
        else:
            self.segments.append([owner, stream, [text]])

    def add_display(self, owner: object, bundle: dict[str, Any]) -> list[Any]:
        """Add a bundle; the segment returned may have its bundle (``[2]``) replaced later."""
        segment = [owner, "display", bundle]
        self.segments.append(segment)
        return segment

    def bundle(self) -> dict[str, Any]:
        segments: list[tuple[str, Any]] = []
        for index, (owner, kind, data) in enumerate(self.segments):
            if kind == "display":
                segments.append((kind, data))
                continue
            text = shown_text("".join(data))
            following = self.segments[index + 1] if index + 1 < len(self.segments) else None
            if following is not None and following[0] is not owner and not text.endswith("\n"):
                text += "\n"  # another block's output follows: do not glue it to this line
            segments.append((kind, text))
        if self.omitted:
            notice = f"{NOTICE_PREFIX}{self.omitted:,} more characters of output not shown here\n"
            segments.append((STDERR, notice))
        return render(segments)

    def changed(self, tracker: _Tracker) -> None:
        """Send now, or once UPDATE_INTERVAL_SECONDS have passed since the last send."""
        if self.timer is not None:
            return  # an update is due already and will carry this change
        wait = self.sent_at + UPDATE_INTERVAL_SECONDS - time.monotonic()
        if wait <= 0:
            self.send(tracker)
            return
        self.timer = threading.Timer(wait, self._send_due, args=(tracker,))
        self.timer.daemon = True
        self.timer.start()

    def _send_due(self, tracker: _Tracker) -> None:
        with tracker.lock:
            self.timer = None
            self.send(tracker)

    def send(self, tracker: _Tracker) -> None:
        """Update the display (call with ``tracker.lock`` held)."""
        self.sent_at = time.monotonic()
        if tracker.current is None:
            tracker.stale.add(self)
        # What DisplayHandle.update does, through the kernel's publisher rather than whatever
        # the shell's is now.
        transient = {"display_id": self.handle.display_id}
        in_empty_context(
            self.publisher.publish,
            data=self.bundle(),
            metadata={},
            transient=transient,
            update=True,
        )


class CellSink:
    """Where one block's output goes in a Jupyter kernel: the cell that submitted the block.

    Use ``sink_for_block``. The router calls ``write`` and ``display`` on Dask's event loop;
    ``close`` (when the block's Future is done) may come from any thread.
    """

    def __init__(self, tracker: _Tracker, label: str) -> None:
        self.label = label
        self.closed = False
        self.late: _LateOutput | None = None
        self._tracker = tracker
        self._progress: Any = None  # the display of the block's progress, once shown
        self._late_progress: list[Any] | None = None  # or its segment of the late output
        self._lines = _OverwrittenLines()
        with tracker.lock:
            self._cell = tracker.current
            if self._cell is not None:
                self._cell.sinks.add(self)

    def write(self, stream: str, text: str) -> None:
        """Write text the block wrote to ``stream`` (``"stdout"`` or ``"stderr"``)."""
        with self._tracker.lock:
            late = self.late
            if late is None:
                # The cell still runs (or, for a block submitted while none ran, whichever
                # cell runs now, as for a print from a thread): a stream output of the cell,
                # but for a line the block keeps rewriting with carriage returns.
                plain = self._lines.write(stream, text)
                if plain:
                    in_empty_context(current_stream(stream).write, plain)
            else:
                late.add_text(self, stream, text)
                late.changed(self._tracker)

    def display(self, payload: Any) -> None:
        """Show a block's final value: ``payload`` is a mimebundle computed on the worker."""
        bundle = as_bundle(payload)
        with self._tracker.lock:
            late = self.late
            if late is None:
                in_empty_context(display_bundle, bundle)
            else:
                late.add_display(self, bundle)
                late.changed(self._tracker)

    def progress(self, label: str, counts: dict[str, Any]) -> None:
        """Show how far the block's Dask work has come, in one display updated in place.

        While the block's cell runs, the display is one of its own; once the cell has finished
        (``afar.run``), the progress is part of the cell's display for late output. The last
        counts stay as a summary.
        """
        line = progress_text(label, counts)
        bundle = {"text/plain": line, "text/html": progress_html(label, counts)}
        with self._tracker.lock:
            late = self.late
            if self._progress is not None:
                in_empty_context(self._progress.update, bundle, raw=True)
            elif late is None:
                self._progress = in_empty_context(display_bundle, bundle, display_id=True)
            else:
                if self._late_progress is None:
                    self._late_progress = late.add_display(self, bundle)
                else:
                    self._late_progress[2] = bundle
                if counts.get("end"):
                    late.send(self._tracker)  # the summary goes out with the block's end
                else:
                    late.changed(self._tracker)

    def close(self) -> None:
        """The block has finished: no output will follow (a cell ending now needs no display)."""
        with self._tracker.lock:
            self.closed = True
            if self._cell is not None:
                self._cell.sinks.discard(self)

    def __repr__(self) -> str:
        return f"<afar CellSink {self.label}{' closed' if self.closed else ''}>"


def sink_for_block(label: str) -> CellSink | None:
    """The sink for the output of the block ``label`` submitted now, or None for plain printing.

    Call it when submitting the block, in the thread running the ``with`` (so, in a notebook,
    while its cell runs). In a Jupyter kernel it returns a ``CellSink`` that puts the block's
    output in that cell, also when it arrives after the cell has finished. Elsewhere (a terminal
    IPython, plain Python) it returns None: printing to ``sys.stdout``/``sys.stderr`` is right.

    Parameters
    ----------
    label
        The block's label, such as ``"script.py:12"``.

    Examples
    --------
    >>> sink = sink_for_block("123.py:1")  # doctest: +SKIP
    >>> if sink is not None:  # doctest: +SKIP
    ...     router_for(client).register(key, sink)
    """
    shell = kernel_shell()
    if shell is None:
        return None
    return CellSink(tracker_for(shell), label)


class _OverwrittenLines:
    """Lines a block rewrites with carriage returns (progress bars), each in one display.

    A front end draws a stream's ``\\r`` as a terminal does only within one output: the pieces
    of a rewritten line that arrive in separate batches, with other outputs between them,
    become separate lines. So the unfinished last line of a stream, once it holds a carriage
    return, is shown in a display of its own instead, updated in place with what the line
    shows now, until its newline arrives; complete lines stay stream text.
    """

    def __init__(self) -> None:
        self._open: dict[str, list[Any]] = {}  # stream -> [display handle, line so far]

    def write(self, stream: str, text: str) -> str:
        """Take the rewritten line's part of ``text``; return what goes to the stream as text."""
        current = self._open.get(stream)
        if current is not None:
            line, newline, rest = text.partition("\n")
            line = current[1] + line
            # Only what the line shows is kept: a bar updated for hours stays one line's worth.
            current[1] = shown_line(line) + ("\r" if line.endswith("\r") else "")
            in_empty_context(current[0].update, line_bundle(stream, current[1]), raw=True)
            if not newline:
                return ""
            del self._open[stream]
            text = rest
        head, newline, tail = text.rpartition("\n")
        if "\r" not in tail:
            return text
        handle = in_empty_context(display_bundle, line_bundle(stream, tail), display_id=True)
        self._open[stream] = [handle, tail]
        return head + newline
