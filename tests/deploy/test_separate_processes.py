"""afar blocks on a scheduler and workers that run as separate processes, over TCP (issue 6).

The shared cluster's scheduler and its `no_afar` worker cannot import afar: blocks that run there
prove that what afar sends needs nothing of afar on the cluster.
"""

from __future__ import annotations

import importlib
import logging
import os
import traceback

import dask
import pytest
from _blocks import RESULT_TIMEOUT, lineno
from distributed import Future, get_worker

import afar
from afar import remotely

# Blocks asking for the GPU: enough to land on another worker by chance if resources were ignored.
GPU_BLOCKS = 6


def test_run_binds_futures_of_blocks_run_in_worker_processes(shared_cluster, shared_client):
    with afar.run, remotely:
        pid = os.getpid()
    assert isinstance(pid, Future)
    assert pid.client is shared_client
    assert pid.result(timeout=RESULT_TIMEOUT) in {w.pid for w in shared_cluster.workers}
    assert pid.result() != os.getpid()


def test_get_binds_values_and_reads_outer_variables(shared_client):
    base = 40
    with afar.get("total", "pid") as values, remotely:
        total = base + 2
        pid = os.getpid()
    assert total == 42
    assert values == {"total": 42, "pid": pid}
    assert pid != os.getpid()


def test_futures_of_one_block_are_inputs_of_the_next(shared_client):
    with afar.run("numbers", "count"), remotely:
        numbers = list(range(10))
        count = len(numbers)
    with afar.run, remotely:
        mean = sum(numbers) / count
    # A Future inside a container is a dependency too, resolved on the worker.
    pair = [numbers, {"n": count}]
    with afar.get, remotely:
        described = f"{len(pair[0])} numbers, n={pair[1]['n']}"
    assert mean.result(timeout=RESULT_TIMEOUT) == 4.5
    assert described == "10 numbers, n=10"
    # Only the saved names came back: the data of `numbers` stayed on the cluster until asked.
    assert shared_client.who_has([numbers])[numbers.key]


def test_a_block_asking_for_a_resource_lands_on_the_worker_that_has_it(
    shared_cluster, shared_client
):
    on_gpu = remotely(resources={"GPU": 1})
    names = set()
    for _ in range(GPU_BLOCKS):
        with afar.get, on_gpu:
            name = get_worker().name
        names.add(name)
    assert names == {shared_cluster.gpu.name}


def test_blocks_run_on_a_worker_without_afar(shared_cluster, shared_client, capsys):
    no_afar = shared_cluster.no_afar
    there = remotely(workers=[no_afar.address])
    with afar.run("word", "missing"), there:
        print("printed on the worker without afar")
        word = "remote"
        try:
            importlib.import_module("afar")
            missing = None
        except ImportError as error:
            missing = type(error).__name__
    with afar.get("name", "pid", "shout"), there:
        name = get_worker().name
        pid = os.getpid()
        shout = word.upper()  # a Future of a block that ran there: a dependency
    assert (name, pid) == (no_afar.name, no_afar.pid)
    assert missing.result(timeout=RESULT_TIMEOUT) == "ModuleNotFoundError"
    assert shout == "REMOTE"
    # The output reached this client before the result of the next block, which depends on it.
    assert "printed on the worker without afar\n" in capsys.readouterr().out


def test_an_error_in_a_block_on_a_worker_without_afar_shows_the_block(
    shared_cluster, shared_client
):
    there = remotely(workers=[shared_cluster.no_afar.address])
    line = lineno() + 2
    with pytest.raises(ZeroDivisionError) as caught:  # noqa: SIM117
        with afar.get, there:
            ratio = 1 / 0  # noqa: F841
    frames = traceback.extract_tb(caught.value.__traceback__)
    # The block's frame, named after the function it stands in, as without afar.
    block_frames = [f for f in frames if f.filename == __file__ and f.lineno == line + 1]
    assert [(f.filename, f.lineno, f.line) for f in block_frames] == [
        (__file__, line + 1, "ratio = 1 / 0  # noqa: F841")
    ]


def test_what_does_not_follow_the_block(shared_cluster, shared_client, monkeypatch, tmp_path):
    """Only the variables the block reads travel: the rest of its surroundings is the worker's."""
    monkeypatch.setenv("AFAR_TEST_VARIABLE", "client")
    monkeypatch.chdir(tmp_path)
    client_logger = logging.getLogger("afar.test.deploy")
    monkeypatch.setattr(client_logger, "level", logging.DEBUG)
    with dask.config.set({"afar-test.setting": "client"}):  # noqa: SIM117
        with afar.get("environment", "cwd", "setting", "level"), remotely:
            environment = os.environ.get("AFAR_TEST_VARIABLE")
            cwd = os.getcwd()
            setting = dask.config.get("afar-test.setting", default=None)
            level = logging.getLogger("afar.test.deploy").getEffectiveLevel()
    assert environment is None
    assert cwd == str(shared_cluster.deployment.directory)
    assert setting is None
    assert level != logging.DEBUG


def test_a_large_input_moves_between_workers_that_have_no_afar(shared_cluster, shared_client):
    """Issue 18: a kept input travels worker to worker as data, also where afar is missing."""
    import numpy as np

    value = np.arange(400_000, dtype=np.float64)  # 3.2 MB: kept on the cluster
    totals = []
    for worker in (shared_cluster.cpu, shared_cluster.no_afar, shared_cluster.gpu):
        there = remotely(workers=[worker.address])
        with afar.get, there:
            total = float(value.sum())
        totals.append(total)
    assert totals == [float(value.sum())] * 3

    def kept_keys(dask_scheduler=None):
        return {
            str(key): sorted(ws.address for ws in task.who_has)
            for key, task in dask_scheduler.tasks.items()
            if str(key).startswith("afar-input-")
        }

    (holders,) = shared_client.run_on_scheduler(kept_keys).values()
    assert set(holders) == {w.address for w in shared_cluster.workers}
