"""CellSink and the waiting indicator, driven by an in-process shell's cell events.

The shell stands in for a kernel: cells run with ``run_cell`` (which fires pre/post_run_cell),
displays are recorded. Which request a message belongs to is the kernel's business, checked by
the notebook test in a real kernel.
"""

from __future__ import annotations

import html

import pytest
from ipython_helpers import ok

from afar._ipython import cells, indicator, kernel
from afar._ipython.cells import LATE_OUTPUT_LIMIT, CellSink, _Tracker
from afar._ipython.indicator import waiting_indicator
from afar._ipython.rendering import STDERR_MIME, render
from afar._worker.protocol import STDERR, STDOUT

# Longest wait for something a timer thread does.
EVENT_TIMEOUT_SECONDS = 10


@pytest.fixture
def tracker(shell):
    """A cell tracker hooked to the shell for one test, as the first cell with a block makes."""
    tracker = _Tracker(shell, running=False)
    try:
        yield tracker
    finally:
        shell.events.unregister("pre_run_cell", tracker.pre_run_cell)
        shell.events.unregister("post_run_cell", tracker.post_run_cell)


@pytest.fixture
def in_cell(shell, tracker):
    """Run a function inside a cell of the shell: ``in_cell(function) -> its result``."""

    def call(function):
        box = []
        shell.user_ns["_afar_test_call"] = lambda: box.append(function())
        ok(shell, "_afar_test_call()")
        return box[0]

    return call


def displays(recorder, kind=None):
    return [m for m in recorder.messages if kind is None or m["type"] == kind]


def test_output_while_the_cell_runs_is_the_cells_own_output(tracker, in_cell, recorder, capsys):
    def block():
        sink = CellSink(tracker, "x.py:1")
        sink.write(STDOUT, "out\n")
        sink.write(STDERR, "err\n")
        sink.display({"text/plain": "42", "text/html": "<b>42</b>"})
        sink.close()

    in_cell(block)
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("out\n", "err\n")
    # The value as a display_data; no placeholder, since the block finished within its cell.
    assert recorder.messages == [
        {
            "type": "display_data",
            "data": {"text/plain": "42", "text/html": "<b>42</b>"},
            "display_id": None,
        }
    ]


def test_a_silent_block_that_finished_costs_nothing(tracker, in_cell, recorder):
    in_cell(lambda: CellSink(tracker, "x.py:1").close())
    assert recorder.messages == []


def test_a_block_still_running_gets_one_empty_display_in_its_cell(tracker, in_cell, recorder):
    sink = in_cell(lambda: CellSink(tracker, "x.py:1"))
    (placeholder,) = recorder.messages
    assert placeholder["type"] == "display_data"
    assert placeholder["data"] == {}
    assert placeholder["display_id"]
    assert sink.late is not None


def test_late_output_updates_that_display(tracker, in_cell, shell, recorder):
    sink = in_cell(lambda: CellSink(tracker, "x.py:1"))
    display_id = recorder.messages[0]["display_id"]
    in_cell(lambda: sink.write(STDOUT, "first\n"))
    assert recorder.wait_for(
        lambda messages: any(m["data"].get("text/plain") == "first\n" for m in messages),
        EVENT_TIMEOUT_SECONDS,
    )
    in_cell(lambda: sink.write(STDOUT, "second\n"))
    assert recorder.wait_for(
        lambda messages: messages[-1]["data"].get("text/plain") == "first\nsecond\n",
        EVENT_TIMEOUT_SECONDS,
    )
    updates = displays(recorder, "update_display_data")
    assert {m["display_id"] for m in updates} == {display_id}
    # Nothing new in the later cells: only updates of the block's own display.
    assert len(displays(recorder, "display_data")) == 1


def test_late_output_during_a_later_captured_cell_still_updates_its_display(
    tracker, in_cell, shell, recorder
):
    """%%capture in a later cell replaces the shell's publisher for that cell only: the block's
    late output is the block's cell's, not captured there."""
    sink = in_cell(lambda: CellSink(tracker, "x.py:1"))
    shell.user_ns["_afar_late_sink"] = sink
    ok(shell, '%%capture captured\n_afar_late_sink.write("stdout", "late line\\n")')
    assert recorder.wait_for(
        lambda messages: messages[-1]["data"].get("text/plain") == "late line\n",
        EVENT_TIMEOUT_SECONDS,
    )
    assert recorder.messages[-1]["type"] == "update_display_data"
    assert shell.user_ns["captured"].outputs == []


def test_blocks_of_one_cell_share_one_display(tracker, in_cell, recorder):
    first, second = in_cell(lambda: (CellSink(tracker, "x.py:1"), CellSink(tracker, "x.py:5")))
    assert len(recorder.messages) == 1
    assert first.late is second.late
    in_cell(lambda: (first.write(STDOUT, "partial"), second.write(STDOUT, "whole\n")))
    # Each block's text stays its own: a partial line is not glued to another block's line.
    assert recorder.wait_for(
        lambda messages: messages[-1]["data"] == {"text/plain": "partial\nwhole\n"},
        EVENT_TIMEOUT_SECONDS,
    )


def test_late_display_of_a_value_alone_is_that_value(tracker, in_cell, recorder):
    sink = in_cell(lambda: CellSink(tracker, "x.py:1"))
    bundle = {"text/plain": "frame", "text/html": "<table></table>"}
    in_cell(lambda: sink.display(bundle))
    assert recorder.wait_for(lambda m: m[-1]["data"] == bundle, EVENT_TIMEOUT_SECONDS)


def test_update_sent_between_cells_is_sent_again_when_the_next_cell_starts(
    tracker, in_cell, recorder, shell
):
    sink = in_cell(lambda: CellSink(tracker, "x.py:1"))
    sink.write(STDOUT, "between cells\n")  # no cell runs now: nbclient would drop this update
    count = len(recorder.messages)
    ok(shell, "pass")
    resent = recorder.messages[count:]
    assert [m["data"].get("text/plain") for m in resent][:1] == ["between cells\n"]
    assert resent[0]["type"] == "update_display_data"


def test_floods_update_at_a_bounded_rate(tracker, in_cell, recorder, monkeypatch):
    monkeypatch.setattr(cells, "UPDATE_INTERVAL_SECONDS", 0.05)
    sink = in_cell(lambda: CellSink(tracker, "x.py:1"))

    def flood():
        for number in range(1000):
            sink.write(STDOUT, f"line {number}\n")

    in_cell(flood)
    expected = "".join(f"line {number}\n" for number in range(1000))
    assert recorder.wait_for(
        lambda m: m[-1]["data"].get("text/plain") == expected, EVENT_TIMEOUT_SECONDS
    )
    assert len(displays(recorder, "update_display_data")) < 100


def test_late_output_past_the_limit_is_counted_not_shown(tracker, in_cell, recorder):
    sink = in_cell(lambda: CellSink(tracker, "x.py:1"))
    in_cell(lambda: sink.write(STDERR, "e" * (LATE_OUTPUT_LIMIT + 10)))
    assert recorder.wait_for(
        lambda m: "10 more characters" in m[-1]["data"].get("text/plain", ""),
        EVENT_TIMEOUT_SECONDS,
    )


def test_a_closed_block_writes_nothing_more_after_its_cell(tracker, in_cell, recorder):
    sink = in_cell(lambda: CellSink(tracker, "x.py:1"))
    sink.close()
    ok_messages = len(recorder.messages)
    in_cell(lambda: None)
    assert len(recorder.messages) == ok_messages


def test_first_use_outside_a_cell_does_not_leave_a_cell_running(shell, recorder):
    # As when the first block comes from a widget's callback on the kernel's main thread.
    tracker = _Tracker(shell, running=True)
    try:
        sink = CellSink(tracker, "x.py:1")
        ok(shell, "pass")
        assert tracker.current is None
        assert sink.late is None  # no cell of its own: its output goes where a print's would
    finally:
        shell.events.unregister("pre_run_cell", tracker.pre_run_cell)
        shell.events.unregister("post_run_cell", tracker.post_run_cell)


def test_indicator_shows_while_waiting_and_empties(shell, recorder, monkeypatch):
    monkeypatch.setattr(kernel, "kernel_shell", lambda: shell)
    monkeypatch.setattr(indicator, "INDICATOR_DELAY_SECONDS", 0.01)
    with waiting_indicator("x.py:7"):
        assert recorder.wait_for(lambda m: len(m) == 1, EVENT_TIMEOUT_SECONDS)
    shown, emptied = recorder.messages
    assert "x.py:7 running on the cluster" in shown["data"]["text/plain"]
    assert emptied == {"type": "update_display_data", "data": {}, "display_id": shown["display_id"]}


def test_quick_waits_show_no_indicator(shell, recorder, monkeypatch):
    monkeypatch.setattr(kernel, "kernel_shell", lambda: shell)
    with waiting_indicator("x.py:7"):
        pass
    assert recorder.messages == []


def test_indicator_is_emptied_when_the_wait_fails(shell, recorder, monkeypatch):
    monkeypatch.setattr(kernel, "kernel_shell", lambda: shell)
    monkeypatch.setattr(indicator, "INDICATOR_DELAY_SECONDS", 0.01)
    with pytest.raises(KeyboardInterrupt), waiting_indicator("x.py:7"):
        assert recorder.wait_for(lambda m: len(m) == 1, EVENT_TIMEOUT_SECONDS)
        raise KeyboardInterrupt
    assert recorder.messages[-1]["data"] == {}


# -- rendering -------------------------------------------------------------------------------
def test_render_stdout_alone_is_text():
    assert render([(STDOUT, "a\n"), (STDOUT, "b\n")]) == {"text/plain": "a\nb\n"}


def test_render_stderr_alone_is_styled_by_jupyter():
    assert render([(STDERR, "oops\n")]) == {STDERR_MIME: "oops\n", "text/plain": "oops\n"}


def test_render_a_mix_is_html_with_escaped_text():
    bundle = render([(STDOUT, "<b>\n"), (STDERR, "err\n"), ("display", {"text/plain": "7"})])
    assert bundle["text/plain"] == "<b>\nerr\n7\n"
    assert html.escape("<b>") in bundle["text/html"]
    assert "background" in bundle["text/html"]
    assert "<pre>7</pre>" in bundle["text/html"]


def test_render_embeds_rich_values():
    bundle = render([(STDOUT, "x\n"), ("display", {"text/plain": "p", "image/png": "AAA"})])
    assert '<img src="data:image/png;base64,AAA">' in bundle["text/html"]


def test_render_nothing_is_empty():
    assert render([]) == {}
