"""Rebuild a block's function on the worker from its source, once per process.

A block travels as a ``BlockCode`` tuple of plain strings and numbers, never as a code object:
code objects differ between Python minor versions, source compiles anywhere. The compiled code
is cached per process under ``sys`` (this module's globals are a fresh copy on every task), and
the block's lines are registered in ``linecache`` so that tracebacks on the worker show them:
for the last ``SOURCES_LIMIT`` files only (each notebook cell is a file of its own), so that a
long-lived worker does not keep every cell it ever ran.
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
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

# Names no identifier can spell, so they never collide with the user's (pytest does the same).
LOCALS_NAME = "@afar_locals"
DISPLAY_NAME = "@afar_display"
# Process-wide cache of compiled blocks, shared by every version of this module in the process.
CACHE_ATTRIBUTE = "_afar_compiled_blocks_v1"
COMPILE_LOCK_ATTRIBUTE = "_afar_compile_lock_v1"
CACHE_LIMIT = 256
# Files whose block lines afar keeps in a worker's linecache, the least recently run dropped.
SOURCES_ATTRIBUTE = "_afar_registered_sources_v1"
SOURCES_LIMIT = 128
# As afar._analysis.index.PADDING_PER_LINE (this module imports nothing of afar's).
PADDING_PER_LINE = 500
# The name of a block's function, as tracebacks show it: "<afar block script.py:12>".
BLOCK_FUNCTION_PREFIX = "<afar block "


class BlockCode(NamedTuple):
    """Everything the worker needs to rebuild a block's function: plain data only."""

    filename: str
    # Source whose lines stand at their original line numbers from ``text_lineno`` on: either
    # ``def ...:`` followed by the block's body (``wrapped``), or a module-level body (a
    # notebook cell).
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
    # The line number of the first line of ``text``: what travels is the block, not the blank
    # lines that would put it at its place in the file (issue 19).
    text_lineno: int = 1


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
        if len(cache) >= CACHE_LIMIT:
            cache.pop(next(iter(cache)), None)
        cache[packed] = found
    register_source(found[0])  # each run: its file is then among the last run
    return found


def compile_block(block: BlockCode) -> types.CodeType:
    """Turn the body into ``def <block>(*, seeds): body; return locals()``, keeping its lines."""
    tree = _parse_at(block.text, block.text_lineno, block.filename)
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


def _parse_at(text: str, lineno: int, filename: str) -> ast.Module:
    """``text`` parsed as a source whose first line is line ``lineno``: blank lines before it
    for a text near its file's start, its nodes renumbered for one deep in it (the tokenizer
    skips about PADDING_PER_LINE blank lines in the time a line of code's nodes take)."""
    if lineno - 1 <= PADDING_PER_LINE * (text.count("\n") + 1):
        return ast.parse("\n" * (lineno - 1) + text, filename, "exec", type_comments=False)
    return ast.increment_lineno(ast.parse(text, filename, "exec", type_comments=False), lineno - 1)


def _code_named(code: types.CodeType, name: str) -> types.CodeType | None:
    """The code object of the function ``name`` defined in ``code`` (or in a class it defines)."""
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            found = constant if constant.co_name == name else _code_named(constant, name)
            if found is not None:
                return found
    return None


def registered_sources() -> tuple[OrderedDict[str, list[str]], threading.Lock]:
    """The files whose lines afar put in this process's linecache, least recently run first,
    with the lines it put there; and the lock that guards them."""
    found = getattr(sys, SOURCES_ATTRIBUTE, None)
    if found is None:
        found = sys.__dict__.setdefault(SOURCES_ATTRIBUTE, (OrderedDict(), threading.Lock()))
    return found


def register_source(block: BlockCode) -> None:
    """Show the block's lines in tracebacks where its file does not exist (the worker).

    Only the ``SOURCES_LIMIT`` files run last keep their lines: registering one more drops the
    least recently run from linecache, if what linecache holds for it is still afar's.
    """
    filename = block.filename
    first = block.first_shown_line
    end = first - 1 + len(block.shown_lines)
    registry, lock = registered_sources()
    with lock:
        entry = linecache.cache.get(filename)
        held: list[str] = entry[2] if entry is not None and len(entry) == 4 else []
        if held[first - 1 : end] == list(block.shown_lines):
            if registry.get(filename) is held:
                registry.move_to_end(filename)
            # Else the real file (the client, `locally`): its entry stays as linecache keeps it.
            return
        lines = list(held)
        if len(lines) < end:
            lines.extend("\n" for _ in range(end - len(lines)))
        lines[first - 1 : end] = block.shown_lines
        # mtime None: linecache.checkcache keeps the entry (as IPython does for its cells).
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
        registry[filename] = lines
        registry.move_to_end(filename)
        while len(registry) > SOURCES_LIMIT:
            dropped, dropped_lines = registry.popitem(last=False)
            current = linecache.cache.get(dropped)
            if current is not None and len(current) == 4 and current[2] is dropped_lines:
                del linecache.cache[dropped]


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
