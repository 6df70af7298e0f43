"""``afar.run`` and ``afar.get`` with ``remotely`` on a LocalCluster of worker processes (issue 2).

The README's examples, where blocks run, what they bind, how Futures flow between blocks without
coming back to the client, locations bound to names whose options reach the task, ``data=``,
``run.cancel()``, names assigned on a branch not taken, and the tasks one block makes.

Every block here names ``remotely`` bare, never imported, as the README does.
"""

# ruff: noqa: F821 - `remotely` needs no import

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from _remote_helpers import (
    GATE_TIMEOUT,
    RESULT_TIMEOUT,
    CountsPickles,
    GraphRecorder,
    body_key_pattern,
    label,
    lineno,
    new_gate_name,
)
from distributed import Client, Event, Future, Nanny, Scheduler, SpecCluster, wait

import afar

LOOPBACK = "127.0.0.1"
# Enough bytes that a copy reaching the client would matter; small enough to stay fast.
BIG_ITEMS = 2_000_000
# One extra cluster for submit options: a plain worker and one with a GPU resource, one thread
# each, so that priorities decide which ready task runs next.
GPU_RESOURCES = {"GPU": 1}
PLAIN_WORKER, GPU_WORKER = "plain", "gpu"
# Longer than the 0.1 s slices in which afar.get once polled for a block: on Python 3.10 it then
# failed with asyncio.TimeoutError.
SLOW_BLOCK_SECONDS = 0.5


CLIENT_PID = os.getpid()


def worker_pids(client: Client) -> set[int]:
    return set(client.run(os.getpid).values())


def here(line: int) -> str:
    return label(__file__, line)


@pytest.fixture(scope="module")
def one_worker(client):
    """A location bound to a name: every block it runs lands on the same worker process."""
    address = sorted(client.scheduler_info()["workers"])[0]
    pid = client.run(os.getpid, workers=[address])[address]
    return afar.remotely(workers=[address]), address, pid


@pytest.fixture(scope="module")
def options_client():
    """A second cluster whose workers differ: only the one named ``gpu`` has a GPU resource."""
    nanny = {"host": LOOPBACK, "nthreads": 1, "dashboard_address": ":0"}
    workers = {
        PLAIN_WORKER: {"cls": Nanny, "options": nanny},
        GPU_WORKER: {"cls": Nanny, "options": {**nanny, "resources": GPU_RESOURCES}},
    }
    scheduler = {"cls": Scheduler, "options": {"host": LOOPBACK, "dashboard_address": ":0"}}
    with (
        SpecCluster(workers=workers, scheduler=scheduler) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        client.wait_for_workers(len(workers), timeout=RESULT_TIMEOUT)
        yield client


def known_to_scheduler(key: str, dask_scheduler: Any = None) -> bool:
    return key in dask_scheduler.tasks


def address_of(client: Client, name: str) -> str:
    workers = client.scheduler_info()["workers"]
    return next(address for address, info in workers.items() if info["name"] == name)


# -- the README ------------------------------------------------------------------------------
def test_run_binds_a_future_of_a_block_that_ran_in_a_worker_process(client):
    with afar.run, remotely:
        import os

        pid = os.getpid()
    # `os` is a local of this function now (the block imports it), unbound here: use helpers.
    assert pid.result(timeout=RESULT_TIMEOUT) != CLIENT_PID
    assert pid.result(timeout=RESULT_TIMEOUT) in worker_pids(client)


def test_readme_example_end_to_end(client):
    with afar.run("one", "two"), remotely:
        one = 1
        two = one + 1
    first_two = [one, two]

    with afar.run as data, remotely:
        three = one + two
    assert three.result(timeout=RESULT_TIMEOUT) == 3
    assert data["three"].result(timeout=RESULT_TIMEOUT) == 3
    assert set(data) == {"three"}

    with afar.get, remotely:  # as the README writes it: bounded by pytest-timeout only
        five = two + three
    assert five == 5

    on_worker = afar.remotely(retries=1)
    with afar.run, on_worker:
        six = five + 1
    assert six.result(timeout=RESULT_TIMEOUT) == 6
    assert all(isinstance(future, Future) for future in first_two)


def test_a_block_after_an_assert_in_a_pytest_module(client):
    with afar.run("one", "two"), remotely:
        one = 1
        two = 2
    assert isinstance(one, Future) and isinstance(two, Future)
    with afar.run, remotely:
        three = one + two
    assert three.result(timeout=RESULT_TIMEOUT) == 3


def test_get_waits_for_a_block_longer_than_its_wait_slice(client):
    with afar.get, remotely:
        import time

        time.sleep(SLOW_BLOCK_SECONDS)
        slept = True
    assert slept


def test_get_fetches_a_value_slower_to_arrive_than_its_wait_slice(client):
    """The block is done at once; unpickling its value on the client takes longer than a slice."""
    with afar.get(timeout=RESULT_TIMEOUT), remotely:

        class SlowToUnpickle:
            def __reduce__(self):
                return (eval, (f"__import__('time').sleep({SLOW_BLOCK_SECONDS}) or 'arrived'",))

        value = SlowToUnpickle()
    assert value == "arrived"


def test_get_with_a_timeout_cancels_a_block_that_runs_longer(client, graph_log):
    gate = new_gate_name()
    try:
        with pytest.raises(TimeoutError) as raised:
            line = lineno() + 1
            with afar.get(timeout=SLOW_BLOCK_SECONDS), remotely:
                import distributed

                opened = distributed.Event(gate).wait(GATE_TIMEOUT)
    finally:
        Event(gate, client=client).set()
    assert type(raised.value) is TimeoutError  # the builtin, on 3.10 too (not asyncio's)
    message = str(raised.value)
    assert here(line) in message and "cancelled" in message
    (key,) = graph_log.tasks_of(here(line))  # flushed: the cancellation has arrived too
    assert not client.run_on_scheduler(known_to_scheduler, key)
    assert "opened" not in locals()


def test_get_binds_values_and_as_gives_them_by_name(client):
    with afar.get("low", "high", timeout=RESULT_TIMEOUT) as values, remotely:
        low = min(range(3, 10))
        high = max(range(3, 10))
        unsaved = low + high  # noqa: F841 - not saved
    assert (low, high) == (3, 9)
    assert values == {"low": 3, "high": 9}
    assert "unsaved" not in values


def test_a_block_in_a_loop_runs_each_time_with_the_current_values(client):
    results = []
    for step in range(5):
        with afar.get(timeout=RESULT_TIMEOUT), remotely:
            square = step * step
        results.append(square)
    assert results == [0, 1, 4, 9, 16]


# -- Futures flow between blocks, never to the client ----------------------------------------
def test_a_future_feeds_a_later_block_without_coming_to_the_client(client, one_worker):
    """The value's pickling raises: had any byte of it left its worker, a block would fail."""
    on_one_worker, _, _ = one_worker
    with afar.run, on_one_worker:
        import numpy as np

        class StaysRemote:
            def __init__(self, array):
                self.array = array

            def __reduce__(self):
                raise RuntimeError("a StaysRemote was pickled: it left its worker")

        big = StaysRemote(np.ones(BIG_ITEMS))

    with afar.run("total", "pieces"), on_one_worker:
        pieces = [type(big).__name__, big.array.size]
        total = float(big.array.sum())
    assert total.result(timeout=RESULT_TIMEOUT) == BIG_ITEMS

    with afar.get(timeout=RESULT_TIMEOUT), on_one_worker:
        described = f"{pieces[0]} of {pieces[1]}, total {total}"
    assert described == f"StaysRemote of {BIG_ITEMS}, total {float(BIG_ITEMS)}"

    # The proof holds: fetching the value itself does fail.
    with pytest.raises(Exception, match="StaysRemote was pickled"):
        big.result(timeout=RESULT_TIMEOUT)


def test_futures_inside_lists_tuples_and_dicts_are_resolved_on_the_worker(client):
    with afar.run("a", "b"), remotely:
        a = 10
        b = 20
    as_list = [a, b]
    as_tuple = (a, (b, 1))
    as_dict = {"a": a, "nested": {"b": [b]}}
    with afar.get(timeout=RESULT_TIMEOUT), remotely:
        resolved = (sum(as_list), as_tuple[0] + as_tuple[1][0], as_dict["a"], as_dict["nested"])
    assert resolved == (30, 30, 10, {"b": [20]})


# -- locations bound to names, and their submit options ---------------------------------------
def test_a_location_bound_to_a_name_runs_on_the_workers_it_names(client, one_worker):
    on_one_worker, _, worker_pid = one_worker
    pids = set()
    for _ in range(4):
        with afar.get(timeout=RESULT_TIMEOUT), on_one_worker:
            import os

            pid = os.getpid()
        pids.add(pid)
    assert pids == {worker_pid}


def test_resources_reach_the_task(options_client):
    on_gpus = afar.remotely(client=options_client, resources=GPU_RESOURCES)
    names = set()
    for _ in range(3):
        with afar.get("name", "free", timeout=RESULT_TIMEOUT), on_gpus:
            from distributed import get_worker

            worker = get_worker()
            name = worker.name
            free = dict(worker.state.available_resources)
        names.add(name)
        assert free == {"GPU": 0}  # the block holds the GPU while it runs
    assert names == {GPU_WORKER}


def test_workers_reach_the_task(options_client):
    plain = address_of(options_client, PLAIN_WORKER)
    on_plain = afar.remotely(client=options_client, workers=[plain])
    with afar.get(timeout=RESULT_TIMEOUT), on_plain:
        from distributed import get_worker

        name = get_worker().name
    assert name == PLAIN_WORKER


def test_retries_reach_the_task(options_client, tmp_path):
    attempts_file = str(tmp_path / "attempts")
    Path(attempts_file).write_text("")
    retried = afar.remotely(client=options_client, retries=2)
    with afar.get(timeout=RESULT_TIMEOUT), retried:
        import pathlib

        record = pathlib.Path(attempts_file)
        record.write_text(record.read_text() + "+")
        if len(record.read_text()) < 2:
            raise RuntimeError("the first attempt fails")
        attempts = len(record.read_text())
    assert attempts == 2

    Path(attempts_file).write_text("")
    once = afar.remotely(client=options_client)
    with pytest.raises(RuntimeError, match="the first attempt fails"):  # noqa: SIM117
        with afar.get(timeout=RESULT_TIMEOUT), once:
            import pathlib

            record = pathlib.Path(attempts_file)
            record.write_text(record.read_text() + "+")
            if len(record.read_text()) < 2:
                raise RuntimeError("the first attempt fails")
            attempts = len(record.read_text())


def test_remotely_called_without_import_passes_its_options_issue_10(options_client, tmp_path):
    """`remotely(...)` never imported: afar evaluates its arguments once, in the caller's scope
    (here a closure cell and a comprehension), and the options reach the task."""
    attempts_file = str(tmp_path / "attempts")
    Path(attempts_file).write_text("")
    wanted = GPU_RESOURCES

    def block():
        with (
            afar.get(timeout=RESULT_TIMEOUT),
            remotely(client=options_client, resources={k: v for k, v in wanted.items()}, retries=2),
        ):
            import pathlib

            from distributed import get_worker

            record = pathlib.Path(attempts_file)
            record.write_text(record.read_text() + "+")
            if len(record.read_text()) < 2:
                raise RuntimeError("the first attempt fails")
            name = get_worker().name
        return name

    assert block() == GPU_WORKER
    assert Path(attempts_file).read_text() == "++"


def test_priority_reaches_the_task(options_client):
    """Which of two ready tasks runs first is Dask's business; afar must hand it the priority.

    (Observing the order on a worker would race with the arrival of the tasks.)
    """
    recorder = GraphRecorder(options_client)
    try:
        keys = {}
        for priority in (-10, 10):
            ranked = afar.remotely(client=options_client, priority=priority)
            line = lineno() + 1
            with afar.run, ranked:
                ranked_value = 1
            keys[priority] = ranked_value.key
            assert ranked_value.result(timeout=RESULT_TIMEOUT) == 1
        tasks = recorder.tasks_of(here(line))
    finally:
        recorder.close()
    assert tasks[keys[10]]["priority"] < tasks[keys[-10]]["priority"]


def test_afar_owned_options_are_refused_when_the_location_is_made(client):
    with pytest.raises(afar.LocationError, match="key"):
        afar.remotely(key="mine")


# -- data= ------------------------------------------------------------------------------------
def test_data_is_looked_up_before_the_callers_variables(client):
    where = "the caller"
    data = {"where": "the data mapping"}
    with afar.get(data=data, timeout=RESULT_TIMEOUT), remotely:
        seen = where
    assert seen == "the data mapping"
    assert data["seen"] == "the data mapping"  # results are added to it
    assert isinstance(data["where"], Future)  # replaced by its Future


def test_data_values_are_scattered_once_and_reused(client):
    blob = CountsPickles(size=1000)
    data = {"blob": blob}
    with afar.run(data=data), remotely:
        size = len(blob)
    assert size.result(timeout=RESULT_TIMEOUT) == 1000
    sent_once = data["blob"]
    assert isinstance(sent_once, Future)
    times_pickled = blob.times_pickled
    assert times_pickled >= 1

    for _ in range(3):
        with afar.run(data=data), remotely:
            doubled = len(blob) * 2
        assert doubled.result(timeout=RESULT_TIMEOUT) == 2000
        assert data["blob"] is sent_once
    assert blob.times_pickled == times_pickled  # not sent again
    assert data["doubled"] is doubled and data["size"] is size  # results added as Futures


# -- cancel -----------------------------------------------------------------------------------
def test_cancel_cancels_the_pending_blocks_of_that_run_only(client):
    gate_name = new_gate_name()
    gate = Event(gate_name, client=client)
    runner = afar.run()
    other = afar.run()
    try:
        with runner, remotely:
            import distributed

            first = distributed.Event(gate_name).wait(GATE_TIMEOUT)
        with runner, remotely:
            import distributed

            second = distributed.Event(gate_name).wait(GATE_TIMEOUT)
        with other, remotely:
            import distributed

            third = distributed.Event(gate_name).wait(GATE_TIMEOUT)
        runner.cancel()
        assert first.cancelled() and second.cancelled()
        assert not third.cancelled()
    finally:
        gate.set()
    assert third.result(timeout=RESULT_TIMEOUT) is True


def test_cancel_leaves_finished_blocks_alone(client):
    runner = afar.run()
    with runner, remotely:
        finished = 1
    assert finished.result(timeout=RESULT_TIMEOUT) == 1
    runner.cancel()
    assert finished.status == "finished"


# -- a name assigned only on a branch not taken -------------------------------------------------
def test_run_missing_name_raises_name_error_on_result(client):
    flag = False
    line = lineno() + 1
    with afar.run("assigned", "skipped"), remotely:
        assigned = 1
        if flag:
            skipped = 2
    assert assigned.result(timeout=RESULT_TIMEOUT) == 1
    with pytest.raises(NameError) as raised:  # Dask's result(): the worker's builtin error
        skipped.result(timeout=RESULT_TIMEOUT)
    assert "'skipped'" in str(raised.value) and here(line) in str(raised.value)


def test_run_single_missing_name_raises_name_error_on_result(client):
    flag = False
    line = lineno() + 1
    with afar.run("skipped"), remotely:
        if flag:
            skipped = 2
    with pytest.raises(NameError) as raised:  # Dask's result(): the worker's builtin error
        skipped.result(timeout=RESULT_TIMEOUT)
    assert "'skipped'" in str(raised.value) and here(line) in str(raised.value)


def test_get_missing_name_raises_saved_name_error_at_the_with(client):
    """The same error as a name never assigned at all, found before sending (issue 10)."""
    flag = False
    with pytest.raises(afar.SavedNameError) as raised:
        line = lineno() + 1
        with afar.get("assigned", "skipped", timeout=RESULT_TIMEOUT), remotely:
            assigned = 1  # noqa: F841 - bound remotely
            if flag:
                skipped = 2  # noqa: F841
    assert "'skipped'" in str(raised.value) and here(line) in str(raised.value)
    assert raised.value.name == "skipped"  # as on any NameError


def test_get_leaves_a_default_name_whose_statement_did_not_run_as_it_was(client):
    """Issue 19: the user named nothing; as in Python, the name keeps what it had."""
    before = "before"
    with afar.get, remotely:
        for before in range(0):  # runs no iteration: binds nothing
            print(before)
    assert before == "before"
    with afar.get, remotely:
        for never in range(0):  # noqa: B007 - unbound before, unbound after
            pass
    assert "never" not in locals()


# -- what one block submits ---------------------------------------------------------------------
def test_one_saved_name_is_one_task_keyed_by_the_block(client, graph_log):
    line = lineno() + 1
    with afar.run, remotely:
        single = 1
    assert body_key_pattern(here(line)).fullmatch(single.key)
    assert single.result(timeout=RESULT_TIMEOUT) == 1
    assert single.key in client.futures
    assert list(graph_log.tasks_of(here(line))) == [single.key]


def test_several_names_are_one_task_plus_a_getter_per_name(client, graph_log):
    line = lineno() + 1
    with afar.run("first", "second"), remotely:
        first = 1
        second = 2
        third = 3
    wait([first, second], timeout=RESULT_TIMEOUT)
    body = first.key.removesuffix("-first")
    assert body_key_pattern(here(line)).fullmatch(body)
    assert second.key == f"{body}-second"
    tasks = graph_log.tasks_of(here(line))
    assert set(tasks) == {body, first.key, second.key}
    assert tasks[body]["dependencies"] == []
    assert tasks[first.key]["dependencies"] == tasks[second.key]["dependencies"] == [body]
    assert "third" not in locals()  # not saved, so not bound here


def test_get_is_one_task(client, graph_log):
    line = lineno() + 1
    with afar.get("x", "y", timeout=RESULT_TIMEOUT), remotely:
        x = 1
        y = 2
    assert (x, y) == (1, 2)
    tasks = graph_log.tasks_of(here(line))
    assert len(tasks) == 1
    assert body_key_pattern(here(line)).fullmatch(next(iter(tasks)))
