"""With statements users write (issue 10), on a LocalCluster of worker processes: context
managers of the caller before the run, a misspelled location, a walrus in a comprehension.

Every block here names ``remotely`` bare, never imported, as the README does.
"""

# ruff: noqa: F821 - `remotely` needs no import

from __future__ import annotations

import contextlib
import warnings

import pytest
from _remote_helpers import RESULT_TIMEOUT, label, lineno
from distributed import Future, get_task_stream, performance_report

import afar


def here(line: int) -> str:
    return label(__file__, line)


class Probe:
    """A client-side context manager that records what it sees of the block around it."""

    def __init__(self, results: dict[str, object], graph_log, block_line: int) -> None:
        self.results = results
        self.graph_log = graph_log
        self.block_line = block_line
        self.seen: list[tuple[str, object]] = []

    def __enter__(self) -> Probe:
        sent = self.graph_log.tasks_of(here(self.block_line))
        self.seen.append(("enter: tasks sent", len(sent)))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.seen.append(("exit: error", exc_type))
        self.seen.append(("exit: results", dict(self.results)))


def test_a_context_manager_before_afar_get_exits_after_the_values(client, graph_log):
    results: dict[str, object] = {}
    line = lineno() + 2
    probe = Probe(results, graph_log, line)
    with probe, afar.get(data=results, timeout=RESULT_TIMEOUT), remotely:
        value = 6 * 7
    assert value == 42
    assert probe.seen == [
        ("enter: tasks sent", 0),  # entered before the block is sent
        ("exit: error", None),
        ("exit: results", {"value": 42}),  # exited once afar.get has its values
    ]


def test_a_context_manager_before_afar_run_exits_after_the_futures_are_bound(client, graph_log):
    results: dict[str, object] = {}
    line = lineno() + 2
    probe = Probe(results, graph_log, line)
    with probe, afar.run(data=results), remotely:
        value = 6 * 7
    (_, error), (_, bound) = probe.seen[1:]
    assert error is None and isinstance(bound["value"], Future)
    assert value.result(timeout=RESULT_TIMEOUT) == 42


def test_the_remote_error_reaches_the_context_managers_as_itself(client, graph_log):
    results: dict[str, object] = {}
    line = lineno() + 2
    probe = Probe(results, graph_log, line)
    with (
        pytest.raises(KeyError, match="missing"),
        probe,
        warnings.catch_warnings(),
        afar.get(timeout=RESULT_TIMEOUT),
        remotely,
    ):
        value = {}["missing"]  # noqa: F841 - raises on the worker
    assert probe.seen[1] == ("exit: error", KeyError)


def test_several_context_managers_nest_around_the_block(client):
    order = []

    @contextlib.contextmanager
    def step(name):
        order.append(f"enter {name}")
        yield
        order.append(f"exit {name}")

    with step("outer"), step("inner"), afar.get(timeout=RESULT_TIMEOUT), remotely:
        total = sum(range(4))
    assert total == 6
    assert order == ["enter outer", "enter inner", "exit inner", "exit outer"]


def test_get_task_stream_before_afar_get_sees_the_block_s_task(client):
    """A Dask context manager of the client, around the block: it records the block's task."""
    line = lineno() + 1
    with get_task_stream(client) as stream, afar.get(timeout=RESULT_TIMEOUT), remotely:
        streamed = "done"
    assert streamed == "done"
    assert any(task["key"].startswith(f"afar-{here(line)}-") for task in stream.data)


def test_performance_report_before_afar_get(client, tmp_path):
    """The form of the issue: Dask's report covers the block's task."""
    report = tmp_path / "report.html"
    with performance_report(filename=str(report)), afar.get(timeout=RESULT_TIMEOUT), remotely:
        reported = "done"
    assert reported == "done"
    assert report.stat().st_size > 0


def test_a_misspelled_location_is_a_name_error_and_sends_nothing(client, graph_log):
    line = lineno() + 1
    with pytest.raises(NameError) as raised, afar.get, remotly:
        never = 1  # noqa: F841
    assert isinstance(raised.value, afar.LocationNameError)
    message = str(raised.value)
    assert "name 'remotly' is not defined. Did you mean: 'remotely'?" in message
    assert "remotely, locally or later" in message
    assert f"line {line}" in message
    assert graph_log.tasks_of(here(line)) == {}


def test_a_walrus_in_a_comprehension_is_the_saved_name(client):
    values = [1, 2, 3]
    with afar.get(timeout=RESULT_TIMEOUT), remotely:
        values = [v * 1 for v in values]
        any((hit := v) > 1 for v in values)
    assert hit == 2
