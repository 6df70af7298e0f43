"""Blocks that build and compute Dask collections on the cluster they run on (issue 2).

The headline use of afar. It must finish also on a cluster of one worker with one thread: the
block's thread must not starve the tasks it waits for.
"""

from __future__ import annotations

import pytest
from distributed import Client, LocalCluster, get_client

import afar
from afar import remotely

# Seconds a block computing a small collection may take before it is taken for a deadlock.
# The first dask.dataframe block on a fresh worker imports pandas and pyarrow: a few seconds.
DEADLOCK_TIMEOUT = 30
ARRAY_ITEMS = 1_000
ARRAY_CHUNK = 100
# How long a block waits on a Future of its own cluster: ample when the task can run at all.
STARVED_WAIT = 3
FRAME_ROWS = 100
FRAME_PARTITIONS = 4


@pytest.fixture
def single_thread_client():
    """A cluster of ONE worker process with ONE thread, for this test only."""
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def test_a_block_computes_a_dask_array(client):
    with afar.get("total", "scheduler", timeout=DEADLOCK_TIMEOUT), remotely:
        import dask.array as da
        import dask.base

        scheduler = type(dask.base.get_scheduler().__self__).__name__
        total = int(da.ones(ARRAY_ITEMS, chunks=ARRAY_CHUNK).sum().compute())
    assert total == ARRAY_ITEMS
    assert scheduler == "Client"  # the collection ran on the cluster, not in one thread


def test_a_block_computes_a_dask_dataframe(client):
    pytest.importorskip("dask.dataframe")  # needs pandas and pyarrow
    with afar.get(timeout=DEADLOCK_TIMEOUT), remotely:
        import dask.dataframe as dd
        import pandas as pd

        frame = dd.from_pandas(pd.DataFrame({"x": range(FRAME_ROWS)}), npartitions=FRAME_PARTITIONS)
        total = int(frame.x.sum().compute())
    assert total == sum(range(FRAME_ROWS))


def test_a_block_computes_a_dask_array_on_one_worker_with_one_thread(single_thread_client):
    on_it = afar.remotely(client=single_thread_client)
    with afar.get(timeout=DEADLOCK_TIMEOUT), on_it:
        import dask.array as da

        total = int(da.ones(ARRAY_ITEMS, chunks=ARRAY_CHUNK).sum().compute())
    assert total == ARRAY_ITEMS


def test_a_block_computes_a_dask_dataframe_on_one_worker_with_one_thread(single_thread_client):
    pytest.importorskip("dask.dataframe")
    on_it = afar.remotely(client=single_thread_client)
    with afar.get(timeout=DEADLOCK_TIMEOUT), on_it:
        import dask.dataframe as dd
        import pandas as pd

        frame = dd.from_pandas(pd.DataFrame({"x": range(FRAME_ROWS)}), npartitions=FRAME_PARTITIONS)
        total = int(frame.x.sum().compute())
    assert total == sum(range(FRAME_ROWS))


def test_run_blocks_feed_a_block_that_computes_on_one_thread(single_thread_client):
    """afar.run Futures as inputs, then a collection computed from them, on a single thread."""
    on_it = afar.remotely(client=single_thread_client)
    with afar.run, on_it:
        import numpy as np

        values = np.arange(ARRAY_ITEMS)
    with afar.run, on_it:
        import dask.array as da

        total = int(da.from_array(values, chunks=ARRAY_CHUNK).sum().compute())
    assert total.result(timeout=DEADLOCK_TIMEOUT) == sum(range(ARRAY_ITEMS))


def test_a_block_waits_on_a_future_on_one_worker_with_one_thread(single_thread_client):
    on_it = afar.remotely(client=single_thread_client)
    with afar.get(timeout=DEADLOCK_TIMEOUT), on_it:
        from distributed import get_client

        answer = get_client().submit(sum, [40, 2], pure=False).result(timeout=STARVED_WAIT)
    assert answer == 42


def test_a_block_calling_a_helper_that_waits_on_one_worker_with_one_thread(single_thread_client):
    # Defined outside the block, as a helper imported from the user's library would be (a lambda
    # travels by value, so the worker needs nothing of this file).
    helper = lambda: get_client().submit(sum, [40, 2], pure=False).result(timeout=STARVED_WAIT)  # noqa: E731
    # afar secedes by itself only for blocks whose own source names Dask or a waiting call
    # (afar._names.may_wait_on_dask): seceding costs a message to the worker's loop and, at the
    # end, a wait for a free thread, and afar cannot see into the helper. The block says so.
    on_it = afar.remotely(client=single_thread_client, secede=True)
    with afar.get(timeout=DEADLOCK_TIMEOUT), on_it:
        answer = helper()
    assert answer == 42
