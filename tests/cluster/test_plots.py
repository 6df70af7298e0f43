"""A block's pyplot figures outside a notebook (issue 20): they join this process's pyplot.

The client here is a script (pytest's process, matplotlib's Agg backend): figures come back
pickled and join pyplot as if drawn here, so that ``plt.savefig`` after the block saves them. A
worker never opens a window (afar's backend is Agg's canvas), and a block starts with no figure
of another block's. A terminal program is driven through a pseudo-terminal too.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from _remote_helpers import RESULT_TIMEOUT
from distributed import Client, LocalCluster

import afar
from afar import remotely

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# Seconds the terminal program may take, its cluster included.
PROGRAM_TIMEOUT = 120


@pytest.fixture
def no_figures() -> Iterator[None]:
    plt.close("all")
    yield
    plt.close("all")


def test_a_block_s_figure_joins_this_process_s_pyplot(client: Client, no_figures, tmp_path) -> None:
    with afar.get(timeout=RESULT_TIMEOUT), remotely:
        plt.plot([1, 2, 3])  # this module's plt: pyplot, imported by name on the worker
        plt.title("drawn on the worker")
        backend = plt.get_backend()
    assert backend == "module://_afar_pyplot_backend"  # the worker's: no window there
    assert plt.get_fignums() == [1]
    assert plt.gca().get_title() == "drawn on the worker"
    saved = tmp_path / "figure.png"
    plt.savefig(saved)
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.filterwarnings("ignore:FigureCanvasAgg is non-interactive:UserWarning")
def test_plt_show_in_a_block_shows_its_figures_here_after_the_block(
    client: Client, no_figures
) -> None:
    with afar.get(timeout=RESULT_TIMEOUT), remotely:
        plt.figure()
        plt.plot([1, 2])
        plt.figure()
        plt.plot([2, 1])
        plt.show()
        left_open = plt.get_fignums()
    assert left_open == []  # shown, then closed on the worker
    assert len(plt.get_fignums()) == 2  # here, as two figures


def test_blocks_start_without_the_figures_of_earlier_blocks(client: Client, no_figures) -> None:
    (address, *_) = client.scheduler_info()["workers"]
    there = remotely(workers=[address])
    for _ in range(3):
        with afar.get("before", "lines", timeout=RESULT_TIMEOUT), there:
            before = plt.get_fignums()
            plt.plot([1, 2, 3])
            lines = len(plt.gca().lines)
        assert (before, lines) == ([], 1)


def test_a_figure_with_a_function_of_the_block_comes_back(client: Client, no_figures) -> None:
    with afar.get(timeout=RESULT_TIMEOUT), remotely:
        from matplotlib.ticker import FuncFormatter

        _, axes = plt.subplots()
        axes.plot([1, 2, 3])
        axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"<{x:g}>"))
        made = True
    assert made and len(plt.get_fignums()) == 1
    assert plt.gca().xaxis.get_major_formatter()(2, 0) == "<2>"


def test_a_block_that_plots_nothing_imports_nothing_of_matplotlib() -> None:
    def matplotlib_imported(dask_worker: Any = None) -> bool:
        return "matplotlib" in sys.modules

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as fresh,
    ):
        with afar.get(timeout=RESULT_TIMEOUT), remotely(client=fresh):
            total = sum(range(10))
        assert total == 45
        assert list(fresh.run(matplotlib_imported).values()) == [False]


PROGRAM = """\
import sys

import matplotlib.pyplot as plt
from distributed import Client, LocalCluster

import afar

if __name__ == "__main__":
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        with Client(cluster):
            with afar.get, remotely:
                import matplotlib.pyplot as plt

                plt.plot([3, 1, 2])
                plt.title("from the worker, saved here")
            plt.savefig(sys.argv[1])
            print("title:", plt.gca().get_title(), flush=True)
"""


def test_a_terminal_program_saves_a_block_s_figure_with_savefig(tmp_path: Path) -> None:
    script = tmp_path / "plot.py"
    script.write_text(textwrap.dedent(PROGRAM))
    saved = tmp_path / "saved.png"
    leader, follower = pty.openpty()
    environment = {**os.environ, "MPLBACKEND": "Agg"}
    try:
        process = subprocess.Popen(
            [sys.executable, str(script), str(saved)],
            stdin=follower,
            stdout=follower,
            stderr=follower,
            env=environment,
            cwd=tmp_path,
        )
        os.close(follower)
        shown = b""
        try:
            process.wait(PROGRAM_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert process.returncode == 0, shown.decode(errors="replace")
    assert b"title: from the worker, saved here" in shown
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
