"""Real Jupyter kernels for the notebook tests: a kernel spec for this Python, the environment a
kernel starts in, and an nbclient that records every output message.

The tests that use them run their Dask cluster in the test's own process, outside the kernel, as
a user's cluster would run: a cluster started in the kernel would share its process group and
get the notebook's interrupt too.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbclient
import pytest
from ipykernel import kernelspec

import afar

PACKAGE_ROOT = str(Path(afar.__file__).resolve().parents[1])
KERNEL_NAME = "afar-test-python"
# Bounds of a run: each cell, and the kernel's start.
CELL_TIMEOUT_SECONDS = 60
STARTUP_TIMEOUT_SECONDS = 60
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def install_kernel(home: Path) -> None:
    """A kernel spec for ``sys.executable`` under ``home``, the tests' JUPYTER_PATH."""
    kernelspec.write_kernel_spec(
        str(home / "kernels" / KERNEL_NAME),
        overrides={
            "display_name": "afar test kernel",
            "argv": [
                sys.executable,
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}",
                # Processes that share the kernel's standard output and error (a LocalCluster
                # started in a cell) write at the level of file descriptors, which ipykernel
                # would forward to whichever cell runs. Not afar's output, which tests follow.
                "--IPKernelApp.capture_fd_output=False",
            ],
        },
    )


def client_options(home: Path) -> dict[str, Any]:
    """Options of an nbclient ``NotebookClient`` for the kernel of ``install_kernel``."""
    return {
        "kernel_name": KERNEL_NAME,
        "timeout": CELL_TIMEOUT_SECONDS,
        "startup_timeout": STARTUP_TIMEOUT_SECONDS,
        "resources": {"metadata": {"path": str(home)}},  # the kernel's working directory
    }


@contextlib.contextmanager
def kernel_environment(home: Path, **variables: str) -> Iterator[None]:
    """Kernels started meanwhile find their spec, keep their files under ``home`` and import
    this afar; ``variables`` are set for them too."""
    python_path = os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(home))
        patch.setenv("JUPYTER_RUNTIME_DIR", str(home / "runtime"))
        patch.setenv("IPYTHONDIR", str(home / "ipython"))
        patch.setenv("PYTHONPATH", python_path)
        for name, value in variables.items():
            patch.setenv(name, value)
        yield


class RecordingClient(nbclient.NotebookClient):
    """Executes a notebook and records every output message with the cell running then."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: list[tuple[int, str, dict[str, Any]]] = []

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        self.received.append((cell_index, msg["msg_type"], msg["content"]))
        return super().process_message(msg, cell, cell_index)


def shown_text(cell: Any) -> str:
    """Everything a cell's saved outputs show as text: streams, plain text, errors."""
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            parts.extend(str(value) for value in output.data.values())
        elif output.output_type == "error":
            parts.append(ANSI_ESCAPE.sub("", "\n".join(output.traceback)))
    return "\n".join(parts)
