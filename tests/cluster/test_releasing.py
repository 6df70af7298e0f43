"""A finished afar.get block's Future goes with the next block of its client (``_releasing``).

Dask's client sends its messages in batches 10 ms apart: released at once, the block's Future
would send a message just before the next block's graph, which would wait out the batch. Held,
it goes right after that graph, or after ``HOLD_SECONDS`` when no block comes.
"""

from __future__ import annotations

import time
from typing import Any

from _remote_helpers import RESULT_TIMEOUT
from distributed import Client

import afar
from afar import _releasing


def body_keys(dask_scheduler: Any = None) -> list[str]:
    return sorted(str(key) for key in dask_scheduler.tasks if "test_releasing.py" in str(key))


def keys_until_gone(client: Client, kept: list[str] | None = None) -> float:
    """Seconds until the scheduler holds no block of this file but ``kept`` (bounded)."""
    start = time.monotonic()
    while client.run_on_scheduler(body_keys) != (kept or []):
        assert time.monotonic() - start < RESULT_TIMEOUT, "the block's key was never released"
        time.sleep(0.01)
    return time.monotonic() - start


def test_the_finished_block_goes_with_the_next_block(cluster: Any, monkeypatch) -> None:
    monkeypatch.setattr(_releasing, "HOLD_SECONDS", RESULT_TIMEOUT)  # no timer in the way
    with Client(cluster, set_as_default=False) as client:
        location = afar.remotely(client=client)
        with afar.get, location:
            first = 1
        assert first == 1 and client in _releasing._held  # held for the next block
        with afar.get, location:
            second = 2
        assert second == 2
        # The first went when the second was sent; the second is held in its turn.
        held = [str(future.key) for future in _releasing._held[client]]
        assert len(held) == 1
        keys_until_gone(client, kept=held)
        _releasing.let_go(client)
        keys_until_gone(client)


def test_with_no_next_block_it_goes_after_the_hold(cluster: Any) -> None:
    with Client(cluster, set_as_default=False) as client:
        with afar.get, afar.remotely(client=client):
            value = 1
        assert value == 1
        waited = keys_until_gone(client)
        assert waited < _releasing.HOLD_SECONDS + 2.0
        assert client not in _releasing._held
