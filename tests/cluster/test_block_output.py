"""Live output, unwatched failures, retries and floods of real afar blocks, end to end (issue 3).

``test_output_capture.py`` tests the machinery with plain ``client.submit``; here every block is a
``with afar.run, remotely:`` (or ``afar.get``) in this file, and what the user would see is what
reaches this process's ``sys.stdout`` and ``sys.stderr`` (``watching()``, on top of
``capsys``). Blocks tag their lines with a fresh token, so a test finds its own lines whatever
else the shared client prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _remote_helpers import (
    GATE_TIMEOUT,
    RESULT_TIMEOUT,
    RecordingSink,
    flush,
    label,
    lineno,
    new_gate_name,
)
from distributed import Client, Event, Variable
from distributed.diagnostics.plugin import SchedulerPlugin

import afar
from afar import remotely
from afar._sinks import NOTICE_PREFIX
from afar._stream import TOPIC_PREFIX, router_for, topic_for
from afar._worker.output import BATCH_MAX_CHARS, BATCH_SECONDS, MAX_BLOCK_CHARS, STDERR, STDOUT

THIS_FILE = str(Path(__file__))
THIS_SOURCE = Path(__file__).read_text().splitlines()

# The live-output case: a block that prints, sleeps this long, and prints again.
LIVE_SLEEP_SECONDS = 2
# "Promptly": a failure report or a first line reaches the client within this long.
PROMPT_SECONDS = 5
# Lines each of two blocks sharing a worker prints, in lockstep with the other.
ISOLATION_LINES = 20
# The flood: more characters than a block may send (MAX_BLOCK_CHARS), so the cap is reached.
FLOOD_LINES = 100_000
FLOOD_LINE = "{:049d}"  # 50 characters with its newline
FLOOD_SECONDS = 20
# Many at once: threads sharing one client, blocks each thread runs, lines each block prints.
THREADS = 10
BLOCKS_PER_THREAD = 10
LINES_PER_BLOCK = 5


def here(line: int) -> str:
    return label(__file__, line)


def line_marked(mark: str) -> int:
    """The number of the one line of this file whose comment ends with ``mark``."""
    found = [
        number
        for number, text in enumerate(THIS_SOURCE, 1)
        if text.rstrip().endswith(f"# {mark}") and "line_marked" not in text
    ]
    assert len(found) == 1, f"mark {mark!r} found on lines {found}"
    return found[0]


def new_tag() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


# -- what the user sees ---------------------------------------------------------------------------
class Console:
    """Everything written to this process's sys.stdout and sys.stderr, in order, as it arrives."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self._changed = threading.Condition()

    def add(self, stream: str, text: str) -> None:
        with self._changed:
            self.items.append((stream, text))
            self._changed.notify_all()

    def text(self, stream: str) -> str:
        with self._changed:
            return "".join(text for kind, text in self.items if kind == stream)

    def lines(self, stream: str, prefix: str) -> list[str]:
        """Complete lines of ``stream`` that start with ``prefix``, in order."""
        return [line for line in self.text(stream).splitlines() if line.startswith(prefix)]

    def ordered_lines(self) -> list[tuple[str, str]]:
        """(stream, line) for every complete line, in the order the writes happened."""
        pending = {STDOUT: "", STDERR: ""}
        lines = []
        with self._changed:
            items = list(self.items)
        for stream, text in items:
            *complete, pending[stream] = (pending[stream] + text).split("\n")
            lines += [(stream, line) for line in complete]
        return lines

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, timeout=timeout)

    def wait_for(self, stream: str, text: str, timeout: float = RESULT_TIMEOUT) -> bool:
        return self.wait_until(lambda: text in self.text(stream), timeout)


class _Tee(io.TextIOBase):
    """Stands in for sys.stdout or sys.stderr: passes writes on and tells the console."""

    def __init__(self, console: Console, stream: str, inner: Any) -> None:
        self._console = console
        self._stream = stream
        self._inner = inner

    def write(self, text: str) -> int:
        written = self._inner.write(text)
        self._console.add(self._stream, text)
        return written

    def flush(self) -> None:
        self._inner.flush()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._inner.encoding


@contextlib.contextmanager
def watching() -> Iterator[Console]:
    """Watch what reaches the client's sys.stdout/sys.stderr (passed on, e.g. to ``capsys``).

    Entered in the test's body, not in a fixture: pytest puts its own streams back in
    sys.stdout/sys.stderr when a test's call phase starts.
    """
    console = Console()
    saved = sys.stdout, sys.stderr
    sys.stdout = _Tee(console, STDOUT, saved[0])
    sys.stderr = _Tee(console, STDERR, saved[1])
    try:
        yield console
    finally:
        sys.stdout, sys.stderr = saved


def report_header(block_label: str) -> str:
    return f"{NOTICE_PREFIX}{block_label} failed:"


def report_of(console: Console, block_label: str) -> list[str]:
    """The lines of the one failure report of ``block_label`` on stderr (header first)."""
    lines = console.text(STDERR).splitlines()
    header = report_header(block_label)
    assert lines.count(header) == 1, console.text(STDERR)
    start = lines.index(header)
    end = start + 1
    while end < len(lines) and lines[end].startswith(f"{NOTICE_PREFIX} "):
        end += 1
    return lines[start:end]


def settle(console: Console) -> None:
    """Wait until every failure report due so far has been printed.

    Dask runs done-callbacks one at a time, in the order Futures finish (one callback thread):
    once the report of a block failing now is printed, the reports of blocks that finished
    before, and any second report of them, would have been printed too.
    """
    tag = new_tag()
    with afar.run, remotely:
        raise RuntimeError(f"sentinel {tag}")
    assert console.wait_for(STDERR, f"RuntimeError: sentinel {tag}\n")


# -- what the scheduler sees ----------------------------------------------------------------------
class EventCounter(SchedulerPlugin):
    """Counts the events published on afar's topics, per topic and per block, without a cap.

    ``Client.get_events`` shows only the last ``distributed.admin.low-level-log-length`` events
    of a topic; this sees every one.
    """

    def __init__(self) -> None:
        self.per_topic: Counter[str] = Counter()
        self.per_block: Counter[str] = Counter()

    def log_event(self, topic: str, msg: Any) -> None:
        if topic.startswith(TOPIC_PREFIX):
            self.per_topic[topic] += 1
            if isinstance(msg, dict):
                self.per_block[str(msg.get("block"))] += 1


def _read_counter(name: str, dask_scheduler: Any = None) -> tuple[dict[str, int], dict[str, int]]:
    plugin = dask_scheduler.plugins[name]
    return dict(plugin.per_topic), dict(plugin.per_block)


class EventCounts:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.name = f"afar-test-event-counter-{uuid.uuid4().hex}"
        client.register_plugin(EventCounter(), name=self.name)

    def close(self) -> None:
        self.client.unregister_scheduler_plugin(self.name)

    def of_topic(self, topic: str) -> int:
        return self.client.run_on_scheduler(_read_counter, self.name)[0].get(topic, 0)

    def of_block(self, key: str) -> int:
        return self.client.run_on_scheduler(_read_counter, self.name)[1].get(key, 0)


@pytest.fixture(scope="module")
def event_counts(client: Client) -> Iterator[EventCounts]:
    counts = EventCounts(client)
    yield counts
    counts.close()


def events_of(client: Client, block_label: str) -> list[dict[str, Any]]:
    """The output events of the blocks at ``block_label`` the scheduler still holds."""
    return [
        message
        for _, message in client.get_events(topic_for(client))
        if isinstance(message, dict) and message.get("label") == block_label
    ]


def sent_text(messages: list[dict[str, Any]], stream: str) -> str:
    return "".join(
        data for message in messages for kind, data in message["items"] if kind == stream
    )


def afar_keys(client: Client) -> list[str]:
    """Keys of afar's tasks this client still holds Futures of, once released Futures are gone.

    Future.release queues the release on the client's event loop: a call through the loop made
    after it runs after it.
    """
    gc.collect()
    client.sync(asyncio.sleep, 0)
    return [str(key) for key in list(client.futures) if str(key).startswith("afar-")]


# -- live output ----------------------------------------------------------------------------------
def test_first_line_arrives_while_the_block_still_runs(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    with watching() as console:
        tag = new_tag()
        started = time.monotonic()
        with afar.run, remotely:
            import sys
            from time import sleep

            print(f"{tag} first")
            print(f"{tag} first on stderr", file=sys.stderr)
            sleep(LIVE_SLEEP_SECONDS)
            print(f"{tag} second")
            finished = True
        assert console.wait_for(STDOUT, f"{tag} first\n", PROMPT_SECONDS)
        arrived = time.monotonic() - started
        # The block is still asleep: the line was sent before the block ended.
        assert not finished.done()
        assert f"{tag} second" not in console.text(STDOUT)
        assert arrived < LIVE_SLEEP_SECONDS
        assert finished.result(timeout=RESULT_TIMEOUT) is True
        # Everything a block wrote is on the client once its Future has completed.
        out, err = capsys.readouterr()
        assert [line for line in out.splitlines() if tag in line] == [
            f"{tag} first",
            f"{tag} second",
        ]
        assert [line for line in err.splitlines() if tag in line] == [f"{tag} first on stderr"]


def test_warnings_logging_and_direct_writes_reach_the_right_client_stream_once(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = new_tag()
    with afar.run, remotely:
        import logging
        import sys
        import warnings

        sys.stdout.write(f"{tag} out 1\n")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn(f"{tag} careful", UserWarning, stacklevel=1)  # block: warns
        # No handler anywhere above this logger: Python's last-resort handler prints it.
        logging.getLogger(f"afar_tests.last_resort.{tag}").warning("%s last resort", tag)
        sys.stderr.write(f"{tag} err direct\n")
        print(f"{tag} out 2")
        # A handler the block creates takes sys.stderr as it is in the block.
        logger = logging.getLogger(f"afar_tests.handler.{tag}")
        logger.propagate = False
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("handler %(message)s"))
        logger.addHandler(handler)
        logger.warning("%s own handler", tag)
        logger.removeHandler(handler)
        print(f"{tag} out 3", flush=True)
        done = True
    assert done.result(timeout=RESULT_TIMEOUT) is True
    out, err = capsys.readouterr()
    assert [line for line in out.splitlines() if tag in line] == [
        f"{tag} out 1",
        f"{tag} out 2",
        f"{tag} out 3",
    ]
    warned = f"{THIS_FILE}:{line_marked('block: warns')}: UserWarning: {tag} careful"
    assert [line for line in err.splitlines() if tag in line] == [
        warned,
        f"{tag} last resort",
        f"{tag} err direct",
        f"handler {tag} own handler",
    ]


# -- isolation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sinks", ["registered", "default"])
def test_two_blocks_on_one_worker_never_get_each_others_lines(client: Client, sinks: str) -> None:
    """Two blocks run at once in the two threads of one worker and print in lockstep.

    Each waits for the other's line ``i`` before printing line ``i + 1``: had they not run side
    by side, the first would have waited for the second until GATE_TIMEOUT and failed.
    """
    with watching() as console:
        address = sorted(client.scheduler_info()["workers"])[0]
        one_worker = remotely(workers=[address], allow_other_workers=False)
        tag, gate = new_tag(), new_gate_name()
        blocks = {}
        for name, other in (("A", "B"), ("B", "A")):
            with_line = lineno() + 1
            with afar.run, one_worker:
                import sys
                import threading

                import distributed

                assert distributed.Event(f"{gate}-start").wait(GATE_TIMEOUT)
                for i in range(ISOLATION_LINES):
                    print(f"{tag} {name} {i}")
                    print(f"{tag} {name} err {i}", file=sys.stderr)
                    distributed.Event(f"{gate}-{name}-{i}").set()
                    # Both print line i before either prints line i + 1.
                    assert distributed.Event(f"{gate}-{other}-{i}").wait(GATE_TIMEOUT)
                where = (distributed.get_worker().address, threading.get_ident())
            blocks[name] = where
        recording = {name: RecordingSink() for name in blocks}
        router = router_for(client)
        if sinks == "registered":
            for name, future in blocks.items():
                router.register(future.key, recording[name])
        try:
            Event(f"{gate}-start", client=client).set()
            ran = {name: future.result(timeout=RESULT_TIMEOUT) for name, future in blocks.items()}
        finally:
            for future in blocks.values():
                router.unregister(future.key)
        assert ran["A"][0] == ran["B"][0] == address
        assert ran["A"][1] != ran["B"][1]

        def expected(name: str, stream: str) -> list[str]:
            middle = "" if stream == STDOUT else "err "
            return [f"{tag} {name} {middle}{i}" for i in range(ISOLATION_LINES)]

        # The events each block sent carry its key, and only its own lines.
        messages = events_of(client, here(with_line))
        for name, future in blocks.items():
            own = [m for m in messages if m["block"] == future.key]
            assert [m["seq"] for m in own] == list(range(len(own)))
            for stream in (STDOUT, STDERR):
                assert sent_text(own, stream).splitlines() == expected(name, stream)
        for name in blocks:
            for stream in (STDOUT, STDERR):
                if sinks == "registered":
                    # Each sink got its block's lines, complete and in order, and nothing else.
                    assert recording[name].text(stream).splitlines() == expected(name, stream)
                    assert console.lines(stream, f"{tag} {name} ") == []
                else:
                    assert recording[name].items == []
                    assert console.lines(stream, f"{tag} {name} ") == expected(name, stream)


# -- failures nobody waits for --------------------------------------------------------------------
def test_unwatched_failure_is_reported_promptly_once_with_the_users_lines(client: Client) -> None:
    with watching() as console:
        started = time.monotonic()
        with_line = lineno() + 1
        with afar.run, remotely:
            numerator = 1
            ratio = numerator / 0  # unwatched: divides by zero
        # Kept, not waited for: dropping it would cancel the block (see test_stopping.py).
        assert ratio.key
        assert console.wait_for(STDERR, report_header(here(with_line)), PROMPT_SECONDS)
        assert time.monotonic() - started < PROMPT_SECONDS
        settle(console)
        report = report_of(console, here(with_line))
        assert all(line.startswith(NOTICE_PREFIX) for line in report)
        text = "\n".join(line.removeprefix(NOTICE_PREFIX) for line in report)
        shown = f'File "{THIS_FILE}", line {line_marked("unwatched: divides by zero")}'
        function = "test_unwatched_failure_is_reported_promptly_once_with_the_users_lines"
        assert f"{shown}, in {function}" in text, text
        assert "ratio = numerator / 0  # unwatched: divides by zero" in text
        assert report[-1].endswith("ZeroDivisionError: division by zero")
        # The report is about the user's block, not afar's or Dask's machinery.
        assert "afar/" not in text and "distributed/" not in text, text


def test_a_block_whose_input_failed_says_so(client: Client) -> None:
    with watching() as console:
        failing_line = lineno() + 1
        with afar.run, remotely:
            broken = {}["missing"]
        reading_line = lineno() + 1
        with afar.run, remotely:
            uses = [broken, 1]
        assert uses.key  # kept (dropping it would cancel the block), not waited for
        assert console.wait_for(STDERR, report_header(here(reading_line)))
        settle(console)
        report_of(console, here(failing_line))  # the failing block itself: reported once
        report = report_of(console, here(reading_line))
        assert report[1:] == [
            f"{NOTICE_PREFIX}  the block did not run: its input 'broken' failed with KeyError: "
            "'missing'"
        ]


def test_an_afar_get_failure_is_raised_not_reported(client: Client) -> None:
    with watching() as console:
        with pytest.raises(ZeroDivisionError):
            with_line = lineno() + 1
            with afar.get(timeout=RESULT_TIMEOUT), remotely:
                ratio = 1 / 0  # noqa: F841 - bound remotely
        settle(console)
        assert report_header(here(with_line)) not in console.text(STDERR)


def test_a_block_that_assigns_nothing_still_runs(client: Client) -> None:
    with watching() as console:
        name = f"afar-test-variable-{uuid.uuid4().hex}"
        tag = new_tag()
        with afar.run, remotely:
            __import__("distributed").Variable(name).set(tag)
        gc.collect()
        assert Variable(name, client=client).get(timeout=RESULT_TIMEOUT) == tag
        # One that fails is reported, though there is no Future anyone could look at.
        with_line = lineno() + 1
        with afar.run, remotely:
            raise LookupError(f"{tag} nothing assigned")
        gc.collect()
        assert console.wait_for(STDERR, f"LookupError: {tag} nothing assigned\n")
        assert report_of(console, here(with_line))[-1].endswith(
            f"LookupError: {tag} nothing assigned"
        )


# -- retries --------------------------------------------------------------------------------------
def test_a_retried_block_announces_its_restart_between_the_attempts(
    client: Client, tmp_path: Path
) -> None:
    with watching() as console:
        tag = new_tag()
        attempts_file = str(tmp_path / "attempts")
        with_line = lineno() + 1
        with afar.run("attempt"), remotely(retries=1):
            import pathlib
            import sys

            log = pathlib.Path(attempts_file)
            with log.open("a") as file:
                file.write("x")
            attempt = len(log.read_text())
            print(f"{tag} attempt {attempt}")
            print(f"{tag} err attempt {attempt}", file=sys.stderr)
            if attempt == 1:
                raise RuntimeError(f"{tag} first attempt fails")
        assert attempt.result(timeout=RESULT_TIMEOUT) == 2
        notice = f"{NOTICE_PREFIX}{here(with_line)} restarted on tcp://"
        shown = [
            (stream, line)
            for stream, line in console.ordered_lines()
            if tag in line or line.startswith(notice)
        ]
        assert shown[2][0] == STDERR and shown[2][1].startswith(notice), shown
        shown[2] = (STDERR, notice)
        assert shown == [
            (STDOUT, f"{tag} attempt 1"),
            (STDERR, f"{tag} err attempt 1"),
            (STDERR, notice),
            (STDOUT, f"{tag} attempt 2"),
            (STDERR, f"{tag} err attempt 2"),
        ]
        # The first attempt's error was retried, not reported.
        settle(console)
        assert report_header(here(with_line)) not in console.text(STDERR)


def test_a_block_failing_every_attempt_is_reported_once_after_the_last(
    client: Client, tmp_path: Path
) -> None:
    tag = new_tag()
    attempts_file = str(tmp_path / "attempts")
    with watching() as console:
        with_line = lineno() + 1
        with afar.run, remotely(retries=1):
            import pathlib

            log = pathlib.Path(attempts_file)
            with log.open("a") as file:
                file.write("x")
            attempt = len(log.read_text())
            print(f"{tag} attempt {attempt}")
            raise RuntimeError(f"{tag} attempt {attempt} fails")
        header = report_header(here(with_line))
        assert console.wait_for(STDERR, header)
        settle(console)
        notice = f"{NOTICE_PREFIX}{here(with_line)} restarted on tcp://"
        shown = [
            line
            for _, line in console.ordered_lines()
            if tag in line or line.startswith((notice, header))
        ]
        assert len(shown) == 5, shown
        assert shown[0] == f"{tag} attempt 1"
        assert shown[1].startswith(notice)
        assert shown[2] == f"{tag} attempt 2"
        assert shown[3] == header
        assert shown[4].endswith(f"RuntimeError: {tag} attempt 2 fails")
        report_of(console, here(with_line))  # once


# -- floods ---------------------------------------------------------------------------------------
def test_a_flood_finishes_promptly_in_few_events_and_is_capped(
    client: Client, event_counts: EventCounts
) -> None:
    with watching() as console:
        # The worker's own stdout gets all of it too (pytest captures it; noisy under -s).
        with_line = lineno() + 1
        with afar.run, remotely:
            import time

            start = time.perf_counter()
            for i in range(FLOOD_LINES):
                print(FLOOD_LINE.format(i))
            seconds = time.perf_counter() - start
        worker_seconds = seconds.result(timeout=FLOOD_SECONDS)
        flood = "".join(FLOOD_LINE.format(i) + "\n" for i in range(FLOOD_LINES))
        assert len(flood) > MAX_BLOCK_CHARS
        # What the client printed: the first MAX_BLOCK_CHARS characters, whole and in order,
        # and not one more.
        out = console.text(STDOUT)
        assert flood[:MAX_BLOCK_CHARS] in out
        assert flood[: MAX_BLOCK_CHARS + 1] not in out
        dropped = flood[MAX_BLOCK_CHARS:]
        err = console.text(STDERR)
        block = here(with_line)
        assert f"{NOTICE_PREFIX}{block}: output reached the limit of {MAX_BLOCK_CHARS:,} " in err
        assert (
            f"{NOTICE_PREFIX}{block}: dropped {len(dropped):,} characters "
            f"({dropped.count(chr(10)):,} lines) of output past the limit\n"
        ) in err
        # A few large events, not one per line: every one of them counted on the scheduler...
        bound = MAX_BLOCK_CHARS // BATCH_MAX_CHARS + worker_seconds / BATCH_SECONDS + 3
        sent = event_counts.of_block(seconds.key)
        assert 0 < sent <= bound
        # ... and all still in the scheduler's log of the topic: the sequence starts at 0.
        messages = [m for m in events_of(client, block) if m["block"] == seconds.key]
        assert [m["seq"] for m in messages] == list(range(sent))


def test_quiet_blocks_send_no_events(client: Client, event_counts: EventCounts) -> None:
    with watching() as console:
        tag = new_tag()
        topic = topic_for(client)
        router_for(client)  # subscribed already: nothing below is about the first block
        flush(client)
        counted, logged = event_counts.of_topic(topic), client.get_events(topic)
        quietly = remotely(quiet=True)
        with afar.run, quietly:
            import sys

            for i in range(100):
                print(f"{tag} {i}")
                print(f"{tag} err {i}", file=sys.stderr)
            printed = True
        assert printed.result(timeout=RESULT_TIMEOUT) is True
        # A quiet block's failure is still reported: that comes from its Future, not from events.
        with_line = lineno() + 1
        with afar.run, quietly:
            print(f"{tag} last words")
            raise ValueError(f"{tag} quiet failure")
        assert console.wait_for(STDERR, f"ValueError: {tag} quiet failure\n")
        assert event_counts.of_topic(topic) == counted
        assert client.get_events(topic) == logged
        assert tag not in console.text(STDOUT)
        assert report_of(console, here(with_line))[-1].endswith(f"ValueError: {tag} quiet failure")


# -- many at once ---------------------------------------------------------------------------------
def test_ten_threads_running_blocks_on_one_client_leak_nothing(
    cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with watching() as console:
        tag = new_tag()
        with Client(cluster, set_as_default=False) as shared:
            subscribed: list[str] = []
            subscribe = shared.subscribe_topic

            def counting_subscribe(topic: str, handler: Any) -> None:
                subscribed.append(topic)
                subscribe(topic, handler)

            monkeypatch.setattr(shared, "subscribe_topic", counting_subscribe)
            runner = afar.run(client=shared)
            problems: list[str] = []
            keys: list[str] = []

            def blocks(thread: int) -> None:
                try:
                    for index in range(BLOCKS_PER_THREAD):
                        prefix = f"{tag} {thread}-{index} "
                        with runner, remotely:
                            import sys

                            for i in range(LINES_PER_BLOCK):
                                print(f"{prefix}{i}")
                            print(f"{prefix}end", file=sys.stderr)
                            count = LINES_PER_BLOCK
                        keys.append(count.key)
                        assert count.result(timeout=RESULT_TIMEOUT) == LINES_PER_BLOCK
                        # Complete as soon as the Future is: output travels ahead of the result.
                        out = console.lines(STDOUT, prefix)
                        if out != [f"{prefix}{i}" for i in range(LINES_PER_BLOCK)]:
                            problems.append(f"{prefix}stdout: {out}")
                        if console.lines(STDERR, prefix) != [f"{prefix}end"]:
                            problems.append(f"{prefix}stderr: {console.lines(STDERR, prefix)}")
                except BaseException as error:  # reported below, with the thread's number
                    problems.append(f"thread {thread}: {error!r}")

            threads = [
                threading.Thread(target=blocks, args=(i,), daemon=True) for i in range(THREADS)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(RESULT_TIMEOUT)
            assert not any(thread.is_alive() for thread in threads)
            assert problems == []
            assert len(set(keys)) == THREADS * BLOCKS_PER_THREAD
            # Nothing but these blocks' lines, each exactly once: no line lost, doubled or crossed.
            shown = console.lines(STDOUT, tag)
            assert len(shown) == len(set(shown)) == THREADS * BLOCKS_PER_THREAD * LINES_PER_BLOCK
            # One subscription, made once.
            topic = topic_for(shared)
            assert subscribed == [topic]
            # Every event of every block arrived in sequence (none lost on the way).
            messages = [m for _, m in shared.get_events(topic)]
            for key in keys:
                seqs = [m["seq"] for m in messages if m["block"] == key]
                assert seqs == list(range(len(seqs))) and seqs, key
            # No Futures left: the Run forgets each block when it ends, so the client holds none.
            flush(shared)
            assert afar_keys(shared) == []
            # The router forgets each block once its Future is done and its last events are in
            # (they may arrive after the result on a busy machine): soon it holds nothing.
            deadline = time.monotonic() + RESULT_TIMEOUT
            while len(router_for(shared)) and time.monotonic() < deadline:
                flush(shared)
            assert len(router_for(shared)) == 0


def test_finished_blocks_leave_no_state_in_the_router(cluster: Any) -> None:
    with Client(cluster, set_as_default=False) as fresh:
        with afar.run(client=fresh), remotely:
            print("one line")
            printed = True
        assert printed.result(timeout=RESULT_TIMEOUT) is True
        flush(fresh)
        assert len(router_for(fresh)) == 0
