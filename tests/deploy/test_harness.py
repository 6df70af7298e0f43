"""The deployment fixtures themselves, proven with plain `client.submit` before afar uses them."""

from __future__ import annotations

import importlib.util
import os
import socket
import ssl
import subprocess
import sys
import time
from concurrent.futures import CancelledError
from pathlib import Path

import psutil
import pytest
from _processes import (
    KILL_TIMEOUT,
    LOOPBACK,
    WORKER_START_TIMEOUT,
    WorkerSpec,
    connection_failure,
    kill_processes,
    tagged_processes,
    wait_until,
)
from _tls import make_tls_files
from distributed import Event, KilledWorker, Security, get_worker
from distributed.comm import CommClosedError, get_address_host_port

# Seconds; bounds of what these tests wait for.
TASK_TIMEOUT = 10.0
# How long a task blocks at most when a test means to kill its worker first.
BLOCKED_TASK_TIMEOUT = 30.0
# A SIGKILLed process's sockets are closed by the kernel, so the scheduler hears of it at once.
REMOVAL_TIMEOUT = 5.0
# How long a client keeps trying to reach a scheduler that is gone, before closing itself.
RECONNECT_TIMEOUT = 2.0
# A worker whose scheduler is gone closes itself.
WORKER_EXIT_TIMEOUT = 10.0
# Bounds a connection that the scheduler refuses (which it does at once).
REFUSED_CONNECT_TIMEOUT = 3.0
# A process writes a line to its log right after the event it reports.
LOG_TIMEOUT = 5.0
# Time on top of a timeout for the failure to reach the test, on a loaded machine.
SLACK = 5.0

# Orphans kill themselves as soon as the test process is gone.
ORPHAN_EXIT_TIMEOUT = 10.0

HARNESS_DIRECTORY = Path(__file__).parent
# A test process that starts a deployment, and dies (killed by the test) without stopping it.
ORPHANING_SCRIPT = """
import sys
from pathlib import Path

sys.path.insert(0, {harness!r})
from _processes import Deployment, WorkerSpec

deployment = Deployment(Path({directory!r}))
deployment.start_scheduler()
deployment.start_workers(WorkerSpec("worker"), WorkerSpec("nannied", nanny=True))
print(deployment.tag, flush=True)
sys.stdin.read()
"""

STARTED_EVENT = "task-started"
RELEASE_EVENT = "task-released"


def _worker_name(*_: object) -> str:
    return str(get_worker().name)


def _afar_is_importable() -> bool:
    return importlib.util.find_spec("afar") is not None


def _import_afar() -> str:
    import afar

    return afar.__name__


def _config_value(key: str) -> object:
    import dask

    return dask.config.get(key)


def _block_until_released() -> None:
    Event(STARTED_EVENT).set()
    Event(RELEASE_EVENT).wait(timeout=BLOCKED_TASK_TIMEOUT)


def _wait_for_log(process, text):
    wait_until(lambda: text in process.log(), LOG_TIMEOUT, f"{process} logging {text!r}")


def test_submitted_functions_run_in_the_worker_processes(shared_cluster, shared_client):
    for worker in shared_cluster.workers:
        future = shared_client.submit(os.getpid, workers=[worker.address], pure=False)
        assert future.result(timeout=TASK_TIMEOUT) == worker.pid
        # A function of this module travels by value: the workers cannot import it.
        future = shared_client.submit(_worker_name, workers=[worker.address], pure=False)
        assert future.result(timeout=TASK_TIMEOUT) == worker.name
    pids = {worker.pid for worker in shared_cluster.workers}
    assert len(pids) == len(shared_cluster.workers)
    assert os.getpid() not in pids


def test_resources_send_tasks_to_the_gpu_worker(shared_cluster, shared_client):
    futures = shared_client.map(_worker_name, range(8), resources={"GPU": 1}, pure=False)
    assert set(shared_client.gather(futures)) == {shared_cluster.gpu.name}


def test_import_afar_fails_on_the_worker_without_it(shared_cluster, shared_client):
    future = shared_client.submit(_import_afar, workers=[shared_cluster.no_afar.address])
    with pytest.raises(ModuleNotFoundError, match="afar"):
        future.result(timeout=TASK_TIMEOUT)
    with pytest.raises(ModuleNotFoundError, match="afar"):
        shared_client.run_on_scheduler(_import_afar)


def test_workers_with_afar_import_what_the_client_imports(shared_cluster, shared_client):
    addresses = [shared_cluster.cpu.address, shared_cluster.gpu.address]
    importable = shared_client.run(_afar_is_importable, workers=addresses)
    assert importable == dict.fromkeys(addresses, _afar_is_importable())


def test_processes_listen_on_loopback_only(shared_cluster):
    for process in shared_cluster.deployment.leftover_processes():
        # psutil 6 renamed connections() to net_connections().
        connections = getattr(process, "net_connections", process.connections)(kind="inet")
        listening = [c.laddr for c in connections if c.status == psutil.CONN_LISTEN]
        assert listening, process
        assert {address.ip for address in listening} == {LOOPBACK}, process


def test_killed_worker_fails_its_task_when_no_retry_is_allowed(deployment):
    deployment.start_scheduler(config={"distributed.scheduler.allowed-failures": 0})
    victim, survivor = deployment.start_workers(
        WorkerSpec("victim"),
        WorkerSpec("survivor", config={"distributed.comm.timeouts.connect": "2s"}),
    )
    client = deployment.client()
    assert client.run_on_scheduler(_config_value, "distributed.scheduler.allowed-failures") == 0
    connect_timeouts = client.run(_config_value, "distributed.comm.timeouts.connect")
    assert connect_timeouts[survivor.address] == "2s"
    assert connect_timeouts[victim.address] != "2s"

    future = client.submit(_block_until_released, workers=[victim.address], pure=False)
    assert Event(STARTED_EVENT, client=client).wait(timeout=TASK_TIMEOUT)
    victim.kill()
    assert not victim.running
    deployment.wait_for_removal(victim, timeout=REMOVAL_TIMEOUT)
    with pytest.raises(KilledWorker):
        future.result(timeout=TASK_TIMEOUT)
    assert client.submit(_worker_name, pure=False).result(timeout=TASK_TIMEOUT) == survivor.name


def test_nanny_restarts_a_killed_worker_and_close_leaves_no_process(deployment):
    deployment.start_scheduler()
    worker = deployment.start_worker("nannied", nanny=True)
    assert worker.pid != worker.popen.pid  # the nanny's child runs the tasks
    running = {process.pid for process in deployment.leftover_processes()}
    assert {deployment.scheduler.popen.pid, worker.popen.pid, worker.pid} <= running
    old_address, old_pid = worker.address, worker.pid

    worker.kill()
    deployment.wait_for_restart(worker, timeout=WORKER_START_TIMEOUT)
    assert (worker.address, worker.pid) != (old_address, old_pid)
    assert worker.running  # the nanny
    client = deployment.client()
    assert client.submit(os.getpid, pure=False).result(timeout=TASK_TIMEOUT) == worker.pid

    deployment.close()
    assert client.status == "closed"
    assert deployment.leftover_processes() == []


def test_processes_die_with_the_test_process(tmp_path):
    script = ORPHANING_SCRIPT.format(harness=str(HARNESS_DIRECTORY), directory=str(tmp_path))
    with (tmp_path / "test-process.log").open("wb") as log:
        test_process = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    tag = ""
    try:
        # Bounded by the start timeouts of the harness in the test process.
        tag = test_process.stdout.readline().decode().strip()
        assert tag, (tmp_path / "test-process.log").read_text()
        # The scheduler, the worker, the nanny, its worker (and multiprocessing's resource
        # tracker, which the nanny starts).
        assert len(tagged_processes(tag)) >= 4
        test_process.kill()
        test_process.wait(timeout=KILL_TIMEOUT)
        wait_until(lambda: not tagged_processes(tag), ORPHAN_EXIT_TIMEOUT, "Orphans exiting")
    finally:
        test_process.kill()
        test_process.wait(timeout=KILL_TIMEOUT)
        test_process.stdin.close()
        test_process.stdout.close()
        if tag:
            kill_processes(tagged_processes(tag))


def test_client_fails_fast_when_the_scheduler_is_gone(deployment):
    deployment.start_scheduler()
    worker = deployment.start_worker("orphan")
    client = deployment.client(timeout=RECONNECT_TIMEOUT)
    future = client.submit(_block_until_released, pure=False)
    assert Event(STARTED_EVENT, client=client).wait(timeout=TASK_TIMEOUT)

    deployment.scheduler.kill()
    # The client cancels its futures as soon as the connection drops...
    with pytest.raises(CancelledError, match="lost the connection to the scheduler"):
        future.result(timeout=TASK_TIMEOUT)
    # ...then tries to reconnect for `timeout` seconds, and closes itself.
    wait_until(lambda: client.status == "closed", RECONNECT_TIMEOUT + SLACK, "Client closing")
    # The worker closes itself too.
    wait_until(lambda: not worker.running, WORKER_EXIT_TIMEOUT, f"{worker} exiting")


def test_tls_deployment_runs_tasks(tls_deployment, tls_client):
    worker = tls_deployment.workers["tls"]
    assert tls_deployment.scheduler.address.startswith(f"tls://{LOOPBACK}:")
    assert worker.address.startswith(f"tls://{LOOPBACK}:")
    assert tls_client.submit(os.getpid, pure=False).result(timeout=TASK_TIMEOUT) == worker.pid


def test_client_without_security_cannot_connect_over_tls(tls_deployment):
    failure = connection_failure(tls_deployment.scheduler.address, timeout=REFUSED_CONNECT_TIMEOUT)
    assert isinstance(failure, TypeError)
    assert "TLS expects a `ssl_context` argument" in str(failure)


def test_scheduler_refuses_a_connection_without_certificate(tls_deployment, tls_files):
    # distributed.Security cannot express "trust the CA, show no certificate": use ssl directly.
    scheduler = tls_deployment.scheduler
    host, port = get_address_host_port(scheduler.address)
    context = ssl.create_default_context(cafile=str(tls_files.ca_file))
    with (
        socket.create_connection((host, port), timeout=REFUSED_CONNECT_TIMEOUT) as raw,
        pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"),
        context.wrap_socket(raw, server_hostname=host) as connection,
    ):
        # TLS 1.3 ends the client's handshake before the server checks the client.
        connection.recv(1)
    _wait_for_log(scheduler, "PEER_DID_NOT_RETURN_A_CERTIFICATE")


def test_client_with_a_certificate_from_another_ca_is_refused(tls_deployment, tls_files, tmp_path):
    impostor = make_tls_files(tmp_path)
    security = Security(
        tls_ca_file=str(tls_files.ca_file),  # trusts the scheduler
        tls_client_cert=str(impostor.cert),  # but the scheduler does not trust it
        tls_client_key=str(impostor.key),
        require_encryption=True,
    )
    start = time.monotonic()
    failure = connection_failure(
        tls_deployment.scheduler.address, security=security, timeout=REFUSED_CONNECT_TIMEOUT
    )
    # Refused at the first attempt: "SSLEOFError" or "Stream is closed", as the race goes.
    assert isinstance(failure, CommClosedError)
    assert time.monotonic() - start < REFUSED_CONNECT_TIMEOUT
    _wait_for_log(tls_deployment.scheduler, "CERTIFICATE_VERIFY_FAILED")
