"""Write a block's saved names into the caller's namespace, wherever the with statement stands."""

from __future__ import annotations

import ctypes
import dis
import functools
import sys
import types
from collections.abc import Mapping
from typing import Any

# co_flags bit of function code: its locals live in fast slots, not in a dictionary.
CO_OPTIMIZED = 0x0001
# PEP 667 (Python 3.13): frame.f_locals of a function is a write-through proxy.
WRITE_THROUGH_LOCALS = sys.version_info >= (3, 13)
# Class bodies whose global declarations are remembered (one scan of their code each).
STORED_GLOBALS_CACHE_SIZE = 256


@functools.lru_cache(maxsize=STORED_GLOBALS_CACHE_SIZE)
def _stored(code: types.CodeType, opnames: tuple[str, ...]) -> frozenset[str]:
    """Names that ``code`` assigns with ``opnames``: a class body's ``global x; x = 1``."""
    return frozenset(i.argval for i in dis.get_instructions(code) if i.opname in opnames)


def bind(frame: types.FrameType, values: Mapping[str, Any]) -> None:
    """Bind ``values`` where the code of ``frame`` would bind those names itself."""
    if not values:
        return
    code = frame.f_code
    if not code.co_flags & CO_OPTIMIZED:
        # Module level, class bodies, IPython cells: f_locals is the namespace itself, but for
        # the names a class body declares `global` or `nonlocal`.
        namespace = frame.f_locals
        if namespace is frame.f_globals:
            namespace.update(values)
            return
        declared = _stored(code, ("STORE_GLOBAL", "DELETE_GLOBAL"))
        cells = _stored(code, ("STORE_DEREF", "DELETE_DEREF"))
        outer = frame.f_back  # runs the class statement: the cell is its variable too
        for name, value in values.items():
            if name in declared:
                frame.f_globals[name] = value
            elif name in cells and outer is not None and outer.f_code.co_flags & CO_OPTIMIZED:
                bind(outer, {name: value})
            else:
                namespace[name] = value
        return
    fast = {*code.co_varnames, *code.co_cellvars, *code.co_freevars}
    local_values = {name: v for name, v in values.items() if name in fast}
    for name, value in values.items():
        if name not in fast:
            # The function does not bind the name locally: it declared it `global`.
            frame.f_globals[name] = value
    if not local_values:
        return
    if WRITE_THROUGH_LOCALS:
        proxy = frame.f_locals
        for name, value in local_values.items():
            proxy[name] = value  # cells (nonlocal, closures) are written through too
        return
    # Python 3.10-3.12: f_locals is a snapshot dict; reading it refreshes the snapshot from the
    # fast slots, then PyFrame_LocalsToFast copies it back, cells included.
    snapshot = frame.f_locals
    snapshot.update(local_values)
    ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))
    # The snapshot lives as long as the frame and keeps every value it copied: a Future that
    # the caller then deletes would stay alive, and its data on the cluster. The next read of
    # f_locals (or locals()) fills it again from the fast slots.
    snapshot.clear()


def release_locals_snapshot(frame: types.FrameType) -> None:
    """Python 3.10-3.12: empty the f_locals snapshot of a function's frame (see ``bind``)."""
    if not WRITE_THROUGH_LOCALS and frame.f_code.co_flags & CO_OPTIMIZED:
        frame.f_locals.clear()
