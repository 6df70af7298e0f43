"""``afar.run`` and ``afar.get``: the with-statement protocol, from capture to binding."""

from __future__ import annotations

import ast
import asyncio
import builtins
import contextlib
import contextvars
import difflib
import inspect
import itertools
import keyword
import sys
import threading
import traceback
import types
import weakref
from collections.abc import Awaitable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from distributed import Future

from afar import _ipython, _modules, _remote
from afar._analysis.scope import call_arguments, enclosing_values
from afar._analysis.source import Site
from afar._bind import bind, release_locals_snapshot
from afar._block import Block, block_for
from afar._cpython import is_optimized
from afar._locations import DEFAULT_LOCATIONS, LOCATION_NAMES, Location, SkipBody, Where
from afar._shipping import culprits, ensure_runtime
from afar._stream import (
    OutputRouter,
    Sink,
    failure_report,
    report_failure,
    router_for,
    silence,
)
from afar._worker.output import STDERR, stream_identity
from afar._worker.runtime import (
    BLOCK_FUNCTION_PREFIX,
    RUNTIME_FILENAME,
    TIMED_OUT,
    missing_name,
    run_here,
)
from afar.errors import (
    ClientError,
    LocationError,
    LocationNameError,
    NotPicklableError,
    SavedNameError,
)

# File names of afar's worker functions as tracebacks from workers show them (by-value code).
# With `locally`, the same functions run from afar's own file.
_WORKER_FILENAMES = frozenset({RUNTIME_FILENAME, "<dynamic-code>", run_here.__code__.co_filename})
# This process's stdout and stderr files: a worker that shares them does not echo there.
_CLIENT_STREAMS = stream_identity()
_UNRESOLVED = object()
_RIGHT_SPELLING = "with afar.run, remotely:\n        ..."


@dataclass(frozen=True)
class Captured:
    """What ``later`` captured: the block as afar sees it, for inspection."""

    source: str
    names_read: tuple[str, ...]
    names_assigned: frozenset[str]
    names_saved: tuple[str, ...]
    label: str


@dataclass
class _Entry:
    """A block between ``__enter__`` and ``__exit__``: state of one block, not of the Run."""

    run: Run
    frame: types.FrameType | None  # the caller's frame, or None for a namespace (a cell)
    block: Block
    saved: tuple[str, ...]
    results: MutableMapping[str, Any]
    namespace: dict[str, Any] | None = None
    # `remotely(...)` written without importing remotely: its arguments, evaluated at the exit.
    location_call: ast.Call | None = None


# One stack per thread and per asyncio task: blocks sharing one Run never see each other's state.
_entries: contextvars.ContextVar[tuple[_Entry, ...]] = contextvars.ContextVar(
    "afar_entries", default=()
)


@dataclass(frozen=True)
class _Outgoing:
    """What a block sends, computed before anything is sent."""

    payload: bytes  # the pickled plain variables
    futures: dict[str, Any]  # variables holding Futures
    modules: tuple[tuple[str, str], ...]  # (name, digest) of the user's modules it needs
    versions: list[Any]  # those modules' versions, sent to the workers once


@dataclass
class _Pending:
    lock: threading.Lock = field(default_factory=threading.Lock)
    futures: set[Future] = field(default_factory=set)


class Run:
    """Run the body of a ``with`` block elsewhere; bind the names it saves as Dask Futures.

    Parameters
    ----------
    *names : str
        Names to save; by default the last name the block binds.
    client : distributed.Client, optional
        The client to submit with (default: the location's, then Dask's default client).
    data : MutableMapping, optional
        Looked up first for the names the block reads. Values read from it are scattered to
        the cluster once and replaced by their Futures; saved results are added to it.

    Examples
    --------
    >>> with afar.run, remotely:  # doctest: +SKIP
    ...     total = sum(range(10))
    >>> total.result()  # doctest: +SKIP
    45
    """

    _returns_futures = True

    def __init__(
        self,
        *names: str,
        client: Any = None,
        data: MutableMapping[str, Any] | None = None,
    ) -> None:
        _check_names(type(self).__name__.lower(), names)
        if data is not None and not isinstance(data, MutableMapping):
            raise TypeError(
                f"data= must be a mutable mapping such as a dict, not {type(data).__name__}: "
                "afar looks names up in it and adds the results to it"
            )
        self.names = names
        self.client = client
        self.data = data
        self.captured: Captured | None = None
        self._pending = _Pending()

    def __call__(
        self, *names: str, client: Any = None, data: MutableMapping[str, Any] | None = None
    ) -> Run:
        return type(self)(*names, client=client, data=data)

    def __repr__(self) -> str:
        args = [repr(n) for n in self.names]
        args += [f"client={self.client!r}"] if self.client is not None else []
        args += ["data=..."] if self.data is not None else []
        return f"afar.{type(self).__name__.lower()}({', '.join(args)})"

    # -- the with protocol ------------------------------------------------------------------
    def __enter__(self) -> MutableMapping[str, Any]:
        return self._enter(sys._getframe(1), asynchronous=False)

    async def __aenter__(self) -> MutableMapping[str, Any]:
        return self._enter(sys._getframe(1), asynchronous=True)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        __tracebackhide__ = True
        entry = self._pop()
        location = self._location(entry, exc, tb)
        if location is None:
            return False
        # Written out here, in __aexit__ and in run_source rather than shared in a helper: the
        # frame that raises is the one afar frame a user sees above the block's own lines.
        try:
            body = self._execute(entry, location, asynchronous=False)
            if body is not None:  # afar.get: wait here, so that a traceback has one afar frame
                _bind_results(entry, _wait_values(body, entry))
        except BaseException as error:
            # The client keeps the error in the Future's state: this frame, in the error's
            # traceback, must not hold the Future, or the block stays on the scheduler for good.
            body = None
            raise _note_block(_shown_from_block(error, exc), entry) from _cause(error)
        return True

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        __tracebackhide__ = True
        entry = self._pop()
        location = self._location(entry, exc, tb)
        if location is None:
            return False
        try:
            waiting = self._execute(entry, location, asynchronous=True)
            if waiting is not None:
                await waiting
        except BaseException as error:
            waiting = None  # see __exit__
            raise _note_block(_shown_from_block(error, exc), entry) from _cause(error)
        return True

    def run_source(
        self,
        source: str,
        filename: str,
        namespace: dict[str, Any],
        location: Location,
        *,
        display: bool | None = None,
    ) -> MutableMapping[str, Any]:
        """Run ``source`` as the body of a block whose scope is ``namespace`` (for ``%%afar``).

        Returns what ``with run as data`` would give; saved names are bound in ``namespace``.
        """
        __tracebackhide__ = True
        from afar._block import block_for_source

        entry = self._new_entry(block_for_source(source, filename), None, namespace)
        results = entry.results
        try:
            body = self._execute(entry, location, asynchronous=False, display=display)
            if body is not None:
                _bind_results(entry, _wait_values(body, entry))
        except BaseException as error:
            body = None  # see __exit__
            raise _note_block(_shown_from_block(error, None), entry) from _cause(error)
        return results

    def cancel(self) -> None:
        """Cancel the blocks submitted through this Run that have not finished."""
        with self._pending.lock:
            futures = list(self._pending.futures)
        for future in futures:
            # A block that finished may still be listed: its done-callback, on the client's
            # event loop, can run after .result() has returned in this thread.
            if not future.done():
                _stop(future)

    # -- enter ------------------------------------------------------------------------------
    def _enter(self, frame: types.FrameType, asynchronous: bool) -> MutableMapping[str, Any]:
        block = block_for(frame)
        location_call = check_header(frame, block, self)
        entry = self._new_entry(block, frame, None)
        entry.location_call = location_call
        _entries.set((*_entries.get(), entry))
        return entry.results

    def _new_entry(
        self, block: Block, frame: types.FrameType | None, namespace: dict[str, Any] | None
    ) -> _Entry:
        """The state of one block: the names it saves and where its results go."""
        results: MutableMapping[str, Any] = self.data if self.data is not None else {}
        return _Entry(self, frame, block, self._saved(block), results, namespace)

    def _saved(self, block: Block) -> tuple[str, ...]:
        analysis = block.analysis
        if not self.names:
            return (analysis.last_bound,) if analysis.last_bound else ()
        never = [n for n in self.names if n not in analysis.assigned]
        if never:
            raise SavedNameError(
                f"{block.site.filename}, line {block.site.node.lineno}: the block never assigns "
                f"{', '.join(map(repr, never))}, so afar cannot save "
                f"{'it' if len(never) == 1 else 'them'}. Names it assigns: "
                f"{', '.join(sorted(analysis.assigned)) or 'none'}"
            )
        return tuple(dict.fromkeys(self.names))

    # -- exit -------------------------------------------------------------------------------
    def _pop(self) -> _Entry:
        entries = _entries.get()
        for index in range(len(entries) - 1, -1, -1):
            if entries[index].run is self:
                _entries.set(entries[:index] + entries[index + 1 :])
                return entries[index]
        raise RuntimeError("afar: __exit__ without a matching __enter__ in this context")

    def _location(self, entry: _Entry, exc: BaseException | None, tb: Any) -> Location | None:
        if isinstance(exc, SkipBody):
            return exc.location
        if (
            isinstance(exc, NameError)
            and getattr(exc, "name", None) in LOCATION_NAMES
            and tb is not None
            and tb.tb_frame is entry.frame
            and tb.tb_next is None
        ):
            # `remotely` written bare, never imported: afar recognises the name.
            location = DEFAULT_LOCATIONS[exc.name]  # type: ignore[attr-defined]
            if entry.location_call is not None:
                return _called_location(entry, location, exc)
            return location
        if exc is None:
            raise LocationError(
                f"{entry.block.site.where()}: the body of the block ran here because the with "
                f"statement names no location. Write\n    {_RIGHT_SPELLING}"
            )
        return None

    def _execute(
        self, entry: _Entry, location: Location, asynchronous: bool, display: bool | None = None
    ) -> Any:
        where = location.where
        if where is Where.LATER:
            self.captured = _captured(entry)
            return None
        values = read_variables(entry, self.data)
        if display is None:
            display = _interactive()
        display = display and entry.block.analysis.final_expression
        if where is Where.LOCALLY:
            if asynchronous:
                return self._run_locally_async(entry, values, display)
            self._run_locally(entry, values, display)
            return None
        client = _remote.resolve_client(location.client, self.client)
        if client.asynchronous and not asynchronous:
            raise ClientError(
                f"{entry.block.site.where()}: the client is asynchronous, so the block must be "
                "awaited: write `async with afar.run, remotely:` inside a coroutine"
            )
        return self._submit(entry, location, client, values, display, asynchronous)

    async def _run_locally_async(
        self, entry: _Entry, values: dict[str, Any], display: bool
    ) -> None:
        plain, futures = _remote.split_inputs(values)
        if futures:
            gathered = _gather_locally(futures)
            if inspect.isawaitable(gathered):  # the Futures of an asynchronous client
                gathered = await gathered
            values = {**plain, **dict(zip(futures, gathered))}
        self._run_locally(entry, values, display)

    def _run_locally(self, entry: _Entry, values: dict[str, Any], display: bool) -> None:
        plain, futures = _remote.split_inputs(values)
        if futures:
            plain.update(zip(futures, _gather_locally(futures)))
        saved, single = entry.saved, len(entry.saved) == 1
        packed = entry.block.packed(_seeds(entry, plain), saved, single, display)
        results = run_here(packed, plain, _show if display else None)
        _bind_results(entry, results)
        missing = [name for name in saved if name not in results]
        if missing:  # as a remote afar.get raises it; there is no Future to hold the error
            raise SavedNameError(*missing_name(missing[0], entry.block.label).args)

    def _submit(
        self,
        entry: _Entry,
        location: Location,
        client: Any,
        values: dict[str, Any],
        display: bool,
        asynchronous: bool,
    ) -> Any:
        outgoing = self._prepare(entry, values)  # refuses what cannot travel: nothing sent yet
        registering = ensure_runtime(client)
        if asynchronous:
            return self._submit_async(
                entry, location, client, values, display, registering, outgoing
            )
        _modules.ensure_sent(client, outgoing.versions)  # a round trip only for new versions
        body = self._send(entry, location, client, values, display, outgoing)
        return None if self._returns_futures else body

    async def _submit_async(
        self,
        entry: _Entry,
        location: Location,
        client: Any,
        values: dict[str, Any],
        display: bool,
        registering: Awaitable[Any] | None,
        outgoing: _Outgoing,
    ) -> None:
        if registering is not None:
            await registering
        sending = _modules.ensure_sent(client, outgoing.versions)
        if sending is not None:
            await sending
        if self.data is not None:
            # client.scatter is a coroutine here: scatter first, _send then finds Futures.
            await _remote.scatter_data_async(client, self.data, _names_in(entry.block, self.data))
        body = self._send(entry, location, client, values, display, outgoing)
        if not self._returns_futures:
            try:
                results = await body
            except BaseException:
                silence(client, body.key)
                cancelling = body.cancel()
                if inspect.isawaitable(cancelling):  # an asynchronous client's cancel
                    await cancelling
                raise
            _bind_results(entry, _unless_timed_out(results))

    def _prepare(self, entry: _Entry, values: dict[str, Any]) -> _Outgoing:
        """Pickle the variables the block reads (not those of ``data=``, scattered instead) and
        find the user's modules it needs."""
        block = entry.block
        if self.data is not None:
            from_data = set(_names_in(block, self.data))
            values = {n: v for n, v in values.items() if n not in from_data}
        plain, futures = _remote.split_inputs(values)
        payload, referenced = _remote.pickle_inputs(plain, block.label)
        modules, versions = _modules.needed(block.imports, referenced, block.label)
        return _Outgoing(payload, futures, modules, versions)

    def _send(
        self,
        entry: _Entry,
        location: Location,
        client: Any,
        values: dict[str, Any],
        display: bool,
        outgoing: _Outgoing,
    ) -> Future:
        """Submit the body (and getters for afar.run); bind Futures; return the body's Future."""
        block = entry.block
        futures = outgoing.futures
        if self.data is not None:
            from_data = _names_in(block, self.data)
            _remote.scatter_data(client, self.data, from_data)
            values.update({n: self.data[n] for n in from_data})
            futures = {**futures, **{n: self.data[n] for n in from_data}}
        strict = not self._returns_futures
        limit = location.timeout
        # A block with a time limit returns its names through getters, which raise the
        # TimeoutError of a block stopped at its limit (its task itself finishes: no retries).
        single = self._returns_futures and len(entry.saved) == 1 and limit is None
        seeds = _seeds(entry, values)
        packed = block.packed(seeds, entry.saved, single, display, location.secede)
        key = _remote.new_key(block)
        stream = None
        router = None
        sink = None
        if not location.quiet:
            # Subscribing (once per client) goes out before the block: no output is missed.
            router = router_for(client)
            sink = _cell_sink(block.label)
            # Progress only where it can be seen: in a notebook cell, or on an interactive
            # terminal while the caller waits (afar.get): a line drawn while the caller goes on
            # would draw over whatever the terminal shows next, such as a prompt.
            waits = not self._returns_futures
            progress = location.progress and (sink is not None or (waits and _stderr_is_terminal()))
            stream = (router.topic, _CLIENT_STREAMS, progress)
            if sink is not None:
                router.register(key, sink)
            # else the default sink; the router still forgets the block when it finishes
        body = _remote.submit_block(
            client,
            block,
            packed,
            outgoing.payload,
            futures,
            stream,
            strict,
            location.submit_options,
            key,
            limit,
            outgoing.modules,
        )
        self._track(entry, body, futures, router, sink)
        if self._returns_futures:
            if single:
                # The user's own Future of the body, so that afar sees it dropped (below).
                named = {entry.saved[0]: Future(body.key, client)}
            else:
                named = _remote.submit_getters(client, block, body, entry.saved)
            _bind_results(entry, named)
            if named:
                self._hold_while_wanted(body, named, client)
        return body

    def _hold_while_wanted(self, body: Future, named: dict[str, Future], client: Any) -> None:
        """Let go of a running block once each Future of its names was dropped or cancelled.

        Dask then no longer wants the block (unless another task needs it) and the worker stops
        it. A block that saves no names is held until it finishes. A getter is seen cancelled
        through afar's own Future of its key, whose done-callback does not keep the user's one.
        """
        pending = self._pending
        held = weakref.ref(body)
        count = len(named)  # the closures below must not hold the Futures themselves
        gone: set[str] = set()
        watchers: list[Future] = []

        def let_go(name: str) -> None:
            with pending.lock:
                if name in gone:
                    return
                gone.add(name)
                future = held()
                if len(gone) < count or future is None or future not in pending.futures:
                    return
                pending.futures.discard(future)
            future.release()
            for watcher in watchers:
                watcher.release()

        def watched(name: str) -> Any:
            def done(watcher: Future) -> None:
                if watcher.status == "cancelled":
                    let_go(name)
                watcher.release()

            return done

        for name, future in named.items():
            weakref.finalize(future, let_go, name)
            if future.key != body.key:
                watcher = Future(future.key, client)
                watchers.append(watcher)
                watcher.add_done_callback(watched(name))

    def _track(
        self,
        entry: _Entry,
        body: Future,
        inputs: Mapping[str, Any],
        router: OutputRouter | None,
        sink: Sink | None = None,
    ) -> None:
        """Hold the body's Future until it finishes: a block runs even if nobody keeps a name.

        When it finishes: forget its sink; with afar.run, report a failure nobody may wait for.
        """
        pending = self._pending
        with pending.lock:
            pending.futures.add(body)
        label = entry.block.label
        report = self._returns_futures
        input_futures = {name: list(_remote.futures_in(value)) for name, value in inputs.items()}

        def done(future: Future) -> None:
            with pending.lock:
                pending.futures.discard(future)
            if router is not None:
                if future.status == "cancelled":
                    router.silence(future.key)  # stopped: late output is not shown
                else:
                    router.unregister(future.key)
            if report and future.status == "error":
                text = _failure_text(future, input_futures)
                if sink is not None:
                    # In a notebook: in the block's cell, not in whichever cell runs now.
                    sink.write(STDERR, failure_report(label, text))
                else:
                    report_failure(label, text)
            close = getattr(sink, "close", None)
            if close is not None:
                close()  # the block is over: its cell needs no display for late output

        body.add_done_callback(done)


class Get(Run):
    """Like ``afar.run``, but bind plain values: wait for the block and fetch what it saved.

    Parameters
    ----------
    *names, client, data
        As for ``afar.run``.
    timeout : float, optional
        Seconds to wait for the block before raising ``TimeoutError`` (and stopping it on the
        worker). ``remotely(timeout=...)`` limits the block's run time on the worker instead.
    """

    _returns_futures = False

    def __init__(
        self,
        *names: str,
        client: Any = None,
        data: MutableMapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(*names, client=client, data=data)
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise TypeError(f"timeout= must be a positive number of seconds, not {timeout!r}")
        self.timeout = timeout

    def __call__(  # type: ignore[override]
        self,
        *names: str,
        client: Any = None,
        data: MutableMapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Get:
        return type(self)(*names, client=client, data=data, timeout=timeout)


# -- helpers ------------------------------------------------------------------------------------
def _check_names(what: str, names: tuple[object, ...]) -> None:
    for name in names:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise TypeError(
                f"afar.{what}() takes the names of variables to save, as strings, such as "
                f"afar.{what}('x', 'y'); {name!r} is not one"
            )


def check_header(frame: types.FrameType, block: Block, run: Run) -> ast.Call | None:
    """The header must read ``with [managers..., ]<run>, <location>:``; resolve it without
    calling anything.

    Context managers before the run are the caller's: Python enters them before the run and
    exits them after it, around the whole block. Returns the call of a location written without
    importing it (``remotely(retries=2)``), whose arguments are evaluated at the exit.
    """
    site = block.site
    items = site.node.items
    index = _run_item(frame, items)
    if index is None:
        raise LocationError(
            f"{site.where()}: afar cannot find afar.run (or afar.get) among the items of the "
            "with statement: write it as itself (afar.run, afar.get(...), or a variable bound "
            f"to one), followed by where to run. Write\n    {_RIGHT_SPELLING}"
        )
    if len(items) < index + 2:
        raise LocationError(
            f"{site.where()}: the with statement names no location, so the body would run "
            f"here. Write\n    {_RIGHT_SPELLING}\n(or locally / later)"
        )
    expression = items[index + 1].context_expr
    location_call = None
    second = resolve(frame, expression)
    if second is _UNRESOLVED:
        name = _bare_location_name(expression)
        if name is None:
            _refuse_unknown_location(frame, site, expression)
        elif isinstance(expression, ast.Call):
            _check_location_arguments(site, expression)
            location_call = expression
    elif not isinstance(second, Location):
        raise LocationError(
            f"{site.where()}: the item after afar.run, "
            f"`{ast.unparse(expression)}`, is not an afar location but a "
            f"{type(second).__name__}. Write\n    {_RIGHT_SPELLING}\n(or locally / later, or "
            "a variable bound to remotely(...))"
        )
    if len(items) > index + 2:
        raise LocationError(
            f"{site.where()}: `{ast.unparse(items[index + 2].context_expr)}` stands after the "
            "location and would never be entered. Open it inside the block instead, or before "
            "afar.run to have it around the whole block:\n"
            "    with afar.run, remotely:\n        with ...:"
        )
    return location_call


def _run_item(frame: types.FrameType, items: list[ast.withitem]) -> int | None:
    """The index of the item that is afar's run (the first one: Python enters items in order)."""
    for index, item in enumerate(items):
        value = resolve(frame, item.context_expr)
        if isinstance(value, Run) or _is_run_call(value):
            return index
    return None


def _refuse_unknown_location(frame: types.FrameType, site: Site, expression: ast.expr) -> None:
    target = expression.func if isinstance(expression, ast.Call) else expression
    if isinstance(target, ast.Name) and _lookup(frame, target.id) is _UNRESOLVED:
        name = target.id
        close = difflib.get_close_matches(name, sorted(LOCATION_NAMES), n=1)
        hint = f" Did you mean: {close[0]!r}?" if close else ""
        raise LocationNameError(
            f"{site.where()}: name {name!r} is not defined.{hint} The item after afar.run (or "
            "afar.get) says where to run: remotely, locally or later (they need no import), or "
            "a variable bound to one",
            name=name,
        )
    raise LocationError(
        f"{site.where()}: afar cannot tell where to run `{ast.unparse(expression)}` without "
        "running it. Name a location: remotely, locally, later, or a variable bound to one"
    )


def _check_location_arguments(site: Site, call: ast.Call) -> None:
    """Arguments afar evaluates for Python must not bind or suspend in the caller's scope."""
    for node in ast.walk(call):
        if isinstance(node, (ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
            raise LocationError(
                f"{site.where()}: `{ast.unparse(node)}` in the arguments of "
                f"`{ast.unparse(call.func)}(...)` cannot be evaluated by afar, which evaluates "
                "them because the location is not imported. Compute the value before the with "
                f"statement, or import the location (from afar import {ast.unparse(call.func)})"
            )


def _called_location(entry: _Entry, location: Location, skipped: BaseException) -> Location:
    """``remotely(...)`` written without importing it: its arguments, evaluated once, as Python
    would have after looking the name up (which raised NameError before any argument ran)."""
    call, frame = entry.location_call, entry.frame
    site = entry.block.site
    if call is None or frame is None:  # only with statements have a location call
        return location
    try:
        args, kwargs = call_arguments(frame, call, site.filename, site.future_flags)
        return location(*args, **kwargs)
    except BaseException as error:
        if error.__context__ is skipped:
            error.__suppress_context__ = True  # the NameError is afar's business, not news
        raise


def _is_run_call(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], Run)


def _bare_location_name(expression: ast.expr) -> str | None:
    target = expression.func if isinstance(expression, ast.Call) else expression
    if isinstance(target, ast.Name) and target.id in LOCATION_NAMES:
        return target.id
    return None


def resolve(frame: types.FrameType, expression: ast.expr) -> Any:
    """The value of a name, attribute or call target in the header, without calling anything."""
    if isinstance(expression, ast.Call):
        func = resolve(frame, expression.func)
        if isinstance(func, Run):
            return ("call", func)
        return func if isinstance(func, Location) else _UNRESOLVED
    if isinstance(expression, ast.Name):
        return _lookup(frame, expression.id)
    if isinstance(expression, ast.Attribute):
        base = resolve(frame, expression.value)
        if base is _UNRESOLVED or not isinstance(base, types.ModuleType | Location | Run):
            return _UNRESOLVED
        return getattr(base, expression.attr, _UNRESOLVED)
    return _UNRESOLVED


def _lookup(frame: types.FrameType, name: str) -> Any:
    """A name's value at the with statement: locals, closure cells, globals, builtins."""
    local_names = frame.f_locals  # read once: before 3.13, each read copies a function's locals
    if name in local_names:
        return local_names[name]
    if not is_optimized(frame.f_code) and local_names is not frame.f_globals:
        enclosing = enclosing_values(frame)  # a class body: its closure cells
        if name in enclosing:
            return enclosing[name]
    for namespace in (frame.f_globals, builtins.__dict__):
        if name in namespace:
            return namespace[name]
    return _UNRESOLVED


def read_variables(entry: _Entry, data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The outer values of the names the block reads: ``data``, then the caller's variables."""
    analysis = entry.block.analysis
    enclosing: Mapping[str, Any] = {}
    frame = entry.frame
    if frame is None:
        local_names = global_names = entry.namespace or {}
    else:
        local_names, global_names = frame.f_locals, frame.f_globals
        if _is_class_body(frame) and frame.f_back is not None:
            # A class body reads its enclosing function's variables through cells that its
            # f_locals (the class namespace) does not hold: the function's frame has them.
            enclosing = frame.f_back.f_locals
    free = frame.f_code.co_freevars if enclosing else ()
    values: dict[str, Any] = {}
    for name in (*analysis.reads, *analysis.seeds):
        if data is not None and name in data:
            continue  # taken from data by the caller (scattered first)
        if name in local_names:
            values[name] = local_names[name]
        elif name in free and name in enclosing:
            values[name] = enclosing[name]
        elif name in global_names:
            values[name] = global_names[name]
    if data is not None:
        values.update({n: data[n] for n in (*analysis.reads, *analysis.seeds) if n in data})
    if frame is not None:
        release_locals_snapshot(frame)
    return values


def _is_class_body(frame: types.FrameType) -> bool:
    return frame.f_locals is not frame.f_globals and not is_optimized(frame.f_code)


def _names_in(block: Block, data: Mapping[str, Any]) -> list[str]:
    """The names the block reads that ``data`` holds."""
    return [n for n in block.analysis.reads + block.analysis.seeds if n in data]


def _seeds(entry: _Entry, values: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(n for n in entry.block.analysis.seeds if n in values)


def _bind_results(entry: _Entry, results: Mapping[str, Any]) -> None:
    entry.results.update(results)
    if entry.frame is None:
        (entry.namespace if entry.namespace is not None else {}).update(results)
    else:
        bind(entry.frame, results)


def _wait_values(body: Future, entry: _Entry) -> dict[str, Any]:
    """Wait for an afar.get block and fetch its values, in one trip through the client's loop.

    Ctrl-C (KeyboardInterrupt) cancels the block: the wait is on a lock, which a signal
    interrupts at once. With ``timeout=``, the block is cancelled when it has not finished by
    then (Python 3.10's ``result`` raises ``asyncio.TimeoutError`` there, bpo-42413).
    """
    __tracebackhide__ = True
    timeout = entry.run.timeout if isinstance(entry.run, Get) else None
    try:
        with _waiting_indicator(entry.block.label):  # in a notebook: "running on the cluster"
            try:
                values = body.result(timeout=timeout)
            except (TimeoutError, asyncio.TimeoutError) as error:
                if body.status == "error":
                    raise  # the block itself raised it
                if body.status == "finished":
                    # In time; fetching its values is what took too long (a builtin TimeoutError
                    # on 3.10 too, where Dask raises asyncio's).
                    raise TimeoutError(
                        f"the block at {entry.block.label} finished, but its values did not "
                        f"arrive within {timeout} s"
                    ) from error
                _stop(body)
                raise TimeoutError(
                    f"the block at {entry.block.label} did not finish within {timeout} s "
                    "(afar.get(timeout=...)); it was cancelled and stopped on the worker"
                ) from None
            except TypeError as error:
                if body.status != "finished":
                    raise  # the block itself raised TypeError
                raise _not_picklable_back(body, entry.block.label, error) from error
    except KeyboardInterrupt:
        _stop(body)
        raise
    return _unless_timed_out(values)


def _stop(body: Future) -> None:
    """Cancel a block: the worker stops it (afar's plugin sees it cancelled); drop its output."""
    silence(body.client, body.key)
    body.cancel()


def _unless_timed_out(values: Any) -> Any:
    """The values of a finished afar.get block; a block stopped at its time limit raises."""
    if isinstance(values, tuple) and values[:1] == (TIMED_OUT,):
        raise TimeoutError(values[1])
    return values


# Seconds to find which saved value could not be sent back (one small task, failure path only).
CULPRIT_TIMEOUT_SECONDS = 30


def _not_picklable_back(body: Future, label: str, error: TypeError) -> BaseException:
    """The block finished but its values could not be sent back: name the one that cannot."""
    function, argument = culprits.task(body)
    # Dask runs it where the body's result is (its only dependency): nothing is transferred.
    culprit = body.client.submit(function, argument, pure=False)
    try:
        found = culprit.result(timeout=CULPRIT_TIMEOUT_SECONDS)
    except Exception:
        return error
    if not found:
        return error
    name, kind, reason = found[0]
    return NotPicklableError(
        f"the block at {label} saved {name!r}, a {kind} that cannot be pickled to bring it back "
        f"to the client ({reason}). Save something picklable made from it, or keep it on the "
        "cluster with afar.run (it stays a Future there)"
    )


def _failure_text(body: Future, inputs: Mapping[str, list[Future]]) -> str:
    """What to tell about a failed afar.run block: its traceback, or which input failed."""
    for name, futures in inputs.items():
        for future in futures:
            if future.status == "error":
                error = future.exception()
                return (
                    f"the block did not run: its input {name!r} failed with "
                    f"{type(error).__name__}: {error}"
                )
    error = body.exception()
    shown = _shown_from_block(error, None)
    return "".join(traceback.format_exception(type(shown), shown, shown.__traceback__))


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # None, or closed
        return False


def _cell_sink(label: str) -> Sink | None:
    """The notebook cell's sink for a block's output, or None outside a Jupyter kernel."""
    if _ipython.shell() is None:
        return None
    from afar._ipython.cells import sink_for_block

    return sink_for_block(label)


def _waiting_indicator(label: str) -> contextlib.AbstractContextManager[None]:
    """In a Jupyter kernel, the cell shows while afar.get waits that the block runs remotely."""
    if _ipython.shell() is None:
        return contextlib.nullcontext()
    from afar._ipython.cells import waiting_indicator

    return waiting_indicator(label)


def _shown_from_block(error: BaseException, skipped: BaseException | None) -> BaseException:
    """The error as the user should see it: from the block's first line, not afar's frames.

    Raised in ``__exit__``, it would show the location's skip signal as its context ("During
    handling of the above exception..."): that context is noise, the block's error is the news.
    """
    tb = error.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_name.startswith(BLOCK_FUNCTION_PREFIX):
        tb = tb.tb_next
    if tb is None and type(error) is NameError and _raised_by_afar_on_the_worker(error):
        # A saved name the block did not assign (a builtin NameError: workers have no afar).
        error = SavedNameError(*error.args)
    elif tb is not None or _raised_by_afar_on_the_worker(error):
        error = error.with_traceback(_for_ipython(tb))
    elif isinstance(error, KeyboardInterrupt):
        # Ctrl-C while afar waited: it struck in Dask's or threading's code, which says nothing
        # to the user. Raised again from __exit__, it points at the with statement.
        error = error.with_traceback(None)
    if error.__context__ is None or error.__context__ is skipped:
        error.__suppress_context__ = True
    return error


def _for_ipython(tb: types.TracebackType | None) -> types.TracebackType | None:
    """In IPython, the block's frames as module-level frames, whose source IPython shows right.

    The block's frames come from the worker, rebuilt by Dask (tblib) as stub frames. IPython 9
    shows a stub frame of a cell by the source block starting at its code's first line (the
    with statement) unless the frame is a module's, which it shows at its line: such a frame,
    at the same file and line, replaces each of the block's own frames.
    """
    if tb is None or _ipython.shell() is None:
        return tb
    frames: list[types.TracebackType] = []
    node: types.TracebackType | None = tb
    while node is not None:
        code = node.tb_frame.f_code
        if code.co_name.startswith(BLOCK_FUNCTION_PREFIX):
            frames.append(_module_frame(code.co_filename, node.tb_lineno) or node)
        else:
            frames.append(node)
        node = node.tb_next
    for frame, following in itertools.pairwise(frames):
        frame.tb_next = following
    frames[-1].tb_next = None
    return frames[0]


def _module_frame(filename: str, lineno: int) -> types.TracebackType | None:
    """A traceback entry of a module-level frame of ``filename`` stopped at ``lineno``."""
    stub = compile("\n" * (lineno - 1) + "raise __afar_stub__", filename, "exec")
    try:
        exec(stub, {"__afar_stub__": RuntimeError()})
    except RuntimeError as raised:
        entry = raised.__traceback__.tb_next if raised.__traceback__ else None
        if entry is not None:
            entry.tb_next = None
        return entry
    return None


def _note_block(error: BaseException, entry: _Entry) -> BaseException:
    """Dask's own errors about the block (KilledWorker, a cancelled Future), made clear.

    KilledWorker names only the task's key: a note names the block (Python 3.11+). Their
    traceback runs through Dask's client code, whose frames hold the block's Future: dropped.
    """
    if isinstance(error, KeyboardInterrupt) and error.__traceback__ is None:
        if hasattr(error, "add_note"):
            error.add_note(f"[afar] the block at {entry.block.label} was stopped on the worker")
        return error
    if type(error).__module__.startswith("distributed."):
        error = error.with_traceback(None)
        if hasattr(error, "add_note"):
            error.add_note(f"[afar] raised for the block at {entry.block.site.where()}")
    return error


def _raised_by_afar_on_the_worker(error: BaseException) -> bool:
    """afar's own errors on the worker (a saved name not assigned) say all in their message."""
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in _WORKER_FILENAMES:
            return True
        tb = tb.tb_next
    return False


def _cause(error: BaseException) -> BaseException | None:
    return error.__cause__


def _gather_locally(futures: Mapping[str, Any]) -> Any:
    clients = {f.client for value in futures.values() for f in _remote.futures_in(value)}
    client = next(iter(clients))
    # A list, or an awaitable of one for an asynchronous client.
    return client.gather(list(futures.values()))


def _captured(entry: _Entry) -> Captured:
    block = entry.block
    return Captured(
        source=block.source,
        names_read=block.analysis.reads,
        names_assigned=block.analysis.assigned,
        names_saved=entry.saved,
        label=block.label,
    )


def _interactive() -> bool:
    """Whether a final expression's value is shown, as IPython or the interactive prompt would."""
    if _ipython.shell() is not None:
        return True
    return hasattr(sys, "ps1") or bool(sys.flags.interactive)


def _show(value: Any) -> None:
    display_hook = sys.displayhook
    display_hook(value)


run = Run()
get = Get()
