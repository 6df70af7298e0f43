"""``%debug`` and ``%pdb on`` for a block's error: pdb post mortem on the block's worker.

IPython's ``%debug`` (and, with ``%pdb on``, every traceback) calls the shell's ``debugger``,
which opens pdb on ``sys.last_traceback`` here. For an error that ``afar.get`` raised, that
traceback holds only copies of the block's frames (rebuilt from the worker's text): the shell's
``debugger`` then opens ``afar.debug`` on the block's live frames on its worker instead, while
its traceback is kept there. Any other error is debugged here, as before.
"""

from __future__ import annotations

import sys
from typing import Any

from afar import _debugging

_INSTALLED = "_afar_debugger"


def install_debugger(shell: Any) -> None:
    """Route the shell's post-mortem debugger to afar.debug for blocks' errors (idempotent)."""
    current = getattr(shell, "debugger", None)
    if current is None or getattr(current, _INSTALLED, False):
        return

    def debugger(force: bool = False) -> Any:
        if force or getattr(shell, "call_pdb", False):
            error = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
            block = _debugging.block_of(error)
            if block is not None and _debugging.kept(block):
                _debugging.debug(error)
                return None
        return current(force)

    setattr(debugger, _INSTALLED, True)
    shell.debugger = debugger
