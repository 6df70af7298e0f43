"""Where a block's output is shown on the client, and the lines afar itself adds to it.

A ``Sink`` takes one block's output; ``DefaultSink`` writes it to this process's current
``sys.stdout``/``sys.stderr`` and draws the progress of the block's Dask work on one line of a
terminal (a notebook cell has its own sink, ``afar._ipython.cells.CellSink``). The notices
(restarts, output limits, failures nobody waits for) start with ``NOTICE_PREFIX``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Protocol

from afar._worker.protocol import STDOUT

# Starts every line afar itself writes among a block's output.
NOTICE_PREFIX = "[afar] "


class Sink(Protocol):
    """Where one block's output goes on the client. Called on the client's event loop: be quick."""

    def write(self, stream: str, text: str) -> None:
        """Write ``text`` (any number of lines, maybe partial) to ``STDOUT`` or ``STDERR``."""

    def display(self, payload: Any) -> None:
        """Show a payload the block sent with ``Emitter.send(DISPLAY, ...)``, e.g. a mimebundle."""

    # Optional: ``progress(label, counts)`` shows the counts of the block's Dask work
    # (``afar._worker.progress``); a sink without it shows none. ``figure(payload)`` takes a
    # pickled pyplot figure of the block (``afar._plots``); a sink without it takes none.


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
    >>> router = afar._stream.router_for(client)  # doctest: +SKIP
    >>> router.default_sink = DefaultSink(IPython.display.display)  # doctest: +SKIP
    """

    def __init__(self, display_hook: Callable[[Any], None] | None = None) -> None:
        self.display_hook = display_hook or print_plain
        # The progress line drawn last on a terminal's stderr, and not ended yet.
        self._progress_line = ""

    def figure(self, payload: Any) -> None:
        """A pyplot figure of the block: it joins this process's pyplot (``afar._plots``)."""
        from afar import _plots

        _plots.arrived(payload)

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


def limit_notice(label: str, data: dict[str, Any]) -> str:
    return (
        f"{NOTICE_PREFIX}{label}: output reached the limit of {data.get('chars', 0):,} "
        "characters; the rest is not sent (it still goes to the worker's own output)\n"
    )


def dropped_notice(label: str, data: dict[str, Any]) -> str:
    return (
        f"{NOTICE_PREFIX}{label}: dropped {data.get('chars', 0):,} characters "
        f"({data.get('lines', 0):,} lines) of output past the limit\n"
    )
