"""How afar's worker-side functions travel: by value, once per worker, then named by digest.

Workers need no afar installed: the functions of the ``afar._worker`` package (its modules import
each other by name) are pickled by value with cloudpickle, inside a worker plugin that each client
registers once (Dask sends plugins to every worker, also to workers that join later). A task then
carries only the digest of its function, which the worker looks up in a per-process table.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import importlib
import os
import pkgutil
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import cloudpickle

import afar._worker
from afar._worker import debugging as _worker_debugging
from afar._worker import runtime as _worker

# Each module by name: Dask's serializer (distributed.protocol.pickle) hands an object to
# cloudpickle only when the object's own module is in cloudpickle's registry, parents aside.
# Every module of the package, so that a new one cannot be forgotten here.
for _info in pkgutil.iter_modules(afar._worker.__path__):
    cloudpickle.register_pickle_by_value(
        importlib.import_module(f"{afar._worker.__name__}.{_info.name}")
    )

# The task's function: ``eval`` of a call of the shipped function, looked up by digest on the
# worker, with the task's one argument (a dict) as the namespace. ``builtins.eval`` unpickles
# anywhere, so the scheduler (which unpickles task graphs too) needs nothing of afar's.
_CALL = "__import__('sys').__dict__[{table!r}][{digest!r}]({arguments})"
# eval's globals: nothing but what the call needs (the task's dict argument is eval's locals).
_GLOBALS = {"__builtins__": {"__import__": builtins.__import__}}


class Shipped:
    """A worker function, submitted as ``partial(eval, <call by digest>)`` with a dict argument."""

    def __init__(self, function: Callable[..., Any], arguments: tuple[str, ...]) -> None:
        self.function = function
        self.arguments = arguments
        self.digest = hashlib.sha256(cloudpickle.dumps(function, protocol=5)).hexdigest()
        call = _CALL.format(
            table=_worker.SHIPPED_ATTRIBUTE,
            digest=self.digest,
            arguments=", ".join(f"{a}={a}" for a in arguments),
        )
        self.task_function = functools.partial(builtins.eval, call, _GLOBALS)

    def task(self, *values: Any) -> tuple[Callable[..., Any], dict[str, Any]]:
        """The function and the one argument to submit for a call with ``values``."""
        return self.task_function, dict(zip(self.arguments, values))


run_block = Shipped(_worker.run_block, ("packed", "payload", "futures", "settings"))
pick = Shipped(_worker.pick, ("values", "which"))
culprits = Shipped(_worker.unpicklable_names, ("values",))
# A line for a block that reads input (Client.run on its worker), and the post-mortem task.
answer_input = Shipped(_worker_debugging.answer, ("block", "secret", "request", "line"))
post_mortem = Shipped(_worker_debugging.post_mortem, ("topic", "block", "secret", "client_streams"))
_SHIPPED = (run_block, pick, culprits, answer_input, post_mortem)
_RUNTIME_NAME = (
    "afar-runtime-" + hashlib.sha256("".join(s.digest for s in _SHIPPED).encode()).hexdigest()[:16]
)

# Registrations per (client, scheduler): done, or in progress (what other callers wait on).
_registrations: dict[tuple[str, str], _Registration] = {}
_registered_lock = threading.Lock()
# Seconds a thread waits for another thread's registration of the same client's plugin.
REGISTRATION_TIMEOUT = 60


class _Registration:
    """One client's registration of the runtime plugin, which concurrent blocks all wait for:
    a block submitted before it is done would find no runtime on the worker."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.failed = False
        self.awaitable: Any = None  # an asynchronous client's registration, awaited by all


def ensure_runtime(client: Any) -> Awaitable[Any] | None:
    """Register the runtime plugin with the client's cluster once (one round trip, first block).

    Blocks submitted from other threads (or coroutines) meanwhile wait for that registration.
    Returns an awaitable for an asynchronous client, which the caller must await.
    """
    identity = (client.id, str(getattr(client.scheduler, "address", "")))
    with _registered_lock:
        registration = _registrations.get(identity)
        first = registration is None
        if registration is None:
            registration = _registrations[identity] = _Registration()
    if not first:
        if client.asynchronous:
            return registration.awaitable if not registration.done.is_set() else None
        if not registration.done.wait(REGISTRATION_TIMEOUT) or registration.failed:
            return ensure_runtime(client)  # the other thread's attempt failed: try again
        return None
    plugin = _worker.Runtime(
        {s.digest: s.function for s in _SHIPPED}, client_process=(socket.gethostname(), os.getpid())
    )
    try:
        outcome = client.register_plugin(plugin, name=_RUNTIME_NAME)
    except BaseException:
        _forget(identity, registration)
        raise
    if not client.asynchronous:
        registration.done.set()
        return None
    registration.awaitable = _shared(outcome, identity, registration)
    return registration.awaitable


def _forget(identity: tuple[str, str], registration: _Registration) -> None:
    with _registered_lock:
        if _registrations.get(identity) is registration:
            del _registrations[identity]
    registration.failed = True
    registration.done.set()


def _shared(outcome: Awaitable[Any], identity: tuple[str, str], registration: _Registration):
    """An asynchronous registration as a Future that every waiting coroutine can await."""
    import asyncio

    async def register() -> None:
        try:
            await outcome
        except BaseException:
            _forget(identity, registration)
            raise
        registration.done.set()

    return asyncio.ensure_future(register())
