"""A real LocalCluster with worker processes, shared by the behaviour tests."""

from __future__ import annotations

import pytest
from _remote_helpers import GraphRecorder
from distributed import Client, LocalCluster

# Two workers with two threads each: blocks can share a worker, and run in another process.
N_WORKERS = 2
THREADS_PER_WORKER = 2


@pytest.fixture(scope="session")
def cluster():
    with LocalCluster(
        n_workers=N_WORKERS,
        threads_per_worker=THREADS_PER_WORKER,
        processes=True,
        dashboard_address=":0",
    ) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def client(cluster):
    with Client(cluster, set_as_default=True) as client:
        yield client


@pytest.fixture(scope="module")
def graph_log(client):
    """Every graph the scheduler receives while a test module runs (see GraphRecorder)."""
    recorder = GraphRecorder(client)
    yield recorder
    recorder.close()
