"""``afar.run`` and ``afar.get``: the with-statement protocol, from ``__enter__`` to binding.

This module is the protocol only: find the block at ``__enter__``, tell at ``__exit__`` where it
runs, and hand it on: ``later`` captures it here, ``locally`` runs it (``afar._locally``), and
``remotely`` builds one ``afar._submission.Submission`` driven by ``submit`` or ``submit_async``.
The header check, reading the caller's variables, waiting and traceback surgery are each their
own module. ``Get`` differs from ``Run`` by one step, ``_results``: what the caller gets back.

The try/except that turns an error into what the user sees is written out in ``__exit__``,
``__aexit__`` and ``run_source``, not shared in a helper: the frame that raises is the one afar
frame a user sees above the block's own lines.
"""

from __future__ import annotations

import contextvars
import keyword
import sys
import types
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, cast

from afar import _ipython, _plots, _remote
from afar._block import Block, block_for
from afar._header import RIGHT_SPELLING, called_location, check_header
from afar._locally import run_locally, run_locally_async
from afar._locations import DEFAULT_LOCATIONS, LOCATION_NAMES, Location, SkipBody, Where
from afar._submission import Pending, Results, Submission, submit, submit_async
from afar._tracebacks import cause, note_block, shown_from_block
from afar._variables import Entry, read_variables
from afar._waiting import Values, stop
from afar.errors import AfarError, ClientError, LocationError, SavedNameError


@dataclass(frozen=True)
class Captured:
    """What ``later`` captured: the block as afar sees it, for inspection."""

    source: str
    names_read: tuple[str, ...]
    names_assigned: frozenset[str]
    names_saved: tuple[str, ...]
    label: str


# One stack per thread and per asyncio task: blocks sharing one Run never see each other's state.
_entries: contextvars.ContextVar[tuple[Entry, ...]] = contextvars.ContextVar(
    "afar_entries", default=()
)


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
        self._pending = Pending()

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
        __tracebackhide__ = True
        try:
            return self._enter(sys._getframe(1))
        except AfarError as error:
            # What afar refuses is the user's with statement: its traceback ends there (and
            # in this frame), not in afar's checks.
            raise error.with_traceback(None) from error.__cause__

    async def __aenter__(self) -> MutableMapping[str, Any]:
        __tracebackhide__ = True
        try:
            return self._enter(sys._getframe(1))
        except AfarError as error:
            raise error.with_traceback(None) from error.__cause__

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        __tracebackhide__ = True
        entry = self._pop()
        try:
            location = self._location(entry, exc, tb)
        except AfarError as error:
            raise error.with_traceback(None) from error.__cause__  # see __enter__
        if location is None:
            return False
        # Written out here, in __aexit__ and in run_source rather than shared in a helper: the
        # frame that raises is the one afar frame a user sees above the block's own lines.
        try:
            submission = self._execute(entry, location)
            if submission is not None:  # afar.get waits here: a traceback has one afar frame
                submission.wait()
        except BaseException as error:
            # The client keeps the error in the Future's state: this frame, in the error's
            # traceback, must not hold the Future, or the block stays on the scheduler for good.
            submission = None
            shown = shown_from_block(error, exc, entry.block.site.filename)
            raise note_block(shown, entry) from cause(error)
        _plots.take()  # figures of earlier afar.run blocks that waited for this thread
        return True

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        __tracebackhide__ = True
        entry = self._pop()
        try:
            location = self._location(entry, exc, tb)
        except AfarError as error:
            raise error.with_traceback(None) from error.__cause__  # see __enter__
        if location is None:
            return False
        try:
            await self._execute_async(entry, location)
        except BaseException as error:
            shown = shown_from_block(error, exc, entry.block.site.filename)
            raise note_block(shown, entry) from cause(error)
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
            submission = self._execute(entry, location, display)
            if submission is not None:
                submission.wait()
        except BaseException as error:
            submission = None  # see __exit__
            shown = shown_from_block(error, None, entry.block.site.filename)
            raise note_block(shown, entry) from cause(error)
        return results

    def cancel(self) -> None:
        """Cancel the blocks submitted through this Run that have not finished."""
        with self._pending.lock:
            futures = list(self._pending.futures)
        for future in futures:
            # A block that finished may still be listed: its done-callback, on the client's
            # event loop, can run after .result() has returned in this thread.
            if not future.done():
                stop(future)

    # -- enter ------------------------------------------------------------------------------
    def _enter(self, frame: types.FrameType) -> MutableMapping[str, Any]:
        block = block_for(frame)
        location_call = check_header(frame, block)
        entry = self._new_entry(block, frame, None)
        entry.location_call = location_call
        _entries.set((*_entries.get(), entry))
        return entry.results

    def _new_entry(
        self, block: Block, frame: types.FrameType | None, namespace: dict[str, Any] | None
    ) -> Entry:
        """The state of one block: the names it saves and where its results go."""
        results: MutableMapping[str, Any] = self.data if self.data is not None else {}
        saved = self._saved(block)
        return Entry(self, frame, block, saved, results, namespace, named=bool(self.names))

    def _saved(self, block: Block) -> tuple[str, ...]:
        analysis = block.analysis
        if not self.names:
            return (analysis.last_bound,) if analysis.last_bound else ()
        never = [n for n in self.names if n not in analysis.assigned]
        # Module code may bind names at run time (exec, globals()[...]): those are looked for
        # once the block ran, as a name whose statement did not run.
        if never and not (block.module_level and block.binds_at_run_time):
            raise SavedNameError(
                f"{block.site.filename}, line {block.site.node.lineno}: the block never assigns "
                f"{', '.join(map(repr, never))}, so afar cannot save "
                f"{'it' if len(never) == 1 else 'them'}. Names it assigns: "
                f"{', '.join(sorted(analysis.assigned)) or 'none'}",
                name=never[0],
            )
        return tuple(dict.fromkeys(self.names))

    # -- exit -------------------------------------------------------------------------------
    def _pop(self) -> Entry:
        entries = _entries.get()
        for index in range(len(entries) - 1, -1, -1):
            if entries[index].run is self:
                _entries.set(entries[:index] + entries[index + 1 :])
                return entries[index]
        raise RuntimeError("afar: __exit__ without a matching __enter__ in this context")

    def _location(self, entry: Entry, exc: BaseException | None, tb: Any) -> Location | None:
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
            location = DEFAULT_LOCATIONS[cast(str, exc.name)]
            if entry.location_call is not None:
                return called_location(entry, location, exc)
            return location
        if exc is None:
            raise LocationError(
                f"{entry.block.site.where()}: the body of the block ran here because the with "
                f"statement names no location. Write\n    {RIGHT_SPELLING}"
            )
        return None

    def _execute(
        self, entry: Entry, location: Location, display: bool | None = None
    ) -> Submission | None:
        """The synchronous driver: capture, run here, or send; the Submission sent, if any."""
        start = self._start(entry, location, display)
        if start is None:
            return None
        values, display = start
        if location.where is Where.LOCALLY:
            run_locally(entry, values, display)
            return None
        client = _remote.resolve_client(location.client, self.client)
        if client.asynchronous:
            raise ClientError(
                f"{entry.block.site.where()}: the client is asynchronous, so the block must be "
                "awaited: write `async with afar.run, remotely:` inside a coroutine"
            )
        submission = self._submission(entry, location, client, values, display)
        submit(submission)
        return submission

    async def _execute_async(self, entry: Entry, location: Location) -> None:
        """The asynchronous driver: as ``_execute``, awaiting the client (and afar.get's wait)."""
        start = self._start(entry, location, None)
        if start is None:
            return
        values, display = start
        if location.where is Where.LOCALLY:
            await run_locally_async(entry, values, display)
            return
        client = _remote.resolve_client(location.client, self.client)
        await submit_async(self._submission(entry, location, client, values, display))

    def _start(
        self, entry: Entry, location: Location, display: bool | None
    ) -> tuple[dict[str, Any], bool] | None:
        """Both drivers' first step: ``later`` captures (None); else the inputs and display."""
        if location.where is Where.LATER:
            self.captured = _captured(entry)
            return None
        values = read_variables(entry, self.data)
        if display is None:
            display = _interactive()
        return values, bool(display and entry.block.analysis.final_expression)

    def _submission(
        self, entry: Entry, location: Location, client: Any, values: dict[str, Any], display: bool
    ) -> Submission:
        return Submission(
            entry, location, client, values, display, self.data, self._results(), self._pending
        )

    def _results(self) -> Results:
        """What the caller gets for a sent block: afar.run binds Futures at once."""
        return Results()


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

    def __call__(
        self,
        *names: str,
        client: Any = None,
        data: MutableMapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Get:
        return type(self)(*names, client=client, data=data, timeout=timeout)

    def _results(self) -> Results:
        """afar.get waits for the block and binds its values."""
        return Values(self.timeout)


# -- helpers ------------------------------------------------------------------------------------
def _check_names(what: str, names: tuple[object, ...]) -> None:
    for name in names:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise TypeError(
                f"afar.{what}() takes the names of variables to save, as strings, such as "
                f"afar.{what}('x', 'y'); {name!r} is not one"
            )


def _captured(entry: Entry) -> Captured:
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


run = Run()

get = Get()
