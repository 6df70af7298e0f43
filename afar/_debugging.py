"""Client side of a block's input: its reads answered where the caller waits, and ``afar.debug``.

A block's thread reads its input from its client (``afar._worker.debugging``): ``input()``, and
pdb, which ``breakpoint()`` opens on the block's frames on its worker. Each read arrives as an
``INPUT`` item of the block's output, in order after what the block wrote; the client reads a
line where its user is (``input()`` here: the terminal, or the notebook cell's input box through
the kernel's stdin channel) and sends it to the worker with ``Client.run``.

- ``afar.get`` and ``%%afar`` wait in ``BlockInput.converse``: reads are answered as they come,
  until the block ends. Ctrl-C there stops the block as it does in any wait.
- A block of ``afar.run`` that reads while nobody waits for it says so at once, and waits for
  ``afar.debug()`` (or ``afar.debug(future)``), which answers its reads until it ends.
- A failed block's worker keeps its traceback for a while (``afar.debug-keep-seconds``, Dask
  config; the last failed block of each client): ``afar.debug()`` then opens pdb post mortem
  on its live frames, on its worker, in a task of its own.
"""

from __future__ import annotations

import builtins
import os
import queue
import secrets
import sys
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from afar import _ipython
from afar._shipping import answer_input, post_mortem
from afar._sinks import Sink
from afar._stream import router_for, silence
from afar._worker.output import STDERR, stream_identity
from afar._worker.protocol import INPUT, KEPT_FAILURE
from afar.errors import DebugError

# Dask config: seconds a failed block's worker keeps its traceback for afar.debug (0: never).
KEEP_SECONDS_KEY = "afar.debug-keep-seconds"
KEEP_SECONDS_DEFAULT = 300.0
# The exception attribute that names the block an error of afar.get came from.
BLOCK_ATTRIBUTE = "_afar_block"
# Failed blocks remembered on this client (each worker keeps one per client).
MAX_FAILURES = 16

_DONE = object()


def keep_seconds() -> float:
    """Seconds a failed block's traceback stays on its worker (``afar.debug-keep-seconds``)."""
    import dask.config

    value = dask.config.get(KEEP_SECONDS_KEY, default=KEEP_SECONDS_DEFAULT)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"the dask config {KEEP_SECONDS_KEY!r} must be a number of seconds, not {value!r}"
        ) from None
    return max(0.0, seconds)


_secrets: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def secret_of(client: Any) -> str:
    """The random secret of ``client``'s blocks: only this process knows it (one per client,
    made on its first block; other clients of the scheduler do not have it)."""
    secret = _secrets.get(client)
    if secret is None:
        secret = _secrets.setdefault(client, secrets.token_hex(16))
    return secret


@dataclass(frozen=True)
class Request:
    """A read of a block's thread: where to answer it, and how to ask."""

    worker: str
    request: int
    prompt: str
    where: str


@dataclass
class KeptFailure:
    """A failed block whose worker keeps its traceback until ``until`` (this client's clock)."""

    client: weakref.ref[Any]
    block: str
    label: str
    worker: str
    secret: str
    until: float


_failures: OrderedDict[str, KeptFailure] = OrderedDict()
# Blocks of this process that read input and are not over, by key: afar.debug finds them here.
_inputs: dict[str, BlockInput] = {}
_lock = threading.Lock()


class BlockInput:
    """The reads of one block (or post-mortem session) of a client, and who answers them."""

    def __init__(
        self,
        client: Any,
        block: str,
        label: str,
        secret: str,
        sink: Sink | None,
        *,
        waited_for: bool,
    ) -> None:
        self.client = client
        self.block = block
        self.label = label
        self.secret = secret
        self.sink = sink
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Whether a caller waits for the block (afar.get) and answers its reads as they come.
        self._waited_for = waited_for
        self._told = False
        with _lock:
            _inputs[block] = self

    # -- on the client's event loop (the output router) ---------------------------------------
    def on_item(self, kind: str, data: Any, worker: str) -> None:
        if not isinstance(data, dict):
            return
        if kind == INPUT:
            number = int(data.get("request", 0))
            prompt, where = str(data.get("prompt", "")), str(data.get("where", ""))
            request = Request(worker, number, prompt, where)
            self._requests.put(request)
            if not self._waited_for and not self._told:
                self._told = True
                self._write(waiting_notice(self.label, request))
        elif kind == KEPT_FAILURE:
            seconds = float(data.get("seconds", 0))
            _remember_failure(
                KeptFailure(
                    weakref.ref(self.client),
                    self.block,
                    self.label,
                    worker,
                    self.secret,
                    time.monotonic() + seconds,
                )
            )

    def nobody_waits(self) -> None:
        """The caller cannot answer reads where it waits (a coroutine of an asynchronous
        client): a read says so instead (see ``waiting_notice``)."""
        self._waited_for = False

    def finished(self, future: Any = None) -> None:
        """The block is over (its Future's done-callback): nothing will read any more."""
        with _lock:
            if _inputs.get(self.block) is self:
                del _inputs[self.block]
        self._requests.put(_DONE)

    # -- in the thread that waits ------------------------------------------------------------
    def converse(self, timeout: float | None = None) -> int:
        """Answer the block's reads in this thread until it is over; how many it answered.

        Raises TimeoutError when it is not over within ``timeout`` seconds; KeyboardInterrupt
        (Ctrl-C, the notebook's interrupt) as it comes, for the caller to stop the block.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._waited_for = True
        answered = 0
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._requests.get(timeout=remaining)
            except queue.Empty:
                raise TimeoutError(f"the block at {self.label} did not finish in time") from None
            if item is _DONE:
                self._requests.put(_DONE)  # for whoever waits next
                return answered
            self._answer(item, read_line(item.prompt))
            answered += 1

    def _answer(self, request: Request, line: str | None) -> None:
        function, argument = answer_input.task(self.block, self.secret, request.request, line)
        try:
            self.client.run(function, argument, workers=[request.worker])
        except Exception as error:  # the worker has gone: the block's Future will say so
            self._write(f"[afar] could not answer the block at {self.label}: {error}\n")

    def _write(self, text: str) -> None:
        """afar's own line about the block: in its cell, else where the block's output goes."""
        sink = self.sink if self.sink is not None else router_for(self.client).default_sink
        sink.write(STDERR, text)


def waiting_notice(label: str, request: Request) -> str:
    where = f" ({request.where})" if request.where and request.where != label else ""
    if request.prompt.startswith("(Pdb"):
        what = f"waits at a breakpoint{where}"
    else:
        what = f"waits for input{where}"
    return f"[afar] the block at {label} {what}; afar.debug() opens it here\n"


def read_line(prompt: str) -> str | None:
    """A line from this process's user, asked with ``prompt``; None: the end of input."""
    try:
        return builtins.input(prompt)
    except EOFError:
        return None
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # a frontend without input (StdinNotImplementedError)
        sys.stderr.write(f"[afar] cannot read input here ({error}): the block reads an end\n")
        return None


def _remember_failure(failure: KeptFailure) -> None:
    with _lock:
        _failures.pop(failure.block, None)
        _failures[failure.block] = failure
        while len(_failures) > MAX_FAILURES:
            _failures.popitem(last=False)


def note_raised(error: BaseException, block: str) -> None:
    """Mark ``error`` (raised by afar.get) as the failure of ``block``, for ``%debug``."""
    try:
        setattr(error, BLOCK_ATTRIBUTE, block)
    except (AttributeError, TypeError):
        pass  # an exception type without a __dict__


def block_of(error: BaseException | None) -> str | None:
    """The block ``error`` came from (``note_raised``), if afar.get raised it."""
    seen = 0
    while error is not None and seen < 8:
        block = getattr(error, BLOCK_ATTRIBUTE, None)
        if isinstance(block, str):
            return block
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def kept(block: str) -> bool:
    """Whether ``block`` failed and its worker still keeps its traceback."""
    with _lock:
        failure = _failures.get(block)
    return failure is not None and failure.until > time.monotonic()


def _body_key(key: str) -> str:
    """The key of a block's body task, from its own or one of its getters' (``<body>-<name>``)."""
    with _lock:
        known = set(_inputs) | set(_failures)
    candidate = key
    while candidate not in known and "-" in candidate:
        candidate = candidate.rsplit("-", 1)[0]
    return candidate if candidate in known else key


def debug(target: Any = None) -> None:
    """Open pdb on a block, on its worker, here: a block waiting at a breakpoint, or post mortem.

    Parameters
    ----------
    target : distributed.Future, optional
        A Future of an ``afar.run`` block (its own or one of its names'). Without it: the block
        of this process that waits for input, else the block that failed last.

    With a block that waits at ``breakpoint()`` (or for ``input()``), this answers its reads
    here until it ends. With a block that failed, pdb opens post mortem on its traceback, on its
    worker, with the frames' live locals; the worker keeps them for the last failed block of
    each client, for ``afar.debug-keep-seconds`` (Dask config, 300 by default).

    Examples
    --------
    >>> with afar.run, remotely:  # doctest: +SKIP
    ...     result = 1 / 0
    >>> afar.debug(result)  # doctest: +SKIP
    > script.py(2)<module>()
    (Pdb)
    """
    __tracebackhide__ = True
    if target is None and _next_waiting() is not None:
        # Every block that waits at a breakpoint (or for input), one after the other.
        while (waiting := _next_waiting()) is not None:
            _stopping_on_interrupt(waiting)
        return
    block = _chosen_block(target)
    with _lock:
        waiting = _inputs.get(block) if block is not None else None
        failure = _failures.get(block) if block is not None else None
    if failure is not None:  # it failed (its Future may not have said so here yet)
        _post_mortem(failure)
        return
    if waiting is None or not _stopping_on_interrupt(waiting):
        raise DebugError(_nothing_to_debug(target))


def _next_waiting() -> BlockInput | None:
    """The first block of this process that has asked for a line nobody answered."""
    with _lock:
        return next((b for b in _inputs.values() if not b._requests.empty()), None)


def _chosen_block(target: Any) -> str | None:
    if target is None:
        with _lock:
            return next(reversed(_failures), None) if _failures else None
    if isinstance(target, BaseException):
        return block_of(target)
    key = getattr(target, "key", None)
    if key is None:
        raise TypeError(
            f"afar.debug() takes a Future of an afar.run block (or nothing), not "
            f"{type(target).__name__}"
        )
    return _body_key(str(key))


def _nothing_to_debug(target: Any) -> str:
    if target is None:
        return (
            "no block of this process waits at a breakpoint, and none failed with its traceback "
            f"still kept (the last failed block of each client, for {KEEP_SECONDS_KEY!r} seconds)"
        )
    return (
        f"{target!r} is not a block that waits at a breakpoint or failed with its traceback "
        f"still kept (the last failed block of each client, for {KEEP_SECONDS_KEY!r} seconds)"
    )


def _stopping_on_interrupt(waiting: BlockInput) -> bool:
    """Answer a waiting block's reads until it ends; Ctrl-C stops it. False: it read nothing.

    In a notebook the block's output follows the session into this cell, where its prompts are.
    """
    _needs_synchronous(waiting.client, waiting.label)
    sink = _ipython.cell_sink(waiting.label)
    if sink is not None:
        router_for(waiting.client).register(waiting.block, sink)
        waiting.sink = sink
    if waiting._requests.empty():
        waiting._write(f"[afar] waiting for the block at {waiting.label}\n")
    else:
        waiting._write(f"[afar] debugging the block at {waiting.label}\n")
    try:
        return waiting.converse() > 0
    except KeyboardInterrupt:
        from distributed import Future

        silence(waiting.client, waiting.block)
        Future(waiting.block, waiting.client).cancel()
        raise


def _needs_synchronous(client: Any, label: str) -> None:
    if getattr(client, "asynchronous", False):
        raise DebugError(
            f"the block at {label} was submitted by an asynchronous client: afar.debug answers "
            "with the synchronous Client.run, which such a client does not offer. Debug with a "
            "synchronous client, or stop the block (its timeout, cancelling it)"
        )


def _post_mortem(failure: KeptFailure) -> None:
    client = failure.client()
    if client is None or client.status in ("closed", "closing"):
        raise DebugError(f"the client of the block at {failure.label} is closed")
    _needs_synchronous(client, failure.label)
    if failure.until <= time.monotonic():
        raise DebugError(
            f"the traceback of the block at {failure.label} is not kept any more: its worker "
            f"lets it go after {KEEP_SECONDS_KEY!r} seconds"
        )
    if failure.worker not in client.scheduler_info().get("workers", {}):
        raise DebugError(
            f"the worker of the block at {failure.label} ({failure.worker}) has left the "
            "cluster, and its traceback with it"
        )
    router = router_for(client)
    key = f"afar-debug-{failure.block}-{os.urandom(4).hex()}"
    sink = _ipython.cell_sink(failure.label)
    if sink is not None:
        router.register(key, sink)
    listener = BlockInput(client, key, failure.label, failure.secret, sink, waited_for=True)
    router.listen(key, listener.on_item)
    function, argument = post_mortem.task(
        router.topic, failure.block, failure.secret, stream_identity()
    )
    future = client.submit(
        function,
        argument,
        key=key,
        pure=False,
        workers=[failure.worker],
        allow_other_workers=False,
    )
    future.add_done_callback(listener.finished)
    try:
        listener.converse()
        why = future.result()
    except KeyboardInterrupt:
        future.cancel()
        raise
    finally:
        router.unregister(key)
    if why:
        raise DebugError(f"cannot debug the block at {failure.label}: {why}")
