"""The notebook's interrupt (the toolbar's stop button) stops a block that afar.get waits for.

A real Jupyter kernel runs the cells (nbclient), and nbclient's kernel manager interrupts it as
JupyterLab does (SIGINT to the kernel). The cluster runs in this test's process, outside the
kernel: a cluster started in the kernel would share its process group and get the SIGINT too.
The worker has ONE thread: a block left running would make the next cell's block wait.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from typing import Any

import nbclient
import nbformat
import pytest
from distributed import Client, LocalCluster
from kernels import (
    ANSI_ESCAPE,
    CELL_TIMEOUT_SECONDS,
    client_options,
    install_kernel,
    kernel_environment,
    shown_text,
)

# The next cell's block must run within this long of the interrupt (the stopped one would run
# for a minute).
FREE_WITHIN_SECONDS = 10

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, int]]:
    """ONE worker with ONE thread, in this process: (scheduler address, worker pid)."""
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        (pid,) = client.run(os.getpid).values()
        yield cluster.scheduler_address, pid


class InterruptingClient(nbclient.NotebookClient):
    """Executes a notebook; interrupts the kernel once a cell prints ``trigger``."""

    def __init__(self, *args: Any, trigger: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trigger = trigger
        self.seen = asyncio.Event()

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        if msg["msg_type"] == "stream" and self.trigger in msg["content"].get("text", ""):
            self.seen.set()
        return super().process_message(msg, cell, cell_index)


def test_the_notebook_interrupt_stops_the_block(
    cluster: tuple[str, int], tmp_path_factory: pytest.TempPathFactory
) -> None:
    address, worker_pid = cluster
    tag = f"tick-{uuid.uuid4().hex}"
    cells = [
        f"import afar\nfrom distributed import Client\nclient = Client({address!r})",
        # The block: a minute of Python lines, unless it is stopped.
        "with afar.get, remotely:\n"
        "    import time\n"
        "    for step in range(6000):\n"
        f"        print({tag!r}, step)\n"
        "        time.sleep(0.01)\n"
        "    finished = True",
        f"with afar.get(timeout={FREE_WITHIN_SECONDS}), remotely:\n"
        "    import os\n"
        "    pid = os.getpid()\n"
        "print('next block on', pid, 'finished' in globals())",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    home = tmp_path_factory.mktemp("jupyter")
    install_kernel(home)
    runner = InterruptingClient(
        notebook, trigger=f"{tag} 0", allow_errors=True, **client_options(home)
    )

    async def execute() -> None:
        async with runner.async_setup_kernel():
            await runner.async_execute_cell(notebook.cells[0], 0)
            running = asyncio.ensure_future(runner.async_execute_cell(notebook.cells[1], 1))
            await asyncio.wait_for(runner.seen.wait(), CELL_TIMEOUT_SECONDS)
            await runner.km.interrupt_kernel()
            await asyncio.wait_for(running, CELL_TIMEOUT_SECONDS)
            await runner.async_execute_cell(notebook.cells[2], 2)

    with kernel_environment(home):
        asyncio.run(execute())
    nbformat.write(notebook, home / "executed.ipynb")  # for a look when the test fails

    block_cell, next_cell = notebook.cells[1], notebook.cells[2]
    errors = [o for o in block_cell.outputs if o.output_type == "error"]
    assert [e.ename for e in errors] == ["KeyboardInterrupt"]
    shown = ANSI_ESCAPE.sub("", "\n".join(errors[0].traceback))
    # It points at the cell's with statement, not at Dask's or the standard library's code.
    assert "with afar.get, remotely:" in shown
    assert "distributed" not in shown and "threading.py" not in shown, shown
    # The next block ran at once on the worker's one thread, in the same process; the stopped
    # block bound nothing and printed nothing more, in any cell.
    next_shown = shown_text(next_cell)
    assert [o.output_type for o in next_cell.outputs] == ["stream"], next_shown
    assert next_shown == f"next block on {worker_pid} False\n"
    assert tag not in next_shown
