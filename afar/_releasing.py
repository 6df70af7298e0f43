"""A finished ``afar.get`` block's Future goes when the next block of its client is sent.

Dask's client sends its messages to the scheduler in batches, and after each batch it waits its
interval (10 ms) before sending the next one. An ``afar.get`` block's Future let go as soon as
its values arrive sends a message at once (the client releases the key). The next block's
graph then often waits out the rest of that interval, because a block reading a large input
spends a few milliseconds on its digest before it is sent. That is up to 10 ms added to every
block of a loop, which bare Dask's ``submit(...).result()`` in a loop does not pay: there the
release and the next graph go in one batch.

Here the Future is held until the next block of the same client is sent, and goes right after
it, in the same batch; a timer on the client's event loop lets go of it if no block comes.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

# Seconds a finished block's Future waits for the next block at most.
HOLD_SECONDS = 0.1

_held: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def hold_until_next_block(client: Any, future: Any) -> None:
    """Keep ``future`` until ``client`` sends its next block (or ``HOLD_SECONDS`` pass)."""
    with _lock:
        held = _held.get(client)
        arm = held is None
        if held is None:
            held = _held[client] = []
        held.append(future)
    if arm:
        try:
            client.loop.add_callback(_arm, weakref.ref(client), held)
        except Exception:  # the client's loop is gone: nothing to batch with
            let_go(client)


def let_go(client: Any) -> None:
    """After ``client`` sent a block: the Futures held for it go, queued after its graph."""
    with _lock:
        held = _held.pop(client, None)
    if held is not None:
        held.clear()  # each Future's release is queued here, on the client's loop


def _arm(client_ref: weakref.ref[Any], held: list[Any]) -> None:
    client = client_ref()
    if client is not None:
        client.loop.call_later(HOLD_SECONDS, _expire, client_ref, held)


def _expire(client_ref: weakref.ref[Any], held: list[Any]) -> None:
    """No block came: these Futures go now (and only these: a later batch has its own timer)."""
    client = client_ref()
    with _lock:
        if client is not None and _held.get(client) is held:
            del _held[client]
    held.clear()
