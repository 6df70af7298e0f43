"""Submitting a block and tracking it: one object for both the sync and the async form.

httpx's split: ``Submission`` does every step that does not wait on the cluster (pickling the
inputs and refusing what cannot travel, building the task, binding, tracking what runs), and two
thin drivers, ``submit`` and ``submit_async``, do only what waits between those steps: calling
the client, or awaiting it for an asynchronous client. Neither driver changes what is returned.

What the caller gets for a sent block is the one step afar.get changes: ``Results`` here is
afar.run's (a Future per saved name, bound at once; a failure nobody waits for is reported),
``afar._waiting.Values`` is afar.get's (wait, then bind plain values).
"""

from __future__ import annotations

import asyncio
import builtins
import sys
import threading
import traceback
import weakref
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, cast

from distributed import Future

from afar import _debugging, _inputs, _ipython, _modules, _plots, _releasing, _remote
from afar._locations import Location
from afar._shipping import ensure_runtime
from afar._sinks import Sink, failure_report, report_failure
from afar._stream import OutputRouter, router_for
from afar._tracebacks import shown_from_block
from afar._variables import Entry, bind_results, names_in, seeds
from afar._worker.output import STDERR, stream_identity
from afar.errors import BlockSyntaxError

# This process's stdout and stderr files: a worker that shares them does not echo there.
_CLIENT_STREAMS = stream_identity()


@dataclass(frozen=True)
class Outgoing:
    """What a block sends, computed before anything is sent."""

    payload: bytes  # the pickled plain variables
    futures: dict[str, Any]  # variables holding Futures
    modules: tuple[tuple[str, str], ...]  # (name, digest) of the user's modules it needs
    versions: list[Any]  # those modules' versions, sent to the workers once
    displays: tuple[str, ...] = ()  # names of IPython's display: the worker's shows in the cell
    # Values too large to travel in the task: kept on the cluster, once per content.
    large: dict[str, _inputs.LargeInput] = field(default_factory=dict)


@dataclass
class Pending:
    """The Futures of a Run's blocks that have not finished (what ``Run.cancel`` cancels)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    futures: set[Future] = field(default_factory=set)


class Results:
    """afar.run's results: each saved name is bound to a Future as soon as the block is sent."""

    strict = False  # a missing saved name fails its own Future, not the block
    reports_failures = True  # nobody may wait for the block: a failure is reported when it ends
    caller_waits = False  # progress on a terminal would draw over what the caller prints next

    def single(self, entry: Entry, limit: float | None) -> bool:
        # A block with a time limit returns its names through getters, which raise the
        # TimeoutError of a block stopped at its limit (its task itself finishes: no retries).
        return len(entry.saved) == 1 and limit is None

    def sent(self, submission: Submission, body: Future) -> None:
        entry, client = submission.entry, submission.client
        if self.single(entry, submission.location.timeout):
            # The user's own Future of the body, so that afar sees it dropped (below).
            named: dict[str, Future] = {entry.saved[0]: Future(body.key, client)}
        else:
            named = _remote.submit_getters(client, entry.block, body, entry.saved)
        bind_results(entry, named)
        if named:
            _hold_while_wanted(submission.pending, body, named, client)

    def wait(self, submission: Submission) -> None:
        """Nothing to wait for: the Futures are bound."""

    async def wait_async(self, submission: Submission) -> None:
        """Nothing to wait for: the Futures are bound."""


class Submission:
    """One block on its way to the cluster: its inputs, its task, its tracking."""

    body: Future  # the body's Future, once sent
    sink: Sink | None = None  # the notebook cell's sink of its output, once sent
    input: _debugging.BlockInput | None = None  # its reads of input, once sent (not quiet)
    kept: dict[str, Future]  # the Futures of the large values' kept copies, once there

    def __init__(
        self,
        entry: Entry,
        location: Location,
        client: Any,
        values: dict[str, Any],
        display: bool,
        data: MutableMapping[str, Any] | None,
        results: Results,
        pending: Pending,
    ) -> None:
        self.entry = entry
        self.location = location
        self.client = client
        self.values = values
        self.display = display
        self.data = data
        self.results = results
        self.pending = pending
        self.outgoing = self._prepare()  # refuses what cannot travel: nothing sent yet
        self.kept = {}

    def wait(self) -> None:
        """Wait as the results want (afar.get: for the values); a no-op for afar.run."""
        self.results.wait(self)

    def _prepare(self) -> Outgoing:
        """Pickle the variables the block reads (not those of ``data=``, scattered instead) and
        find the user's modules it needs."""
        block, values = self.entry.block, self.values
        _refuse_ipython_syntax(block, values)
        displays = _display_names(block, values)
        left_out = set(displays)  # the worker has a display of its own for these
        if self.data is not None:
            left_out.update(names_in(block, self.data))
        if left_out:
            values = {n: v for n, v in values.items() if n not in left_out}
        plain, futures = _remote.split_inputs(values)
        plain, large = _inputs.split(plain, _inputs.large_input_threshold())
        payload, referenced = _remote.pickle_inputs(plain, block.label)
        for item in large.values():
            referenced |= item.modules
        modules, versions = _modules.needed(block.imports, referenced, block.label)
        return Outgoing(payload, futures, modules, versions, displays, large)

    def send(self) -> Future:
        """Submit the body (and getters for afar.run); bind Futures; return the body's Future."""
        entry, location, client, values = self.entry, self.location, self.client, self.values
        block, results = entry.block, self.results
        outgoing = self.outgoing
        futures = outgoing.futures
        if self.data is not None:
            from_data = names_in(block, self.data)  # scattered by the driver: Futures now
            values.update({n: self.data[n] for n in from_data})
            futures = {**futures, **{n: self.data[n] for n in from_data}}
        if self.kept:
            futures = {**futures, **self.kept}
        limit = location.timeout
        single = results.single(entry, limit)
        packed = block.packed(
            seeds(entry, values), entry.saved, single, self.display, location.secede
        )
        key = _remote.new_key(block)
        stream = None
        router = None
        sink = None
        if not location.quiet:
            # Subscribing (once per client) goes out before the block: no output is missed.
            router = router_for(client)
            sink = _ipython.cell_sink(block.label)
            # Progress only where it can be seen: in a notebook cell, or on an interactive
            # terminal while the caller waits (afar.get): a line drawn while the caller goes on
            # would draw over whatever the terminal shows next, such as a prompt.
            waits = results.caller_waits
            progress = location.progress and (sink is not None or (waits and _stderr_is_terminal()))
            stream = (router.topic, _CLIENT_STREAMS, progress)
            if sink is not None:
                router.register(key, sink)
            # else the default sink; the router still forgets the block when it finishes
            # Its input() and breakpoint() read from here (afar._debugging).
            self.input = _debugging.BlockInput(
                client, key, block.label, _debugging.secret_of(client), sink, waited_for=waits
            )
            router.listen(key, self.input.on_item)
        try:
            body = self._submit(client, block, packed, futures, stream, key, sink, values)
        except BaseException:
            if self.input is not None:
                self.input.finished()  # nothing will read: the block was not sent
            raise
        _track(
            self.pending, entry, body, futures, router, sink, results.reports_failures, self.input
        )
        self.sink = sink
        results.sent(self, body)
        self.body = body
        return body

    def _submit(
        self,
        client: Any,
        block: Any,
        packed: bytes,
        futures: dict[str, Any],
        stream: Any,
        key: str,
        sink: Sink | None,
        values: dict[str, Any],
    ) -> Future:
        entry, location, results, outgoing = self.entry, self.location, self.results, self.outgoing
        limit = location.timeout
        debugging = (
            (self.input.secret, location.debug, _debugging.keep_seconds())
            if self.input is not None
            else _remote.NOT_DEBUGGED
        )
        return _remote.submit_block(
            client,
            block,
            packed,
            outgoing.payload,
            futures,
            stream,
            results.strict and entry.named,
            location.submit_options,
            key,
            limit,
            outgoing.modules,
            outgoing.displays,
            tuple(self.kept),
            _plots.plotting_for(block, values, sink is not None),
            debugging,
        )


def _refuse_ipython_syntax(block: Any, values: Mapping[str, Any]) -> None:
    """IPython turns ``%magic`` and ``!command`` lines into ``get_ipython()`` calls, which the
    block then reads: refused with what to write instead, not as a value that cannot travel."""
    shell_function = values.get("get_ipython")
    if shell_function is None or not _module_of(shell_function).startswith("IPython"):
        return
    site = block.site
    raise BlockSyntaxError(
        "IPython syntax (a %magic or a !command) cannot run in an afar block: IPython turns it "
        "into get_ipython() calls, and the worker has no IPython shell. Put %%time (or "
        "%%timeit) on the cell around the block, and run commands with subprocess.run inside "
        "the block",
        site.filename,
        site.node.lineno,
    )


def _display_names(block: Any, values: Mapping[str, Any]) -> tuple[str, ...]:
    """The names the block reads that hold IPython's ``display``, also as the builtin that
    IPython adds while it runs: the worker gives them a ``display`` of its own, whose objects
    are shown with the block's output (IPython's own would print their repr there)."""
    names = [name for name, value in values.items() if _is_ipython_display(value)]
    builtin = getattr(builtins, "display", None)
    if (
        "display" in block.analysis.reads
        and "display" not in values
        and _is_ipython_display(builtin)
    ):
        names.append("display")
    return tuple(names)


def _is_ipython_display(value: Any) -> bool:
    return (
        callable(value)
        and getattr(value, "__name__", None) == "display"
        and _module_of(value).startswith("IPython")
    )


def _module_of(value: Any) -> str:
    return str(getattr(value, "__module__", None) or "")


# -- the drivers ----------------------------------------------------------------------------------
def submit(submission: Submission) -> None:
    """Send a block from synchronous code (the wait, for afar.get, is the caller's next step)."""
    _before_sending(submission)
    submission.send()
    _releasing.let_go(submission.client)  # after the graph, in its batch


async def submit_async(submission: Submission) -> None:
    """Send a block through an asynchronous client, then await what the results want.

    A synchronous client in a coroutine works too: its round trips (registering afar's plugin,
    sending module versions, scattering ``data=``) block, so they run in a thread meanwhile.
    """
    client = submission.client
    if not client.asynchronous:
        await asyncio.to_thread(_before_sending, submission)
        submission.send()
        _releasing.let_go(client)
        await submission.results.wait_async(submission)
        return
    registering = ensure_runtime(client)
    if registering is not None:
        await registering
    sending = _modules.ensure_sent(client, submission.outgoing.versions)
    if sending is not None:
        await sending
    data = submission.data
    if data is not None:
        # client.scatter is a coroutine here: scatter first, send then finds Futures.
        await _remote.scatter_data_async(client, data, names_in(submission.entry.block, data))
    kept = _inputs.ensure_kept(client, submission.outgoing.large, _workers_of(submission))
    submission.kept = kept if isinstance(kept, dict) else await kept
    submission.send()
    await submission.results.wait_async(submission)


def _before_sending(submission: Submission) -> None:
    """What a synchronous client does before ``send``, each a round trip when needed: register
    afar's plugin, send new versions of the user's modules, scatter ``data=``, scatter the
    large values the cluster does not keep yet."""
    client, data = submission.client, submission.data
    ensure_runtime(client)
    _modules.ensure_sent(client, submission.outgoing.versions)
    if data is not None:
        _remote.scatter_data(client, data, names_in(submission.entry.block, data))
    kept = _inputs.ensure_kept(client, submission.outgoing.large, _workers_of(submission))
    submission.kept = cast("dict[str, Future]", kept)  # a synchronous client's: no awaitable


def _workers_of(submission: Submission) -> Any:
    """The workers a block must run on (``remotely(workers=...)``): its large values go there."""
    options = submission.location.submit_options
    return None if options.get("allow_other_workers") else options.get("workers")


# -- tracking -------------------------------------------------------------------------------------
def _hold_while_wanted(
    pending: Pending, body: Future, named: dict[str, Future], client: Any
) -> None:
    """Let go of a running block once each Future of its names was dropped or cancelled.

    Dask then no longer wants the block (unless another task needs it) and the worker stops
    it. A block that saves no names is held until it finishes. A getter is seen cancelled
    through afar's own Future of its key, whose done-callback does not keep the user's one.
    """
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
        if not future.done():
            # Still running: releasing it now is what stops it. A finished block is let go
            # when its last reference goes, after its done-callback (see _track): released
            # here, its state would read "cancelled" there, as if it had been stopped.
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
            watcher: Future = Future(future.key, client)
            watchers.append(watcher)
            watcher.add_done_callback(watched(name))


def _track(
    pending: Pending,
    entry: Entry,
    body: Future,
    inputs: Mapping[str, Any],
    router: OutputRouter | None,
    sink: Sink | None,
    report: bool,
    reads: _debugging.BlockInput | None = None,
) -> None:
    """Hold the body's Future until it finishes: a block runs even if nobody keeps a name.

    When it finishes: nothing reads its input any more; forget its sink; with afar.run, report
    a failure nobody may wait for.
    """
    with pending.lock:
        pending.futures.add(body)
    # What the callback below needs of the entry, not the entry: it holds the caller's frame,
    # whose variables hold the block's Futures, which must be free to go.
    label, filename = entry.block.label, entry.block.site.filename
    input_futures = {name: list(_remote.futures_in(value)) for name, value in inputs.items()}

    def done(future: Future) -> None:
        if reads is not None:
            reads.finished()  # first: a caller waiting in afar.get goes on at once
        with pending.lock:
            pending.futures.discard(future)
        if router is not None:
            if future.status == "cancelled":
                router.silence(str(future.key))  # stopped: late output is not shown
            else:
                router.unregister(str(future.key))
        if report and future.status == "error":
            text = _failure_text(future, input_futures, filename)
            if sink is not None:
                # In a notebook: in the block's cell, not in whichever cell runs now.
                sink.write(STDERR, failure_report(label, text))
            else:
                report_failure(label, text)
        close = getattr(sink, "close", None)
        if close is not None:
            close()  # the block is over: its cell needs no display for late output

    body.add_done_callback(done)


def _failure_text(body: Future, inputs: Mapping[str, list[Future]], filename: str) -> str:
    """What to tell about a failed afar.run block: its traceback, or which input failed."""
    for name, futures in inputs.items():
        for future in futures:
            if future.status == "error":
                error = future.exception()
                return (
                    f"the block did not run: its input {name!r} failed with "
                    f"{type(error).__name__}: {error}"
                )
    # The traceback Dask keeps, not the error's own: a .result() that raised the same error
    # meanwhile has added the caller's frames to that.
    error = body.exception().with_traceback(body.traceback())
    shown = shown_from_block(error, None, filename)
    return "".join(traceback.format_exception(type(shown), shown, shown.__traceback__))


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # None, or closed
        return False
