"""examples/afar-in-jupyter.ipynb executed headless in a real Jupyter kernel: what the saved
notebook keeps, cell by cell.

The kernel runs ``sys.executable`` from a kernel spec this test writes in a temporary
``JUPYTER_PATH``, with a temporary IPython directory: nothing of the machine's own Jupyter set-up
is used, so it runs the same on a fresh CI machine.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from kernels import (
    RecordingClient,
    client_options,
    install_kernel,
    kernel_environment,
    shown_text,
)

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "afar-in-jupyter.ipynb"
# Bound of the whole notebook's run.
NOTEBOOK_BUDGET_SECONDS = 90
INDICATOR_TEXT = "running on the cluster"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, RecordingClient, float]:
    """The example notebook, executed once for the module, in a kernel for sys.executable."""
    home = tmp_path_factory.mktemp("jupyter")
    install_kernel(home)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = RecordingClient(notebook, **client_options(home))
    with kernel_environment(home):
        started = time.monotonic()
        client.execute()
        elapsed = time.monotonic() - started
    nbformat.write(notebook, home / "executed.ipynb")  # for a look when a test fails
    return notebook, client, elapsed


def code_cell(notebook: Any, snippet: str) -> tuple[int, Any]:
    """The index and the code cell whose source contains ``snippet``."""
    found = [
        (index, cell)
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and snippet in cell.source
    ]
    assert len(found) == 1, f"{len(found)} cells contain {snippet!r}"
    return found[0]


def test_the_notebook_runs_within_its_budget(executed):
    notebook, _, elapsed = executed
    nbformat.validate(notebook)
    assert elapsed < NOTEBOOK_BUDGET_SECONDS


def test_only_the_failing_cell_has_an_error(executed):
    notebook, _, _ = executed
    failed = [
        cell.source
        for cell in notebook.cells
        if cell.cell_type == "code" and any(o.output_type == "error" for o in cell.outputs)
    ]
    assert len(failed) == 1
    assert "ratio = 1 / 0" in failed[0]


def test_a_block_in_a_cell(executed):
    notebook, _, _ = executed
    _, cell = code_cell(notebook, "worker_pid = os.getpid()")
    results = [o for o in cell.outputs if o.output_type == "execute_result"]
    assert [o.data["text/plain"] for o in results] == ["True"]


def test_a_dataframe_shows_as_html_computed_on_the_worker(executed):
    notebook, _, _ = executed
    _, cell = code_cell(notebook, "df.assign(total=df.x + df.y)")
    (shown,) = [o for o in cell.outputs if o.output_type == "display_data" and o.data]
    assert "<table" in shown.data["text/html"]
    assert "total" in shown.data["text/html"]
    assert "total" in shown.data["text/plain"]


def test_markdown_shows_as_markdown(executed):
    notebook, _, _ = executed
    _, cell = code_cell(notebook, 'Markdown("**computed** on a worker")')
    (shown,) = [o for o in cell.outputs if o.output_type == "display_data" and o.data]
    assert shown.data["text/markdown"] == "**computed** on a worker"


def test_display_in_a_block_shows_each_object_in_the_cell(executed):
    """IPython's display() (the builtin a notebook has) on a worker: rendered in the cell, in
    order, not printed as the objects' repr."""
    notebook, _, _ = executed
    _, cell = code_cell(notebook, 'display(Markdown(f"**step {step}**')
    shown = [o.data for o in cell.outputs if o.output_type == "display_data" and o.data]
    assert [data.get("text/markdown") for data in shown] == [
        "**step 0**, displayed on a worker",
        "**step 1**, displayed on a worker",
    ]
    # Not printed: IPython's own display without a shell (the worker's) would print the repr.
    assert [o for o in cell.outputs if o.output_type == "stream"] == []


def test_afar_get_shows_a_transient_indicator_while_it_waits(executed):
    notebook, client, _ = executed
    index, _ = code_cell(notebook, 'Markdown("**computed** on a worker")')
    shown = [
        content
        for cell_index, kind, content in client.received
        if cell_index == index
        and kind == "display_data"
        and INDICATOR_TEXT in content["data"].get("text/plain", "")
    ]
    assert len(shown) == 1, "the indicator was not shown while afar.get waited"
    display_id = shown[0]["transient"]["display_id"]
    emptied = [
        content
        for _, kind, content in client.received
        if kind == "update_display_data" and content["transient"]["display_id"] == display_id
    ]
    assert [content["data"] for content in emptied] == [{}]
    saved = [cell.outputs for cell in notebook.cells if cell.cell_type == "code"]
    assert INDICATOR_TEXT not in json.dumps(saved)


def test_cell_and_line_magics(executed):
    notebook, _, _ = executed
    _, cell = code_cell(notebook, "twice = %afar -g total * 2")
    (result,) = [o for o in cell.outputs if o.output_type == "execute_result"]
    assert result.data["text/plain"] == "(12, 9, 3)"


def test_a_line_magic_ending_with_a_semicolon_shows_nothing_issue_10(executed):
    notebook, _, _ = executed
    _, cell = code_cell(notebook, "thrice = %afar -g total * 3;")
    # Nothing shown; a slow wait may leave the emptied indicator (no data), which shows nothing.
    assert [o for o in cell.outputs if o.output_type == "execute_result" or o.get("data")] == []
    (shown,) = [c for c in notebook.cells if c.cell_type == "code" and c.source == "thrice"]
    (result,) = [o for o in shown.outputs if o.output_type == "execute_result"]
    assert result.data["text/plain"] == "18"  # assigned all the same


def test_a_context_manager_before_afar_get_runs_around_the_block_issue_10(executed):
    notebook, _, _ = executed
    _, cell = code_cell(notebook, "with get_task_stream() as stream, afar.get, remotely:")
    (result,) = [o for o in cell.outputs if o.output_type == "execute_result"]
    assert result.data["text/plain"] == "(42, True)"


def test_a_magic_made_with_new_magic(executed):
    notebook, _, _ = executed
    _, cell = code_cell(notebook, "%%with_retries")
    assert "hello from" in shown_text(cell)
    assert "total=6" in shown_text(cell)


def test_printed_lines_land_in_the_cell_of_their_block(executed):
    notebook, client, _ = executed
    _, cell = code_cell(notebook, 'print("started on a worker")')
    later_index, later = code_cell(notebook, "status.result(timeout=60)")
    text = shown_text(cell)
    assert "started on a worker" in text
    assert "finished, two seconds later" in text
    assert text.index("started on a worker") < text.index("finished, two seconds later")
    assert "finished" not in shown_text(later)
    assert "'done'" in shown_text(later)
    # The second line arrived while the later cell was still running, and went to the block's.
    assert any(
        cell_index == later_index
        and kind == "update_display_data"
        and "finished, two seconds later" in json.dumps(content)
        for cell_index, kind, content in client.received
    )


def test_afar_get_error_is_raised_in_its_cell(executed):
    notebook, _, _ = executed
    _, cell = code_cell(notebook, "ratio = 1 / 0")
    (error,) = [o for o in cell.outputs if o.output_type == "error"]
    assert error.ename == "ZeroDivisionError"
    assert "ratio = 1 / 0" in shown_text(cell)


def test_unwatched_failure_is_reported_in_the_cell_of_its_block(executed):
    notebook, _, _ = executed
    _, cell = code_cell(notebook, "result = undefined_name + 1")
    _, later = code_cell(notebook, "wait(result, timeout=60)")
    text = shown_text(cell)
    assert "[afar]" in text
    assert "NameError" in text
    assert "undefined_name" in text
    assert "NameError" not in shown_text(later)


def test_time_and_timeit_cells_with_a_block(executed):
    notebook, _, _ = executed
    _, timed = code_cell(notebook, "%%time\n")
    assert "285" in shown_text(timed)
    assert "Wall time" in shown_text(timed)
    _, timeit = code_cell(notebook, "%%timeit")
    assert "per loop" in shown_text(timeit)


def test_cells_whose_blocks_finished_get_no_placeholder(executed):
    """No empty display for late output in a cell whose afar.get has its values. (Its waiting
    indicator, shown when the wait passes half a second on a busy machine, is not one.)"""
    notebook, client, _ = executed
    index, cell = code_cell(notebook, "%%time\n")
    created = [
        content["data"]
        for cell_index, kind, content in client.received
        if cell_index == index and kind == "display_data"
    ]
    assert [data for data in created if INDICATOR_TEXT not in data.get("text/plain", "")] == []
    assert all(o.data == {} for o in cell.outputs if o.output_type == "display_data")
