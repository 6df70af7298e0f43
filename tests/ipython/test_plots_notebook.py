"""Plots from a block in a real Jupyter kernel (issue 20): a notebook executed headless.

The kernel uses the inline backend, as Jupyter does; the cluster (one worker process, two
threads) runs in this test's process, apart from the kernel. Each cell is a row of the issue's
table or one of its cases; the saved notebook and the messages the kernel sent are checked.
"""

from __future__ import annotations

import base64
import datetime
import re
import struct
from typing import Any

import nbformat
import pytest
from distributed import LocalCluster
from kernels import RecordingClient, client_options, install_kernel, kernel_environment

pytestmark = pytest.mark.slow

SETUP = """\
import os
import time

from distributed import Client

import afar
from afar import remotely

client = Client(os.environ["AFAR_TEST_SCHEDULER"])
%load_ext afar
"""
SHOW = """\
with afar.get, remotely:
    import matplotlib.pyplot as plt

    plt.plot([1, 2, 3])
    plt.show()
    after_show = plt.get_fignums()
after_show
"""
MAGIC_CELL = """\
%%afar
import matplotlib.pyplot as plt

plt.plot([1, 4, 9])
"""
FIGURE_EXPRESSION = """\
with afar.get, remotely:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.bar([1, 2], [3, 4])
    fig
"""
TWO_FIGURES = """\
with afar.get, remotely:
    import matplotlib.pyplot as plt

    plt.figure()
    plt.plot([1, 2])
    plt.figure()
    plt.plot([2, 1])
    plt.show()
"""
LIVE_LOOP = """\
with afar.get, remotely:
    import time

    import matplotlib.pyplot as plt

    for step in range(3):
        plt.plot([0, step])
        plt.show()
        time.sleep(0.5)
"""
SEQUENTIAL = """\
with afar.get("seen", timeout=60), remotely:
    import matplotlib.pyplot as plt

    seen = []
    for _ in range(3):
        pass
    seen.append(plt.get_fignums())
    plt.plot([1, 2, 3])
    seen.append(len(plt.gca().lines))
seen
"""
CONCURRENT = """\
runs = []
for number in range(2):
    with afar.run, remotely:
        import time

        import matplotlib.pyplot as plt

        before = list(plt.get_fignums())
        plt.plot([0, number])
        time.sleep(0.5)
        counted = (before, len(plt.gca().lines))
    runs.append(counted)
[run.result(timeout=60) for run in runs]
"""
SVG_AND_DPI = """\
%config InlineBackend.figure_formats = ['svg', 'png']
import matplotlib.pyplot as plt
plt.rcParams["figure.dpi"] = 50
with afar.get, remotely:
    import matplotlib.pyplot as plt

    plt.plot([3, 2, 1])
"""
BACK_TO_PNG = """\
%config InlineBackend.figure_formats = ['png']
plt.rcParams["figure.dpi"] = 100
"""
RUN_LATER = """\
with afar.run, remotely:
    import time

    import matplotlib.pyplot as plt

    time.sleep(1.5)
    plt.plot([5, 5, 5])
    late = 1
"""
NEXT_CELL = "time.sleep(4)\nlate.result(timeout=60)"
UNRENDERABLE = """\
with afar.get, remotely:
    import matplotlib.pyplot as plt

    plt.title(r"$\\notacommand{x}$")  # mathtext cannot render it
    value = 42
value
"""
OTHER_LIBRARIES = """\
with afar.get, remotely:
    import altair as alt
    import pandas as pd
    import plotly.graph_objects as go
    from bokeh.plotting import figure

    plotly_figure = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))
    bokeh_plot = figure(width=200, height=200)
    bokeh_plot.line([1, 2], [3, 4])
    chart = alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_line().encode(x="x", y="y")
    display(plotly_figure)
    display(bokeh_plot)
    chart
"""
CELLS = {
    "setup": SETUP,
    "show": SHOW,
    "magic": MAGIC_CELL,
    "figure expression": FIGURE_EXPRESSION,
    "two figures": TWO_FIGURES,
    "live loop": LIVE_LOOP,
    "sequential": SEQUENTIAL,
    "sequential again": SEQUENTIAL,
    "concurrent": CONCURRENT,
    "svg and dpi": SVG_AND_DPI,
    "back to png": BACK_TO_PNG,
    "run later": RUN_LATER,
    "next cell": NEXT_CELL,
    "unrenderable": UNRENDERABLE,
    "other libraries": OTHER_LIBRARIES,
}
INDEX = {name: index for index, name in enumerate(CELLS)}


class TimedClient(RecordingClient):
    """Records each display message's time too (the kernel's, from the message header)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.displayed: list[tuple[int, datetime.datetime, dict[str, Any]]] = []

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        if msg["msg_type"] in ("display_data", "update_display_data"):
            self.displayed.append((cell_index, msg["header"]["date"], msg["content"]))
        return super().process_message(msg, cell, cell_index)


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, TimedClient]:
    home = tmp_path_factory.mktemp("jupyter")
    install_kernel(home)
    cells = [nbformat.v4.new_code_cell(source) for source in CELLS.values()]
    notebook = nbformat.v4.new_notebook(cells=cells)
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0"
    ) as cluster:
        client = TimedClient(notebook, **client_options(home))
        with kernel_environment(home, AFAR_TEST_SCHEDULER=cluster.scheduler_address):
            client.execute()
    nbformat.write(notebook, home / "executed.ipynb")  # for a look when a test fails
    return notebook, client


def outputs(notebook: Any, name: str) -> list[Any]:
    return list(notebook.cells[INDEX[name]].outputs)


def images(notebook: Any, name: str, mime: str = "image/png") -> list[str]:
    """The cell's images: displays of their own, and those in a display of late output (what
    arrived after the cell had finished, shown together in HTML)."""
    found = []
    for output in outputs(notebook, name):
        data = output.get("data", {})
        if mime in data:
            found.append(data[mime])
        elif "text/html" in data:
            found += re.findall(
                rf'<img src="data:{re.escape(mime)};base64,([^"]+)"', data["text/html"]
            )
    return found


def plain(notebook: Any, name: str) -> str:
    parts = []
    for output in outputs(notebook, name):
        if output.output_type == "stream":
            parts.append(output.text)
        elif "text/plain" in output.get("data", {}):
            parts.append(output.data["text/plain"])
        elif output.output_type == "error":
            parts.append("\n".join(output.traceback))
    return "\n".join(parts)


def png_size(data: str) -> tuple[int, int]:
    raw = base64.b64decode(data)
    width, height = struct.unpack(">II", raw[16:24])  # the IHDR chunk
    return width, height


def test_plt_show_in_a_block_shows_the_figure_in_its_cell(executed) -> None:
    notebook, _ = executed
    assert len(images(notebook, "show")) == 1
    assert "[]" in plain(notebook, "show")  # shown figures are closed, as the inline backend does


def test_a_magic_cell_ending_in_a_plot_shows_it(executed) -> None:
    notebook, _ = executed
    assert len(images(notebook, "magic")) == 1
    assert "Line2D" in plain(notebook, "magic")  # and the value, as without afar


def test_a_block_ending_in_its_figure_shows_it(executed) -> None:
    notebook, _ = executed
    # The value, and the figure still open at the end: twice, as in Jupyter without afar.
    assert len(images(notebook, "figure expression")) == 2


def test_two_figures_then_show_shows_both(executed) -> None:
    notebook, _ = executed
    assert len(images(notebook, "two figures")) == 2


def test_figures_shown_in_a_loop_arrive_while_the_block_runs(executed) -> None:
    notebook, client = executed
    assert len(images(notebook, "live loop")) == 3
    times = [when for index, when, content in client.displayed if index == INDEX["live loop"]]
    times = [
        when
        for index, when, content in client.displayed
        if index == INDEX["live loop"] and "image/png" in content.get("data", {})
    ]
    assert len(times) == 3
    assert (times[-1] - times[0]).total_seconds() >= 0.8  # one at each show, not all at the end


def test_each_block_starts_without_figures_and_draws_on_its_own(executed) -> None:
    notebook, _ = executed
    for name in ("sequential", "sequential again"):
        assert plain(notebook, name).strip().endswith("[[], 1]")
        assert len(images(notebook, name)) == 1


def test_blocks_at_once_on_one_worker_never_draw_on_each_other_s_figures(executed) -> None:
    notebook, _ = executed
    assert "[([], 1), ([], 1)]" in plain(notebook, "concurrent")


def test_the_client_s_formats_and_dpi_are_used(executed) -> None:
    notebook, _ = executed
    assert len(images(notebook, "svg and dpi", "image/svg+xml")) == 1
    (png,) = images(notebook, "svg and dpi")
    width, height = png_size(png)
    assert width < 400 and height < 300, (width, height)  # 6.4 x 4.8 inches at 50 dpi, tight


def test_an_afar_run_block_s_figure_lands_in_its_cell_later(executed) -> None:
    notebook, _ = executed
    assert len(images(notebook, "run later")) == 1
    assert images(notebook, "next cell") == []


def test_a_figure_that_cannot_be_rendered_is_reported_and_the_values_come_back(executed) -> None:
    notebook, _ = executed
    text = plain(notebook, "unrenderable")
    assert "a figure could not be sent to the client" in text
    assert "42" in text


def test_figures_of_other_libraries_show_with_their_own_representations(executed) -> None:
    notebook, _ = executed
    kinds = {
        mime for output in outputs(notebook, "other libraries") for mime in output.get("data", {})
    }
    assert "application/vnd.plotly.v1+json" in kinds
    assert any(kind.startswith("application/vnd.vegalite") for kind in kinds)
    assert "text/html" in kinds  # bokeh's
