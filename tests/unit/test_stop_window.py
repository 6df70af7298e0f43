"""The stop window of a block on the worker (``afar._worker.stopping.Running``), without Dask.

A stop raises an exception asynchronously in the block's thread. It must land only between
``start`` and ``close``, that is in the block's own code, never in the code that runs after the
block returned (Dask's, on a worker): here a thread runs many short "blocks" while another stops
them at whatever moment it happens to, and every exception is caught where it landed.
"""

from __future__ import annotations

import sys
import threading

from afar._worker.stopping import Running, running_blocks

ROUNDS = 150
# Seconds between the interpreter's thread switches during the test: often, so that the stops
# land at all sorts of places (Python's default is 0.005).
SWITCH_INTERVAL = 1e-5
# Seconds: the whole run is bounded.
JOIN_TIMEOUT = 40


def test_a_stop_lands_only_inside_the_block() -> None:
    error = running_blocks()["error"]
    current: list[Running | None] = [None]
    finished = threading.Event()
    outcome = {"stopped": 0, "outside": 0, "escaped": 0}

    def blocks() -> None:
        try:
            for round_ in range(ROUNDS):
                running = Running("x.py:1", error, None)
                current[0] = running
                try:
                    try:
                        try:
                            running.start()
                            total = 0
                            for step in range(round_ * 997 % 3000):  # the block's own code
                                total += step
                        finally:
                            running.close()
                    except error:
                        running.close()
                        outcome["stopped"] += 1
                    total = 0
                    for step in range(300):  # code after the block, as Dask's on a worker
                        total += step
                except error:
                    outcome["outside"] += 1
        except error:
            outcome["escaped"] += 1
        finally:
            finished.set()

    def stopper() -> None:
        while not finished.is_set():
            running = current[0]
            if running is not None:
                running.stop("cancelled")

    threads = [threading.Thread(target=blocks), threading.Thread(target=stopper)]
    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
    finally:
        sys.setswitchinterval(previous)
    assert not any(thread.is_alive() for thread in threads)
    assert outcome["outside"] == outcome["escaped"] == 0, outcome
    assert outcome["stopped"] > 0  # the stops did land, inside


def test_a_stop_before_the_block_starts_is_raised_at_its_start() -> None:
    error = running_blocks()["error"]
    running = Running("x.py:1", error, None)
    running.stop("cancelled")
    try:
        running.start()
    except error:
        pass
    else:
        raise AssertionError("start() did not raise the stop asked for before it")
    finally:
        running.close()
    running.stop("cancelled")  # after close: nothing happens


def test_a_stopped_block_at_its_limit_says_where_and_the_limit() -> None:
    running = Running("script.py:12", running_blocks()["error"], 2.5)
    marker, message = running.timed_out()
    assert marker == "@afar_timed_out"
    assert "script.py:12" in message and "time limit of 2.5 s" in message
