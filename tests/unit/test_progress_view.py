"""The client side of progress: counts reaching sinks, a terminal's line, rewritten lines."""

from __future__ import annotations

import os
import select
from typing import Any

import pytest

import afar
from afar._ipython.rendering import shown_line, shown_text
from afar._sinks import DefaultSink, progress_text
from afar._stream import OutputRouter
from afar._worker.protocol import PROGRESS, PROTOCOL, STDERR, STDOUT

LABEL = "script.py:12"


class FakeClient:
    id = "Client-0123"

    def subscribe_topic(self, topic: str, handler: Any) -> None:
        pass


def event(items: list[list[Any]]) -> tuple:
    message = {"afar": PROTOCOL, "block": "b", "label": LABEL, "attempt": "a", "items": items}
    return (0.0, message)


class ProgressSink:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def write(self, stream: str, text: str) -> None:
        self.items.append((stream, text))

    def display(self, payload: Any) -> None:
        self.items.append(payload)

    def progress(self, label: str, counts: dict[str, Any]) -> None:
        self.items.append((label, counts))


def counts(done: int, total: int, end: bool = False) -> dict[str, Any]:
    return {"done": done, "total": total, "computations": 1, "end": end}


def test_counts_reach_a_sink_that_shows_progress_in_order_with_output() -> None:
    router = OutputRouter(FakeClient())  # type: ignore[arg-type]
    sink = ProgressSink()
    router.register("b", sink)
    router.handle(event([[STDOUT, "a\n"], [PROGRESS, counts(1, 4)], [STDOUT, "b\n"]]))
    assert sink.items == [(STDOUT, "a\n"), (LABEL, counts(1, 4)), (STDOUT, "b\n")]


def test_a_sink_without_progress_gets_the_rest() -> None:
    router = OutputRouter(FakeClient())  # type: ignore[arg-type]
    items: list[Any] = []

    class Plain:
        def write(self, stream: str, text: str) -> None:
            items.append(text)

        def display(self, payload: Any) -> None:
            items.append(payload)

    router.register("b", Plain())
    router.handle(event([[PROGRESS, counts(1, 4)], [STDOUT, "b\n"]]))
    assert items == ["b\n"]


def test_progress_text() -> None:
    assert progress_text(LABEL, counts(0, 0)) == (f"[afar] {LABEL} [{'-' * 24}] 0/0 tasks (0%)")
    several = {"done": 1_500, "total": 3_000, "computations": 2}
    assert progress_text(LABEL, several) == (
        f"[afar] {LABEL} [{'#' * 12}{'-' * 12}] 1,500/3,000 tasks (50%, 2 computations)"
    )


def test_the_default_sink_draws_nothing_when_stderr_is_not_a_terminal(capsys) -> None:
    sink = DefaultSink()
    sink.progress(LABEL, counts(1, 4))
    sink.progress(LABEL, counts(4, 4, end=True))
    sink.write(STDERR, "e\n")
    assert capsys.readouterr().err == "e\n"


def test_the_default_sink_draws_one_line_on_a_terminal(monkeypatch) -> None:
    controller, terminal = os.openpty()
    try:
        with open(terminal, "w", closefd=False) as stderr:
            monkeypatch.setattr("sys.stderr", stderr)
            sink = DefaultSink()
            sink.progress(LABEL, counts(1, 4))
            sink.write(STDERR, "printed\n")  # erases the progress line first
            sink.progress(LABEL, counts(2, 4))
            sink.progress(LABEL, counts(4, 4, end=True))
        first, second, last = (progress_text(LABEL, counts(n, 4)) for n in (1, 2, 4))
        expected = f"\r{first}\x1b[K\r\x1b[Kprinted\n\r{second}\x1b[K\r{last}\x1b[K\n"
        expected = expected.replace("\n", "\r\n")  # the terminal's own newline mapping
        received = b""
        while len(received) < len(expected.encode()):
            ready, _, _ = select.select([controller], [], [], 5)
            if not ready:
                break
            received += os.read(controller, 65536)
    finally:
        os.close(controller)
        os.close(terminal)
    assert received.decode() == expected


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("\r 10%|#  |\r 50%|## |\r100%|###|", "100%|###|"),
        ("abc\rx", "xbc"),  # a shorter rewrite leaves the end of what it overwrote
        ("\r", ""),
        ("plain", "plain"),
    ],
)
def test_a_rewritten_line_shows_as_on_a_terminal(line: str, shown: str) -> None:
    assert shown_line(line) == shown


def test_rewritten_lines_in_late_output() -> None:
    assert shown_text("a\r b\nc\rdd\n") == " b\ndd\n"


def test_the_progress_option() -> None:
    assert afar.remotely.progress is True
    off = afar.remotely(progress=False)
    assert off.progress is False
    assert repr(off) == "remotely(progress=False)"
    assert off(retries=2).progress is False
    assert off(progress=True).progress is True
