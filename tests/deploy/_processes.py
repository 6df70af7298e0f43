"""Dask schedulers and workers run as separate processes, started and stopped for tests.

A `Deployment` starts a `dask scheduler` and `dask worker` processes of the interpreter running
the tests, on 127.0.0.1 only, and stops every process it started (and their children) when
closed. Each process writes its output to a log file whose tail is quoted when it fails to start.
Every wait is bounded by a named timeout and fails with a message saying what did not happen.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import inspect
import itertools
import json
import os
import signal
import site
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from _tls import TLSFiles
from distributed import Client, Security

LOOPBACK = "127.0.0.1"
# Any free port; the scheduler reports the one it got in its scheduler file.
ANY_LOOPBACK_PORT = f"{LOOPBACK}:0"

# Seconds. Starting is slow on a loaded 2-core machine (each process imports distributed).
SCHEDULER_START_TIMEOUT = 30.0
WORKER_START_TIMEOUT = 30.0
# How long a process may take to exit after SIGTERM before it gets SIGKILL.
GRACEFUL_STOP_TIMEOUT = 10.0
# How long a SIGKILLed process may take to disappear.
KILL_TIMEOUT = 5.0
# A client's connect timeout, which is also how long it tries to reconnect after losing the
# scheduler before it closes itself (Client(timeout=...)).
CLIENT_TIMEOUT = 10.0
CLIENT_CLOSE_TIMEOUT = 10.0
# Seconds between two looks at something another process does.
POLL_INTERVAL = 0.05
LOG_TAIL_LINES = 60

# Every process a Deployment starts carries this variable, and so do the processes those start
# (a nanny's worker): it is how leftovers are found, even ones that outlived their parent.
TAG_VARIABLE = "AFAR_DEPLOY_TEST_TAG"
SESSION_TAG = uuid.uuid4().hex
_deployment_numbers = itertools.count()

# Run by `--preload` in the scheduler, or in the worker process that runs tasks (also when a nanny
# starts it, which a bootstrap script in front of the CLI would not reach): `import afar` then
# raises ModuleNotFoundError, as where afar is not installed.
BLOCK_AFAR_PRELOAD = "import sys; sys.modules['afar'] = None  # afar is not installed here"

# Run by every process the harness starts (by a nanny, not by its worker, whose stdin is not the
# harness's): if the test process dies without stopping it, say killed by a CI timeout, the other
# end of stdin closes and the process kills itself. No SIGTERM: a worker that gets it while its
# scheduler closes can hang (see Deployment.close). A nanny's worker exits with its nanny.
ORPHAN_WATCHDOG_PRELOAD = """
import os, signal, threading

def _die_with_the_test_process():
    # The file descriptor, not sys.stdin: a daemon thread holding the lock of sys.stdin makes
    # the interpreter wait a second at exit, then abort ("could not acquire lock").
    while os.read(0, 1024):
        pass  # end of file: the test process is gone
    os.kill(os.getpid(), signal.SIGKILL)

threading.Thread(target=_die_with_the_test_process, name="orphan-watchdog", daemon=True).start()
"""


class ProcessExitedError(RuntimeError):
    """A scheduler or worker process exited while the harness waited for it."""


def dask_config_env(config: Mapping[str, object]) -> dict[str, str]:
    """Environment variables that set Dask config keys in a process the harness starts.

    >>> dask_config_env({"distributed.scheduler.allowed-failures": 0})
    {'DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES': '0'}
    """
    env = {}
    for key, value in config.items():
        name = "__".join(part.upper().replace("-", "_") for part in key.split("."))
        # Dask parses values with ast.literal_eval, and keeps strings such as "2s" as they are.
        env[f"DASK_{name}"] = value if isinstance(value, str) else repr(value)
    return env


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    details: Callable[[], str] = str,
) -> None:
    """Poll `condition` until it is true; raise TimeoutError saying `what` did not happen.

    `condition` may raise to give up early (a process that exited will never register).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s.{details()}")
        time.sleep(POLL_INTERVAL)


def connection_failure(
    address: str, *, security: Security | None = None, timeout: float = CLIENT_TIMEOUT
) -> Exception:
    """Connect a client that must fail to connect; return what it raised.

    A Client whose constructor raised is freed by the cyclic garbage collector, and its
    `__del__` closes it. Collected in the thread of a new Client that is starting, that
    deadlocks: distributed's LoopRunner holds a class-wide lock while it starts its thread, and
    closing takes that lock too. So the half-built client is collected here, at once.
    """
    try:
        client = Client(address, security=security, timeout=timeout, set_as_default=False)
    except Exception as error:
        failure = error
    else:
        client.close(timeout=CLIENT_CLOSE_TIMEOUT)
        raise AssertionError(f"A client connected to {address} with security={security}.")
    cause: BaseException | None = failure
    while cause is not None:
        cause.__traceback__ = None  # its frames hold the half-built client
        cause = cause.__cause__ or cause.__context__
    gc.collect()
    return failure


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Live processes whose tag starts with `tag` (SESSION_TAG: all of this test session's)."""
    found = []
    me = os.getpid()
    for process in psutil.process_iter():
        try:
            if process.pid == me or process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get(TAG_VARIABLE, "").startswith(tag):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def kill_processes(processes: Sequence[psutil.Process]) -> list[psutil.Process]:
    """SIGKILL `processes`; return those still alive after KILL_TIMEOUT."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    _, alive = psutil.wait_procs(processes, timeout=KILL_TIMEOUT)
    return alive


def _afar_search_path() -> str | None:
    """The directory from which this process imports afar, unless it is a site directory.

    Workers that have afar get it on their PYTHONPATH, so that they import the same afar as the
    client whether afar is installed or imported from a source checkout.
    """
    try:
        spec = importlib.util.find_spec("afar")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        location = Path(next(iter(spec.submodule_search_locations))).parent
    elif spec.origin:
        location = Path(spec.origin).parent
    else:
        return None
    site_directories = {*site.getsitepackages(), site.getusersitepackages()}
    if str(location) in site_directories:
        return None  # every process of this interpreter already sees it
    return str(location)


class DaskProcess:
    """One scheduler or worker process; its output goes to `log_path`.

    Built by `Deployment.start_scheduler` and `Deployment.start_workers`.
    """

    role = "process"

    def __init__(self, name: str, args: list[str], *, directory: Path, env: dict[str, str]):
        self.name = name
        self.log_path = directory / f"{self.role}-{name}.log"
        with self.log_path.open("wb") as log:
            # A new session: a Ctrl-C in the terminal reaches pytest, whose teardown then stops
            # these processes in order, instead of every process at once.
            self.popen = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,  # see ORPHAN_WATCHDOG_PRELOAD
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
                env=env,
                start_new_session=True,
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} pid={self.popen.pid}>"

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        tail = "\n".join(self.log().splitlines()[-lines:])
        return f"\n--- last lines of {self.log_path} ---\n{tail}"

    def check_running(self) -> None:
        """Raise ProcessExitedError, quoting the log, if the process has exited."""
        returncode = self.popen.poll()
        if returncode is not None:
            raise ProcessExitedError(
                f"{self.role} {self.name!r} exited with code {returncode}.{self.log_tail()}"
            )

    def kill(self) -> None:
        """SIGKILL the process and return once it is gone."""
        self._kill_pid(self.popen.pid)

    def _kill_pid(self, pid: int) -> None:
        try:
            process = psutil.Process(pid)
            process.kill()
        except psutil.NoSuchProcess:
            return
        if pid == self.popen.pid:
            self.popen.wait(timeout=KILL_TIMEOUT)  # reaps it: no zombie left behind
        else:
            process.wait(timeout=KILL_TIMEOUT)

    def _terminate(self) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)

    def _wait(self, deadline: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))


class SchedulerProcess(DaskProcess):
    """A `dask scheduler` process; `address` is where clients and workers connect."""

    role = "scheduler"
    address: str


@dataclass(frozen=True)
class WorkerSpec:
    """How to start one `dask worker`.

    Parameters
    ----------
    name
        The worker's name, unique in its deployment; also how tests find its address.
    nthreads
        Threads that run tasks.
    resources
        Abstract resources, such as ``{"GPU": 1}``.
    nanny
        Run the worker under a nanny, which restarts it when it dies. Without a nanny,
        `WorkerProcess.kill` removes the worker for good.
    afar_installed
        False makes ``import afar`` fail in the worker, as if afar were not installed.
    config, env
        Dask config keys (``{"distributed.comm.timeouts.connect": "2s"}``) and environment
        variables for this worker only.
    extra_args
        More `dask worker` options.
    """

    name: str
    nthreads: int = 1
    resources: Mapping[str, float] = field(default_factory=dict)
    nanny: bool = False
    afar_installed: bool = True
    config: Mapping[str, object] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    extra_args: Sequence[str] = ()


class WorkerProcess(DaskProcess):
    """A `dask worker` process (a nanny, with `spec.nanny`).

    `address` and `pid` (of the process that runs tasks, the nanny's child with a nanny) are
    those of the worker as the scheduler last registered it.
    """

    role = "worker"
    address: str
    pid: int

    def __init__(self, spec: WorkerSpec, args: list[str], **kwargs):
        super().__init__(spec.name, args, **kwargs)
        self.spec = spec

    def kill(self) -> None:
        """SIGKILL the process that runs tasks, and return once it is gone.

        The scheduler notices when the kernel closes the worker's connections (see
        `Deployment.wait_for_removal`); a nanny then starts a new worker
        (`Deployment.wait_for_restart`).
        """
        self._kill_pid(self.pid)


class Deployment:
    """A scheduler and workers started as separate processes, stopped by `close`.

    Parameters
    ----------
    directory
        Where the processes run and write their logs, scheduler file and scratch space.

    Examples
    --------
    >>> with Deployment(tmp_path) as deployment:  # doctest: +SKIP
    ...     deployment.start_scheduler()
    ...     (gpu,) = deployment.start_workers(WorkerSpec("gpu", resources={"GPU": 1}))
    ...     client = deployment.client()
    ...     client.submit(os.getpid, resources={"GPU": 1}).result()
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.tag = f"{SESSION_TAG}-{next(_deployment_numbers)}-"
        self.scheduler: SchedulerProcess | None = None
        self.workers: dict[str, WorkerProcess] = {}
        self.tls: TLSFiles | None = None
        self._clients: list[Client] = []
        self._admin: Client | None = None

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def security(self) -> Security | None:
        """What a client needs to connect: None, or TLS credentials."""
        return None if self.tls is None else self.tls.client_security()

    def _env(
        self, *, afar_installed: bool, config: Mapping[str, object], env: Mapping[str, str]
    ) -> dict[str, str]:
        process_env = dict(os.environ)
        search_path = _afar_search_path() if afar_installed else None
        if search_path is not None:
            process_env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [search_path, process_env.get("PYTHONPATH")])
            )
        process_env["PYTHONUNBUFFERED"] = "1"  # logs are complete when a process is killed
        process_env.update(dask_config_env(config))
        process_env.update(env)
        process_env[TAG_VARIABLE] = self.tag
        return process_env

    def start_scheduler(
        self,
        *,
        tls: TLSFiles | None = None,
        afar_installed: bool = True,
        config: Mapping[str, object] | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = SCHEDULER_START_TIMEOUT,
    ) -> SchedulerProcess:
        """Start `dask scheduler` on a free loopback port and wait until it serves.

        `tls` switches every connection of the deployment to ``tls://``. `afar_installed=False`
        makes ``import afar`` fail there (the scheduler unpickles the task graphs it receives).
        """
        if self.scheduler is not None:
            raise RuntimeError(f"{self.scheduler} is already started; use a new Deployment.")
        scheduler_file = self.directory / "scheduler.json"
        args = [
            *(sys.executable, "-m", "dask", "scheduler"),
            *("--host", LOOPBACK, "--port", "0"),
            # --no-dashboard only drops the dashboard pages: the HTTP server still starts, on
            # all interfaces at 8787 unless told otherwise.
            *("--no-dashboard", "--dashboard-address", ANY_LOOPBACK_PORT),
            *("--scheduler-file", str(scheduler_file)),
        ]
        if tls is not None:
            args += ["--protocol", "tls", *tls.cli_args()]
        args += ["--preload", ORPHAN_WATCHDOG_PRELOAD]
        if not afar_installed:
            args += ["--preload", BLOCK_AFAR_PRELOAD]
        args += extra_args
        process_env = self._env(afar_installed=afar_installed, config=config or {}, env=env or {})
        scheduler = SchedulerProcess("scheduler", args, directory=self.directory, env=process_env)
        self.scheduler, self.tls = scheduler, tls

        def serving() -> bool:
            scheduler.check_running()
            try:
                # The scheduler writes this file once it listens; it may be caught half-written.
                scheduler.address = json.loads(scheduler_file.read_text())["address"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                return False
            return True

        wait_until(serving, timeout, f"{scheduler} writing {scheduler_file}", scheduler.log_tail)
        return scheduler

    def start_workers(
        self, *specs: WorkerSpec, timeout: float = WORKER_START_TIMEOUT
    ) -> list[WorkerProcess]:
        """Start one `dask worker` per spec, all at once, and wait until all are registered."""
        if self.scheduler is None:
            raise RuntimeError("Start the scheduler first: deployment.start_scheduler().")
        started = []
        for spec in specs:
            if spec.name in self.workers:
                raise ValueError(f"A worker named {spec.name!r} is already in this deployment.")
            args = [
                *(sys.executable, "-m", "dask", "worker", self.scheduler.address),
                *("--name", spec.name, "--nthreads", str(spec.nthreads)),
                *("--host", LOOPBACK),
                *("--no-dashboard", "--dashboard-address", ANY_LOOPBACK_PORT),
                *("--local-directory", str(self.directory / f"worker-{spec.name}")),
                # A worker that cannot reach the scheduler exits instead of retrying forever.
                *("--death-timeout", str(timeout)),
                "--nanny" if spec.nanny else "--no-nanny",
                "--preload-nanny" if spec.nanny else "--preload",
                ORPHAN_WATCHDOG_PRELOAD,
            ]
            if spec.resources:
                args += ["--resources", " ".join(f"{k}={v}" for k, v in spec.resources.items())]
            if not spec.afar_installed:
                args += ["--preload", BLOCK_AFAR_PRELOAD]
            if self.tls is not None:
                args += self.tls.cli_args()
            args += spec.extra_args
            process_env = self._env(
                afar_installed=spec.afar_installed, config=spec.config, env=spec.env
            )
            worker = WorkerProcess(spec, args, directory=self.directory, env=process_env)
            self.workers[spec.name] = worker
            started.append(worker)
        self._wait_registered(started, timeout=timeout, what="registering with the scheduler")
        return started

    def start_worker(self, name: str, **options: object) -> WorkerProcess:
        """Start one worker: ``start_worker("gpu", resources={"GPU": 1})``; see `WorkerSpec`."""
        (worker,) = self.start_workers(WorkerSpec(name, **options))  # type: ignore[arg-type]
        return worker

    def client(self, **kwargs: object) -> Client:
        """A new client of this deployment, closed by `close` if the test has not closed it.

        It becomes the default client. Keyword arguments go to `distributed.Client`.
        """
        if self.scheduler is None:
            raise RuntimeError("Start the scheduler first: deployment.start_scheduler().")
        kwargs.setdefault("security", self.security)
        kwargs.setdefault("timeout", CLIENT_TIMEOUT)
        client = Client(self.scheduler.address, **kwargs)
        self._clients.append(client)
        return client

    def registered_workers(self) -> dict[str, str]:
        """Worker name → address, as the scheduler knows them now."""
        return {name: address for name, (address, _) in self._registered().items()}

    def _registered(self) -> dict[str, tuple[str, str | None]]:
        """Worker name → (address, nanny address or None)."""
        if self._admin is None:
            assert self.scheduler is not None
            # Not the default client: tests' own clients are.
            self._admin = Client(
                self.scheduler.address,
                security=self.security,
                timeout=CLIENT_TIMEOUT,
                set_as_default=False,
            )
        # Since distributed 2025.1 scheduler_info() reports at most n_workers workers.
        kwargs = {}
        if "n_workers" in inspect.signature(self._admin.scheduler_info).parameters:
            kwargs["n_workers"] = -1
        workers = self._admin.scheduler_info(**kwargs)["workers"]
        return {
            str(info["name"]): (address, info.get("nanny")) for address, info in workers.items()
        }

    def _wait_registered(
        self,
        workers: Sequence[WorkerProcess],
        *,
        timeout: float,
        what: str,
        previous: Mapping[str, str] | None = None,
    ) -> None:
        """Wait until each worker is registered (at an address other than `previous`).

        With a nanny, also until the nanny has finished starting: its worker registers first,
        and a nanny whose worker dies before then gives up instead of restarting it.
        """
        previous = previous or {}
        deadline = time.monotonic() + timeout
        nannies: dict[str, str] = {}

        def registered() -> bool:
            for worker in workers:
                worker.check_running()
            current = self._registered()
            found = {w.name: current.get(w.name, (None, None)) for w in workers}
            if any(a is None or a == previous.get(n) for n, (a, _) in found.items()):
                return False
            for worker in workers:
                worker.address, nanny = found[worker.name]  # type: ignore[assignment]
                if worker.spec.nanny and nanny is not None:
                    nannies[worker.address] = nanny
            return True

        def nannies_started() -> bool:
            for worker in workers:
                worker.check_running()
            statuses = self._admin.run(  # type: ignore[union-attr]
                lambda dask_worker: dask_worker.status.name,  # a Nanny, with nanny=True
                workers=list(nannies),
                nanny=True,
            )
            return all(status == "running" for status in statuses.values())

        def details() -> str:
            return "".join(worker.log_tail() for worker in workers)

        names = ", ".join(repr(worker.name) for worker in workers)
        wait_until(registered, timeout, f"Workers {names} {what}", details)
        if nannies:
            remaining = deadline - time.monotonic()
            wait_until(nannies_started, remaining, f"Nannies of {names} {what}", details)
        assert self._admin is not None
        pids = self._admin.run(os.getpid, workers=[worker.address for worker in workers])
        for worker in workers:
            worker.pid = pids[worker.address]

    def wait_for_removal(self, worker: WorkerProcess, timeout: float) -> None:
        """Wait until the scheduler no longer lists `worker` at its address."""

        def removed() -> bool:
            return worker.address not in self.registered_workers().values()

        wait_until(removed, timeout, f"The scheduler removing {worker} at {worker.address}")

    def wait_for_restart(self, worker: WorkerProcess, timeout: float) -> None:
        """Wait until `worker` (with a nanny) is registered again; update its address and pid."""
        self._wait_registered(
            [worker], timeout=timeout, what="restarting", previous={worker.name: worker.address}
        )

    def leftover_processes(self) -> list[psutil.Process]:
        """Processes of this deployment that are still alive (including a nanny's workers)."""
        return tagged_processes(self.tag)

    def close(self) -> None:
        """Close clients, then stop workers and scheduler: SIGTERM, SIGKILL after a bound.

        Everything is stopped even if a step fails; failures are raised at the end.
        """
        errors: list[str] = []
        admin = [self._admin] if self._admin is not None else []
        for client in [*reversed(self._clients), *admin]:
            try:
                client.close(timeout=CLIENT_CLOSE_TIMEOUT)
            except Exception as error:
                errors.append(f"closing {client}: {error!r}")
        self._clients.clear()
        self._admin = None

        # Workers first: a worker that gets SIGTERM while its scheduler closes can hang on exit
        # (its own close is cancelled halfway through shutting down its thread pool).
        processes: list[DaskProcess] = list(self.workers.values())
        if self.scheduler is not None:
            processes.append(self.scheduler)
        for group in [list(self.workers.values()), [self.scheduler] if self.scheduler else []]:
            for process in group:
                process._terminate()
            deadline = time.monotonic() + GRACEFUL_STOP_TIMEOUT
            for process in group:
                process._wait(deadline)
        # Whatever is left, including a nanny's worker whose nanny is gone.
        alive = kill_processes(self.leftover_processes())
        for process in processes:
            process._wait(time.monotonic() + KILL_TIMEOUT)  # reap: no zombies
        for process in processes:
            process.popen.stdin.close()  # type: ignore[union-attr]
        if alive:
            errors.append(f"processes survived SIGKILL: {alive}")
        if errors:
            raise RuntimeError(f"Stopping the deployment in {self.directory}: {errors}")
