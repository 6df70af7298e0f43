"""What a block's text becomes as events: the pure Batcher, driven with explicit times."""

from __future__ import annotations

from afar._worker.batching import Batcher
from afar._worker.protocol import (
    BATCH_MAX_CHARS,
    BATCH_SECONDS,
    DROPPED,
    LIMIT,
    MAX_BLOCK_CHARS,
    STDERR,
    STDOUT,
)


def text_of(events: list[list[list[object]]]) -> str:
    return "".join(str(data) for items in events for kind, data in items if kind == STDOUT)


def test_writes_wait_for_the_tick_and_merge_per_stream() -> None:
    batcher = Batcher()
    assert batcher.write(STDOUT, "a", now=1.0) == []
    assert batcher.write(STDOUT, "b\n", now=1.01) == []
    assert batcher.write(STDERR, "e\n", now=1.02) == []
    assert batcher.write(STDOUT, "c\n", now=1.03) == []
    assert batcher.deadline == 1.0 + BATCH_SECONDS
    assert batcher.tick(now=1.0 + BATCH_SECONDS / 2) == []  # not due yet
    assert batcher.tick(now=1.0 + BATCH_SECONDS) == [
        [[STDOUT, "ab\n"], [STDERR, "e\n"], [STDOUT, "c\n"]]
    ]
    assert batcher.deadline is None
    assert not batcher.pending


def test_an_unfinished_line_is_held_back_one_tick_only() -> None:
    batcher = Batcher()
    batcher.write(STDOUT, "done\nhalf", now=0.0)
    assert batcher.tick(now=BATCH_SECONDS) == [[[STDOUT, "done\n"]]]
    # The rest of the line comes before the next tick: it goes out whole.
    batcher.write(STDOUT, " line\n", now=0.06)
    assert batcher.tick(now=2 * BATCH_SECONDS) == [[[STDOUT, "half line\n"]]]

    batcher.write(STDOUT, "10%", now=1.0)
    assert batcher.tick(now=1.0 + BATCH_SECONDS) == []
    assert batcher.deadline == 1.0 + 2 * BATCH_SECONDS
    # Still unfinished at the next tick (a progress indicator): sent as it is.
    assert batcher.tick(now=1.0 + 2 * BATCH_SECONDS) == [[[STDOUT, "10%"]]]


def test_a_full_batch_is_sent_at_once_and_its_sliver_waits() -> None:
    batcher = Batcher()
    line = "x" * 99 + "\n"
    events = []
    for _ in range(BATCH_MAX_CHARS // len(line) + 1):
        events += batcher.write(STDOUT, line, now=0.0)
    assert [len(text_of([items])) for items in events] == [BATCH_MAX_CHARS]
    assert batcher.pending
    rest = batcher.close()
    assert len(text_of(events)) + len(text_of(rest)) == (BATCH_MAX_CHARS // len(line) + 1) * 100


def test_one_huge_write_is_cut_into_events_of_the_batch_size() -> None:
    batcher = Batcher()
    events = batcher.write(STDOUT, "y" * (2 * BATCH_MAX_CHARS + 5), now=0.0)
    assert [len(text_of([items])) for items in events] == [BATCH_MAX_CHARS] * 2
    assert batcher.close() == [[[STDOUT, "y" * 5]]]


def test_the_budget_sends_a_limit_then_counts_what_is_dropped() -> None:
    batcher = Batcher(max_chars=10)
    assert batcher.write(STDOUT, "12345", now=0.0) == []
    assert batcher.write(STDOUT, "6789\nabc\n", now=0.0) == [
        [[STDOUT, "123456789\n"], [LIMIT, {"chars": 10}]]
    ]
    assert batcher.write(STDOUT, "more\n", now=0.0) == []
    assert batcher.close() == [[[DROPPED, {"chars": 9, "lines": 2}]]]


def test_default_budget() -> None:
    assert Batcher().max_chars == MAX_BLOCK_CHARS


def test_take_sends_everything_before_an_item_out_of_band() -> None:
    batcher = Batcher()
    batcher.write(STDOUT, "unfinished", now=0.0)
    assert batcher.take() == [[[STDOUT, "unfinished"]]]
    assert batcher.take() == []


def test_stop_keeps_or_drops_what_is_pending_and_forgets_drops() -> None:
    kept = Batcher(max_chars=3)
    kept.write(STDOUT, "ab", now=0.0)
    assert kept.stop(keep=True) == [[[STDOUT, "ab"]]]
    dropped = Batcher(max_chars=3)
    dropped.write(STDOUT, "abcdef", now=0.0)
    dropped.write(STDOUT, "pending?", now=0.0)
    assert dropped.stop(keep=False) == []
    assert dropped.close() == []


def test_silence_sends_nothing() -> None:
    batcher = Batcher()
    assert batcher.write(STDOUT, "", now=0.0) == []
    assert batcher.deadline is None
    assert batcher.tick(now=100.0) == []
    assert batcher.close() == []


def test_lone_surrogates_become_escapes() -> None:
    batcher = Batcher()
    batcher.write(STDOUT, "bad \udcff byte\n", now=0.0)
    assert batcher.close() == [[[STDOUT, "bad \\udcff byte\n"]]]
