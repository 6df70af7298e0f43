"""How long it takes from stopping a running block to a free worker thread.

On one worker with one thread, a block runs Python lines for a minute; the benchmark stops it in
each way afar offers and runs a trivial next block at once. The delay printed is the time from the
stop to the next block's result (an upper bound of stop -> free thread), next to what a trivial
block takes on an idle worker (same run, interleaved), and as a ratio to a bare
``client.submit(...).result()`` round trip on that worker, also interleaved (bare Dask cannot stop
a running task at all: its thread stays busy until the task returns). For remotely(timeout=...)
it is the time from the limit to afar.get raising.

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
from functools import partial

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


def bare_round_trip(client: Client) -> float:
    start = time.perf_counter()
    assert client.submit(int, 1, pure=False).result(timeout=STARTED_TIMEOUT) == 1
    return time.perf_counter() - start


def new_event_name() -> str:
    return f"afar-bench-{os.urandom(8).hex()}"


def long_block(runner: afar.Run, location: afar.Location, started: str) -> list:
    """A minute of Python lines that sets the Event ``started`` first; what it bound (if any)."""
    with runner, location:
        from time import sleep

        import distributed

        distributed.Event(started).set()
        for _step in range(STEPS):
            sleep(0.01)
        result = True
    bound = locals()
    return [bound["result"]] if "result" in bound else []


def stopped_by(client: Client, location: afar.Location, how: str) -> tuple[float, afar.Run]:
    """Start a long block with afar.run; the moment of the stop, and the Run (kept alive)."""
    started = new_event_name()
    runner = afar.run()
    futures = long_block(runner, location, started)
    assert Event(started, client=client).wait(STARTED_TIMEOUT)
    moment = time.perf_counter()
    if how == "run.cancel()":
        runner.cancel()
    elif how == "future.cancel()":
        futures[0].cancel()
    elif how == "last reference dropped":
        del futures[:]  # by reference counting, at once: no gc.collect() needed
    else:
        raise ValueError(how)
    return moment, runner


def ctrl_c(client: Client, location: afar.Location) -> tuple[float, None]:
    started = new_event_name()
    sent: list[float] = []

    def press() -> None:
        if Event(started, client=client).wait(STARTED_TIMEOUT):
            time.sleep(0.2)
            sent.append(time.perf_counter())
            os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press)
    presser.start()
    try:
        long_block(afar.get, location, started)
    except KeyboardInterrupt:
        pass
    presser.join()
    return sent[0], None


def get_timeout(location: afar.Location, seconds: float) -> tuple[float, None]:
    start = time.perf_counter()
    try:
        long_block(afar.get(timeout=seconds), location, new_event_name())
    except TimeoutError:
        pass
    return start + seconds, None


def then_next_block(location: afar.Location, stop: Callable[[], tuple[float, object]]) -> float:
    """Stop a block, then run a trivial next block at once: the time from the stop to its result.

    ``stop`` gives the moment of the stop and what must stay alive until the next block has run
    (the Run of a block whose Future was dropped: only the Future's drop may stop the block).
    """
    moment, _alive = stop()
    trivial(location)
    return time.perf_counter() - moment


def remote_limit(client: Client, seconds: float) -> float:
    """The moment of the limit: the block's start on the worker (told by an Event) + limit."""
    started = new_event_name()
    limited = afar.remotely(client=client, secede=False, timeout=seconds)
    moments: list[float] = []

    def watch() -> None:
        if Event(started, client=client).wait(STARTED_TIMEOUT):
            moments.append(time.perf_counter())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        long_block(afar.get, limited, started)
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
        # Each way of stopping: one measurement of its delay. Run in this order, each repeat.
        ways: dict[str, Callable[[], float]] = {
            how: partial(then_next_block, location, partial(stopped_by, client, location, how))
            for how in ("run.cancel()", "future.cancel()", "last reference dropped")
        }
        ways["Ctrl-C in afar.get"] = partial(
            then_next_block, location, partial(ctrl_c, client, location)
        )
        ways["afar.get(timeout=...)"] = partial(
            then_next_block, location, partial(get_timeout, location, 0.5)
        )
        ways["remotely(timeout=...) until afar.get raises"] = partial(remote_limit, client, 0.5)
        results: dict[str, list[float]] = {how: [] for how in ways}
        idle: list[float] = []
        bare: list[float] = []
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for _ in range(repeats):
            bare.append(bare_round_trip(client))
            idle.append(trivial(location))
            for how, measure in ways.items():
                results[how].append(measure())
        reference = statistics.median(bare)
        print(
            f"bare client.submit round trip: median {reference * 1e3:.1f} ms; trivial block on an "
            f"idle worker: median {statistics.median(idle) * 1e3:.1f} ms "
            f"(ratio {statistics.median(idle) / reference:.2f}x)"
        )
        for how, times in results.items():
            print(
                f"{how:<46} stop -> next block's result: median "
                f"{statistics.median(times) * 1e3:6.1f} ms   max {max(times) * 1e3:6.1f} ms   "
                f"ratio to a bare round trip {statistics.median(times) / reference:5.2f}x"
            )


if __name__ == "__main__":
    main()
