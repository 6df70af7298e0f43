"""Blocks inside coroutines with an asynchronous client: ``async with afar.run, remotely:``.

Each test runs its coroutine with ``asyncio.run`` (bounded by ``ASYNC_TIMEOUT``) and opens its own
``Client(asynchronous=True)`` on the session cluster, which is Dask's default client while open.
"""

from __future__ import annotations

import asyncio

import pytest
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
