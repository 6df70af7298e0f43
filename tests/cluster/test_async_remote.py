"""Blocks inside coroutines with an asynchronous client: ``async with afar.run, remotely:``.

Each test runs its coroutine with ``asyncio.run`` (bounded by ``ASYNC_TIMEOUT``) and opens its own
``Client(asynchronous=True)`` on the session cluster, which is Dask's default client while open.
"""

from __future__ import annotations

import asyncio

import pytest
from _remote_helpers import label, lineno
from distributed import Client, Future

import afar
from afar import remotely

# Seconds for a whole coroutine (client start included).
ASYNC_TIMEOUT = 60
CONCURRENT_BLOCKS = 20


def run(coroutine_function, cluster):
    async def main():
        async with Client(cluster.scheduler_address, asynchronous=True) as client:
            return await coroutine_function(client)

    return asyncio.run(asyncio.wait_for(main(), ASYNC_TIMEOUT))


def test_async_with_run_binds_futures_to_await(cluster):
    async def body(client):
        async with afar.run, remotely:
            value = 6 * 7
        assert isinstance(value, Future)
        assert value.client is client  # the asynchronous client is Dask's default here
        return await value

    assert run(body, cluster) == 42


def test_async_with_get_binds_values(cluster):
    async def body(client):
        base = 40
        async with afar.get("total", "label") as values, remotely:
            total = base + 2
            label = "answer"
        return total, label, values

    assert run(body, cluster) == (42, "answer", {"total": 42, "label": "answer"})


def test_futures_of_async_blocks_feed_later_blocks(cluster):
    async def body(client):
        async with afar.run("one", "two"), remotely:
            one = 1
            two = 2
        async with afar.get, remotely:
            three = one + two
        return three

    assert run(body, cluster) == 3


def test_many_blocks_share_one_run_under_gather(cluster):
    async def body(client):
        shared = afar.run()

        async def square(number):
            async with shared, remotely:
                squared = number * number
            return squared

        futures = await asyncio.gather(*(square(n) for n in range(CONCURRENT_BLOCKS)))
        assert all(isinstance(future, Future) for future in futures)
        return await client.gather(futures)

    assert run(body, cluster) == [n * n for n in range(CONCURRENT_BLOCKS)]


def test_many_get_blocks_under_gather(cluster):
    async def body(client):
        shared = afar.get()

        async def cube(number):
            async with shared, remotely:
                cubed = number**3
            return cubed

        return await asyncio.gather(*(cube(n) for n in range(CONCURRENT_BLOCKS)))

    assert run(body, cluster) == [n**3 for n in range(CONCURRENT_BLOCKS)]


def test_async_get_raises_the_blocks_error_at_the_async_with(cluster):
    async def body(client):
        with pytest.raises(ZeroDivisionError):
            async with afar.get, remotely:
                broken = 1 / 0  # noqa: F841
        return "raised"

    assert run(body, cluster) == "raised"


def test_plain_with_and_an_asynchronous_client_says_to_write_async_with(cluster):
    async def body(client):
        with pytest.raises(afar.ClientError, match="async with"):  # noqa: SIM117
            with afar.run, remotely:
                never = 1
        with pytest.raises(afar.ClientError, match="async with"):  # noqa: SIM117
            with afar.get, remotely:
                never = 1  # noqa: F841
        return "refused"

    assert run(body, cluster) == "refused"


def test_an_explicit_asynchronous_client(cluster):
    async def body(client):
        there = afar.remotely(client=client)
        async with afar.get, there:
            value = "explicit"
        return value

    assert run(body, cluster) == "explicit"


# -- afar.get(timeout=...) in a coroutine ----------------------------------------------------------
STOP_TIMEOUT = 30  # seconds a stopped block may take to leave the scheduler; far above the need


def block_tasks(prefix: str, dask_scheduler=None) -> list[str]:
    return [str(key) for key in dask_scheduler.tasks if str(key).startswith(prefix)]


def test_async_get_timeout_stops_a_block_that_runs_too_long(cluster):
    async def body(client):
        with pytest.raises(TimeoutError, match=r"did not finish within 0.5 s") as raised:
            with_line = lineno() + 1
            async with afar.get(timeout=0.5), remotely:
                import time

                for _ in range(6000):  # a minute of Python lines
                    time.sleep(0.01)
                done = True  # noqa: F841
        # Cancelled: the scheduler forgets the block (the worker stops it, see test_stopping).
        prefix = f"afar-{label(__file__, with_line)}-"
        deadline = asyncio.get_running_loop().time() + STOP_TIMEOUT
        while await client.run_on_scheduler(block_tasks, prefix):
            assert asyncio.get_running_loop().time() < deadline, "the block is still there"
            await asyncio.sleep(0.05)
        return str(raised.value)

    assert "cancelled and stopped on the worker" in run(body, cluster)


# -- a synchronous client in a coroutine ----------------------------------------------------------
def run_with_sync_client(coroutine_function, cluster):
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        return asyncio.run(asyncio.wait_for(coroutine_function(client), ASYNC_TIMEOUT))


def test_async_with_and_a_synchronous_client(cluster):
    async def body(client):
        there = afar.remotely(client=client)
        data = {"base": 40}
        async with afar.get(data=data), there:
            total = base + 2  # noqa: F821 - read from data=
        async with afar.run, there:
            doubled = total * 2
        return total, doubled.result(timeout=ASYNC_TIMEOUT), isinstance(data["base"], Future)

    assert run_with_sync_client(body, cluster) == (42, 84, True)


def test_a_synchronous_client_waits_without_blocking_the_event_loop(cluster):
    async def body(client):
        there = afar.remotely(client=client)
        ticks = 0

        async def ticking():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.ensure_future(ticking())
        with pytest.raises(TimeoutError, match=r"did not finish within 0.5 s"):
            async with afar.get(timeout=0.5), there:
                import time

                for _ in range(6000):
                    time.sleep(0.01)
                done = True  # noqa: F841
        ticker.cancel()
        async with afar.get, there:
            after = "next block"
        return after, ticks

    after, ticks = run_with_sync_client(body, cluster)
    assert after == "next block"
    assert ticks >= 3  # a blocked event loop would have ticked once at most
