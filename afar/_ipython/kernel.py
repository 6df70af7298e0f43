"""Putting output in a Jupyter cell from any thread: the kernel's shell, displays, streams.

ipykernel files an output under the request named by the ``parent_header`` of the context it is
sent from. Called in an empty ``contextvars.Context``, it falls back to the request executing
now; called in a cell's own copied context, it names that cell.
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable
from typing import Any

from afar._ipython import shell as running_shell
from afar._worker.protocol import STDOUT


def kernel_shell() -> Any:
    """The running IPython shell if it belongs to a kernel (Jupyter), else None."""
    shell = running_shell()
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    return shell


def in_empty_context(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``function`` where no contextvar is set: ipykernel then uses the running request."""
    return contextvars.Context().run(function, *args, **kwargs)


def display_bundle(bundle: dict[str, Any], **kwargs: Any) -> Any:
    """``IPython.display.display`` of a raw mimebundle (a display handle with ``display_id``)."""
    from IPython.display import display

    return display(bundle, raw=True, **kwargs)


def current_stream(name: str) -> Any:
    """sys.stdout or sys.stderr as they are now."""
    # Looked up at every write: %%capture and redirect_stdout replace the stream while a cell runs.
    return sys.stdout if name == STDOUT else sys.stderr
