"""Bad input gets a clear error and sends nothing to the cluster (issue 6).

Each case is a small script, ``script.py``, written to a fresh folder and imported, whose
``case(address)`` does the wrong thing. A scheduler plugin records every graph any client sends:
after the error, a marker task flushes the client's messages, and the marker must be the only
graph the scheduler received. The table in README.md ("Bad input and its errors") is generated
from these very errors; `test_the_readme_table_shows_these_errors` keeps it exact.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import pytest
from _blocks import RESULT_TIMEOUT
from distributed import Client, default_client
from distributed.diagnostics.plugin import SchedulerPlugin

import afar

README = Path(__file__).parents[2] / "README.md"
SCRIPT_NAME = "script.py"
PRELUDE = """\
import asyncio
import threading

import afar
from afar import remotely
from distributed import Client, default_client
"""
PLUGIN_NAME = "afar-test-graph-recorder"
# Figures of the README table: where an error is raised.
AT_THE_CALL = "at the call"
AT_THE_WITH = "at the `with`"
BEFORE_SENDING = "at the end of the block, before sending"


@dataclass(frozen=True)
class Case:
    title: str
    written: str  # how the README shows it
    source: str  # defines case(address); indented as in a file
    error: type[BaseException]
    when: str


CASES = [
    Case(
        "No location",
        "with afar.run:",
        """\
        def case(address):
            with afar.run:
                x = 1
        """,
        afar.LocationError,
        AT_THE_WITH,
    ),
    Case(
        "A misspelled location",
        "with afar.get, remotly:",
        """\
        def case(address):
            with afar.get, remotly:
                x = 1
        """,
        afar.LocationNameError,
        AT_THE_WITH,
    ),
    Case(
        "A context manager after the location",
        "with afar.run, remotely, threading.Lock():",
        """\
        def case(address):
            with afar.run, remotely, threading.Lock():
                x = 1
        """,
        afar.LocationError,
        AT_THE_WITH,
    ),
    Case(
        "`:=` in the options of a location not imported",
        "with afar.run, locally(quiet=(q := True)):",
        """\
        def case(address):
            with afar.run, locally(quiet=(q := True)):
                x = 1
        """,
        afar.LocationError,
        AT_THE_WITH,
    ),
    Case(
        "Body on the header line",
        "with afar.run, remotely: x = 1",
        """\
        def case(address):
            with afar.run, remotely: x = 1
        """,
        afar.BlockSyntaxError,
        AT_THE_WITH,
    ),
    Case(
        "`return` at the top level",
        "return x",
        """\
        def case(address):
            with afar.run, remotely:
                x = 1
                return x
        """,
        afar.BlockSyntaxError,
        AT_THE_WITH,
    ),
    Case(
        "`yield` at the top level",
        "yield x",
        """\
        def case(address):
            with afar.run, remotely:
                x = 1
                yield x
        """,
        afar.BlockSyntaxError,
        AT_THE_WITH,
    ),
    Case(
        "`await` at the top level",
        "await asyncio.sleep(1)",
        """\
        async def case(address):
            async with afar.run, remotely:
                await asyncio.sleep(1)
        """,
        afar.BlockSyntaxError,
        AT_THE_WITH,
    ),
    Case(
        "A saved name that is not an identifier",
        'afar.run("not a name")',
        """\
        def case(address):
            afar.run("not a name")
        """,
        TypeError,
        AT_THE_CALL,
    ),
    Case(
        "A keyword as a saved name",
        'afar.get("class")',
        """\
        def case(address):
            afar.get("class")
        """,
        TypeError,
        AT_THE_CALL,
    ),
    Case(
        "Not a string",
        "afar.run(1)",
        """\
        def case(address):
            afar.run(1)
        """,
        TypeError,
        AT_THE_CALL,
    ),
    Case(
        "An option client.submit does not take",
        "remotely(unknown_kwarg=1)",
        """\
        def case(address):
            remotely(unknown_kwarg=1)
        """,
        TypeError,
        AT_THE_CALL,
    ),
    Case(
        "A time limit that is not a duration",
        'remotely(timeout="soon")',
        """\
        def case(address):
            remotely(timeout="soon")
        """,
        TypeError,
        AT_THE_CALL,
    ),
    Case(
        "An option afar sets itself",
        'remotely(key="mine")',
        """\
        def case(address):
            remotely(key="mine")
        """,
        afar.LocationError,
        AT_THE_CALL,
    ),
    Case(
        "A lock read by the block",
        "lock = threading.Lock() … with lock:",
        """\
        def case(address):
            with Client(address):
                lock = threading.Lock()
                with afar.run, remotely:
                    with lock:
                        x = 1
        """,
        afar.NotPicklableError,
        BEFORE_SENDING,
    ),
    Case(
        "A file open for writing read by the block",
        'log = open("log.txt", "w") … log.write("x")',
        """\
        def case(address):
            with Client(address), open(__file__ + ".log", "w") as log:
                with afar.run, remotely:
                    log.write("x")
        """,
        afar.NotPicklableError,
        BEFORE_SENDING,
    ),
    Case(
        "`data=` that is not a mapping",
        'afar.run(data=[("x", 1)])',
        """\
        def case(address):
            afar.run(data=[("x", 1)])
        """,
        TypeError,
        AT_THE_CALL,
    ),
    Case(
        "A closed client",
        "client.close() … remotely(client=client)",
        """\
        def case(address):
            client = Client(address)
            client.close()
            with afar.run, remotely(client=client):
                x = 1
        """,
        afar.ClientError,
        BEFORE_SENDING,
    ),
    Case(
        "The default client closed",
        "client.close() … remotely",
        """\
        def case(address):
            client = Client(address)
            client.close()
            with afar.run, remotely:
                x = 1
        """,
        afar.ClientError,
        BEFORE_SENDING,
    ),
    Case(
        "A plain `with` and an asynchronous client",
        "Client(address, asynchronous=True) … with afar.run, remotely:",
        """\
        async def case(address):
            async with Client(address, asynchronous=True):
                with afar.run, remotely:
                    x = 1
        """,
        afar.ClientError,
        BEFORE_SENDING,
    ),
]

_folders = itertools.count()


class GraphRecorder(SchedulerPlugin):
    """On the scheduler: the keys of every graph any client sends, in order."""

    def __init__(self) -> None:
        self.graphs: list[list[str]] = []

    def update_graph(self, scheduler, *, keys, **kwargs) -> None:
        self.graphs.append(sorted(str(key) for key in keys))


def _graphs_received(dask_scheduler) -> list[list[str]]:
    return dask_scheduler.plugins[PLUGIN_NAME].graphs


def _marker() -> str:
    return "flushed"


@pytest.fixture(scope="module")
def watcher(shared_cluster):
    """A client that is nobody's default: it records graphs and flushes, and sends no block."""
    # The conftest's fixture sends this module's functions and classes by value, but not the
    # methods of a class (cloudpickle finds them by reference, through the module): the whole
    # module goes by value while the plugin is sent.
    module = sys.modules[__name__]
    with Client(
        shared_cluster.scheduler.address, set_as_default=False, timeout=RESULT_TIMEOUT
    ) as client:
        cloudpickle.register_pickle_by_value(module)
        try:
            client.register_plugin(GraphRecorder(), name=PLUGIN_NAME)
        finally:
            cloudpickle.unregister_pickle_by_value(module)
        yield client


def run_case(case: Case, directory: Path, address: str) -> BaseException:
    """Write and import the case's script; run `case`; return what it raised."""
    folder = directory / f"case-{next(_folders)}"
    folder.mkdir()
    path = folder / SCRIPT_NAME
    path.write_text(PRELUDE + "\n\n" + textwrap.dedent(case.source))
    spec = importlib.util.spec_from_file_location(f"bad_input_case_{folder.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        outcome = module.case(address)
        if asyncio.iscoroutine(outcome):
            asyncio.run(asyncio.wait_for(outcome, RESULT_TIMEOUT))
        elif hasattr(outcome, "__next__"):
            next(outcome)
    except BaseException as error:
        return error
    raise AssertionError(f"{case.title}: no error")


def shown_message(error: BaseException, directory: Path) -> str:
    """The message as the README shows it: the script's folder left out."""
    text = str(error)
    for folder in sorted(directory.glob("case-*"), key=lambda p: len(str(p)), reverse=True):
        text = text.replace(f"{folder}/", "")
    return text


@pytest.mark.parametrize("case", CASES, ids=[case.title for case in CASES])
def test_bad_input_gets_its_error_and_sends_nothing(case, shared_cluster, watcher, tmp_path):
    with pytest.raises(ValueError):
        default_client()  # no client but those the case makes: afar could use none of ours
    before = len(watcher.run_on_scheduler(_graphs_received))

    error = run_case(case, tmp_path, shared_cluster.scheduler.address)

    assert type(error) is case.error, repr(error)
    message = shown_message(error, tmp_path)
    assert message and message == message.strip()
    # What the client may have queued has reached the scheduler once the marker has run.
    marker = watcher.submit(_marker, pure=False)
    assert marker.result(timeout=RESULT_TIMEOUT) == "flushed"
    graphs = watcher.run_on_scheduler(_graphs_received)[before:]
    assert graphs == [[marker.key]], f"{case.title} sent {graphs}"


def readme_table(directory: Path, address: str) -> str:
    """The Markdown table of the cases, with the errors raised now."""
    rows = [
        "| Case | Written | Raised | When | Message |",
        "| --- | --- | --- | --- | --- |",
    ]
    for case in CASES:
        error = run_case(case, directory, address)
        raised = f"{type(error).__module__}.{type(error).__qualname__}"
        raised = raised.replace("afar.errors.", "afar.").replace("builtins.", "")
        rows.append(
            f"| {case.title} | `{case.written}` | `{raised}` | {case.when} | "
            f"{_cell(shown_message(error, directory))} |"
        )
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    """Text in a table cell: line breaks and the indentation after them kept, pipes escaped."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("|", "\\|")
    lines = text.split("\n")
    kept = [lines[0]]
    for line in lines[1:]:
        stripped = line.lstrip(" ")
        kept.append("&nbsp;" * (len(line) - len(stripped)) + stripped)
    return "<br>".join(kept)


def test_the_readme_table_shows_these_errors(shared_cluster, tmp_path):
    table = readme_table(tmp_path, shared_cluster.scheduler.address)
    assert table in README.read_text(), (
        "README.md's table under '## Bad input and its errors' differs from the errors raised "
        f"now; replace it with:\n\n{table}"
    )


def test_a_file_open_for_reading_is_refused_before_sending(shared_cluster, watcher, tmp_path):
    case = Case(
        "A file open for reading read by the block",
        "source = open(path) … source.readline()",
        """\
        def case(address):
            with Client(address), open(__file__) as source:
                with afar.get, remotely:
                    first_line = source.readline()
        """,
        afar.NotPicklableError,
        BEFORE_SENDING,
    )
    before = len(watcher.run_on_scheduler(_graphs_received))
    try:
        error = run_case(case, tmp_path, shared_cluster.scheduler.address)
    finally:
        sent = watcher.run_on_scheduler(_graphs_received)[before:]
    assert type(error) is case.error, repr(error)
    assert sent == []
