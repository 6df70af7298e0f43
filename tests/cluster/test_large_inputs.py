"""Large inputs cross once (issue 18): kept on the cluster by content, each block on its own copy.

A value a block reads that serializes to ``afar.large-input`` bytes or more (1 MiB by default)
is scattered once per client and content and kept; later blocks reading an equal value depend
on the kept key. These tests run blocks on the session's LocalCluster (two worker processes),
and look at what the scheduler and the workers hold through Dask's public API.

pytest turns every warning into an error here: Dask's "Sending large graph" warning would fail
any test whose block sent its large input in its task.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import dask
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from _remote_helpers import GATE_TIMEOUT, RESULT_TIMEOUT, flush, new_gate_name
from _tagged import Tagged
from distributed import Client, Event, LocalCluster

import afar
from afar import _inputs

MB = 1_000_000
LARGE = 2 * MB  # bytes of a large array in these tests: above the 1 MiB threshold


def large_array() -> np.ndarray:
    return np.arange(LARGE // 8, dtype=np.float64)


def kept_keys_on_workers(client: Client) -> dict[str, list[str]]:
    def keys(dask_worker: Any = None) -> list[str]:
        return sorted(str(k) for k in dask_worker.data if str(k).startswith("afar-input-"))

    return client.run(keys)


def kept_keys_on_scheduler(client: Client) -> list[str]:
    def keys(dask_scheduler: Any = None) -> list[str]:
        return sorted(str(k) for k in dask_scheduler.tasks if str(k).startswith("afar-input-"))

    return client.run_on_scheduler(keys)


def all_kept(client: Client) -> list[str]:
    return sorted(key for keys in kept_keys_on_workers(client).values() for key in keys)


@pytest.fixture
def fresh(cluster: Any) -> Iterator[Client]:
    """A client of its own: what it keeps is its own, and goes when it closes."""
    with Client(cluster, set_as_default=False) as client:
        yield client


def test_a_large_input_crosses_once_for_blocks_reading_it(fresh: Client) -> None:
    value = large_array()
    location = afar.remotely(client=fresh)
    sums = []
    for _ in range(3):
        with afar.get, location:
            total = float(value.sum())
        sums.append(total)
    assert sums == [float(value.sum())] * 3
    assert len(kept_keys_on_scheduler(fresh)) == 1  # one kept copy, read by all three
    assert _inputs.kept_bytes(fresh) >= LARGE


def test_a_value_changed_in_place_between_blocks_is_seen_changed(fresh: Client) -> None:
    value = large_array()
    location = afar.remotely(client=fresh)
    seen = []
    for step in range(3):
        value[0] = step * 10.0
        with afar.get, location:
            first = float(value[0])
        seen.append(first)
    assert seen == [0.0, 10.0, 20.0]
    rebound = value.copy()
    rebound[1] = -1.0
    value = rebound
    with afar.get, location:
        second = float(value[1])
    assert second == -1.0


def test_a_block_mutating_its_input_changes_no_other_block_s(fresh: Client) -> None:
    value = np.zeros(LARGE // 8)
    location = afar.remotely(client=fresh)
    for _ in range(3):
        with afar.get("before", "after"), location:
            before = float(value[0])
            value[0] += 1.0  # its own copy
            value.sort()
            after = float(value[-1])
        assert (before, after) == (0.0, 1.0)
    assert value[0] == 0.0  # nor the caller's
    # Nor the kept copy: a block on any worker still reads zeros.
    workers = list(fresh.scheduler_info()["workers"])
    for address in workers:
        with afar.get, afar.remotely(client=fresh, workers=[address]):
            zeros = float(np.abs(value).sum())
        assert zeros == 0.0


def test_two_blocks_at_once_on_one_worker_each_change_their_own_copy(fresh: Client) -> None:
    value = np.zeros(LARGE // 8)
    (address, *_) = fresh.scheduler_info()["workers"]
    location = afar.remotely(client=fresh, workers=[address])
    gate = new_gate_name()
    runs = []
    for number in (1.0, 2.0):
        with afar.run, location:
            import distributed

            value[0] = number
            opened = distributed.Event(gate).wait(GATE_TIMEOUT)  # both are running by now
            seen = (opened, float(value[0]), float(value.sum()))
        runs.append(seen)
    Event(gate, client=fresh).set()
    assert [run.result(timeout=RESULT_TIMEOUT) for run in runs] == [
        (True, 1.0, 1.0),
        (True, 2.0, 2.0),
    ]


def test_two_workers_reading_a_kept_input_get_it_from_the_cluster(fresh: Client) -> None:
    value = large_array()
    first, second = list(fresh.scheduler_info()["workers"])[:2]
    sent = []
    original = fresh.scatter

    def counting_scatter(*args: Any, **kwargs: Any) -> Any:
        sent.append(args)
        return original(*args, **kwargs)

    fresh.scatter = counting_scatter  # type: ignore[method-assign]
    try:
        for address in (first, second, first, second):
            with afar.get, afar.remotely(client=fresh, workers=[address]):
                total = float(value.sum())
            assert total == float(value.sum())
    finally:
        del fresh.scatter
    assert len(sent) == 1  # the client sent it once
    holders = [workers for keys in kept_keys_on_workers(fresh).values() for workers in keys]
    assert len(set(holders)) == 1  # one kept value...
    assert all(kept_keys_on_workers(fresh)[address] for address in (first, second))  # ...on both


def test_kept_inputs_go_when_the_client_closes(cluster: Any) -> None:
    with Client(cluster, set_as_default=False) as client:
        value = large_array()
        with afar.get, afar.remotely(client=client):
            total = float(value.sum())
        assert total > 0
        assert len(kept_keys_on_scheduler(client)) == 1
    with Client(cluster, set_as_default=False) as other:
        flush(other)
        assert kept_keys_on_scheduler(other) == []
        assert all_kept(other) == []


def test_kept_inputs_beyond_the_limit_go_least_recently_used_first(fresh: Client) -> None:
    location = afar.remotely(client=fresh)
    values = [np.full(LARGE // 8, float(n)) for n in range(4)]
    with dask.config.set({_inputs.KEPT_LIMIT_KEY: 2 * LARGE + LARGE // 2}):
        for value in (values[0], values[1], values[0], values[2], values[3]):
            with afar.get, location:
                first = float(value[0])
            assert first == value[0]
    # At most two fit: the two used last stay (2 and 3); 0 and 1 went.
    kept = _inputs._table(fresh).entries
    assert len(kept) == 2
    flush(fresh)
    assert len(kept_keys_on_scheduler(fresh)) == 2
    assert len(all_kept(fresh)) == 2


def test_a_small_value_travels_in_the_task(fresh: Client) -> None:
    value = np.arange(1000)
    with afar.get, afar.remotely(client=fresh):
        total = int(value.sum())
    assert total == int(value.sum())
    assert kept_keys_on_scheduler(fresh) == []


def test_the_threshold_is_dask_config(fresh: Client) -> None:
    value = large_array()
    with (
        dask.config.set({_inputs.LARGE_INPUT_KEY: "64 MiB"}),
        afar.get,
        afar.remotely(client=fresh),
    ):
        first = float(value[1])
    assert first == 1.0
    assert kept_keys_on_scheduler(fresh) == []


def test_two_names_of_one_large_value_are_one_object_in_the_block(fresh: Client) -> None:
    value = large_array()
    alias = value
    with afar.get("same", "seen"), afar.remotely(client=fresh):
        same = alias is value
        alias[0] = 7.0
        seen = float(value[0])
    assert (same, seen) == (True, 7.0)
    assert len(kept_keys_on_scheduler(fresh)) == 1


def matrix(data: np.ndarray) -> np.matrix:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # NumPy's advice, not afar's
        return np.asmatrix(data)


EXACT_TYPES = {
    "masked array": lambda: np.ma.masked_array(
        np.arange(LARGE // 8.0), mask=np.arange(LARGE // 8) % 3 == 0
    ),
    "matrix": lambda: matrix(np.ones((LARGE // 800, 100))),
    "record array": lambda: np.rec.fromarrays(
        [np.arange(LARGE // 16), np.ones(LARGE // 16)], names="a,b"
    ),
    "Fortran order": lambda: np.asfortranarray(np.ones((LARGE // 800, 100))),
    "read-only": lambda: np.frombuffer(bytes(LARGE), dtype=np.uint8),
    "pandas extension dtypes": lambda: pd.DataFrame(
        {
            "s": pd.array(["x", None] * (LARGE // 20), dtype="string"),
            "n": pd.array([1, None] * (LARGE // 20), dtype="Int64"),
            "c": pd.Categorical(["u", "v"] * (LARGE // 20)),
            "t": pd.date_range("2026-01-01", periods=LARGE // 10, freq="s", tz="Europe/Paris"),
        }
    ),
    "Arrow table": lambda: pa.table({"x": np.arange(LARGE // 8), "y": ["a"] * (LARGE // 8)}),
}


@pytest.mark.parametrize("kind", list(EXACT_TYPES))
def test_a_kept_input_keeps_its_exact_type(fresh: Client, kind: str) -> None:
    value = EXACT_TYPES[kind]()
    names = ("seen_type", "flags", "described", "masked", "equal")
    with afar.get(*names), afar.remotely(client=fresh):
        seen_type = f"{type(value).__module__}.{type(value).__qualname__}"
        flags = (
            (value.flags.c_contiguous, value.flags.f_contiguous, value.flags.writeable)
            if isinstance(value, np.ndarray)
            else None
        )
        described = (
            repr(value.dtypes.to_dict())
            if hasattr(value, "dtypes")
            else repr(getattr(value, "dtype", getattr(value, "schema", None)))
        )
        masked = value.mask.sum() if isinstance(value, np.ma.MaskedArray) else None
        equal = value.equals(value) if hasattr(value, "equals") else None
    assert len(kept_keys_on_scheduler(fresh)) == 1, "not kept: the test measures nothing"
    assert seen_type == f"{type(value).__module__}.{type(value).__qualname__}"
    if isinstance(value, np.ndarray):
        assert flags == (value.flags.c_contiguous, value.flags.f_contiguous, value.flags.writeable)
    expected = (
        repr(value.dtypes.to_dict())
        if hasattr(value, "dtypes")
        else repr(getattr(value, "dtype", getattr(value, "schema", None)))
    )
    assert described == expected
    if isinstance(value, np.ma.MaskedArray):
        assert masked == value.mask.sum()
    assert equal in (None, True)


def test_a_subclass_with_attributes_of_the_caller_s_module(fresh: Client) -> None:
    value = Tagged(np.arange(LARGE // 8), "mine")
    with afar.get, afar.remotely(client=fresh):
        seen = (type(value).__name__, value.tag, float(value[3]))
    assert seen == ("Tagged", "mine", 3.0)


def test_afar_run_blocks_in_flight_share_one_kept_input(fresh: Client) -> None:
    value = large_array()
    location = afar.remotely(client=fresh)
    results = []
    for offset in range(6):
        with afar.run, location:
            total = float(value.sum()) + offset
        results.append(total)
    totals = fresh.gather(results)
    assert totals == [float(value.sum()) + o for o in range(6)]
    assert len(kept_keys_on_scheduler(fresh)) == 1


def test_large_inputs_of_blocks_in_threads(fresh: Client) -> None:
    values = [np.full(LARGE // 8, float(n)) for n in range(4)]
    location = afar.remotely(client=fresh)
    problems: list[str] = []

    def blocks(number: int) -> None:
        try:
            for value in values:
                with afar.get, location:
                    first = float(value[0])
                if first != value[0]:
                    problems.append(f"thread {number}: {first} != {value[0]}")
        except BaseException as error:
            problems.append(f"thread {number}: {error!r}")

    threads = [threading.Thread(target=blocks, args=(n,), daemon=True) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(RESULT_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)
    assert problems == []
    assert len(_inputs._table(fresh).entries) == 4


def test_an_asynchronous_client_keeps_large_inputs(cluster: Any) -> None:
    async def main() -> int:
        async with Client(
            cluster.scheduler_address, asynchronous=True, set_as_default=False
        ) as client:
            value = large_array()
            location = afar.remotely(client=client)
            for _ in range(2):
                async with afar.get, location:
                    total = float(value.sum())
                assert total == float(value.sum())
            return len(_inputs._table(client).entries)

    assert asyncio.run(asyncio.wait_for(main(), RESULT_TIMEOUT)) == 1


def test_a_worker_in_the_caller_s_process_has_its_own_copy_too() -> None:
    """Dask hands a worker of this process (``processes=False``: inproc://) the scattered object
    itself, not a copy made by sending it: the block's writes must not reach the caller's value,
    nor a change of the caller's after the ``with`` the block."""
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as local,
        Client(local, set_as_default=False) as client,
    ):
        location = afar.remotely(client=client)
        value = np.zeros(LARGE // 8)
        with afar.get, location:
            value[0] = 7.0
            written = float(value[0])
        assert (written, value[0]) == (7.0, 0.0)
        gate = new_gate_name()
        with afar.run, location:
            import distributed

            distributed.Event(gate).wait(GATE_TIMEOUT)
            later = float(value[1])
        value[1] = 5.0  # after the with, before the block reads it
        Event(gate, client=client).set()
        assert later.result(timeout=RESULT_TIMEOUT) == 0.0
