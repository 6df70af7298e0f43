"""Write a block's saved names into the caller's namespace, wherever the with statement stands."""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

from afar._cpython import (
    is_optimized,
    names_stored,
    release_locals_snapshot,
    write_function_locals,
)

__all__ = ["bind", "release_locals_snapshot"]


def bind(frame: types.FrameType, values: Mapping[str, Any]) -> None:
    """Bind ``values`` where the code of ``frame`` would bind those names itself."""
    if not values:
        return
    code = frame.f_code
    if not is_optimized(code):
        # Module level, class bodies, IPython cells: f_locals is the namespace itself, but for
        # the names a class body declares `global` or `nonlocal`.
        namespace = frame.f_locals
        if namespace is frame.f_globals:
            namespace.update(values)
            return
        declared = names_stored(code, ("STORE_GLOBAL", "DELETE_GLOBAL"))
        cells = names_stored(code, ("STORE_DEREF", "DELETE_DEREF"))
        outer = frame.f_back  # runs the class statement: the cell is its variable too
        for name, value in values.items():
            if name in declared:
                frame.f_globals[name] = value
            elif name in cells and outer is not None and is_optimized(outer.f_code):
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
    write_function_locals(frame, local_values)
