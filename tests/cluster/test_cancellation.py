"""Cancelling blocks: ``run.cancel()``, Ctrl-C while ``afar.get`` waits, a cancelled ``afar.get``.

Blocks here wait on a ``distributed.Event`` (a gate) that the test opens only after it has
cancelled them: Dask cannot stop a running thread, so every test opens its gates at the end to
give the workers' threads back to the other tests.
"""

from __future__ import annotations

import os
import re
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
    armed_sigint,
    body_key_pattern,
    flush,
    label,
    lineno,
    new_gate_name,
)
from distributed import Client, Event
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


def _states_of(pattern: str, dask_scheduler: Any = None) -> dict[str, str]:
    return {
        str(key): task.state
        for key, task in dask_scheduler.tasks.items()
        if re.fullmatch(pattern, str(key))
    }


def bodies(client: Client, line: int) -> dict[str, str]:
    """The scheduler's body tasks of the with-statement at ``line``: key -> state."""
    return client.run_on_scheduler(_states_of, body_key_pattern(here(line)).pattern)


def tasks_of(client: Client, line: int) -> dict[str, str]:
    """Its bodies and the tasks that fetch their names (``<body key>-<name>``): key -> state."""
    pattern = rf"{body_key_pattern(here(line)).pattern}(-\w+)?"
    return client.run_on_scheduler(_states_of, pattern)


def test_cancel_cancels_the_pending_blocks_of_that_run(client: Client) -> None:
    started, gate = new_gate_name(), new_gate_name()
    runner = afar.run("left", "right")
    other = afar.run()
    with gates(client, gate):
        first_line = lineno() + 1
        with runner, remotely:
            import distributed

            distributed.Event(started).set()
            opened = distributed.Event(gate).wait(GATE_TIMEOUT)
            left, right = opened, not opened
        getters = [left, right]
        second_line = lineno() + 1
        with runner, remotely:
            left, right = right, left  # waits for the first block: queued, not running
        other_line = lineno() + 1
        with other, remotely:
            import distributed

            untouched = distributed.Event(gate).wait(GATE_TIMEOUT)
        assert Event(started, client=client).wait(GATE_TIMEOUT)  # the first block is running
        flush(client)
        # The Run's two blocks, neither finished: one body each, with a task per name.
        assert list(bodies(client, first_line).values()) == ["processing"]
        assert list(bodies(client, second_line).values()) == ["waiting"]
        assert len(tasks_of(client, first_line)) == len(tasks_of(client, second_line)) == 3
        runner.cancel()
        flush(client)
        # The names of both blocks: their tasks depend on the bodies.
        for future in [*getters, left, right]:
            assert future.status == "cancelled", future
            with pytest.raises(CancelledError):
                future.result(timeout=RESULT_TIMEOUT)
        # Both bodies are gone from the scheduler, not merely their names' tasks.
        assert tasks_of(client, first_line) == tasks_of(client, second_line) == {}
        # The other Run's block runs on.
        assert not untouched.cancelled()
        assert len(bodies(client, other_line)) == 1
    assert untouched.result(timeout=RESULT_TIMEOUT) is True
    runner.cancel()  # nothing left to cancel: fine
    flush(client)
    assert tasks_of(client, first_line) == tasks_of(client, second_line) == {}


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
    lines: dict[str, int] = {}

    def other_thread() -> None:
        try:
            lines["other"] = lineno() + 1
            with runner, remotely:
                import distributed

                distributed.Event(other_started).set()
                released = distributed.Event(other_gate).wait(GATE_TIMEOUT)
            outcome["released"] = released
        except BaseException as error:
            outcome["error"] = error

    other = threading.Thread(target=other_thread, daemon=True)
    with armed_sigint() as sigint:

        def press_ctrl_c() -> None:
            if not Event(main_started, client=client).wait(GATE_TIMEOUT):
                return
            time.sleep(PRESS_AFTER_SECONDS)  # the user's reaction time, not a synchronisation
            # What runs of the Run's two blocks when the key is pressed.
            outcome["main"] = bodies(client, lines["main"])
            outcome["other"] = bodies(client, lines["other"])
            if sigint.armed.is_set():
                outcome["sent"] = time.monotonic()
                os.kill(os.getpid(), signal.SIGINT)

        presser = threading.Thread(target=press_ctrl_c, daemon=True)
        try:
            with gates(client, main_gate, other_gate):
                other.start()
                assert Event(other_started, client=client).wait(GATE_TIMEOUT)
                presser.start()
                sigint.armed.set()
                try:
                    lines["main"] = lineno() + 1
                    with runner, remotely:
                        import distributed

                        distributed.Event(main_started).set()
                        waited = distributed.Event(main_gate).wait(GATE_TIMEOUT)  # noqa: F841
                except KeyboardInterrupt:
                    raised = time.monotonic()
                else:
                    pytest.fail("afar.get returned: the SIGINT never interrupted it")
                finally:
                    sigint.armed.clear()
                assert raised - outcome["sent"] < CTRL_C_SECONDS
                (main_state,) = outcome["main"].values()
                ((others, others_state),) = outcome["other"].items()
                assert main_state == others_state == "processing"
                flush(client)
                # The interrupted block is gone from the scheduler while its gate is still shut.
                assert bodies(client, lines["main"]) == {}
                # The other thread's block of the same Run goes on.
                assert bodies(client, lines["other"]) == {others: "processing"}
                assert "released" not in outcome and "error" not in outcome
        finally:
            sigint.armed.clear()
            # Before the handler is restored: a signal the presser sent after the main thread
            # left the with is handled (as stray) by the time it has ended.
            if presser.is_alive():
                presser.join(GATE_TIMEOUT)
    assert sigint.stray == []
    other.join(RESULT_TIMEOUT)
    assert not other.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    assert outcome["released"] is True  # its block finished and afar.get bound its value
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

    canceller = threading.Thread(target=cancel_when_started, daemon=True)
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
