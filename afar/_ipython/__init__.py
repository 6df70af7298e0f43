"""IPython and Jupyter: the ``%%afar``/``%afar`` magics (``magics``) and each block's output in
the notebook cell that ran it (``cells``).

afar never imports IPython itself: these modules are imported when IPython is already running
(a magic is loaded, or a block is submitted from a kernel), which ``shell()`` tells.
"""

from __future__ import annotations

import sys
from typing import Any


def shell() -> Any:
    """The running IPython shell, or None outside IPython (without importing IPython)."""
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None
