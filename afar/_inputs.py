"""Large outer values: serialized once, named by a digest, kept on the cluster for later blocks.

A variable a block reads whose value serializes (pickle protocol 5, its out-of-band buffers
included) to at least ``afar.large-input`` bytes (Dask config, default 1 MiB) does not travel in
the block's task. Its serialized form (``afar._worker.kept.Kept``: the buffers of NumPy, pandas
and Arrow as they are, not copied) is scattered once per client and content, and the task depends
on that key. A later block of the same client reading an equal value (the same digest of the
serialized form) depends on the same key: the value crosses once, and workers that need it fetch
it from each other. A value changed in place or rebound has another digest and is sent again, so
each block sees the value as it was at its ``with``.

A client's kept values are released when it closes (Dask forgets its keys), and while it runs,
least recently used first, when they add up to more than ``afar.kept-inputs`` (default 2 GiB);
a block that needs one holds it until it ends. The scheduler only passes them on.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import pickle
import threading
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

from afar import _modules
from afar._worker.kept import Kept

# Dask config keys, and their defaults.
LARGE_INPUT_KEY = "afar.large-input"
LARGE_INPUT_DEFAULT = "1 MiB"
KEPT_LIMIT_KEY = "afar.kept-inputs"
KEPT_LIMIT_DEFAULT = "2 GiB"
KEY_PREFIX = "afar-input"
# A block's small values travel in its task; beyond this many times the threshold in all, the
# largest of them are kept too, so that a task stays far below Dask's large-graph warning.
SMALL_TOTAL_FACTOR = 4

_PROCESS_TOKEN = os.urandom(6).hex()
_counter = itertools.count()


def large_input_threshold() -> int:
    """Bytes from which a value is kept on the cluster (``afar.large-input``)."""
    return _config_bytes(LARGE_INPUT_KEY, LARGE_INPUT_DEFAULT)


def kept_limit() -> int:
    """Bytes of kept values per client beyond which the least recently used go."""
    return _config_bytes(KEPT_LIMIT_KEY, KEPT_LIMIT_DEFAULT)


def _config_bytes(key: str, default: str) -> int:
    import dask.config
    from dask.utils import parse_bytes

    value = dask.config.get(key, default=default)
    return int(value) if isinstance(value, (int, float)) else parse_bytes(value)


@dataclass
class LargeInput:
    """One large value a block reads, serialized, with the digest it is kept under."""

    kept: Kept
    digest: str
    modules: set[object]

    @property
    def nbytes(self) -> int:
        return self.kept.nbytes


def serialize(value: Any) -> LargeInput:
    """The value's pickle with its buffers apart (no copy of them), and its digest."""
    buffers: list[pickle.PickleBuffer] = []
    inband, modules = _modules.dumps(value, buffer_callback=buffers.append)
    kept = Kept.of(inband, buffers)
    return LargeInput(kept, digest_of(kept), modules)


def digest_of(kept: Kept) -> str:
    """A digest of the serialized form: xxh3-128 where ``xxhash`` is installed (18 GB/s here),
    else SHA-256 (about 2 GB/s with the CPU's SHA instructions)."""
    digest = _new_digest()
    digest.update(len(kept.inband).to_bytes(8, "little"))
    digest.update(kept.inband)
    for view, (_, length, readonly) in zip(kept._views, kept.layout):
        digest.update(length.to_bytes(8, "little") + bytes([readonly]))
        digest.update(view)
    return str(digest.hexdigest())


def _new_digest() -> Any:
    try:
        import xxhash
    except ImportError:
        return hashlib.sha256()
    return xxhash.xxh3_128()


def split(plain: Mapping[str, Any], threshold: int) -> tuple[dict[str, Any], dict[str, LargeInput]]:
    """(the values small enough to travel in the task, the large ones serialized apart).

    Dask's ``sizeof`` picks the candidates (NumPy, pandas and Arrow know their sizes; it costs
    nothing for small values); each candidate is serialized to tell. A value that fails to
    serialize is left with the small ones, where its error is reported as before.
    """
    from dask.sizeof import sizeof

    small: dict[str, Any] = {}
    large: dict[str, LargeInput] = {}
    by_identity: dict[int, LargeInput] = {}
    estimates: dict[str, int] = {}
    for name, value in plain.items():
        estimate = _estimate(sizeof, value)
        known = by_identity.get(id(value))
        if known is not None:
            large[name] = known  # two names of one object: one kept value
        elif estimate >= threshold and (serialized := _serialized(value)) is not None:
            if serialized.nbytes >= threshold:
                large[name] = by_identity[id(value)] = serialized
            else:
                small[name] = value
        else:
            small[name] = value
            estimates[name] = estimate
    total = sum(estimates.values())
    for name in sorted(estimates, key=estimates.__getitem__, reverse=True):
        if total <= threshold * SMALL_TOTAL_FACTOR:
            break
        serialized = _serialized(small[name])
        total -= estimates[name]
        if serialized is not None and serialized.nbytes >= threshold:
            large[name] = serialized
            del small[name]
    return small, large


def _estimate(sizeof: Any, value: Any) -> int:
    try:
        return int(sizeof(value))
    except Exception:
        return 0


def _serialized(value: Any) -> LargeInput | None:
    try:
        return serialize(value)
    except Exception:
        return None


@dataclass
class _ClientKept:
    """One client's kept values, least recently used first."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    entries: OrderedDict[str, tuple[Any, int]] = field(default_factory=OrderedDict)
    total: int = 0


_tables: weakref.WeakKeyDictionary[Any, _ClientKept] = weakref.WeakKeyDictionary()
_tables_lock = threading.Lock()


def _table(client: Any) -> _ClientKept:
    with _tables_lock:
        table = _tables.get(client)
        if table is None:
            table = _tables[client] = _ClientKept()
        return table


def new_key(digest: str) -> str:
    # Unique per scatter: the same key scattered while its previous holder is being released
    # races in Dask (dask/distributed#3703).
    return f"{KEY_PREFIX}-{digest[:16]}-{_PROCESS_TOKEN}{next(_counter):x}"


def missing(client: Any, large: Mapping[str, LargeInput]) -> dict[str, LargeInput]:
    """The values of ``large`` the cluster does not keep for this client, by a new key each."""
    table = _table(client)
    wanted: dict[str, LargeInput] = {}
    with table.lock:
        for item in large.values():
            if item.digest not in table.entries:
                wanted.setdefault(item.digest, item)
    return {new_key(digest): item for digest, item in wanted.items()}


def keep(
    client: Any, large: Mapping[str, LargeInput], scattered: Mapping[str, Any]
) -> dict[str, Any]:
    """Note the Futures of newly kept values (``scattered``: by digest); mark those ``large``
    uses as just used; let go of the least recently used beyond the limit. Returns the Future
    of each of ``large``'s values, by name."""
    table = _table(client)
    limit = kept_limit()
    needed = {item.digest: item.nbytes for item in large.values()}
    released = []
    with table.lock:
        for digest, future in scattered.items():
            if digest not in table.entries:
                table.entries[digest] = (future, needed[digest])
                table.total += needed[digest]
        for digest in needed:
            table.entries.move_to_end(digest)
        futures = {name: table.entries[item.digest][0] for name, item in large.items()}
        while table.total > limit and table.entries:
            digest, (future, nbytes) = next(iter(table.entries.items()))
            if digest in needed:
                break  # only values the block being sent needs are left: they stay
            del table.entries[digest]
            table.total -= nbytes
            released.append(future)
    for future in released:
        future.release()
    return futures


def ensure_kept(
    client: Any, large: Mapping[str, LargeInput], workers: Any = None
) -> dict[str, Any] | Awaitable[dict[str, Any]]:
    """The Future of each large value's kept copy, by name; scatters those the cluster does
    not keep yet (one round trip, or none). ``workers``: where to put them (the block's own
    ``workers=``), else where Dask chooses.

    Returns an awaitable for an asynchronous client that has to scatter, which the caller must
    await.
    """
    if not large:
        return {}
    sending = missing(client, large)
    if not sending:
        return keep(client, large, {})
    # A worker in this process (inproc://) gets the object itself, not a copy made by sending.
    in_process = str(getattr(client.scheduler, "address", "")).startswith("inproc://")
    outcome = client.scatter(
        {key: item.kept.snapshot() if in_process else item.kept for key, item in sending.items()},
        hash=False,
        workers=workers,
    )
    if client.asynchronous:
        return _keep_when_scattered(outcome, client, large, sending)
    return keep(client, large, {sending[key].digest: future for key, future in outcome.items()})


async def _keep_when_scattered(
    outcome: Awaitable[Any], client: Any, large: Any, sending: dict[str, LargeInput]
) -> dict[str, Any]:
    scattered = await outcome
    return keep(client, large, {sending[k].digest: future for k, future in scattered.items()})


def kept_bytes(client: Any) -> int:
    """Bytes this client keeps on its cluster (for tests and benchmarks)."""
    table = _table(client)
    with table.lock:
        return table.total
