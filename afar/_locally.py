"""``locally``: the block runs in this process, as a worker would run it.

The same rebuilt function a worker runs (``run_here``), fed with the values of any Futures the
block reads, gathered first. Kept apart from submission: nothing here touches the scheduler but
the gathering of inputs, and the synchronous and asynchronous forms differ only there.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any

from afar import _remote
from afar._variables import Entry, bind_results, seeds
from afar._worker.runtime import missing_name, run_here
from afar.errors import SavedNameError


def run_locally(entry: Entry, values: dict[str, Any], display: bool) -> None:
    plain, futures = _remote.split_inputs(values)
    if futures:
        plain.update(zip(futures, _gather_locally(futures)))
    # A name afar chose that the block did not bind is left as it was, as in Python.
    saved, single = entry.saved, len(entry.saved) == 1 and entry.named
    packed = entry.block.packed(seeds(entry, plain), saved, single, display)
    results = run_here(packed, plain, _show if display else None)
    bind_results(entry, results)
    missing = [name for name in saved if name not in results]
    if missing and entry.named:  # as a remote afar.get raises it; no Future holds the error
        raise SavedNameError(*missing_name(missing[0], entry.block.label).args, name=missing[0])


async def run_locally_async(entry: Entry, values: dict[str, Any], display: bool) -> None:
    plain, futures = _remote.split_inputs(values)
    if futures:
        gathered = _gather_locally(futures)
        if inspect.isawaitable(gathered):  # the Futures of an asynchronous client
            gathered = await gathered
        values = {**plain, **dict(zip(futures, gathered))}
    run_locally(entry, values, display)


def _gather_locally(futures: Mapping[str, Any]) -> Any:
    clients = {f.client for value in futures.values() for f in _remote.futures_in(value)}
    client = next(iter(clients))
    # A list, or an awaitable of one for an asynchronous client.
    return client.gather(list(futures.values()))


def _show(value: Any) -> None:
    display_hook = sys.displayhook
    display_hook(value)
