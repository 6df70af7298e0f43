"""What other clients of the scheduler can see of a block, and for how long (issue 6).

A block's output travels as Dask events on the topic ``afar-output-<client id>``; the scheduler
keeps the last events of every topic for any client to read with ``Client.get_events``.
``remotely(quiet=True)`` sends no output at all. When a client leaves, Dask clears the topic
named after the client (``events-cleanup-delay`` later, an hour by default), not afar's.
"""

from __future__ import annotations

import pickle
import time
import uuid

import pytest
from _blocks import RESULT_TIMEOUT
from _on_scheduler import afar_keys
from _processes import wait_until
from distributed import Client

import afar
from afar import remotely

TOPIC_PREFIX = "afar-output-"
# Seconds. The test's own events-cleanup-delay, instead of Dask's hour.
CLEANUP_DELAY = 1.0
# Containers looked into when searching the scheduler's logs.
MAX_SEARCH_DEPTH = 12
# Waiting for Dask's clean-up to have run: the delay, and the scheduler's loop on a busy machine.
CLEANUP_TIMEOUT = CLEANUP_DELAY + 10.0


def _held(value, needle: bytes, depth: int = 0) -> bool:
    """Whether `needle` is in `value`: its bytes, strings, containers or pickled form."""
    if depth > MAX_SEARCH_DEPTH:
        return False
    if isinstance(value, (bytes, bytearray, memoryview)):
        return needle in bytes(value)
    if isinstance(value, str):
        return needle in value.encode()
    if isinstance(value, dict):
        return _held(list(value.items()), needle, depth + 1)
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_held(item, needle, depth + 1) for item in value)
    try:
        return needle in pickle.dumps(value)
    except Exception:
        return _held(getattr(value, "__dict__", None) or (), needle, depth + 1)


def _in_scheduler_logs(needle: str, dask_scheduler=None) -> dict[str, bool]:
    """Where the scheduler still holds `needle` (private attributes of distributed 2026.8)."""
    found = {"tasks": any(needle in str(key) for key in dask_scheduler.tasks)}
    found["messages to workers"] = any(
        _held(list(stream.recent_message_log), needle.encode())
        for stream in dask_scheduler.stream_comms.values()
    )
    found["erred tasks"] = any(
        needle in task.exception_text or needle in task.traceback_text
        for task in dask_scheduler.erred_tasks
    )
    return found


def _error_of_a_failed_block(prefix: str) -> str:
    """Run a block that fails; return its error's text, leaving nothing that holds its Future.

    In a function of its own: on Python < 3.13 a Future bound in a frame stays alive as long as
    the frame (see test_load.py); and read with `exception()`, not raised (idem).
    """
    with afar.run, remotely:
        failed = None
        raise ValueError(f"{prefix}-raised")
    return str(failed.exception(timeout=RESULT_TIMEOUT))


def texts(events) -> str:
    """All text of afar output events, in order."""
    return "".join(
        data
        for _, message in events
        if isinstance(message, dict) and "afar" in message
        for _, data in message["items"]
        if isinstance(data, str)
    )


def everything(client) -> str:
    """Every event of every topic on the scheduler, as text."""
    return repr(client.get_events())


@pytest.fixture
def other_client(shared_cluster):
    """Another client of the same scheduler (another user, another notebook)."""
    with Client(
        shared_cluster.scheduler.address, set_as_default=False, timeout=RESULT_TIMEOUT
    ) as client:
        yield client


def test_another_client_reads_a_blocks_output_unless_it_is_quiet(shared_client, other_client):
    shown, hidden = f"shown-{uuid.uuid4().hex}", f"hidden-{uuid.uuid4().hex}"
    with afar.get, remotely:
        print(shown)
        done = True
    with afar.get, remotely(quiet=True):
        print(hidden)
        done = True
    assert done
    topic = TOPIC_PREFIX + shared_client.id
    # The output reached the scheduler before the block's result reached this client.
    assert topic in other_client.get_events()
    assert texts(other_client.get_events(topic)) == f"{shown}\n"
    assert hidden not in everything(other_client)


def test_output_stays_on_the_scheduler_after_its_client_left(deployment):
    deployment.start_scheduler(
        afar_installed=False,
        config={"distributed.scheduler.events-cleanup-delay": f"{CLEANUP_DELAY}s"},
    )
    deployment.start_worker("worker", afar_installed=False)
    other = deployment.client(set_as_default=False)
    secret = f"secret-{uuid.uuid4().hex}"
    with deployment.client() as leaving:
        with afar.get, remotely:
            print(secret)
            done = True
        assert done
        topic, own_topic = TOPIC_PREFIX + leaving.id, leaving.id
        leaving.log_event(own_topic, "an event on the client's own topic")
        wait_until(lambda: other.get_events(own_topic), RESULT_TIMEOUT, "The event arriving")
    assert leaving.status == "closed"

    # Dask clears the topic named after the client, once the delay has passed...
    wait_until(
        lambda: not other.get_events(own_topic),
        CLEANUP_TIMEOUT,
        "The scheduler clearing the leaving client's own topic",
    )
    # ...but not afar's: the output stays until the scheduler stops (or newer events push it
    # out of the topic's last `distributed.admin.low-level-log-length`).
    time.sleep(CLEANUP_DELAY)
    assert texts(other.get_events(topic)) == f"{secret}\n"


def test_a_released_block_leaves_its_variables_and_error_in_dasks_logs(shared_client, other_client):
    """Not afar's doing: Dask keeps recent messages and failures on the scheduler for debugging.

    The scheduler keeps the last `distributed.admin.low-level-log-length` (1000) batches of
    messages it sent to each worker, tasks included (with the pickled variables a block read),
    and the text of the last `distributed.diagnostics.erred-tasks.max-history` (100) failures.
    """
    variable, error_prefix = f"variable-{uuid.uuid4().hex}", f"error-{uuid.uuid4().hex}"
    error_text = f"{error_prefix}-raised"  # made on the worker: in no message to a worker
    with afar.get, remotely:
        length = len(variable)
    assert length == len(variable)
    assert _error_of_a_failed_block(error_prefix) == error_text
    wait_until(lambda: not shared_client.run_on_scheduler(afar_keys), RESULT_TIMEOUT, "Release")

    assert other_client.run_on_scheduler(_in_scheduler_logs, variable) == {
        "tasks": False,
        "messages to workers": True,
        "erred tasks": False,
    }
    assert other_client.run_on_scheduler(_in_scheduler_logs, error_text) == {
        "tasks": False,
        "messages to workers": False,
        "erred tasks": True,
    }
