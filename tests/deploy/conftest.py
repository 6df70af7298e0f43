"""Fixtures that run Dask schedulers and workers as separate processes, as in a deployment.

- `deployment`: an empty `Deployment` for one test, to start a scheduler and workers with any
  options; everything it started is stopped after the test. Use it for tests that kill things.
- `shared_cluster` / `shared_client`: one deployment for the session with three workers (see
  `SharedCluster`), and a fresh client of it per test. Tests must not kill its processes.
- `tls_files`, `tls_deployment` / `tls_client`: the same over TLS with one worker.

Helpers that run on workers belong in the test module itself: its functions and classes travel
by value, as from a user's script, while other modules' travel by reference.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
import pytest
from _processes import (
    SESSION_TAG,
    Deployment,
    SchedulerProcess,
    WorkerProcess,
    WorkerSpec,
    kill_processes,
    tagged_processes,
)
from _tls import TLSFiles, make_tls_files
from distributed import Client


@dataclass(frozen=True)
class SharedCluster:
    """The session's deployment. afar is installed on the `cpu` and `gpu` workers only.

    Neither `no_afar` nor the scheduler has it: the scheduler unpickles the task graphs it
    receives, so what afar sends must do without afar there as on a worker.
    """

    deployment: Deployment
    scheduler: SchedulerProcess
    cpu: WorkerProcess  # two threads, for blocks that must share a worker
    gpu: WorkerProcess  # resources={"GPU": 1}
    no_afar: WorkerProcess  # `import afar` fails there

    @property
    def workers(self) -> tuple[WorkerProcess, ...]:
        return (self.cpu, self.gpu, self.no_afar)


@pytest.fixture(scope="session", autouse=True)
def _no_orphan_processes() -> Iterator[None]:
    """Fail the session if any process started by the harness outlives its fixture."""
    yield
    orphans = tagged_processes(SESSION_TAG)
    if orphans:
        descriptions = []
        for orphan in orphans:
            with contextlib.suppress(psutil.NoSuchProcess):
                descriptions.append(f"{orphan.pid}: {' '.join(orphan.cmdline())}")
        kill_processes(orphans)
        pytest.fail(f"Processes left running by the deployment fixtures: {descriptions}")


@pytest.fixture(scope="module", autouse=True)
def _test_module_travels_by_value(request: pytest.FixtureRequest) -> Iterator[None]:
    """Send the test module's functions and classes by value, as from a user's script.

    Dask pickles a function by reference to its module when it can, and the processes of a
    deployment cannot import test modules (some of which import afar, which not all have).
    Objects of `__main__` go by value (cloudpickle), so the module's helpers pose as such.
    """
    module = request.module
    renamed = [
        obj
        for name, obj in vars(module).items()
        if isinstance(obj, (types.FunctionType, type))
        and obj.__module__ == module.__name__
        and not name.startswith(("test", "Test"))
    ]
    for obj in renamed:
        obj.__module__ = "__main__"
    yield
    for obj in renamed:
        obj.__module__ = module.__name__


@pytest.fixture
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """An empty deployment; what the test starts in it is stopped afterwards."""
    with Deployment(tmp_path_factory.mktemp("deployment")) as new:
        yield new


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedCluster]:
    with Deployment(tmp_path_factory.mktemp("shared")) as shared:
        scheduler = shared.start_scheduler(afar_installed=False)
        cpu, gpu, no_afar = shared.start_workers(
            WorkerSpec("cpu", nthreads=2),
            WorkerSpec("gpu", resources={"GPU": 1}),
            WorkerSpec("no-afar", afar_installed=False),
        )
        yield SharedCluster(shared, scheduler, cpu, gpu, no_afar)


@pytest.fixture
def shared_client(shared_cluster: SharedCluster) -> Iterator[Client]:
    """A client of the shared cluster, closed after the test."""
    with shared_cluster.deployment.client() as client:
        yield client
    for process in [shared_cluster.scheduler, *shared_cluster.workers]:
        if not process.running:
            pytest.fail(
                f"{process} of the shared cluster died during the test: kill processes only "
                f"in a `deployment` of the test's own.{process.log_tail()}"
            )


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def tls_deployment(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TLSFiles
) -> Iterator[Deployment]:
    """A scheduler and one worker named "tls" that accept only TLS with `tls_files`."""
    with Deployment(tmp_path_factory.mktemp("tls-deployment")) as secure:
        secure.start_scheduler(tls=tls_files)
        secure.start_workers(WorkerSpec("tls"))
        yield secure


@pytest.fixture
def tls_client(tls_deployment: Deployment) -> Iterator[Client]:
    """A client of `tls_deployment` with the certificate, closed after the test."""
    with tls_deployment.client() as client:
        yield client
