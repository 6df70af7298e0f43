"""A remote block's error, shown by IPython, points at the failing line of the cell."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest
from distributed import Client, LocalCluster
from IPython.core.interactiveshell import InteractiveShell

import afar


@pytest.fixture(scope="module")
def kernel_like_shell(shell: InteractiveShell) -> Iterator[InteractiveShell]:
    """The shell naming its cells as ipykernel does: files ending in .py that do not exist."""
    original = shell.compile.get_code_name

    def cell_name(raw_code: str, transformed_code: str, number: int) -> str:
        digest = int(hashlib.sha256(raw_code.encode()).hexdigest()[:8], 16)
        return f"/tmp/ipykernel_{os.getpid()}/{digest}.py"

    shell.compile.get_code_name = cell_name
    try:
        yield shell
    finally:
        shell.compile.get_code_name = original


@pytest.fixture(scope="module")
def cluster_client() -> Iterator[Client]:
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        yield client


def test_ipython_shows_the_failing_line_of_a_remote_block(
    kernel_like_shell: InteractiveShell, cluster_client: Client, capsys: pytest.CaptureFixture
) -> None:
    kernel_like_shell.user_ns["cluster_client"] = cluster_client
    result = kernel_like_shell.run_cell(
        "with afar.get, afar.remotely(client=cluster_client):\n    fine = 1\n    ratio = fine / 0\n"
    )
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    shown = capsys.readouterr().out
    # The block's frame is shown at its line, with that line's source marked.
    assert "----> 3     ratio = fine / 0" in shown
    assert "----> 3 with afar.get" not in shown


@pytest.mark.parametrize("line", ["%time elapsed = 1", "listing = !echo hi"])
def test_ipython_syntax_in_a_remote_block_says_what_to_write(
    kernel_like_shell: InteractiveShell, cluster_client: Client, line: str
) -> None:
    """IPython turns it into get_ipython() calls: refused before sending, not as a value that
    cannot be pickled."""
    kernel_like_shell.user_ns["cluster_client"] = cluster_client
    result = kernel_like_shell.run_cell(
        f"with afar.get, afar.remotely(client=cluster_client):\n    {line}\n"
    )
    error = result.error_in_exec
    assert isinstance(error, afar.BlockSyntaxError), repr(error)
    assert "IPython syntax (a %magic or a !command) cannot run in an afar block" in str(error)
    assert "%%time" in str(error)
