"""Stopping blocks that run: every way of stopping one stops its code on the worker.

On a worker with ONE thread, a block left running holds the thread, and the next block waits for
it. So each test stops a block that would run for ``LONG_RUN_SECONDS`` and then runs a next block
that must finish within ``FREE_WITHIN_SECONDS`` (a bound, far above the half second a stop takes:
``benchmarks/stopping.py`` measures the delay). The blocks do not secede (``secede=False``):
a seceded block would leave the thread to the next one while it kept running.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from concurrent.futures import CancelledError
from typing import Any

import pytest
from _remote_helpers import (
    GATE_TIMEOUT,
    RESULT_TIMEOUT,
    armed_sigint,
    label,
    lineno,
    new_gate_name,
)
from distributed import Client, Event, LocalCluster

import afar

# A stopped block would go on for this long: STEPS lines of Python, STEP_SECONDS each.
STEP_SECONDS = 0.01
STEPS = 6000
LONG_RUN_SECONDS = STEPS * STEP_SECONDS
# The next block on the one thread runs within this long of the stop, or the stop failed.
FREE_WITHIN_SECONDS = 10
assert FREE_WITHIN_SECONDS < LONG_RUN_SECONDS / 2
# A short time limit for remotely(timeout=...).
LIMIT_SECONDS = 0.5
# How long a block sleeps in one call that Python cannot interrupt.
C_CALL_SECONDS = 2
# When the stop comes: after the block has run a while, as a user's would.
STOP_AFTER_SECONDS = 0.3


def here(line: int) -> str:
    return label(__file__, line)


def worker_cluster(threads: int) -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=threads, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def one_thread() -> Iterator[Client]:
    """ONE worker process with ONE thread."""
    yield from worker_cluster(1)


@pytest.fixture(scope="module")
def two_threads() -> Iterator[Client]:
    """ONE worker process with TWO threads: a neighbour runs next to the stopped block."""
    yield from worker_cluster(2)


def on(client: Client, **options: Any) -> afar.Location:
    return afar.remotely(client=client, secede=False, **options)


def worker_pid(client: Client) -> int:
    (pid,) = client.run(os.getpid).values()
    return pid


def assert_thread_free(client: Client, pid: int) -> None:
    """The next block runs at once on the worker's thread, in the same worker process."""
    location = on(client)
    with afar.get(timeout=FREE_WITHIN_SECONDS), location:
        import os

        next_pid = os.getpid()
    assert next_pid == pid, "the worker process was replaced"


def wait_started(client: Client, started: str) -> None:
    assert Event(started, client=client).wait(GATE_TIMEOUT)
    time.sleep(STOP_AFTER_SECONDS)  # the block has been running a while: not a synchronisation


def stop_soon(action: Any, client: Client, started: str) -> threading.Thread:
    def run() -> None:
        if Event(started, client=client).wait(GATE_TIMEOUT):
            time.sleep(STOP_AFTER_SECONDS)
            action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def no_failure_reported(client: Client, capsys: Any) -> None:
    """No "[afar] <file>:<line> failed:" report: once the done-callbacks so far have run.

    Dask runs done-callbacks in one thread, in the order the Futures finished: a task submitted
    now finishes after the stopped block's.
    """
    ran = threading.Event()
    marker = client.submit(int, 0, pure=False)
    marker.add_done_callback(lambda _: ran.set())
    assert ran.wait(RESULT_TIMEOUT)
    assert " failed:" not in capsys.readouterr().err


def no_dask_or_stdlib_frames(error: BaseException) -> list[str]:
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return [
        line
        for line in text.splitlines()
        if "distributed" in line or "threading.py" in line or "concurrent" in line
    ]


# -- afar.get: Ctrl-C and timeout= ----------------------------------------------------------------
def test_ctrl_c_stops_the_block_and_points_at_the_with(one_thread: Client, capsys) -> None:
    """A real SIGINT while afar.get waits: the block stops, nothing more of it is shown."""
    pid = worker_pid(one_thread)
    started, tag = new_gate_name(), f"tick-{uuid.uuid4().hex}"

    with armed_sigint() as sigint:

        def press() -> None:
            if sigint.armed.is_set():
                os.kill(os.getpid(), signal.SIGINT)

        presser = stop_soon(press, one_thread, started)
        try:
            sigint.armed.set()
            location = on(one_thread)
            try:
                with_line = lineno() + 1
                with afar.get, location:
                    from time import sleep

                    import distributed

                    distributed.Event(started).set()
                    for _step in range(STEPS):
                        print(tag, _step)
                        sleep(STEP_SECONDS)
                    finished = True
            except KeyboardInterrupt as error:
                interrupt = error
            else:
                pytest.fail("afar.get returned: the SIGINT never interrupted it")
            finally:
                sigint.armed.clear()
        finally:
            presser.join(GATE_TIMEOUT)
    assert sigint.stray == []
    shown_before = capsys.readouterr().out
    assert f"{tag} 0\n" in shown_before  # it ran and its output was live
    # The traceback: the with statement (and afar's __exit__), not Dask's or threading's frames.
    frames = traceback.extract_tb(interrupt.__traceback__)
    assert (frames[0].filename, frames[0].lineno) == (__file__, with_line)
    assert all(f.filename == __file__ or f.filename.endswith("afar/_run.py") for f in frames)
    assert no_dask_or_stdlib_frames(interrupt) == []
    assert "finished" not in locals()
    assert_thread_free(one_thread, pid)
    # The block printed nothing more: its lines would have come before the next block's result.
    assert tag not in capsys.readouterr().out


def test_afar_get_timeout_stops_the_block(one_thread: Client) -> None:
    pid = worker_pid(one_thread)
    location = on(one_thread)
    with pytest.raises(TimeoutError) as raised:
        with_line = lineno() + 1
        with afar.get(timeout=LIMIT_SECONDS * 2), location:
            from time import sleep

            for _step in range(STEPS):
                sleep(STEP_SECONDS)
            finished = True
    assert here(with_line) in str(raised.value) and "stopped" in str(raised.value)
    assert "finished" not in locals()
    assert_thread_free(one_thread, pid)


# -- afar.run: Run.cancel(), the Futures cancelled or dropped -------------------------------------
def long_run_block(runner: afar.Run, location: afar.Location, started: str) -> list[Any]:
    """Run a long block with ``runner``; the Futures of the names it saved (left, right)."""
    with runner, location:
        from time import sleep

        import distributed

        distributed.Event(started).set()
        for _step in range(STEPS):
            sleep(STEP_SECONDS)
        left, right = STEPS, -STEPS
    bound = locals()
    return [bound[name] for name in ("left", "right") if name in bound]


def test_run_cancel_stops_the_block(one_thread: Client, capsys) -> None:
    pid = worker_pid(one_thread)
    started = new_gate_name()
    runner = afar.run("left")
    (left,) = long_run_block(runner, on(one_thread), started)
    wait_started(one_thread, started)
    runner.cancel()
    with pytest.raises(CancelledError):
        left.result(timeout=RESULT_TIMEOUT)
    assert_thread_free(one_thread, pid)
    no_failure_reported(one_thread, capsys)


@pytest.mark.parametrize("names", [("left",), ("left", "right")], ids=["one-name", "two-names"])
@pytest.mark.parametrize("how", ["future.cancel", "client.cancel", "dropped"])
def test_when_dask_no_longer_wants_a_run_block_it_stops(
    one_thread: Client, names: tuple[str, ...], how: str, capsys
) -> None:
    pid = worker_pid(one_thread)
    started = new_gate_name()
    futures = long_run_block(afar.run(*names), on(one_thread), started)
    assert len(futures) == len(names)
    wait_started(one_thread, started)
    if how == "future.cancel":
        for future in futures:
            future.cancel()
    elif how == "client.cancel":
        one_thread.cancel(futures)
    else:
        del futures
        gc.collect()
    assert_thread_free(one_thread, pid)
    no_failure_reported(one_thread, capsys)


def test_a_block_other_tasks_need_runs_on_when_its_future_is_dropped(
    one_thread: Client,
) -> None:
    """Dropped, but read by another block: Dask still wants it, and it finishes."""
    location = on(one_thread)
    with afar.run, location:
        total = sum(range(10))
    with afar.run, location:
        twice = total * 2
    del total
    gc.collect()
    assert twice.result(timeout=RESULT_TIMEOUT) == 90


def test_the_neighbour_on_another_thread_runs_on(two_threads: Client) -> None:
    pid = worker_pid(two_threads)
    started, neighbour_started, gate = new_gate_name(), new_gate_name(), new_gate_name()
    location = on(two_threads)
    with afar.run, location:
        import distributed

        distributed.Event(neighbour_started).set()
        opened = distributed.Event(gate).wait(GATE_TIMEOUT)
    assert Event(neighbour_started, client=two_threads).wait(GATE_TIMEOUT)
    runner = afar.run("left")
    (left,) = long_run_block(runner, location, started)
    wait_started(two_threads, started)
    left.cancel()
    # The freed thread runs the next block while the neighbour still waits on its gate.
    assert_thread_free(two_threads, pid)
    assert not opened.done()
    Event(gate, client=two_threads).set()
    assert opened.result(timeout=RESULT_TIMEOUT) is True


# -- remotely(timeout=...) ------------------------------------------------------------------------
def test_time_limit_stops_an_afar_get_block(one_thread: Client) -> None:
    pid = worker_pid(one_thread)
    limited = on(one_thread, timeout=LIMIT_SECONDS)
    with pytest.raises(TimeoutError) as raised:
        with_line = lineno() + 1
        with afar.get(timeout=RESULT_TIMEOUT), limited:
            from time import sleep

            for _step in range(STEPS):
                sleep(STEP_SECONDS)
            finished = True
    message = str(raised.value)
    assert here(with_line) in message and f"time limit of {LIMIT_SECONDS:g} s" in message
    assert "finished" not in locals()
    assert_thread_free(one_thread, pid)


@pytest.mark.parametrize("names", [("left",), ("left", "right")], ids=["one-name", "two-names"])
def test_time_limit_stops_an_afar_run_block_and_is_not_retried(
    one_thread: Client, names: tuple[str, ...], tmp_path, capsys
) -> None:
    pid = worker_pid(one_thread)
    attempts = str(tmp_path / "attempts")
    location = on(one_thread, timeout=f"{int(LIMIT_SECONDS * 1000)}ms", retries=2)
    with_line = lineno() + 1
    with afar.run(*names), location:
        from time import sleep

        with open(attempts, "a") as file:
            file.write("attempt\n")
        for _step in range(STEPS):
            sleep(STEP_SECONDS)
        left, right = STEPS, -STEPS
    futures = [left] if names == ("left",) else [left, right]
    for future in futures:
        with pytest.raises(TimeoutError) as raised:
            future.result(timeout=RESULT_TIMEOUT)
        assert here(with_line) in str(raised.value)
        assert f"time limit of {LIMIT_SECONDS:g} s" in str(raised.value)
    assert_thread_free(one_thread, pid)
    with open(attempts) as file:
        assert file.read() == "attempt\n"  # ran once: a stopped block is not retried
    no_failure_reported(one_thread, capsys)


def test_a_block_that_ends_in_time_is_not_touched(one_thread: Client) -> None:
    limited = on(one_thread, timeout=RESULT_TIMEOUT)
    with afar.get(timeout=RESULT_TIMEOUT), limited:
        value = sum(range(10))
    assert value == 45


# -- where Python cannot interrupt ----------------------------------------------------------------
def test_a_block_in_a_long_c_call_is_stopped_after_it(one_thread: Client, capsys) -> None:
    pid = worker_pid(one_thread)
    tag = f"after-{uuid.uuid4().hex}"
    limited = on(one_thread, timeout=LIMIT_SECONDS)
    with pytest.raises(TimeoutError):
        with_line = lineno() + 1
        with afar.get(timeout=RESULT_TIMEOUT), limited:
            from time import sleep

            sleep(C_CALL_SECONDS)  # one call in C: Python cannot interrupt it
            print(tag)
            finished = True
    shown = capsys.readouterr()
    assert f"[afar] {here(with_line)}: stopping the block" in shown.err
    assert "cannot interrupt" in shown.err
    assert tag not in shown.out
    assert "finished" not in locals()
    assert_thread_free(one_thread, pid)


# -- nested work ----------------------------------------------------------------------------------
def test_dask_work_the_block_started_is_cancelled_with_it(one_thread: Client) -> None:
    started, gate = new_gate_name(), new_gate_name()
    nested_key = f"afar-test-nested-{uuid.uuid4().hex}"
    try:
        seceding = afar.remotely(client=one_thread, secede=True)
        with afar.run, seceding:
            from time import sleep

            import distributed

            def wait_for(name: str) -> bool:
                return distributed.Event(name).wait(GATE_TIMEOUT)

            nested = distributed.get_client().submit(wait_for, gate, key=nested_key)  # noqa: F841
            distributed.Event(started).set()
            for _step in range(STEPS):
                sleep(STEP_SECONDS)
            done = True
        wait_started(one_thread, started)
        assert nested_key in one_thread.run_on_scheduler(scheduler_keys)
        done.cancel()
        deadline = time.monotonic() + FREE_WITHIN_SECONDS
        while nested_key in one_thread.run_on_scheduler(scheduler_keys):
            assert time.monotonic() < deadline, "the nested task was not cancelled"
            time.sleep(0.05)  # polls the scheduler's state, which has no event for this
    finally:
        Event(gate, client=one_thread).set()


def scheduler_keys(dask_scheduler: Any = None) -> list[str]:
    return [str(key) for key in dask_scheduler.tasks]


# -- stops at any moment (issue 22) ---------------------------------------------------------------
# Short blocks, each cancelled a random moment after its with: around its start, in it, around its
# end, after it. Every CHECK_EVERY blocks (and at the end) the next block must run at once.
STRESS_BLOCKS = 300
CHECK_EVERY = 50
# Seconds between the worker's thread switches during the test, to widen the races (Python's
# default is 0.005); and the longest a block is left running before it is cancelled.
WORKER_SWITCH_INTERVAL = 1e-5
CANCEL_WITHIN_SECONDS = 0.004


def test_blocks_stopped_around_their_start_and_end_leave_the_thread_free(
    one_thread: Client, capsys
) -> None:
    import random
    import sys

    pid = worker_pid(one_thread)
    (previous,) = set(one_thread.run(sys.getswitchinterval).values())
    one_thread.run(sys.setswitchinterval, WORKER_SWITCH_INTERVAL)
    chance = random.Random(22)
    location = on(one_thread)
    try:
        for number in range(1, STRESS_BLOCKS + 1):
            steps, loud = chance.randrange(3000), number % 3 == 0
            runner = afar.run("total")
            with runner, location:
                total = 0
                for step in range(steps):
                    total += step
                    if loud and step % 100 == 0:
                        print("step", step)
            time.sleep(chance.uniform(0, CANCEL_WITHIN_SECONDS))
            runner.cancel()
            if number % CHECK_EVERY == 0:
                assert_thread_free(one_thread, pid)
    finally:
        one_thread.run(sys.setswitchinterval, previous)
    assert_thread_free(one_thread, pid)
    no_failure_reported(one_thread, capsys)
