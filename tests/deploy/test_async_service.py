"""A service's coroutines offload blocks to the cluster without blocking its event loop (issue 6).

Each test runs a coroutine with `asyncio.run` (bounded by SERVICE_TIMEOUT) that opens
`Client(address, asynchronous=True)` on the shared cluster, as a web service would. A ticker
coroutine counts how often the loop lets it run while blocks sleep on the workers: a loop
blocked by a block would stop it for the whole time.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from _blocks import GATE_TIMEOUT, POLL_INTERVAL, unique
from _on_scheduler import afar_keys
from distributed import Client, Event, Future

import afar
from afar import locally, remotely

# Seconds. A whole coroutine, client start included.
SERVICE_TIMEOUT = 60.0
TICK = 0.01
# How long each block sleeps on its worker.
BLOCK_SECONDS = 0.5
SHORT_BLOCK_SECONDS = 0.2
# Ticks the loop must allow while blocks sleep: a tenth of what a free loop allows, while a
# blocked loop would allow none.
MIN_TICK_SHARE = 0.1
CONCURRENT_BLOCKS = 20
# How long a request may take before the service gives up on it, and how long the scheduler
# may then take to forget its block.
REQUEST_TIMEOUT = 1.0
CANCEL_TIMEOUT = 3.0


def serve(shared_cluster, handler):
    """Run ``handler(client)`` in a new event loop with an asynchronous client."""

    async def main():
        async with Client(shared_cluster.scheduler.address, asynchronous=True) as client:
            return await handler(client)

    return asyncio.run(asyncio.wait_for(main(), SERVICE_TIMEOUT))


class Ticker:
    """Counts the loop's turns between `start` and `stop`."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task: asyncio.Task | None = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.ticks += 1

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        self._start = time.monotonic()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.elapsed = time.monotonic() - self._start

    def assert_loop_was_free(self, busy_seconds: float) -> None:
        assert self.elapsed >= busy_seconds
        assert self.ticks >= MIN_TICK_SHARE * busy_seconds / TICK, (self.ticks, self.elapsed)


def test_async_run_and_get_leave_the_event_loop_free(shared_cluster):
    async def handler(client):
        with Ticker() as ticker:
            async with afar.run, remotely:
                time.sleep(BLOCK_SECONDS)
                slept = BLOCK_SECONDS
            assert isinstance(slept, Future)
            assert await slept == BLOCK_SECONDS
            async with afar.get, remotely:
                time.sleep(BLOCK_SECONDS)
                doubled = 2 * slept  # a Future of the first block, resolved on the worker
        ticker.assert_loop_was_free(2 * BLOCK_SECONDS)
        return doubled

    assert serve(shared_cluster, handler) == 2 * BLOCK_SECONDS


def test_20_blocks_under_gather_share_one_run(shared_cluster):
    async def handler(client):
        shared = afar.run()

        async def request(number):
            async with shared, remotely:
                time.sleep(SHORT_BLOCK_SECONDS)
                answer = (number, number * number)
            return answer

        with Ticker() as ticker:
            futures = await asyncio.gather(*(request(n) for n in range(CONCURRENT_BLOCKS)))
            answers = await client.gather(futures)
        # The cluster runs 4 blocks at a time (4 threads in all).
        ticker.assert_loop_was_free(CONCURRENT_BLOCKS / 4 * SHORT_BLOCK_SECONDS)
        return answers

    # Each coroutine got its own block's Future: no state of one block leaked into another.
    assert serve(shared_cluster, handler) == [(n, n * n) for n in range(CONCURRENT_BLOCKS)]


def test_20_get_blocks_under_gather_share_one_get(shared_cluster):
    async def handler(client):
        shared = afar.get()

        async def request(number):
            async with shared, remotely:
                cubed = number**3
            return cubed

        return await asyncio.gather(*(request(n) for n in range(CONCURRENT_BLOCKS)))

    assert serve(shared_cluster, handler) == [n**3 for n in range(CONCURRENT_BLOCKS)]


def test_a_plain_with_and_an_asynchronous_client_says_to_write_async_with(shared_cluster):
    async def handler(client):
        for run in (afar.run, afar.get):
            with pytest.raises(afar.ClientError, match=r"write `async with afar\.run"):  # noqa: SIM117
                with run, remotely:
                    never = 1  # noqa: F841
        assert not client.futures
        return await client.run_on_scheduler(afar_keys)

    assert serve(shared_cluster, handler) == []


def test_data_with_an_asynchronous_client(shared_cluster):
    async def handler(client):
        data = {"x": 1}
        try:
            async with afar.get(data=data), remotely:
                y = x + 1  # noqa: F821 (x comes from data)
        finally:
            stored = data["x"]
            if asyncio.iscoroutine(stored):
                stored.close()  # never awaited: close it rather than warn at collection
        assert isinstance(stored, Future)
        return y

    assert serve(shared_cluster, handler) == 2


def test_locally_reads_futures_of_an_asynchronous_client(shared_cluster):
    async def handler(client):
        async with afar.run, remotely:
            five = 5
        async with afar.get, locally:
            six = five + 1
        return six

    assert serve(shared_cluster, handler) == 6


async def _wait_until_released(client, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await client.run_on_scheduler(afar_keys):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the scheduler still holds the block {timeout} s after cancelling")
        await asyncio.sleep(POLL_INTERVAL)


def test_a_cancelled_request_cancels_its_block(shared_cluster):
    release = unique("release")

    async def handler(client):
        async def request():
            async with afar.get, remotely:
                Event(release).wait(GATE_TIMEOUT)
                done = True
            return done

        # A web framework cancels a request that takes too long.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(request(), REQUEST_TIMEOUT)
        try:
            await _wait_until_released(client, CANCEL_TIMEOUT)
        finally:
            await Event(release, client=client).set()

    serve(shared_cluster, handler)
