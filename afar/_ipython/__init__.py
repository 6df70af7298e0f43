"""IPython and Jupyter.

- ``magics``: the ``%%afar``/``%afar`` magics, with their options in ``options`` (one table for
  parsing, checks and help);
- ``cells``: each block's output in the notebook cell that ran it, also after the cell ended;
- ``rendering``: what that output looks like (text, bundles, HTML), pure and tested without a
  kernel;
- ``indicator``: "running on the cluster" while afar.get waits in a cell;
- ``kernel``: putting output in a cell from any thread.

afar never imports IPython itself: these modules are imported when IPython is already running
(a magic is loaded, or a block is submitted from a kernel), which ``shell()`` tells.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from afar._sinks import Sink


def shell() -> Any:
    """The running IPython shell, or None outside IPython (without importing IPython)."""
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


def cell_sink(label: str) -> Sink | None:
    """The notebook cell's sink for the output of the block ``label``, or None outside a Jupyter
    kernel (call it in the thread whose cell the output belongs to, see ``cells``)."""
    if shell() is None:
        return None
    from afar._ipython.cells import sink_for_block

    return sink_for_block(label)
