"""The client side of live output, fed with events as the scheduler would deliver them."""

from __future__ import annotations

import logging
import os
import select
import sys
from typing import Any

import pytest

from afar._sinks import DefaultSink, report_failure, restart_notice
from afar._stream import MAX_UNREGISTERED, OutputRouter, router_for, topic_for
from afar._worker.protocol import (
    DISPLAY,
    DROPPED,
    LIMIT,
    NOTICE,
    PROGRESS,
    PROTOCOL,
    STDERR,
    STDOUT,
)

LABEL = "script.py:12"
WORKER = "tcp://127.0.0.1:4321"


class FakeClient:
    """What a router needs of a client: its id, and subscriptions."""

    id = "Client-0123"

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def subscribe_topic(self, topic: str, handler: Any) -> None:
        self.handlers[topic] = handler

    def unsubscribe_topic(self, topic: str) -> None:
        if topic not in self.handlers:
            raise ValueError(f"No event handler known for topic {topic}.")
        del self.handlers[topic]


class ListSink:
    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []

    def write(self, stream: str, text: str) -> None:
        self.items.append((stream, text))

    def display(self, payload: Any) -> None:
        self.items.append((DISPLAY, payload))


def event(block: str, items: list[list[Any]], attempt: str = "a1", seq: int = 0) -> tuple:
    message = {
        "afar": PROTOCOL,
        "block": block,
        "label": LABEL,
        "attempt": attempt,
        "worker": WORKER,
        "seq": seq,
        "items": items,
    }
    return (0.0, message)


@pytest.fixture
def router() -> OutputRouter:
    return OutputRouter(FakeClient())  # type: ignore[arg-type]


def test_topic_is_per_client() -> None:
    assert topic_for(FakeClient()) == "afar-output-Client-0123"  # type: ignore[arg-type]


def test_items_reach_the_registered_sink_in_order(router: OutputRouter) -> None:
    sink = ListSink()
    router.register("b", sink)
    router.handle(event("b", [[STDOUT, "1\n"], [STDERR, "e\n"], [DISPLAY, {"text/plain": "x"}]]))
    router.handle(event("b", [[STDOUT, "2\n"]], seq=1))
    assert sink.items == [
        (STDOUT, "1\n"),
        (STDERR, "e\n"),
        (DISPLAY, {"text/plain": "x"}),
        (STDOUT, "2\n"),
    ]


def test_a_new_attempt_is_announced_once(router: OutputRouter) -> None:
    sink = ListSink()
    router.register("b", sink)
    router.handle(event("b", [[STDOUT, "try\n"]], attempt="a1"))
    router.handle(event("b", [[STDOUT, "try\n"]], attempt="a2"))
    router.handle(event("b", [[STDOUT, "more\n"]], attempt="a2", seq=1))
    # A late batch of the first attempt is shown, without claiming another restart.
    router.handle(event("b", [[STDOUT, "late\n"]], attempt="a1", seq=1))
    assert sink.items == [
        (STDOUT, "try\n"),
        (STDERR, restart_notice(LABEL, WORKER)),
        (STDOUT, "try\n"),
        (STDOUT, "more\n"),
        (STDOUT, "late\n"),
    ]
    assert sink.items[1][1] == f"[afar] {LABEL} restarted on {WORKER}\n"


def test_limit_and_dropped_become_notices(router: OutputRouter) -> None:
    sink = ListSink()
    router.register("b", sink)
    router.handle(event("b", [[STDOUT, "x"], [LIMIT, {"chars": 1}]]))
    router.handle(event("b", [[DROPPED, {"chars": 1234, "lines": 56}]], seq=1))
    assert sink.items[0] == (STDOUT, "x")
    assert sink.items[1][0] == sink.items[2][0] == STDERR
    assert sink.items[1][1].startswith(f"[afar] {LABEL}: output reached the limit of 1 ")
    assert "dropped 1,234 characters (56 lines)" in sink.items[2][1]


def test_default_sink_writes_to_current_streams(
    router: OutputRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    router.handle(event("nobody", [[STDOUT, "out\n"], [STDERR, "err\n"]]))
    router.handle(event("nobody", [[DISPLAY, {"text/plain": "42", "text/html": "<b>"}]], seq=1))
    assert capsys.readouterr() == ("out\n42\n", "err\n")


def test_default_sink_display_hook_is_pluggable(router: OutputRouter) -> None:
    shown: list[Any] = []
    router.default_sink = DefaultSink(shown.append)
    router.handle(event("nobody", [[DISPLAY, {"image/png": "..."}]]))
    assert shown == [{"image/png": "..."}]


def test_unknown_messages_and_kinds_are_ignored(
    router: OutputRouter, capsys: pytest.CaptureFixture[str]
) -> None:
    sink = ListSink()
    router.register("b", sink)
    router.handle((0.0, "not afar's"))
    router.handle((0.0, {"afar": PROTOCOL + 1, "block": "b", "items": [[STDOUT, "future"]]}))
    router.handle(event("b", [["progress", 0.5], [STDOUT, "known\n"]]))
    assert sink.items == [(STDOUT, "known\n")]
    assert capsys.readouterr() == ("", "")


def test_a_failing_sink_is_logged_not_raised(
    router: OutputRouter, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(ListSink):
        def write(self, stream: str, text: str) -> None:
            raise OSError("sink is gone")

    router.register("b", Broken())
    with caplog.at_level(logging.ERROR, logger="afar._stream"):
        router.handle(event("b", [[STDOUT, "x"]]))
    assert "the output sink of script.py:12 failed" in caplog.text


def test_state_is_dropped_on_unregister_and_bounded_without(router: OutputRouter) -> None:
    sink = ListSink()
    router.register("b", sink)
    router.handle(event("b", [[STDOUT, "x"]]))
    assert len(router) == 1
    router.unregister("b")
    router.unregister("b")
    assert len(router) == 0
    router.default_sink = ListSink()
    for i in range(MAX_UNREGISTERED + 10):
        router.handle(event(f"orphan-{i}", [[STDOUT, "x"]]))
    assert len(router) == MAX_UNREGISTERED


def test_register_after_output_keeps_the_attempts_seen(router: OutputRouter) -> None:
    router.default_sink = ListSink()
    router.handle(event("b", [[STDOUT, "early\n"]], attempt="a1"))
    sink = ListSink()
    router.register("b", sink)
    router.handle(event("b", [[STDOUT, "again\n"]], attempt="a2"))
    assert sink.items == [(STDERR, restart_notice(LABEL, WORKER)), (STDOUT, "again\n")]
    assert len(router) == 1


def test_report_failure_prefixes_every_line(capsys: pytest.CaptureFixture[str]) -> None:
    report_failure(LABEL, "Traceback (most recent call last):\n  ...\nZeroDivisionError: x\n")
    assert capsys.readouterr().err == (
        "[afar] script.py:12 failed:\n"
        "[afar]   Traceback (most recent call last):\n"
        "[afar]     ...\n"
        "[afar]   ZeroDivisionError: x\n"
    )


def test_one_router_and_subscription_per_client() -> None:
    client, other = FakeClient(), FakeClient()
    router = router_for(client)  # type: ignore[arg-type]
    assert router_for(client) is router  # type: ignore[arg-type]
    assert router_for(other) is not router  # type: ignore[arg-type]
    assert client.handlers == {topic_for(client): router.handle}  # type: ignore[arg-type]
    router.close()
    router.close()
    assert client.handlers == {}
    assert router_for(client) is not router  # type: ignore[arg-type]


# -- stopped blocks -------------------------------------------------------------------------------
def test_a_silenced_block_shows_only_afars_notices(router: OutputRouter) -> None:
    sink = ListSink()
    default = ListSink()
    router.default_sink = default  # type: ignore[assignment]
    router.register("b", sink)
    router.handle(event("b", [[STDOUT, "before\n"]]))
    router.silence("b")  # stopped
    notice = "[afar] script.py:12: stopping the block\n"
    router.handle(event("b", [[STDOUT, "late\n"], [NOTICE, notice]], seq=1))
    router.handle(event("b", [[STDOUT, "other attempt\n"]], attempt="a2"))
    router.unregister("c")  # another block: nothing changes for this one
    assert sink.items == [(STDOUT, "before\n")]
    assert default.items == [(STDERR, notice)]
    router.silence("b")  # again is fine
    assert len(router) == 1  # remembered, within MAX_UNREGISTERED


def test_silencing_ends_a_progress_line_on_the_terminal(
    router: OutputRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    pty = pytest.importorskip("pty")
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w", encoding="utf-8") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        sink = DefaultSink()
        router.default_sink = sink
        router.handle(event("b", [[PROGRESS, {"done": 1, "total": 4}]]))
        router.silence("b")
        router.silence("b")  # ended once
        shown = b""
        while select.select([leader], [], [], 0)[0]:  # written and flushed: there already
            shown += os.read(leader, 4096)
    os.close(leader)
    text = shown.decode()
    assert "1/4 tasks" in text
    assert text.endswith("\x1b[K\r\n")  # the line ended (the terminal turns "\n" into "\r\n")


def test_a_late_event_of_a_finished_block_is_shown_and_leaves_no_state(
    router: OutputRouter,
) -> None:
    """On a busy client, a block's last event can arrive after its Future's done-callback."""
    shown = ListSink()
    router.default_sink = shown
    router.handle(event("b", [[STDOUT, "early\n"]]))
    router.unregister("b")
    router.handle(event("b", [[STDOUT, "late\n"]], seq=1))
    assert shown.items == [(STDOUT, "early\n"), (STDOUT, "late\n")]
    assert len(router) == 0
