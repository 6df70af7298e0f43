"""Waiting for an afar.get block: its values, its time limit, Ctrl-C, and stopping it.

``Values`` is afar.get's results step (see ``afar._submission``): the block's values are
fetched in one trip through the client, a block that overruns ``timeout=`` or is interrupted is
cancelled and stopped on the worker, and a value that cannot come back is named. Waiting is the
only place afar blocks the caller, so everything about giving up on a block lives here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from typing import TYPE_CHECKING, Any

from distributed import Future

from afar import _debugging, _ipython, _plots, _releasing
from afar._shipping import culprits
from afar._stream import silence
from afar._submission import Results
from afar._variables import Entry, bind_results
from afar._worker.runtime import QUALNAMES_NAME
from afar._worker.stopping import TIMED_OUT
from afar.errors import NotPicklableError

if TYPE_CHECKING:
    from afar._submission import Submission


class Values(Results):
    """afar.get's results: wait for the block, then bind the plain values it saved."""

    strict = True  # a missing saved name fails the block: the caller is there to see it
    reports_failures = False  # the caller waits: the error is raised to it
    caller_waits = True

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout

    def single(self, entry: Entry, limit: float | None) -> bool:
        return False  # the values come back together, in one trip

    def sent(self, submission: Submission, body: Future) -> None:
        """Nothing to bind before the values arrive."""

    def wait(self, submission: Submission) -> None:
        __tracebackhide__ = True
        try:
            values = wait_values(submission.body, submission.entry, self.timeout, submission.input)
        except BaseException as error:
            _debugging.note_raised(error, str(submission.body.key))  # for afar.debug, %debug
            shell = _ipython.shell()
            if shell is not None:
                from afar._ipython.debugging import install_debugger

                install_debugger(shell)
            raise
        finally:
            _close_sink(submission)
        bind_results(submission.entry, values)
        _releasing.hold_until_next_block(submission.client, submission.body)
        _plots.take()  # the block's figures join pyplot here, in the thread that waited

    async def wait_async(self, submission: Submission) -> None:
        body, entry = submission.body, submission.entry
        try:
            if body.client.asynchronous:
                if submission.input is not None:
                    submission.input.nobody_waits()  # the event loop cannot wait for a line
                values = await _values_async(body, entry, self.timeout)
            else:
                # A synchronous client in a coroutine: its wait blocks, so it waits in a thread
                # while the event loop goes on (a cancelled task stops the block, below).
                values = await asyncio.to_thread(
                    wait_values, body, entry, self.timeout, submission.input
                )
        except BaseException:
            silence(submission.client, str(body.key))
            cancelling = body.cancel()
            if inspect.isawaitable(cancelling):  # an asynchronous client's cancel
                await cancelling
            raise
        finally:
            _close_sink(submission)
        bind_results(entry, values)


def _close_sink(submission: Submission) -> None:
    """The wait is over, so the block is over for its cell: its output has arrived (Dask
    delivers a task's events before its result), and the cell must not keep a display for
    output that will not come, as it would if the Future's done-callback closed it later."""
    close = getattr(submission.sink, "close", None)
    if close is not None:
        close()


def wait_values(
    body: Future,
    entry: Entry,
    timeout: float | None,
    reads: _debugging.BlockInput | None = None,
) -> dict[str, Any]:
    """Wait for an afar.get block and fetch its values, in one trip through the client's loop.

    Meanwhile the block's reads of input (``input()``, pdb at a ``breakpoint()``) are answered
    here, in this thread (``reads``, see ``afar._debugging``).

    Ctrl-C (KeyboardInterrupt) cancels the block: the wait is on a lock, which a signal
    interrupts at once. With ``timeout=``, the block is cancelled when it has not finished by
    then (Python 3.10's ``result`` raises ``asyncio.TimeoutError`` there, bpo-42413).
    """
    __tracebackhide__ = True
    try:
        with _waiting_indicator(entry.block.label):  # in a notebook: "running on the cluster"
            try:
                remaining = timeout
                if reads is not None:
                    started = time.monotonic()
                    reads.converse(timeout)  # until the block is over
                    if timeout is not None:
                        remaining = max(0.001, timeout - (time.monotonic() - started))
                values = body.result(timeout=remaining)
            except (TimeoutError, asyncio.TimeoutError) as error:
                if body.status == "error":
                    raise  # the block itself raised it
                raise _not_in_time(body, entry, timeout, stop) from _cause_of(body, error)
            except TypeError as error:
                if body.status != "finished":
                    raise  # the block itself raised TypeError
                # The message names the value and the reason: Dask's chain is noise.
                raise _not_picklable_back(body, entry.block.label, error) from None
    except KeyboardInterrupt:
        stop(body)
        raise
    return unless_timed_out(values)


async def _values_async(body: Future, entry: Entry, timeout: float | None) -> Any:
    """``wait_values`` for an asynchronous client (its caller stops the block if this raises)."""
    try:
        values = await body.result(timeout=timeout)  # an awaitable, with an asynchronous client
    except (TimeoutError, asyncio.TimeoutError) as error:
        if body.status == "error":
            raise  # the block itself raised it
        raise _not_in_time(body, entry, timeout, None) from _cause_of(body, error)
    return unless_timed_out(values)


def _not_in_time(body: Future, entry: Entry, timeout: float | None, stopping: Any) -> BaseException:
    """What a TimeoutError of Dask's while waiting ``timeout`` seconds means (Python 3.10's
    ``result`` raises ``asyncio.TimeoutError``, bpo-42413); ``stopping(body)`` stops a block
    that did not finish in time."""
    if body.status == "finished":
        # In time; fetching its values is what took too long (a builtin TimeoutError).
        return TimeoutError(
            f"the block at {entry.block.label} finished, but its values did not arrive within "
            f"{timeout} s"
        )
    if stopping is not None:
        stopping(body)
    return TimeoutError(
        f"the block at {entry.block.label} did not finish within {timeout} s "
        "(afar.get(timeout=...)); it was cancelled and stopped on the worker"
    )


def _cause_of(body: Future, error: BaseException) -> BaseException | None:
    """The timeout itself is the cause only of "its values did not arrive"."""
    return error if body.status == "finished" else None


def stop(body: Future) -> None:
    """Cancel a block: the worker stops it (afar's plugin sees it cancelled); drop its output."""
    silence(body.client, str(body.key))
    body.cancel()


def unless_timed_out(values: Any) -> Any:
    """The values of a finished afar.get block; a block stopped at its time limit raises."""
    if isinstance(values, tuple) and values[:1] == (TIMED_OUT,):
        raise TimeoutError(values[1])
    if isinstance(values, dict) and QUALNAMES_NAME in values:
        restore_qualnames(values)
    return values


def restore_qualnames(values: dict[str, Any]) -> None:
    """Give classes that came back by value the ``__qualname__`` they had on the worker."""
    for name, qualname in values.pop(QUALNAMES_NAME).items():
        value = values.get(name)
        kind = value if isinstance(value, type) else type(value)
        if kind.__qualname__ != qualname and kind.__qualname__ == qualname.rsplit(".", 1)[-1]:
            try:
                kind.__qualname__ = qualname
            except (TypeError, AttributeError):
                pass  # a class that does not allow it: left as it came


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


def _waiting_indicator(label: str) -> contextlib.AbstractContextManager[None]:
    """In a Jupyter kernel, the cell shows while afar.get waits that the block runs remotely."""
    if _ipython.shell() is None:
        return contextlib.nullcontext()
    from afar._ipython.indicator import waiting_indicator

    return waiting_indicator(label)
