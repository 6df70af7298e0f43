"""Live output of blocks: worker-side capture to client-side sinks, on a real LocalCluster."""

from __future__ import annotations

import asyncio
import pickle
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from _remote_helpers import RecordingSink
from distributed import Client, Event

import afar._worker.output
import afar._worker.routing
from afar._shipping import ensure_runtime
from afar._sinks import restart_notice
from afar._stream import router_for, topic_for
from afar._worker.output import (
    BATCH_MAX_CHARS,
    BATCH_SECONDS,
    DISPLAY,
    MAX_BLOCK_CHARS,
    STDERR,
    STDOUT,
    capture_output,
)

# Workers need no afar, nor this file: what they run travels by value.
cloudpickle.register_pickle_by_value(afar._worker.output)
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(autouse=True, scope="module")
def afar_plugin(client: Client) -> None:
    """afar's worker plugin, whose setup puts the routers that capture needs on every worker
    (a client's first block registers it)."""
    ensure_runtime(client)


# Bound on every wait for the cluster; far above what any step takes.
WAIT = 30
LABEL = "test_output_capture.py:1"
FLOOD_LINES = 100_000
FLOOD_LINE = "{:049d}"  # 50 characters with its newline: the flood passes MAX_BLOCK_CHARS
# A flood is a few large events, not one per line: how long it may take, at most.
FLOOD_SECONDS = 15


class ByValue:
    """A function that travels by value even inside a task.

    Dask pickles a task with ``pickle`` and switches to cloudpickle only when the module of the
    task object itself is registered for pickling by value, so a registered function inside a
    task would still travel by reference (and be imported on the worker).
    """

    def __init__(self, function: Any) -> None:
        self.function = function
        self.__name__ = function.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return pickle.loads, (cloudpickle.dumps(self.function),)


def submit(client: Client, function: Any, *args: Any, **options: Any) -> Any:
    return client.submit(ByValue(function), *args, **options)


class Block:
    """A function submitted as a block would be: sink registered first, unregistered when done."""

    def __init__(self, client: Client, function: Any, *args: Any, **submit_options: Any) -> None:
        self.key = f"afar-test-{uuid.uuid4().hex}"
        self.sink = RecordingSink()
        self.router = router_for(client)
        self.router.register(self.key, self.sink)
        self.at_done: list[tuple[str, Any]] | None = None
        self.unregistered = threading.Event()
        self.future = submit(
            client, function, topic_for(client), self.key, *args, key=self.key, **submit_options
        )
        self.future.add_done_callback(self._done)

    def _done(self, future: Any) -> None:
        self.at_done = list(self.sink.items)
        self.router.unregister(self.key)
        self.unregistered.set()

    def result(self) -> Any:
        result = self.future.result(timeout=WAIT)
        assert self.unregistered.wait(WAIT)
        return result


# What the workers run: each function travels by value, with the names of this file it uses.


def write_lines(topic: str, block: str, lines: list[tuple[str, str]]) -> None:
    with capture_output(topic, block, LABEL):
        for stream, line in lines:
            print(line, file=sys.stdout if stream == STDOUT else sys.stderr)


def write_mixed(topic: str, block: str) -> None:
    with capture_output(topic, block, LABEL):
        print("out 1")
        print("err 1", file=sys.stderr)
        sys.stdout.write("out 2 ")
        sys.stdout.write("continued\n")
        sys.stderr.write("err 2\n")
        sys.stdout.writelines(["out 3\n", "out 4\n"])
        print("no newline", end="")


def wait_between_lines(topic: str, block: str, go: str) -> bool:
    with capture_output(topic, block, LABEL):
        print("first")
        released = Event(go).wait(WAIT)
        print("second")
    return released


def warn_and_log(topic: str, block: str) -> None:
    import logging
    import warnings

    with capture_output(topic, block, LABEL):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn(f"careful {block}", UserWarning, stacklevel=1)
        # No handler anywhere: Python's last-resort handler writes to sys.stderr.
        logging.getLogger("afar_tests.unconfigured").warning("last resort %s", block)
        # A handler made inside the block holds sys.stderr as it is there.
        logger = logging.getLogger(f"afar_tests.handler.{block}")
        logger.propagate = False
        handler = logging.StreamHandler()
        logger.addHandler(handler)
        try:
            logger.warning("handler %s", block)
        finally:
            logger.removeHandler(handler)
        root = logging.getLogger()
        saved = root.handlers[:], root.level
        try:
            logging.basicConfig(format="basic %(message)s", force=True)
            logging.getLogger("afar_tests.basic").warning("configured %s", block)
        finally:
            root.handlers[:], level = saved
            root.setLevel(level)


def rendezvous_and_write(topic: str, block: str, mine: str, other: str, count: int) -> str:
    from distributed import get_worker

    def background() -> None:
        print(f"background {block}")

    with capture_output(topic, block, LABEL):
        Event(mine).set()
        assert Event(other).wait(WAIT), "the other block never started"
        for i in range(count):
            print(f"{block} {i}")
            if i % 10 == 0:
                # Threads the block starts are not the block's: their output stays on the worker.
                thread = threading.Thread(target=background, daemon=True)
                thread.start()
                thread.join()
            time.sleep(0.001)
    return get_worker().address


def flood(topic: str, block: str, lines: int) -> float:
    import os

    # Keep the worker's own stdout quiet: the copy goes to a file instead.
    saved = sys.stdout
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - closed below, after the block
    try:
        start = time.perf_counter()
        with capture_output(topic, block, LABEL):
            for i in range(lines):
                print(FLOOD_LINE.format(i))
        return time.perf_counter() - start
    finally:
        sys.stdout.close()
        sys.stdout = saved


def tee_to_string(topic: str, block: str, quiet: bool, texts: list[str]) -> str:
    import io

    saved = sys.stdout
    sys.stdout = worker_stream = io.StringIO()
    try:
        with capture_output(topic, block, LABEL, quiet=quiet) as emitter:
            for text in texts:
                print(text)
            emitter.send(DISPLAY, {"text/plain": "shown"})
    finally:
        sys.stdout = saved
    return worker_stream.getvalue()


def display_between(topic: str, block: str) -> str:
    with capture_output(topic, block, LABEL) as emitter:
        print("before")
        emitter.send(DISPLAY, {"text/plain": "42", "text/html": "<b>42</b>"})
        print("after")
        try:
            emitter.send(DISPLAY, object())
        except TypeError:
            print("refused")
    return "done"


def fail_first_time(topic: str, block: str, flag: str) -> str:
    with capture_output(topic, block, LABEL):
        print("attempt")
        first = Event(flag)
        if not first.is_set():
            first.set()
            raise RuntimeError("first attempt fails")
        print("second attempt")
    return "ok"


def print_then_fail(topic: str, block: str) -> None:
    with capture_output(topic, block, LABEL):
        print("last words")
        raise ValueError(block)


def nested(topic: str, outer: str, inner: str) -> None:
    with capture_output(topic, outer, LABEL):
        print("outer 1")
        with capture_output(topic, inner, LABEL):
            print("inner")
        print("outer 2")


def afar_modules(topic: str, block: str) -> list[str]:
    with capture_output(topic, block, LABEL):
        print("no afar here")
    return [name for name in sys.modules if name == "afar" or name.startswith("afar.")]


def two_versions(
    topic: str, keys: list[str], routing_source: str, output_source: str, rounds: int
) -> list[int]:
    """Alternate this router version with another one in one process; chain depth per round.

    The other version's plugin is played by its own ``install_routers``/``remove_routers``.
    """
    import types

    routing = types.ModuleType("afar_routing_other_version")
    exec(compile(routing_source, "<afar routing, other version>", "exec"), routing.__dict__)
    other = types.ModuleType("afar_output_other_version")
    other.active_captures = routing.active_captures  # what its import line would bind
    exec(compile(output_source, "<afar output, other version>", "exec"), other.__dict__)
    routing.install_routers()
    depths = []
    try:
        for i in range(rounds):
            with other.capture_output(topic, keys[2 * i], LABEL):
                print(f"other {i}")
            with capture_output(topic, keys[2 * i + 1], LABEL):
                print(f"this {i}")
            stream, depth = sys.stdout, 0
            while stream is not None:
                depth += 1
                stream = vars(stream).get("_afar_inner") if hasattr(stream, "__dict__") else None
            depths.append(depth)
    finally:
        routing.remove_routers()
    return depths


def under_a_wrapper(topic: str, block: str) -> str:
    """Run a block after something else put its own stream wrapper in front of afar's router."""

    class Wrapper:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def write(self, text: str) -> int:
            return self.inner.write(text)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    import io

    saved = sys.stdout
    sys.stdout = io.StringIO()
    try:
        with capture_output(topic, f"{block}-warm-up", LABEL):
            pass  # installs a router in front of the StringIO
        worker_stream = sys.stdout.__dict__["_afar_inner"]
        sys.stdout = Wrapper(sys.stdout)
        with capture_output(topic, block, LABEL):
            print("once")
    finally:
        sys.stdout = saved
    return worker_stream.getvalue()


# Tests


def test_stdout_and_stderr_keep_their_streams_and_order(client: Client) -> None:
    block = Block(client, write_mixed)
    block.result()
    assert block.sink.text(STDOUT) == "out 1\nout 2 continued\nout 3\nout 4\nno newline"
    assert block.sink.text(STDERR) == "err 1\nerr 2\n"


def test_output_without_sink_goes_to_client_streams(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"afar-test-{uuid.uuid4().hex}"
    router_for(client)
    lines = [(STDOUT, f"hello {key}"), (STDERR, f"oops {key}")]
    submit(client, write_lines, topic_for(client), key, lines, key=key).result(timeout=WAIT)
    out, err = capsys.readouterr()
    assert f"hello {key}\n" in out
    assert f"oops {key}\n" in err
    assert key not in out.replace(f"hello {key}", "")


def test_output_arrives_while_the_block_runs(client: Client) -> None:
    go = f"afar-test-go-{uuid.uuid4().hex}"
    block = Block(client, wait_between_lines, go)
    # The worker waits for us: "first" can only be here if it was sent before the block ended.
    assert block.sink.wait_for(STDOUT, "first\n")
    assert not block.future.done()
    assert "second" not in block.sink.text(STDOUT)
    Event(go, client=client).set()
    assert block.result() is True
    assert block.sink.text(STDOUT) == "first\nsecond\n"


def test_warnings_and_logging_are_captured(client: Client) -> None:
    block = Block(client, warn_and_log)
    block.result()
    err = block.sink.text(STDERR)
    assert f"UserWarning: careful {block.key}" in err
    assert f"last resort {block.key}\n" in err
    assert f"handler {block.key}\n" in err
    assert f"basic configured {block.key}\n" in err
    assert block.sink.text(STDOUT) == ""


def test_blocks_sharing_a_worker_get_only_their_own_lines(client: Client) -> None:
    worker = next(iter(client.scheduler_info()["workers"]))
    ready = [f"afar-test-ready-{uuid.uuid4().hex}" for _ in range(2)]
    count = 200
    options = {"workers": [worker], "allow_other_workers": False}
    first = Block(client, rendezvous_and_write, ready[0], ready[1], count, **options)
    second = Block(client, rendezvous_and_write, ready[1], ready[0], count, **options)
    assert first.result() == second.result() == worker
    for block in (first, second):
        expected = "".join(f"{block.key} {i}\n" for i in range(count))
        assert block.sink.text(STDOUT) == expected
        assert block.sink.text(STDERR) == ""


def test_flood_is_batched_and_capped(client: Client) -> None:
    block = Block(client, flood, FLOOD_LINES)
    start = time.perf_counter()
    worker_seconds = block.result()
    elapsed = time.perf_counter() - start
    assert elapsed < FLOOD_SECONDS

    expected = "".join(FLOOD_LINE.format(i) + "\n" for i in range(FLOOD_LINES))
    assert len(expected) > MAX_BLOCK_CHARS
    assert block.sink.text(STDOUT) == expected[:MAX_BLOCK_CHARS]
    dropped = expected[MAX_BLOCK_CHARS:]
    err = block.sink.text(STDERR)
    assert f"output reached the limit of {MAX_BLOCK_CHARS:,} characters" in err
    assert f"dropped {len(dropped):,} characters ({dropped.count(chr(10)):,} lines)" in err

    # The scheduler's event log holds a few large events, not one per line.
    events = [msg for _, msg in client.get_events(topic_for(client)) if msg["block"] == block.key]
    bound = MAX_BLOCK_CHARS // BATCH_MAX_CHARS + worker_seconds / BATCH_SECONDS + 3
    assert len(events) <= bound
    assert [msg["seq"] for msg in events] == list(range(len(events)))
    assert all(
        sum(len(data) for kind, data in msg["items"] if kind in (STDOUT, STDERR)) <= BATCH_MAX_CHARS
        for msg in events
    )


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_sends_nothing_and_worker_streams_keep_output(client: Client, quiet: bool) -> None:
    texts = ["plain", "caf\u00e9 \u2713", "lone \udcff"]
    block = Block(client, tee_to_string, quiet, texts)
    assert block.result() == "".join(f"{text}\n" for text in texts)
    sent = [msg for _, msg in client.get_events(topic_for(client)) if msg["block"] == block.key]
    if quiet:
        assert block.sink.items == []
        assert sent == []
    else:
        # A lone surrogate cannot travel as UTF-8: it arrives escaped.
        assert block.sink.text(STDOUT) == "plain\ncaf\u00e9 \u2713\nlone \\udcff\n"
        assert block.sink.items[-1] == (DISPLAY, {"text/plain": "shown"})


def test_display_goes_in_order_with_text(client: Client) -> None:
    block = Block(client, display_between)
    assert block.result() == "done"
    assert block.sink.items == [
        (STDOUT, "before\n"),
        (DISPLAY, {"text/plain": "42", "text/html": "<b>42</b>"}),
        (STDOUT, "after\nrefused\n"),  # a refused display sends nothing, flushes nothing
    ]


def test_display_without_sink_prints_plain_text(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    key = f"afar-test-{uuid.uuid4().hex}"
    router_for(client)
    submit(client, display_between, topic_for(client), key, key=key).result(timeout=WAIT)
    assert capsys.readouterr().out == "before\n42\nafter\nrefused\n"


def test_restart_is_announced_before_the_new_attempt(client: Client) -> None:
    flag = f"afar-test-flag-{uuid.uuid4().hex}"
    block = Block(client, fail_first_time, flag, retries=1)
    assert block.result() == "ok"
    items = block.sink.items
    notices = [i for i, (kind, text) in enumerate(items) if "restarted on tcp://" in text]
    assert len(notices) == 1
    notice = notices[0]
    assert items[notice][0] == STDERR
    assert items[notice][1].startswith(restart_notice(LABEL, "")[:-1])
    assert "".join(text for _, text in items[:notice]) == "attempt\n"
    assert "".join(text for _, text in items[notice + 1 :]) == "attempt\nsecond attempt\n"


def test_output_arrives_before_the_future_completes(client: Client) -> None:
    blocks = [
        Block(client, write_lines, [(STDOUT, f"line {i}"), (STDERR, "last")]) for i in range(30)
    ]
    for i, block in enumerate(blocks):
        block.result()
        # Taken in the Future's done-callback, where the core unregisters the sink.
        assert block.at_done == [(STDOUT, f"line {i}\n"), (STDERR, "last\n")]


def test_output_of_a_failed_block_arrives_before_its_error(client: Client) -> None:
    blocks = [Block(client, print_then_fail) for _ in range(10)]
    for block in blocks:
        with pytest.raises(ValueError, match=block.key):
            block.future.result(timeout=WAIT)
        assert block.unregistered.wait(WAIT)
        assert block.at_done == [(STDOUT, "last words\n")]


def test_nested_capture_in_one_thread(client: Client) -> None:
    inner = RecordingSink()
    inner_key = f"afar-test-{uuid.uuid4().hex}"
    router = router_for(client)
    router.register(inner_key, inner)
    try:
        outer = Block(client, nested, inner_key)
        outer.result()
    finally:
        router.unregister(inner_key)
    assert outer.sink.text(STDOUT) == "outer 1\nouter 2\n"
    assert inner.text(STDOUT) == "inner\n"


def test_workers_need_no_afar(client: Client) -> None:
    block = Block(client, afar_modules)
    assert block.result() == []
    assert block.sink.text(STDOUT) == "no afar here\n"


def test_two_router_versions_share_a_worker(client: Client) -> None:
    source = Path(afar._worker.routing.__file__).read_text()
    version = f"\n_ROUTER_VERSION = {afar._worker.routing._ROUTER_VERSION}\n"
    assert version in source
    other_routing = source.replace(version, "\n_ROUTER_VERSION = 1_000\n")
    output_source = Path(afar._worker.output.__file__).read_text()
    routing_import = "\nfrom afar._worker.routing import active_captures\n"
    assert routing_import in output_source
    other_output = output_source.replace(routing_import, "\n")
    rounds = 4
    router = router_for(client)
    keys = [f"afar-test-{uuid.uuid4().hex}" for _ in range(2 * rounds)]
    sinks = [RecordingSink() for _ in keys]
    for key, sink in zip(keys, sinks):
        router.register(key, sink)
    try:
        future = submit(
            client,
            two_versions,
            topic_for(client),
            keys,
            other_routing,
            other_output,
            rounds,
            pure=False,
        )
        depths = future.result(timeout=WAIT)
    finally:
        for key in keys:
            router.unregister(key)
    # Each block's line arrives once, whichever router version is on top.
    for i in range(rounds):
        assert sinks[2 * i].text(STDOUT) == f"other {i}\n"
        assert sinks[2 * i + 1].text(STDOUT) == f"this {i}\n"
    # Alternating versions does not stack routers without end.
    assert len(set(depths[1:])) == 1


def worker_streams() -> list[str]:
    return [repr(sys.stdout), repr(sys.stderr)]


def test_the_worker_plugin_installs_the_routers_and_its_teardown_keeps_others(
    client: Client,
) -> None:
    from afar._worker.runtime import Runtime

    name = f"afar-test-{uuid.uuid4().hex}"
    client.register_plugin(Runtime({}), name=name)
    try:
        for streams in client.run(ByValue(worker_streams)).values():
            assert all("afar output router" in stream for stream in streams)
    finally:
        client.unregister_worker_plugin(name)
    # afar's own plugin is still registered: its routers stay and keep forwarding.
    for streams in client.run(ByValue(worker_streams)).values():
        assert all("afar output router" in stream for stream in streams)
    block = Block(client, write_lines, [(STDOUT, "still forwarded")])
    block.result()
    assert block.sink.text(STDOUT) == "still forwarded\n"


def test_a_wrapper_in_front_of_the_router_does_not_double_output(client: Client) -> None:
    block = Block(client, under_a_wrapper)
    assert block.result() == "once\n"
    assert block.sink.text(STDOUT) == "once\n"


def test_capture_outside_a_worker_does_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    stdout = sys.stdout
    with capture_output("afar-output-nobody", "block", LABEL) as emitter:
        assert sys.stdout is stdout
        print("here")
        emitter.send(DISPLAY, {"text/plain": "ignored"})
    assert capsys.readouterr().out == "here\n"


def test_ten_threads_share_one_client(cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    threads, rounds, lines = 10, 5, 20
    with Client(cluster, set_as_default=False) as client:
        subscriptions = []
        subscribe = client.subscribe_topic

        def counting_subscribe(topic: str, handler: Any) -> None:
            subscriptions.append(topic)
            subscribe(topic, handler)

        monkeypatch.setattr(client, "subscribe_topic", counting_subscribe)
        routers = []
        problems: list[str] = []

        def loop(thread: int) -> None:
            for round_ in range(rounds):
                routers.append(router_for(client))
                script = [
                    (STDERR if i % 4 == 3 else STDOUT, f"t{thread} r{round_} {i}")
                    for i in range(lines)
                ]
                block = Block(client, write_lines, script)
                block.result()
                for stream in (STDOUT, STDERR):
                    expected = "".join(f"{text}\n" for kind, text in script if kind == stream)
                    if block.sink.text(stream) != expected:
                        problems.append(f"{block.key} {stream}: {block.sink.text(stream)!r}")

        workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT)
        assert not any(worker.is_alive() for worker in workers)
        assert problems == []
        assert len(routers) == threads * rounds
        assert all(router is routers[0] for router in routers)
        assert subscriptions == [topic_for(client)]
        assert len(routers[0]) == 0


def test_asynchronous_client(cluster: Any) -> None:
    async def run() -> RecordingSink:
        async with Client(
            cluster.scheduler_address, asynchronous=True, set_as_default=False
        ) as client:
            router = router_for(client)
            sink = RecordingSink()
            key = f"afar-test-{uuid.uuid4().hex}"
            router.register(key, sink)
            lines = [(STDOUT, "async")]
            future = submit(client, write_lines, topic_for(client), key, lines, key=key)
            await asyncio.wait_for(future, WAIT)
            router.unregister(key)
            assert len(router) == 0
            return sink

    sink = asyncio.run(run())
    assert sink.text(STDOUT) == "async\n"
