"""The header check: ``with [managers..., ]<run>, <location>:``, resolved without calling.

Separate from the with protocol because it reads only the caller's frame and the syntax tree:
it decides, before anything runs, whether the statement is one afar can honour, and says how to
write it when not. It recognises a Run by a late import of ``afar._run`` (which imports this
module at its top): the header needs the class, the class needs the header.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import types
from typing import TYPE_CHECKING, Any

from afar._analysis.scope import call_arguments, enclosing_values
from afar._analysis.source import Site
from afar._cpython import is_optimized
from afar._locations import LOCATION_NAMES, Location
from afar.errors import LocationError, LocationNameError

if TYPE_CHECKING:
    from afar._block import Block
    from afar._variables import Entry

UNRESOLVED = object()
RIGHT_SPELLING = "with afar.run, remotely:\n        ..."


def _is_run(value: Any) -> bool:
    from afar._run import Run

    return isinstance(value, Run)


def check_header(frame: types.FrameType, block: Block) -> ast.Call | None:
    """The header must read ``with [managers..., ]<run>, <location>:``; resolve it without
    calling anything.

    Context managers before the run are the caller's: Python enters them before the run and
    exits them after it, around the whole block. Returns the call of a location written without
    importing it (``remotely(retries=2)``), whose arguments are evaluated at the exit.
    """
    site = block.site
    items = site.node.items
    index = _run_item(frame, items)
    if index is None:
        raise LocationError(
            f"{site.where()}: afar cannot find afar.run (or afar.get) among the items of the "
            "with statement: write it as itself (afar.run, afar.get(...), or a variable bound "
            f"to one), followed by where to run. Write\n    {RIGHT_SPELLING}"
        )
    if len(items) < index + 2:
        raise LocationError(
            f"{site.where()}: the with statement names no location, so the body would run "
            f"here. Write\n    {RIGHT_SPELLING}\n(or locally / later)"
        )
    expression = items[index + 1].context_expr
    location_call = None
    second = resolve(frame, expression)
    if second is UNRESOLVED:
        name = _bare_location_name(expression)
        if name is None:
            _refuse_unknown_location(frame, site, expression)
        elif isinstance(expression, ast.Call):
            _check_location_arguments(site, expression)
            location_call = expression
    elif not isinstance(second, Location):
        raise LocationError(
            f"{site.where()}: the item after afar.run, "
            f"`{ast.unparse(expression)}`, is not an afar location but a "
            f"{type(second).__name__}. Write\n    {RIGHT_SPELLING}\n(or locally / later, or "
            "a variable bound to remotely(...))"
        )
    if len(items) > index + 2:
        raise LocationError(
            f"{site.where()}: `{ast.unparse(items[index + 2].context_expr)}` stands after the "
            "location and would never be entered. Open it inside the block instead, or before "
            "afar.run to have it around the whole block:\n"
            "    with afar.run, remotely:\n        with ...:"
        )
    return location_call


def _run_item(frame: types.FrameType, items: list[ast.withitem]) -> int | None:
    """The index of the item that is afar's run (the first one: Python enters items in order)."""
    for index, item in enumerate(items):
        value = resolve(frame, item.context_expr)
        if _is_run(value) or _is_run_call(value):
            return index
    return None


def _refuse_unknown_location(frame: types.FrameType, site: Site, expression: ast.expr) -> None:
    target = expression.func if isinstance(expression, ast.Call) else expression
    if isinstance(target, ast.Name) and _lookup(frame, target.id) is UNRESOLVED:
        name = target.id
        close = difflib.get_close_matches(name, sorted(LOCATION_NAMES), n=1)
        hint = f" Did you mean: {close[0]!r}?" if close else ""
        raise LocationNameError(
            f"{site.where()}: name {name!r} is not defined.{hint} The item after afar.run (or "
            "afar.get) says where to run: remotely, locally or later (they need no import), or "
            "a variable bound to one",
            name=name,
        )
    raise LocationError(
        f"{site.where()}: afar cannot tell where to run `{ast.unparse(expression)}` without "
        "running it. Name a location: remotely, locally, later, or a variable bound to one"
    )


def _check_location_arguments(site: Site, call: ast.Call) -> None:
    """Arguments afar evaluates for Python must not bind or suspend in the caller's scope."""
    for node in ast.walk(call):
        if isinstance(node, (ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
            raise LocationError(
                f"{site.where()}: `{ast.unparse(node)}` in the arguments of "
                f"`{ast.unparse(call.func)}(...)` cannot be evaluated by afar, which evaluates "
                "them because the location is not imported. Compute the value before the with "
                f"statement, or import the location (from afar import {ast.unparse(call.func)})"
            )


def called_location(entry: Entry, location: Location, skipped: BaseException) -> Location:
    """``remotely(...)`` written without importing it: its arguments, evaluated once, as Python
    would have after looking the name up (which raised NameError before any argument ran)."""
    call, frame = entry.location_call, entry.frame
    site = entry.block.site
    if call is None or frame is None:  # only with statements have a location call
        return location
    try:
        args, kwargs = call_arguments(frame, call, site.filename, site.future_flags)
        return location(*args, **kwargs)
    except BaseException as error:
        if error.__context__ is skipped:
            error.__suppress_context__ = True  # the NameError is afar's business, not news
        raise


def _is_run_call(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and _is_run(value[1])


def _bare_location_name(expression: ast.expr) -> str | None:
    target = expression.func if isinstance(expression, ast.Call) else expression
    if isinstance(target, ast.Name) and target.id in LOCATION_NAMES:
        return target.id
    return None


def resolve(frame: types.FrameType, expression: ast.expr) -> Any:
    """The value of a name, attribute or call target in the header, without calling anything."""
    if isinstance(expression, ast.Call):
        func = resolve(frame, expression.func)
        if _is_run(func):
            return ("call", func)
        return func if isinstance(func, Location) else UNRESOLVED
    if isinstance(expression, ast.Name):
        return _lookup(frame, expression.id)
    if isinstance(expression, ast.Attribute):
        base = resolve(frame, expression.value)
        if base is UNRESOLVED or not (
            isinstance(base, types.ModuleType | Location) or _is_run(base)
        ):
            return UNRESOLVED
        return getattr(base, expression.attr, UNRESOLVED)
    return UNRESOLVED


def _lookup(frame: types.FrameType, name: str) -> Any:
    """A name's value at the with statement: locals, closure cells, globals, builtins."""
    local_names = frame.f_locals  # read once: before 3.13, each read copies a function's locals
    if name in local_names:
        return local_names[name]
    if not is_optimized(frame.f_code) and local_names is not frame.f_globals:
        enclosing = enclosing_values(frame)  # a class body: its closure cells
        if name in enclosing:
            return enclosing[name]
    for namespace in (frame.f_globals, builtins.__dict__):
        if name in namespace:
            return namespace[name]
    return UNRESOLVED
