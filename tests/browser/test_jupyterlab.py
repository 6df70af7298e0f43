"""What a user sees in JupyterLab, in a real browser (Chromium driven by Playwright).

A JupyterLab server runs for these tests, with the afar of this checkout; its kernels connect to a
Dask cluster that runs in this test's process, apart from them. The page is opened as a user
would, the cells are run with Shift+Enter, and what the page shows is checked.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import LocalCluster

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Seconds: the server's start, a page's load, what a cell shows.
START_TIMEOUT = 90
SHOWN_TIMEOUT = 60
# Seconds after which keys that did not reach a cell are pressed again.
RETRY_SECONDS = 3

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0"
    ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, cluster: Any) -> Iterator[tuple[str, Path, str]]:
    """A JupyterLab server: (its address, its folder, its token)."""
    home = tmp_path_factory.mktemp("lab")
    port, token = free_port(), secrets.token_hex(16)
    environment = {
        **os.environ,
        "AFAR_TEST_SCHEDULER": cluster.scheduler_address,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "IPYTHONDIR": str(home / "ipython"),
    }
    log = (home / "server.log").open("w")
    options = [
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={home}",
        "--ServerApp.ip=127.0.0.1",
        "--allow-root",  # CI runs as root
        "--no-browser",
    ]
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", *options],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None, (home / "server.log").read_text()
            time.sleep(0.2)
        else:
            pytest.fail(f"JupyterLab did not start in {START_TIMEOUT} s")
        yield f"http://127.0.0.1:{port}", home, token
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def notebook(path: Path, cells: list[str]) -> None:
    content = {
        "cells": [
            {
                "cell_type": "code",
                "metadata": {},
                "source": source,
                "outputs": [],
                "execution_count": None,
            }
            for source in cells
        ],
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(content))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


SETUP = """\
import os
from distributed import Client
import afar
client = Client(os.environ["AFAR_TEST_SCHEDULER"])
%load_ext afar"""
PLOT = """\
%%afar -g
import matplotlib.pyplot as plt
plt.plot([1, 4, 9])
plt.title("drawn on a worker")
plt.show()
drawn = True"""


# The notebook on show: JupyterLab restores the tabs of earlier tests (hidden, still in the page).
SHOWN_NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden)"


def cells(page: Any) -> Any:
    """The cells of the notebook on show."""
    return page.locator(f"{SHOWN_NOTEBOOK} .jp-Cell")


def open_notebook(page: Any, address: str, token: str, name: str) -> None:
    """Open notebook ``name`` in a fresh workspace; wait until its cells show and its kernel is
    idle."""
    page.goto(f"{address}/lab/tree/{name}?reset&token={token}")
    cells(page).first.wait_for(timeout=START_TIMEOUT * 1000)
    page.locator(f"{SHOWN_NOTEBOOK} .jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(
        timeout=START_TIMEOUT * 1000
    )


def run_cell(page: Any, index: int) -> None:
    """Run a cell as a user does: click into it, Shift+Enter; wait until it has run.

    A page that has just loaded may not take the first keys yet (the notebook becomes the
    current widget and its kernel connects a moment after the cells show): while the prompt
    still shows "[ ]:", the keys did not reach it, and they are pressed again.
    """
    cell = cells(page).nth(index)
    prompt = cell.locator(".jp-InputPrompt")
    deadline = time.monotonic() + SHOWN_TIMEOUT
    text = ""
    while time.monotonic() < deadline:
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        taken = time.monotonic() + RETRY_SECONDS
        while time.monotonic() < min(taken, deadline):
            text = prompt.inner_text().strip()
            if text not in ("[ ]:", "[]:", ""):
                break  # "[*]:" while it runs (or waits for the kernel), "[1]:" once it has
            page.wait_for_timeout(100)
        else:
            continue
        break
    while time.monotonic() < deadline:
        text = prompt.inner_text().strip()
        if text[1:-2].isdigit():
            return
        page.wait_for_timeout(100)
    pytest.fail(f"cell {index} did not run within {SHOWN_TIMEOUT} s: its prompt shows {text!r}")


def test_a_cell_s_block_plots_and_the_image_appears(lab, browser) -> None:
    address, home, token = lab
    notebook(home / "plots.ipynb", [SETUP, PLOT])
    page = browser.new_page()
    try:
        open_notebook(page, address, token, "plots.ipynb")
        for index in range(2):
            run_cell(page, index)
        image = cells(page).nth(1).locator(".jp-OutputArea-output img")
        image.first.wait_for(timeout=SHOWN_TIMEOUT * 1000)
        box = image.first.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 100
    finally:
        page.screenshot(path=str(home / "plots.png"), full_page=True)  # to look at
        page.close()


BREAKPOINT = """\
%%afar -g
x = 41
breakpoint()
y = x + 1"""


def answer_stdin(cell: Any, line: str) -> None:
    """Type ``line`` into the cell's open input box (pdb's prompt) and press Enter.

    An answered box stays a moment, marked as hiding, before JupyterLab takes it away.
    """
    box = cell.locator(
        ".jp-OutputArea-stdin-item:not(.jp-OutputArea-stdin-hiding) .jp-Stdin-input"
    ).first
    box.wait_for(timeout=SHOWN_TIMEOUT * 1000)
    box.fill(line)
    box.press("Enter")


def test_breakpoint_in_a_cell_s_block_asks_in_the_cell(lab, browser) -> None:
    address, home, token = lab
    notebook(home / "debug.ipynb", [SETUP, BREAKPOINT, "print('y is', y)"])
    page = browser.new_page()
    try:
        open_notebook(page, address, token, "debug.ipynb")
        run_cell(page, 0)
        cell = cells(page).nth(1)
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Shift+Enter")
        prompt = cell.locator(".jp-Stdin-prompt").first
        prompt.wait_for(timeout=SHOWN_TIMEOUT * 1000)
        assert "(Pdb)" in prompt.inner_text()
        answer_stdin(cell, "p x")
        shown = cell.locator(".jp-OutputArea-output", has_text="41")
        shown.first.wait_for(timeout=SHOWN_TIMEOUT * 1000)
        answer_stdin(cell, "c")
        run_cell(page, 2)
        cells(page).nth(2).locator(".jp-OutputArea-output", has_text="y is 42").first.wait_for(
            timeout=SHOWN_TIMEOUT * 1000
        )
    finally:
        page.screenshot(path=str(home / "debug.png"), full_page=True)  # to look at
        page.close()


LIBRARIES = [
    "%%afar -g\nimport plotly.express as px\npx.line(x=[1, 2, 3], y=[1, 4, 9])",
    "%%afar -g\nimport altair as alt\nimport pandas as pd\n"
    "alt.Chart(pd.DataFrame({'a': [1, 2], 'b': [3, 4]})).mark_bar().encode(x='a:O', y='b')",
    # A bokeh figure cannot be pickled: the block shows it and saves nothing of it.
    "%%afar -g\ndef line():\n    from bokeh.plotting import figure\n\n"
    "    plot = figure(width=300, height=200)\n"
    "    plot.line([1, 2, 3], [1, 4, 9])\n"
    "    return plot\n"
    "line()",
]
# What each library's renderer draws in the page once the figure has rendered.
RENDERED = ["svg.main-svg", ".vega-embed svg, .vega-embed canvas", "canvas"]


def test_plotly_altair_and_bokeh_figures_of_a_block_render(lab, browser) -> None:
    address, home, token = lab
    notebook(home / "libraries.ipynb", [SETUP, *LIBRARIES])
    page = browser.new_page()
    try:
        open_notebook(page, address, token, "libraries.ipynb")
        for index in range(len(LIBRARIES) + 1):
            run_cell(page, index)
        for index, drawn in enumerate(RENDERED, 1):
            output = cells(page).nth(index).locator(".jp-OutputArea-output")
            try:
                drawing = output.locator(drawn).first
                drawing.wait_for(state="attached", timeout=SHOWN_TIMEOUT * 1000)
                box = output.first.bounding_box()
                assert box is not None and box["width"] > 100 and box["height"] > 100, drawn
            finally:
                cells(page).nth(index).screenshot(path=str(home / f"library-{index}.png"))
    finally:
        page.screenshot(path=str(home / "libraries.png"), full_page=True)  # to look at
        page.close()
