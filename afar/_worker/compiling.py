"""Rebuild a block's function on the worker from its source, once per process.

A block travels as a ``BlockCode`` tuple of plain strings and numbers, never as a code object:
code objects differ between Python minor versions, source compiles anywhere. The compiled code
is cached per process under ``sys`` (this module's globals are a fresh copy on every task), and
the block's lines are registered in ``linecache`` so that tracebacks on the worker show them.
"""

from __future__ import annotations
import __future__

import ast
import builtins
import functools
import linecache
import pickle
import sys
import threading
import types
from collections.abc import Callable
from typing import Any, NamedTuple

# Names no identifier can spell, so they never collide with the user's (pytest does the same).
LOCALS_NAME = "@afar_locals"
DISPLAY_NAME = "@afar_display"
# Process-wide cache of compiled blocks, shared by every version of this module in the process.
CACHE_ATTRIBUTE = "_afar_compiled_blocks_v1"
COMPILE_LOCK_ATTRIBUTE = "_afar_compile_lock_v1"
CACHE_LIMIT = 256
# The name of a block's function, as tracebacks show it: "<afar block script.py:12>".
BLOCK_FUNCTION_PREFIX = "<afar block "


class BlockCode(NamedTuple):
    """Everything the worker needs to rebuild a block's function: plain data only."""

    filename: str
    # Source whose lines stand at their original line numbers: either ``def ...:`` followed by
    # the block's body (``wrapped``), or a module-level body (a notebook cell).
    text: str
    wrapped: bool
    # Original source lines of the with statement (header and body) and the number of the first
    # one, registered in ``linecache`` on the worker so that tracebacks show them.
    shown_lines: tuple[str, ...]
    first_shown_line: int
    seeds: tuple[str, ...]  # names read before assignment: parameters of the function
    saved: tuple[str, ...]  # names returned
    single: bool  # return the one saved name's value instead of a dict
    display: bool  # the last statement is an expression whose value is displayed
    label: str  # "file.py:12", for messages
    future_features: tuple[str, ...]  # names of the ``from __future__`` features in force
    secede: bool = False  # leave the worker's thread pool while running (it may wait on Dask)
    # The class the with statement stands in: the function is compiled in a class of that name,
    # so that ``self.__private`` names are mangled as Python mangles them there.
    class_name: str | None = None
    # The first parameter of the method, passed first when the body calls ``super()`` (which
    # takes the instance from its function's first argument, the class from ``__class__``).
    instance: str | None = None


def compiled_blocks() -> dict[bytes, tuple[BlockCode, types.CodeType]]:
    cache = getattr(sys, CACHE_ATTRIBUTE, None)
    if cache is None:
        cache = sys.__dict__.setdefault(CACHE_ATTRIBUTE, {})
    return cache


def block_and_code(packed: bytes) -> tuple[BlockCode, types.CodeType]:
    """The block (pickled plain tuple) and its function's code, compiled once per process."""
    cache = compiled_blocks()
    found = cache.get(packed)
    if found is None:
        block = BlockCode(*pickle.loads(packed))
        # Syntax trees are converted under one process-wide lock: CPython 3.11 and 3.12
        # (gh-106905) raise SystemError when two threads do it at once.
        with sys.__dict__.setdefault(COMPILE_LOCK_ATTRIBUTE, threading.Lock()):
            found = (block, compile_block(block))
        register_source(block)
        if len(cache) >= CACHE_LIMIT:
            cache.pop(next(iter(cache)), None)
        cache[packed] = found
    return found


def compile_block(block: BlockCode) -> types.CodeType:
    """Turn the body into ``def <block>(*, seeds): body; return locals()``, keeping its lines."""
    tree = ast.parse(block.text, block.filename, "exec", type_comments=False)
    if block.wrapped:
        function = tree.body[0]
    else:
        function = ast.parse("def _(): pass").body[0]
        function.body = tree.body  # type: ignore[attr-defined]
        tree.body = [function]
    if not isinstance(function, ast.FunctionDef):
        raise TypeError(f"afar: the block at {block.label} did not compile to a function")
    body = function.body
    # The function starts on the body's first line: tools that show a frame's source by its
    # code's first line (stack_data in IPython's tracebacks) then show the body, not the header.
    first = body[0]
    starts = [first.lineno, *(d.lineno for d in getattr(first, "decorator_list", ()))]
    function.lineno = min(starts)
    function.col_offset = 0
    last = body[-1]
    if block.display and isinstance(last, ast.Expr):
        body[-1] = ast.copy_location(
            ast.Assign(targets=[ast.Name(DISPLAY_NAME, ast.Store())], value=last.value), last
        )
    returned = ast.Return(value=ast.Call(ast.Name(LOCALS_NAME, ast.Load()), [], []))
    body.append(ast.copy_location(returned, last))
    function.name = f"{BLOCK_FUNCTION_PREFIX}{block.label}>"
    keywords = [name for name in block.seeds if name != block.instance]
    function.args = ast.arguments(
        posonlyargs=[ast.arg(block.instance)] if block.instance else [],
        args=[],
        vararg=None,
        kwonlyargs=[ast.arg(name) for name in keywords],
        kw_defaults=[None for _ in keywords],
        kwarg=None,
        defaults=[],
    )
    function.end_lineno = max(node.end_lineno or node.lineno for node in body)
    if block.class_name:
        holder = ast.parse(f"class {block.class_name}:\n    pass").body[0]
        holder.body = [function]  # type: ignore[attr-defined]
        tree.body = [ast.copy_location(holder, function)]
    ast.fix_missing_locations(tree)
    flags = 0
    for feature in block.future_features:  # this interpreter's own flags for them
        flags |= getattr(__future__, feature).compiler_flag
    module = compile(tree, block.filename, "exec", flags=flags, dont_inherit=True)
    found = _code_named(module, function.name)
    if found is None:
        raise TypeError(f"afar: the block at {block.label} did not compile to a function")
    return found


def _code_named(code: types.CodeType, name: str) -> types.CodeType | None:
    """The code object of the function ``name`` defined in ``code`` (or in a class it defines)."""
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            found = constant if constant.co_name == name else _code_named(constant, name)
            if found is not None:
                return found
    return None


def register_source(block: BlockCode) -> None:
    """Show the block's lines in tracebacks where its file does not exist (the worker)."""
    filename = block.filename
    entry = linecache.cache.get(filename)
    lines: list[str] = list(entry[2]) if entry is not None and len(entry) == 4 else []
    end = block.first_shown_line - 1 + len(block.shown_lines)
    if lines[block.first_shown_line - 1 : end] == list(block.shown_lines):
        return  # the real file (the client, `locally`): leave its entry as linecache keeps it
    if len(lines) < end:
        lines.extend("\n" for _ in range(end - len(lines)))
    lines[block.first_shown_line - 1 : end] = block.shown_lines
    # mtime None: linecache.checkcache keeps the entry (as IPython does for its cells).
    linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)


def new_function(code: types.CodeType, namespace: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """The block's function with ``namespace`` (the variables it reads) as its globals.

    Compiled in a class that uses ``super()`` or ``__class__``, it has the one free variable
    ``__class__``: its cell holds the caller's class, read from the caller's frame.
    """
    namespace["__builtins__"] = builtins
    namespace[LOCALS_NAME] = builtins.locals
    namespace.setdefault("__name__", "__afar_block__")
    closure = None
    if code.co_freevars:
        closure = tuple(types.CellType(namespace.pop(name, None)) for name in code.co_freevars)
    return types.FunctionType(code, namespace, None, None, closure)


def call_block(
    block: BlockCode, function: Callable[..., dict[str, Any]], namespace: dict[str, Any]
) -> Callable[[], dict[str, Any]]:
    """The call of the block's function: its seeds by name, the method's instance first."""
    seeds = {name: namespace.pop(name) for name in block.seeds if name in namespace}
    if block.instance is None:
        return functools.partial(function, **seeds)
    instance = (
        seeds.pop(block.instance) if block.instance in seeds else namespace.get(block.instance)
    )
    return functools.partial(function, instance, **seeds)
