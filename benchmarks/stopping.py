"""How long it takes from stopping a running block to a free worker thread.

On one worker with one thread, a block runs Python lines for a minute; the benchmark stops it in
each way afar offers and runs a trivial next block at once. The delay printed is the time from the
stop to the next block's result (an upper bound of stop -> free thread), next to what a trivial
block takes on an idle worker (same run, interleaved). For remotely(timeout=...) it is the time
from the limit to afar.get raising.

    python benchmarks/stopping.py           # full run
    python benchmarks/stopping.py --quick   # a few repetitions: checks that it still runs
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable

from distributed import Client, Event, LocalCluster

import afar

STEPS = 6000  # one minute of 10 ms lines: far longer than any stop takes
STARTED_TIMEOUT = 30


def trivial(location: afar.Location) -> float:
    start = time.perf_counter()
    with afar.get(timeout=STARTED_TIMEOUT), location:
        value = 1
    assert value == 1
    return time.perf_counter() - start


def long_block(runner: afar.Run, location: afar.Location, started: str) -> list:
    with runner, location:
        from time import sleep

        import distributed

        distributed.Event(started).set()
        for _step in range(STEPS):
            sleep(0.01)
        result = True
    bound = locals()
    return [bound["result"]] if "result" in bound else []


def stopped_by(
    client: Client, location: afar.Location, how: str
) -> tuple[float, Callable[[], None]]:
    """Start a long block; the moment of the stop and what stops it."""
    started = f"afar-bench-{os.urandom(8).hex()}"
    runner = afar.run()
    futures = long_block(runner, location, started)
    assert Event(started, client=client).wait(STARTED_TIMEOUT)
    if how == "run.cancel()":
        moment = time.perf_counter()
        runner.cancel()
    elif how == "future.cancel()":
        moment = time.perf_counter()
        futures[0].cancel()
    elif how == "last reference dropped":
        moment = time.perf_counter()
        del futures[:]  # by reference counting, at once: no gc.collect() needed
    else:
        raise ValueError(how)
    return moment, runner.cancel


def ctrl_c(client: Client, location: afar.Location) -> float:
    started = f"afar-bench-{os.urandom(8).hex()}"
    sent: list[float] = []

    def press() -> None:
        if Event(started, client=client).wait(STARTED_TIMEOUT):
            time.sleep(0.2)
            sent.append(time.perf_counter())
            os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press)
    presser.start()
    try:
        with afar.get, location:
            from time import sleep

            import distributed

            distributed.Event(started).set()
            for _step in range(STEPS):
                sleep(0.01)
            result = True  # noqa: F841
    except KeyboardInterrupt:
        pass
    presser.join()
    return sent[0]


def get_timeout(location: afar.Location, seconds: float) -> float:
    start = time.perf_counter()
    try:
        with afar.get(timeout=seconds), location:
            from time import sleep

            for _step in range(STEPS):
                sleep(0.01)
            result = True  # noqa: F841
    except TimeoutError:
        pass
    return start + seconds


def remote_limit(client: Client, seconds: float) -> float:
    """The moment of the limit: the block's start on the worker (told by an Event) + limit."""
    started = f"afar-bench-{os.urandom(8).hex()}"
    limited = afar.remotely(client=client, secede=False, timeout=seconds)
    moments: list[float] = []

    def watch() -> None:
        if Event(started, client=client).wait(STARTED_TIMEOUT):
            moments.append(time.perf_counter())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with afar.get, limited:
            from time import sleep

            import distributed

            distributed.Event(started).set()
            for _step in range(STEPS):
                sleep(0.01)
            result = True  # noqa: F841
    except TimeoutError:
        pass
    raised = time.perf_counter()
    watcher.join()
    # The Event reaches this process a little after the block set it: an upper bound.
    return raised - (moments[0] + seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    repeats = 2 if parser.parse_args().quick else 10
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        location = afar.remotely(client=client, secede=False)
        for _ in range(3):
            trivial(location)  # warm-up
        results: dict[str, list[float]] = {}
        idle: list[float] = []
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for _ in range(repeats):
            idle.append(trivial(location))
            for how in ("run.cancel()", "future.cancel()", "last reference dropped"):
                moment, _ = stopped_by(client, location, how)
                trivial(location)
                results.setdefault(how, []).append(time.perf_counter() - moment)
            moment = ctrl_c(client, location)
            trivial(location)
            results.setdefault("Ctrl-C in afar.get", []).append(time.perf_counter() - moment)
            moment = get_timeout(location, 0.5)
            trivial(location)
            results.setdefault("afar.get(timeout=...)", []).append(time.perf_counter() - moment)
            results.setdefault("remotely(timeout=...) until afar.get raises", []).append(
                remote_limit(client, 0.5)
            )
        print(
            f"trivial block on an idle worker: median {statistics.median(idle) * 1e3:.1f} ms, "
            f"min {min(idle) * 1e3:.1f} ms"
        )
        for how, times in results.items():
            print(
                f"{how:<46} stop -> next block's result: median "
                f"{statistics.median(times) * 1e3:6.1f} ms   max {max(times) * 1e3:6.1f} ms"
            )


if __name__ == "__main__":
    main()
