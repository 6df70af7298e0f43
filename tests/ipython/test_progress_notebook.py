"""Progress in a real Jupyter kernel: a notebook executed headless (nbclient), cell by cell.

The cluster runs in this test's process, outside the kernel, as a user's cluster would; the
kernel connects a Client to it. What the saved notebook keeps, and the display messages the
kernel sent while the cells ran, are checked.
"""

from __future__ import annotations

import re
from typing import Any

import nbformat
import pytest
from distributed import LocalCluster
from kernels import RecordingClient, client_options, install_kernel, kernel_environment

COUNTS = re.compile(r"([\d,]+)/([\d,]+) tasks")

pytestmark = pytest.mark.slow

SETUP = """\
import os

from distributed import Client

import afar
from afar import remotely

client = Client(os.environ["AFAR_TEST_SCHEDULER"])
"""

# About 140 tasks, 100 of them of 30 ms, on two threads: a second or two of work.
DASK_WORK = """\
with afar.get("total", "expected_tasks"), remotely:
    import time

    import dask
    import dask.array as da

    def slow(block):
        time.sleep(0.03)
        return block

    work = da.ones((200, 200), chunks=(20, 20)).map_blocks(slow).sum()
    expected_tasks = len(dask.optimize(work)[0].__dask_graph__())
    total = float(work.compute())
total, expected_tasks
"""

TQDM_BAR = """\
with afar.get, remotely:
    import time

    from tqdm import tqdm

    for _ in tqdm(range(20)):
        time.sleep(0.1)
"""

NO_PROGRESS = DASK_WORK.replace("remotely:", "remotely(progress=False):")
QUIET = DASK_WORK.replace("remotely:", "remotely(quiet=True):")
# afar.run: the cell finishes at once, the block's progress arrives while the next cell runs.
RUN_IN_BACKGROUND = DASK_WORK.replace('afar.get("total", "expected_tasks")', "afar.run").replace(
    "total, expected_tasks\n", ""
)
WAIT_FOR_IT = "float(total.result(timeout=60))"
CELLS = [SETUP, DASK_WORK, TQDM_BAR, NO_PROGRESS, QUIET, RUN_IN_BACKGROUND, WAIT_FOR_IT]


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, RecordingClient]:
    home = tmp_path_factory.mktemp("jupyter")
    install_kernel(home)
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0"
    ) as cluster:
        client = RecordingClient(notebook, **client_options(home))
        with kernel_environment(home, AFAR_TEST_SCHEDULER=cluster.scheduler_address):
            client.execute()
    nbformat.write(notebook, home / "executed.ipynb")  # for a look when a test fails
    return notebook, client


def texts(output: Any) -> str:
    """An output's text: a stream's, or a display's plain text."""
    if output.output_type == "stream":
        return output.text
    return str(output.get("data", {}).get("text/plain", ""))


def shows_progress(kind: str, content: dict[str, Any]) -> bool:
    return kind in ("display_data", "update_display_data") and "tasks (" in str(content["data"])


def progress_messages(client: RecordingClient, index: int) -> list[dict[str, Any]]:
    """The progress display the cell made, then every update of it, in order."""
    made = [
        content
        for cell, kind, content in client.received
        if cell == index and kind == "display_data" and shows_progress(kind, content)
    ]
    assert len(made) == 1, made
    display_id = made[0]["transient"]["display_id"]
    updates = [
        content
        for _, kind, content in client.received
        if kind == "update_display_data" and content["transient"]["display_id"] == display_id
    ]
    return made + updates


def test_the_dask_work_of_a_block_shows_its_progress_in_its_cell(executed):
    notebook, client = executed
    shown = progress_messages(client, 1)
    counts = [
        tuple(int(n.replace(",", "")) for n in COUNTS.search(m["data"]["text/plain"]).groups())
        for m in shown
    ]
    (result,) = [o for o in notebook.cells[1].outputs if o.output_type == "execute_result"]
    total, expected_tasks = eval(result.data["text/plain"])
    assert total == 40_000.0
    # Dask's own count of the tasks the computation submitted, as the scheduler sees them: the
    # tasks of the optimised graph and the one that finalises the result.
    (tasks,) = {all_ for _, all_ in counts}
    assert expected_tasks <= tasks <= expected_tasks + 1
    done = [d for d, _ in counts]
    assert done == sorted(done)
    assert len(counts) >= 2, "the progress was not updated while the block ran"
    assert done[0] < tasks and done[-1] == tasks
    # One display, updated in place: the saved cell keeps it once, as a final summary.
    saved = [o for o in notebook.cells[1].outputs if "tasks (" in texts(o)]
    assert len(saved) == 1
    assert f"{tasks:,}/{tasks:,} tasks (100%)" in texts(saved[0])


def test_a_tqdm_bar_in_a_block_is_one_line_updated_in_place(executed):
    notebook, client = executed
    bars = [o for o in notebook.cells[2].outputs if "%|" in texts(o)]
    assert len(bars) == 1, [texts(o) for o in notebook.cells[2].outputs]
    (line,) = {texts(bars[0])}
    assert "100%" in line and "20/20" in line and "\n" not in line.strip()
    # It was drawn while the block ran, not only at its end.
    updates = [
        content
        for cell, kind, content in client.received
        if cell == 2 and kind == "update_display_data" and "%|" in str(content["data"])
    ]
    assert len(updates) >= 2


@pytest.mark.parametrize("index", [3, 4], ids=["progress=False", "quiet=True"])
def test_no_progress_when_turned_off_or_quiet(executed, index):
    notebook, client = executed
    (result,) = [o for o in notebook.cells[index].outputs if o.output_type == "execute_result"]
    assert eval(result.data["text/plain"])[0] == 40_000.0
    assert not [m for cell, kind, m in client.received if cell == index and shows_progress(kind, m)]


def test_a_background_block_shows_its_progress_in_its_cell_after_the_cell_ends(executed):
    notebook, client = executed
    assert notebook.cells[6].outputs[-1].data["text/plain"] == "40000.0"
    (late,) = [o for o in notebook.cells[5].outputs if o.output_type == "display_data"]
    assert re.search(r"([\d,]+)/\1 tasks \(100%\)", texts(late)), texts(late)
    display_id = late.metadata.get("transient", {}).get("display_id") or next(
        content["transient"]["display_id"]
        for cell, kind, content in client.received
        if cell == 5 and kind == "display_data"
    )
    updates = [
        content
        for _, kind, content in client.received
        if kind == "update_display_data" and content["transient"]["display_id"] == display_id
    ]
    assert len([u for u in updates if "tasks (" in str(u["data"])]) >= 2


def test_the_notebook_ran_without_errors(executed):
    notebook, _ = executed
    errors = [o for c in notebook.cells for o in c.outputs if o.output_type == "error"]
    assert not errors
    nbformat.validate(notebook)
