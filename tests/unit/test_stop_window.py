"""The stop window of a block on the worker (``afar._worker.stopping.Running``), without Dask.

A stop raises an exception asynchronously in the block's thread. It must land only inside the
block's call, never in the code that runs after the call returned (Dask's, on a worker), and no
timing of it may leave the window's state taken or the threads waiting for each other (issue
22: on CPython 3.14 an exception raised right after ``with lock:`` took the lock skipped the
``with``'s exit, cpython#148874, and the old window deadlocked). Here a thread runs many short
"blocks" while other threads stop them at whatever moment they happen to, a watchdog insisting
every millisecond, and every exception is caught where it landed.

Every thread is a daemon and every wait is bounded: a window that deadlocks fails the test with
the stacks of the stuck threads and how far the rounds got, it does not hang pytest; a stop that
lands after a block's call fails it as "stopped outside the block", one that ends the blocks'
thread as "escaped", not as a deadlock of the stopping thread waiting for a round that never
comes.
"""

from __future__ import annotations

import queue
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable

import pytest

from afar._worker.stopping import Running, running_blocks

ROUNDS = 400
# Seconds between the interpreter's thread switches during the test: often, so that the stops
# land at all sorts of places (Python's default is 0.005).
SWITCH_INTERVAL = 1e-5
# Seconds the watchdog waits before raising a stop again: short, so that it insists while the
# block's call ends too.
FAST_GRACE = 0.001
# Seconds: a thread still running after this long is stuck.
JOIN_TIMEOUT = 30
# Seconds the last block spins, waiting to be stopped: far more than a stop needs.
SPIN_LIMIT = 20


def run_bounded(
    targets: list[Callable[[], None]], timeout: float, progress: Callable[[], object] = str
) -> None:
    """Run each target in a daemon thread; fail with their stacks if any is still running
    (and with what ``progress()`` says of how far they got)."""
    threads = [threading.Thread(target=target, daemon=True) for target in targets]
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    finally:
        sys.setswitchinterval(previous)
    stuck = [thread for thread in threads if thread.is_alive()]
    if stuck:
        frames = sys._current_frames()
        stacks = "\n".join(
            f"{thread.name}:\n" + "".join(traceback.format_stack(frames[thread.ident]))
            for thread in stuck
            if thread.ident in frames
        )
        pytest.fail(
            f"deadlocked: {len(stuck)} thread(s) still running after {timeout} s "
            f"({progress()})\n{stacks}"
        )


def window_with_fast_watchdog(label: str) -> Running:
    running = Running(label, running_blocks()["error"], None)
    running.grace = FAST_GRACE
    return running


def test_a_stop_lands_only_inside_the_block() -> None:
    error = running_blocks()["error"]
    rounds: queue.SimpleQueue[tuple[Running, int, threading.Event] | None] = queue.SimpleQueue()
    outcome = {
        "stopped": 0,
        "returned": 0,
        "outside": 0,
        "escaped": 0,
        "swallowed": 0,
        "finished": 0,
    }
    last_stopped = threading.Event()
    blocks_thread: list[threading.Thread] = []

    def body(steps: int, swallow: bool) -> Callable[[], int]:
        def block() -> int:
            total = 0
            if swallow:
                # A block that swallows the first stop, as `except BaseException` would: the
                # watchdog raises it again, also while the call ends.
                try:
                    for step in range(steps):
                        total += step
                except error:
                    outcome["swallowed"] += 1
            for step in range(steps):  # the block's own code
                total += step
            return total

        return block

    def spin_until_stopped() -> None:
        deadline = time.monotonic() + SPIN_LIMIT
        while time.monotonic() < deadline:
            pass

    def blocks() -> None:
        blocks_thread.append(threading.current_thread())
        try:
            for round_ in range(ROUNDS + 1):
                last = round_ == ROUNDS
                steps = round_ * 997 % 20000
                running = window_with_fast_watchdog("x.py:1")
                calling = threading.Event()
                rounds.put((running, steps, calling))
                try:
                    block = spin_until_stopped if last else body(steps, round_ % 5 == 0)
                    calling.set()
                    returned, result = running.call(block)
                    if returned:
                        outcome["returned"] += 1
                    elif isinstance(result, error):
                        outcome["stopped"] += 1
                        if last:
                            last_stopped.set()
                    else:
                        raise result
                    total = 0
                    for step in range(300):  # code after the block, as Dask's on a worker
                        total += step
                    time.sleep(0)
                except error:
                    outcome["outside"] += 1
            outcome["finished"] = 1
        except error:
            outcome["escaped"] += 1
        finally:
            rounds.put(None)

    def started(calling: threading.Event) -> bool:
        # The round's call starts, unless a stop that escaped ended the blocks' thread first.
        deadline = time.monotonic() + JOIN_TIMEOUT
        while not calling.wait(0.05):
            if not blocks_thread[0].is_alive() or time.monotonic() > deadline:
                return False
        return True

    def stopper() -> None:
        # Each block is stopped after a random part of what it takes (and up to a fifth more):
        # around its start, in its middle, around its end and after it.
        chance = random.Random(22)
        while (item := rounds.get(timeout=JOIN_TIMEOUT)) is not None:
            running, steps, calling = item
            if not started(calling):
                return
            for _ in range(chance.randrange(steps * 6 // 5 + 1)):
                pass
            running.stop("cancelled")

    run_bounded([blocks, stopper], JOIN_TIMEOUT, lambda: f"outcome so far: {outcome}")
    assert outcome["outside"] == 0, f"stopped outside the block: {outcome}"
    assert outcome["escaped"] == 0, f"a stop escaped the code after the block: {outcome}"
    assert outcome["finished"], f"a stop ended the blocks' thread: {outcome}"
    assert last_stopped.is_set(), f"a spinning block was not stopped: {outcome}"


def test_a_stop_before_the_block_starts_is_raised_at_its_start() -> None:
    error = running_blocks()["error"]
    running = Running("x.py:1", error, None)
    running.stop("cancelled")
    ran: list[bool] = []
    returned, result = running.call(lambda: ran.append(True))
    assert not returned and isinstance(result, error)
    assert not ran, "the block ran although it was stopped before it started"
    running.stop("cancelled")  # after the call: nothing happens


def test_a_stop_after_the_block_returned_changes_nothing() -> None:
    running = Running("x.py:1", running_blocks()["error"], None)
    assert running.call(lambda: 42) == (True, 42)
    running.stop("timeout")
    time.sleep(FAST_GRACE)
    assert running.reason is None


def test_the_block_s_own_error_is_its_outcome_with_its_traceback() -> None:
    def block() -> None:
        raise ValueError("from the block")

    returned, error = Running("x.py:1", running_blocks()["error"], None).call(block)
    assert not returned and isinstance(error, ValueError)
    names = [entry.name for entry in traceback.extract_tb(error.__traceback__)]
    assert names == ["block"], names  # no frame of the window's


def test_a_stopped_block_at_its_limit_says_where_and_the_limit() -> None:
    running = Running("script.py:12", running_blocks()["error"], 2.5)
    marker, message = running.timed_out()
    assert marker == "@afar_timed_out"
    assert "script.py:12" in message and "time limit of 2.5 s" in message
