"""Debugging a block from a real Jupyter kernel: pdb through the cell's input box (stdin channel).

The kernel is driven through its channels as JupyterLab drives it (jupyter_client): a cell is
executed with stdin allowed, each ``input_request`` it sends is answered on the stdin channel,
and what it shows is read from its IOPub messages. The cluster runs in this test's process,
outside the kernel.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import pytest
from distributed import LocalCluster
from jupyter_client import KernelManager
from kernels import CELL_TIMEOUT_SECONDS, KERNEL_NAME, install_kernel, kernel_environment

pytestmark = pytest.mark.slow

SETUP = """\
import os
from distributed import Client
import afar
client = Client(os.environ["AFAR_TEST_SCHEDULER"])
%load_ext afar"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A kernel connected to a cluster of this process: its blocking client.

    The worker has ONE thread: a block left running would make the next cell's block wait.
    """
    home = tmp_path_factory.mktemp("debugging-kernel")
    install_kernel(home)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        kernel_environment(home, AFAR_TEST_SCHEDULER=cluster.scheduler_address),
    ):
        manager = KernelManager(kernel_name=KERNEL_NAME)
        manager.start_kernel(cwd=str(home))
        client = manager.client()
        client.manager = manager  # for the interrupt, as JupyterLab's stop button sends it
        client.start_channels()
        try:
            client.wait_for_ready(timeout=CELL_TIMEOUT_SECONDS)
            shown, _ = run_cell(client, SETUP, [])
            assert "Error" not in shown, shown
            yield client
        finally:
            client.stop_channels()
            manager.shutdown_kernel(now=True)


def run_cell(client: Any, code: str, answers: list[str | None]) -> tuple[str, list[str]]:
    """Execute ``code`` as a cell, answering its input requests with ``answers`` in turn.

    An answer of None interrupts the kernel instead, as the notebook's stop button does.

    Returns the text the cell showed (its streams and errors) and the prompts it asked with.
    Every message must belong to the cell (its parent): output and input name the cell.
    """
    answers = list(answers)
    msg_id = client.execute(code, allow_stdin=True)
    shown: list[str] = []
    prompts: list[str] = []
    deadline = time.monotonic() + CELL_TIMEOUT_SECONDS
    idle = False
    while not idle:
        assert time.monotonic() < deadline, f"the cell did not finish: {''.join(shown)}"
        try:
            request = client.get_stdin_msg(timeout=0.05)
        except queue.Empty:
            pass
        else:
            assert request["parent_header"].get("msg_id") == msg_id
            prompts.append(request["content"]["prompt"])
            assert answers, f"an input request nobody expected: {prompts[-1]!r} {''.join(shown)}"
            answer = answers.pop(0)
            if answer is None:
                client.manager.interrupt_kernel()
            else:
                client.input(answer)
        while True:
            try:
                message = client.get_iopub_msg(timeout=0.01)
            except queue.Empty:
                break
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                shown.append(content["text"])
            elif kind == "error":
                shown.append("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
    assert not answers, f"answers left over: {answers}; prompts {prompts}; {''.join(shown)}"
    return "".join(shown), prompts


def test_breakpoint_in_a_cell_s_block_asks_in_the_cell(kernel: Any) -> None:
    shown, prompts = run_cell(
        kernel,
        "%%afar -g\nx = 41\nimport os\npid = os.getpid()\nbreakpoint()\ny = x + 1",
        ["p x, os.getpid() == pid", "c"],
    )
    assert prompts == ["(Pdb) ", "(Pdb) "]
    assert "(41, True)" in shown
    shown, _ = run_cell(kernel, "print('y is', y)", [])
    assert "y is 42" in shown


def test_input_in_a_block_asks_in_the_cell(kernel: Any) -> None:
    shown, prompts = run_cell(
        kernel,
        "with afar.get, remotely:\n    name = input('name? ')\nprint('hello', name)",
        ["ada"],
    )
    assert prompts == ["name? "]
    assert "hello ada" in shown


def test_q_ends_the_cell_as_pdb_s_quit_does(kernel: Any) -> None:
    run_cell(kernel, "with afar.get, remotely:\n    breakpoint()\n    never = 1", ["q"])
    shown, _ = run_cell(
        kernel,
        "with afar.get(timeout=30), remotely:\n    after = 2\nprint('never' in globals(), after)",
        [],
    )
    assert "False 2" in shown


def test_percent_debug_opens_the_failed_block_on_its_worker(kernel: Any) -> None:
    shown, _ = run_cell(
        kernel,
        "with afar.get, remotely:\n    values = [1, 2]\n    result = sum(values) / 0",
        [],
    )
    assert "ZeroDivisionError" in shown
    shown, prompts = run_cell(kernel, "%debug", ["p values", "q"])
    assert prompts == ["(Pdb) ", "(Pdb) "]
    assert "[1, 2]" in shown


def test_with_pdb_on_a_failed_block_opens_pdb_at_once(kernel: Any) -> None:
    run_cell(kernel, "%pdb on", [])
    try:
        shown, prompts = run_cell(
            kernel,
            "with afar.get, remotely:\n    level = 3\n    raise ValueError(level)",
            ["p level", "q"],
        )
    finally:
        run_cell(kernel, "%pdb off", [])
    assert "ValueError" in shown
    assert prompts == ["(Pdb) ", "(Pdb) "]
    assert "\n3\n" in shown


def test_the_interrupt_in_a_session_stops_the_block(kernel: Any) -> None:
    shown, prompts = run_cell(
        kernel, "with afar.get, remotely:\n    breakpoint()\n    never = 1", ["p 1 + 1", None]
    )
    assert prompts == ["(Pdb) ", "(Pdb) "]
    assert "KeyboardInterrupt" in shown
    shown, _ = run_cell(
        kernel,
        "with afar.get(timeout=30), remotely:\n    after = 2\nprint('never' in globals(), after)",
        [],
    )
    assert "False 2" in shown
