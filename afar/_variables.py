"""The block's scope on the client: reading the caller's variables, binding its results.

A block's scope is the caller's frame (a with statement) or a namespace (an ``%%afar`` cell).
``Entry`` is one block between ``__enter__`` and ``__exit__``; this module owns the two ways data
crosses between that scope and afar: the outer values the block reads, and the names bound back.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from afar._bind import bind, release_locals_snapshot
from afar._block import Block
from afar._cpython import is_optimized

if TYPE_CHECKING:
    import ast

    from afar._run import Run


@dataclass
class Entry:
    """A block between ``__enter__`` and ``__exit__``: state of one block, not of the Run."""

    run: Run
    frame: types.FrameType | None  # the caller's frame, or None for a namespace (a cell)
    block: Block
    saved: tuple[str, ...]
    results: MutableMapping[str, Any]
    namespace: dict[str, Any] | None = None
    # `remotely(...)` written without importing remotely: its arguments, evaluated at the exit.
    location_call: ast.Call | None = None
    # Whether the user named the saved names (afar.get("x")); else afar chose the last one bound,
    # which, as in Python, is left as it was when the statement binding it did not run.
    named: bool = True
    # Names the block reads that are local variables of the calling function not bound yet:
    # the block reads them as such (UnboundLocalError), not as the module's globals.
    unbound: tuple[str, ...] = ()


def read_variables(entry: Entry, data: Mapping[str, Any] | None) -> dict[str, Any]:
    """The outer values of the names the block reads: ``data``, then the caller's variables."""
    analysis = entry.block.analysis
    enclosing: Mapping[str, Any] = {}
    frame = entry.frame
    if frame is None:
        local_names = global_names = entry.namespace or {}
    else:
        local_names, global_names = frame.f_locals, frame.f_globals
        if _is_class_body(frame) and frame.f_back is not None:
            # A class body reads its enclosing function's variables through cells that its
            # f_locals (the class namespace) does not hold: the function's frame has them.
            enclosing = frame.f_back.f_locals
    free = frame.f_code.co_freevars if enclosing and frame is not None else ()
    # A function's own variables, bound or not: one not bound yet is not read from globals.
    own = _function_variables(frame) if frame is not None and is_optimized(frame.f_code) else ()
    values: dict[str, Any] = {}
    unbound = []
    for name in (*analysis.reads, *analysis.seeds, *entry.block.class_reads):
        if data is not None and name in data:
            continue  # taken from data by the caller (scattered first)
        if name in local_names:
            values[name] = local_names[name]
        elif name in own:
            if name in analysis.reads:
                unbound.append(name)
        elif name in free and name in enclosing:
            values[name] = enclosing[name]
        elif name in global_names:
            values[name] = global_names[name]
    if data is not None:
        values.update({n: data[n] for n in (*analysis.reads, *analysis.seeds) if n in data})
    if frame is not None:
        release_locals_snapshot(frame)
    entry.unbound = tuple(unbound)
    return values


def _function_variables(frame: types.FrameType) -> frozenset[str]:
    code = frame.f_code
    return frozenset((*code.co_varnames, *code.co_cellvars, *code.co_freevars))


def _is_class_body(frame: types.FrameType) -> bool:
    return frame.f_locals is not frame.f_globals and not is_optimized(frame.f_code)


def names_in(block: Block, data: Mapping[str, Any]) -> list[str]:
    """The names the block reads that ``data`` holds."""
    return [n for n in block.analysis.reads + block.analysis.seeds if n in data]


def seeds(entry: Entry, values: Mapping[str, Any]) -> tuple[str, ...]:
    """The block function's parameters: names it assigns but may read first, given their outer
    values, and the caller's unbound variables it reads (see ``Entry.unbound``)."""
    return tuple(n for n in entry.block.analysis.seeds if n in values) + entry.unbound


def bind_results(entry: Entry, results: Mapping[str, Any]) -> None:
    entry.results.update(results)
    if entry.frame is None:
        (entry.namespace if entry.namespace is not None else {}).update(results)
    else:
        bind(entry.frame, results)
