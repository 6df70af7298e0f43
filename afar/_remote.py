"""Ship a block to Dask: split Futures from values, scatter `data`, submit, a Future per name."""

from __future__ import annotations

import io
import itertools
import os
import pickle
import re
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import cloudpickle
from distributed import Future

from afar import _modules
from afar._block import Block
from afar._shipping import pick, run_block
from afar._worker.runtime import RUNTIME_FILENAME
from afar.errors import ClientError, NotPicklableError

_CONTAINERS = (list, tuple, dict, set, frozenset)
EMPTY_PAYLOAD = b""


def resolve_client(*candidates: Any) -> Any:
    """The first client given, else Dask's default client; refuse a closed one."""
    client = next((c for c in candidates if c is not None), None)
    if client is None:
        from distributed import default_client

        try:
            client = default_client()
        except ValueError:
            raise ClientError(
                "afar found no Dask client to run the block: create one first "
                "(from dask.distributed import Client; client = Client()) or pass it with "
                "afar.run(client=client) or remotely(client=client)"
            ) from None
    status = getattr(client, "status", None)
    if status == "connecting" and not getattr(client, "asynchronous", False):
        # A synchronous client connects in its constructor: "connecting" again means that it
        # lost its scheduler and tries to reconnect (for its `timeout`), then closes.
        raise ClientError(
            f"the Dask client {client!r} lost the connection to its scheduler and is trying "
            "to reconnect: the block was not sent. Check the scheduler, then run the block again "
            "(or create a new client with Client(...))"
        )
    if status in ("closing", "closed"):
        raise ClientError(
            f"the Dask client {client!r} is closed: create a new one with Client(...) before "
            "running the block"
        )
    return client


def futures_in(value: Any) -> Iterator[Future]:
    """The Futures Dask resolves on the worker in ``value``: itself, or inside containers."""
    if isinstance(value, Future):
        yield value
    elif type(value) in _CONTAINERS:
        items = value.items() if isinstance(value, dict) else value
        for item in items:
            yield from futures_in(item)


def contains_future(value: Any) -> bool:
    """Whether Dask must resolve ``value`` on the worker (a Future, or one in a container)."""
    return next(futures_in(value), None) is not None


def split_inputs(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(plain values, values holding Futures)."""
    plain: dict[str, Any] = {}
    futures: dict[str, Any] = {}
    for name, value in values.items():
        (futures if contains_future(value) else plain)[name] = value
    return plain, futures


def pickle_inputs(plain: Mapping[str, Any], label: str) -> tuple[bytes, set[object]]:
    """Pickle the variables once; if that fails, find which one cannot be pickled and say so.

    Also returns the names of the modules the pickle refers to (see ``_modules.dumps``).
    """
    if not plain:
        return EMPTY_PAYLOAD, set()
    for name, value in plain.items():
        # cloudpickle sends a text file open for reading as a copy of its whole contents.
        if isinstance(value, io.IOBase) and value not in (sys.stdout, sys.stderr):
            raise NotPicklableError(
                f"the block at {label} reads {name!r}, an open file "
                f"({type(value).__qualname__}): afar does not send open files. Open it inside "
                "the block from its path (the worker must see the file), or read it here and "
                "pass its contents"
            )
    try:
        return _modules.dumps(dict(plain))
    except Exception as error:
        for name, value in plain.items():
            try:
                cloudpickle.dumps(value, protocol=5)
            except Exception as culprit:
                raise NotPicklableError(
                    f"the block at {label} reads {name!r}, a {type(value).__qualname__} that "
                    f"cannot be pickled to send it to a worker ({culprit}). Create it inside "
                    "the block, or pass what it is made from (a path instead of an open file, "
                    "nothing instead of a lock)"
                ) from None  # the message names the variable and the reason
        raise NotPicklableError(
            f"the variables read by the block at {label} cannot be pickled together: {error}"
        ) from None


def _unscattered(data: Mapping[str, Any], names: list[str]) -> list[str]:
    """The names among ``names`` whose values in ``data`` are not on the cluster yet."""
    return [name for name in names if not contains_future(data[name])]


def scatter_data(client: Any, data: MutableMapping[str, Any], names: list[str]) -> None:
    """Send the plain values of ``data`` the block reads to the cluster once (one round trip);
    keep their Futures in ``data``."""
    sending = _unscattered(data, names)
    if sending:
        futures = client.scatter([data[name] for name in sending], hash=False)
        data.update(zip(sending, futures))


async def scatter_data_async(client: Any, data: MutableMapping[str, Any], names: list[str]) -> None:
    """``scatter_data`` for an asynchronous client."""
    sending = _unscattered(data, names)
    if sending:
        futures = await client.scatter([data[name] for name in sending], hash=False)
        data.update(zip(sending, futures))


# Keys must be unique across the cluster: a random token per process and a counter.
_PROCESS_TOKEN = os.urandom(6).hex()
_counter = itertools.count()


def new_key(block: Block) -> str:
    return f"{block.key_prefix}-{_PROCESS_TOKEN}{next(_counter):x}"


# The debugging settings of a block whose input nobody reads (a quiet block): no secret, no
# breakpoints, no failure kept.
NOT_DEBUGGED: tuple[str, bool, float] = ("", False, 0.0)


def submit_block(
    client: Any,
    block: Block,
    packed: bytes,
    payload: bytes,
    futures: dict[str, Any],
    stream: tuple[str, Any, bool] | None,
    strict: bool,
    options: Mapping[str, Any],
    key: str,
    limit: float | None = None,
    modules: tuple[tuple[str, str], ...] = (),
    displays: tuple[str, ...] = (),
    kept: tuple[str, ...] = (),
    plotting: Any = None,
    debugging: tuple[str, bool, float] = NOT_DEBUGGED,
) -> Future:
    """The body task (one per block). No round trip: the client batches what it sends.

    The small settings travel pickled as one value: Dask walks every container of a task's
    arguments looking for Futures, a cost paid on every submit.
    """
    settings = pickle.dumps(
        (stream, strict, limit, modules, displays, kept, plotting, debugging), protocol=5
    )
    function, argument = run_block.task(packed, payload, futures, settings)
    try:
        return client.submit(function, argument, key=key, pure=False, **options)
    except TypeError as error:
        raise TypeError(
            f"client.submit refused the options of the block at {block.label} "
            f"({', '.join(sorted(options)) or 'none'}): {error}"
        ) from error


def submit_getters(client: Any, block: Block, body: Future, names: tuple[str, ...]):
    """One small task per saved name, each holding that name's value next to the body's result."""
    futures = {}
    for name in names:
        function, argument = pick.task(body, pickle.dumps((name, block.label)))
        futures[name] = client.submit(function, argument, key=f"{body.key}-{name}", pure=False)
    return futures


def hide_runtime_frames() -> None:
    """Let Dask leave afar's worker frames out of the tracebacks it shows (``Future.result``).

    Dask shortens tracebacks by file name (config ``admin.traceback.shorten``): the task's
    ``eval`` runs as "<string>", afar's worker function as ``RUNTIME_FILENAME``.
    """
    import dask.config

    patterns = list(dask.config.get("admin.traceback.shorten", default=[]) or [])
    wanted = [re.escape(RUNTIME_FILENAME), r"^<string>$"]
    missing = [p for p in wanted if p not in patterns]
    if missing:
        dask.config.set({"admin.traceback.shorten": patterns + missing})
