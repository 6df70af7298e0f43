"""Cancelling blocks: ``run.cancel()``, Ctrl-C while ``afar.get`` waits, a cancelled ``afar.get``.

Blocks here wait on a ``distributed.Event`` (a gate) that the test opens only after it has
cancelled them: Dask cannot stop a running thread, so every test opens its gates at the end to
give the workers' threads back to the other tests.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager
from typing import Any

import pytest
from _remote_helpers import (
    GATE_TIMEOUT,
    RESULT_TIMEOUT,
    flush,
    label,
    lineno,
    new_gate_name,
)
from distributed import Client, Event, Future
from distributed.client import FutureCancelledError

import afar
from afar import remotely

# The bound: KeyboardInterrupt is raised within this long of the key press.
CTRL_C_SECONDS = 0.5
# When the key is pressed (or another thread cancels): after afar.get has waited a while, as a
# user would.
PRESS_AFTER_SECONDS = 0.5


def here(line: int) -> str:
    return label(__file__, line)


@contextmanager
def gates(client: Client, *names: str) -> Iterator[None]:
    """Open the gates at the end, whatever happened: blocks still waiting on them then end."""
    try:
        yield
    finally:
        for name in names:
            Event(name, client=client).set()


def pending_of(run: afar.Run) -> set[Future]:
    # The Run's Futures of blocks that have not finished: no public accessor.
    with run._pending.lock:
        return set(run._pending.futures)


def known_to_scheduler(key: str, dask_scheduler: Any = None) -> bool:
    return key in dask_scheduler.tasks


def test_cancel_cancels_the_pending_blocks_of_that_run(client: Client) -> None:
    started, gate = new_gate_name(), new_gate_name()
    runner = afar.run("left", "right")
    other = afar.run()
    with gates(client, gate):
        with runner, remotely:
            import distributed

            distributed.Event(started).set()
            opened = distributed.Event(gate).wait(GATE_TIMEOUT)
            left, right = opened, not opened
        getters = [left, right]
        with runner, remotely:
            left, right = right, left  # waits for the first block: queued, not running
        with other, remotely:
            import distributed

            untouched = distributed.Event(gate).wait(GATE_TIMEOUT)
        assert Event(started, client=client).wait(GATE_TIMEOUT)  # the first block is running
        bodies = pending_of(runner)
        assert len(bodies) == 2
        runner.cancel()
        flush(client)
        # Both bodies, and the tasks that fetch their names, which depend on them.
        for future in [*bodies, *getters, left, right]:
            assert future.status == "cancelled", future
            with pytest.raises(CancelledError):
                future.result(timeout=RESULT_TIMEOUT)
        assert not any(client.run_on_scheduler(known_to_scheduler, f.key) for f in bodies)
        assert not untouched.cancelled()
    assert untouched.result(timeout=RESULT_TIMEOUT) is True
    flush(client)
    assert pending_of(runner) == set()
    runner.cancel()  # nothing left to cancel: fine


def test_ctrl_c_in_afar_get_cancels_that_block_only(client: Client) -> None:
    """A real SIGINT reaches the main thread while it waits in ``afar.get``.

    Python's own handler (``signal.default_int_handler``) raises KeyboardInterrupt; it is armed
    only while the main thread is inside the ``with``, so that a signal sent too late cannot
    interrupt pytest itself.
    """
    main_started, main_gate = new_gate_name(), new_gate_name()
    other_started, other_gate = new_gate_name(), new_gate_name()
    runner = afar.get(timeout=RESULT_TIMEOUT)
    outcome: dict[str, Any] = {}
    armed = threading.Event()
    stray: list[int] = []

    def on_sigint(signum: int, frame: Any) -> None:
        if armed.is_set():
            signal.default_int_handler(signum, frame)
        stray.append(signum)

    def other_thread() -> None:
        try:
            with runner, remotely:
                import distributed

                distributed.Event(other_started).set()
                released = distributed.Event(other_gate).wait(GATE_TIMEOUT)
            outcome["released"] = released
        except BaseException as error:
            outcome["error"] = error

    def press_ctrl_c() -> None:
        if not Event(main_started, client=client).wait(GATE_TIMEOUT):
            return
        time.sleep(PRESS_AFTER_SECONDS)  # the user's reaction time, not a synchronisation
        outcome["futures"] = pending_of(runner)
        if armed.is_set():
            outcome["sent"] = time.monotonic()
            os.kill(os.getpid(), signal.SIGINT)

    other = threading.Thread(target=other_thread)
    presser = threading.Thread(target=press_ctrl_c)
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with gates(client, main_gate, other_gate):
            other.start()
            assert Event(other_started, client=client).wait(GATE_TIMEOUT)
            presser.start()
            armed.set()
            try:
                main_line = lineno() + 1
                with runner, remotely:
                    import distributed

                    distributed.Event(main_started).set()
                    waited = distributed.Event(main_gate).wait(GATE_TIMEOUT)  # noqa: F841
            except KeyboardInterrupt:
                raised = time.monotonic()
            else:
                pytest.fail("afar.get returned: the SIGINT never interrupted it")
            finally:
                armed.clear()
            assert raised - outcome["sent"] < CTRL_C_SECONDS
            main_prefix = f"afar-{here(main_line)}-"
            (main,) = [f for f in outcome["futures"] if f.key.startswith(main_prefix)]
            (others,) = [f for f in outcome["futures"] if f is not main]
            assert main.status == "cancelled"
            flush(client)
            assert not client.run_on_scheduler(known_to_scheduler, main.key)
            # The other thread's block of the same Run goes on.
            assert not others.done()
    finally:
        armed.clear()
        if presser.is_alive():
            presser.join(GATE_TIMEOUT)
        # A signal sent after the main thread left the with is handled (as stray) by now.
        signal.signal(signal.SIGINT, previous)
    assert stray == []
    other.join(RESULT_TIMEOUT)
    assert not other.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    assert outcome["released"] is True
    assert others.status == "finished"
    # The interrupted thread, its client and its Run work as before.
    with runner, remotely:
        afterwards = "fine"
    assert afterwards == "fine"


def test_a_cancelled_afar_get_raises_dasks_cancelled_error(client: Client) -> None:
    started, gate = new_gate_name(), new_gate_name()
    runner = afar.get(timeout=RESULT_TIMEOUT)

    def cancel_when_started() -> None:
        if Event(started, client=client).wait(GATE_TIMEOUT):
            time.sleep(PRESS_AFTER_SECONDS)  # afar.get has been waiting a while: not a sync
            runner.cancel()

    canceller = threading.Thread(target=cancel_when_started)
    try:
        with gates(client, gate):
            canceller.start()
            with pytest.raises(CancelledError) as raised:  # noqa: SIM117 - afar.run comes first
                with runner, remotely:
                    import distributed

                    distributed.Event(started).set()
                    value = distributed.Event(gate).wait(GATE_TIMEOUT)
    finally:
        canceller.join(GATE_TIMEOUT)
    assert isinstance(raised.value, FutureCancelledError)
    assert "value" not in locals()  # nothing was bound
