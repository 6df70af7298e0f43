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
# A parameter given no value (a variable of the caller not bound yet) gets this one, and the
# body starts by deleting it: reading it raises UnboundLocalError, as in the caller.
UNBOUND_NAME = "@afar_unbound"
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
    # A block at module level (a script, a notebook cell) runs as module code, in a namespace
    # of its own holding its inputs; else as the function it stands in.
    module_level: bool = False
    # ``__name__`` of the caller's module: ``__module__`` of what the block defines.
    module_name: str = "__main__"
    # The functions and classes the with statement stands in, outermost first, as
    # ``("def" | "class", name)``: the block's function is compiled at that place, so that what
    # it defines gets the ``__qualname__`` Python gives it there (``f.<locals>.Point``).
    scopes: tuple[tuple[str, str], ...] = ()
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
    """The block's code, its statements at their original lines.

    In a function: ``def <name>(*, seeds): body; return locals()``, compiled inside the
    functions and classes the with statement stands in. At module level: the body as module
    code, run in the block's namespace.
    """
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
    last = body[-1]
    if block.display and isinstance(last, ast.Expr):
        body[-1] = ast.copy_location(
            ast.Assign(targets=[ast.Name(DISPLAY_NAME, ast.Store())], value=last.value), last
        )
    flags = 0
    for feature in block.future_features:  # this interpreter's own flags for them
        flags |= getattr(__future__, feature).compiler_flag
    if block.module_level:
        module = ast.Module(body=body, type_ignores=[])
        ast.fix_missing_locations(module)
        return compile(module, block.filename, "exec", flags=flags, dont_inherit=True)
    # The function starts on the body's first line: tools that show a frame's source by its
    # code's first line (stack_data in IPython's tracebacks) then show the body, not the header.
    first = body[0]
    starts = [first.lineno, *(d.lineno for d in getattr(first, "decorator_list", ()))]
    function.lineno = min(starts)
    function.col_offset = 0
    returned = ast.Return(value=ast.Call(ast.Name(LOCALS_NAME, ast.Load()), [], []))
    body.append(ast.copy_location(returned, last))
    keywords = [name for name in block.seeds if name != block.instance]
    for name in reversed(keywords):
        unbind = ast.If(
            test=ast.Compare(
                ast.Name(name, ast.Load()), [ast.Is()], [ast.Name(UNBOUND_NAME, ast.Load())]
            ),
            body=[ast.Delete(targets=[ast.Name(name, ast.Del())])],
            orelse=[],
        )
        body.insert(0, ast.copy_location(unbind, first))
    scopes = block.scopes or (("def", f"{BLOCK_FUNCTION_PREFIX}{block.label}>"),)
    function.name = scopes[-1][1]
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
    placed: ast.stmt = function
    for kind, name in reversed(scopes[:-1]):
        # Never run: they only make the place, and so the qualified names, of the function.
        header = f"class {name}:" if kind == "class" else f"def {name}():"
        holder = ast.parse(f"{header}\n    pass").body[0]
        holder.body = [placed]  # type: ignore[attr-defined]
        placed = ast.copy_location(holder, function)
    if block.class_name and not any(kind == "class" for kind, _ in scopes):
        holder = ast.parse(f"class {block.class_name}:\n    pass").body[0]
        holder.body = [placed]  # type: ignore[attr-defined]
        placed = ast.copy_location(holder, function)
    tree.body = [placed]
    ast.fix_missing_locations(tree)
    module = compile(tree, block.filename, "exec", flags=flags, dont_inherit=True)
    found = _code_at(module, [name for _, name in scopes])
    if found is None:
        raise TypeError(f"afar: the block at {block.label} did not compile to a function")
    return found


def _code_at(code: types.CodeType, path: list[str]) -> types.CodeType | None:
    """The code object at ``path`` (names of nested functions and classes) in ``code``."""
    for name in path:
        found = next(
            (c for c in code.co_consts if isinstance(c, types.CodeType) and c.co_name == name),
            None,
        )
        if found is None:
            return _code_named(code, path[-1])
        code = found
    return code


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


def new_function(
    block: BlockCode, code: types.CodeType, namespace: dict[str, Any]
) -> Callable[..., Any]:
    """The block's function with ``namespace`` (the variables it reads) as its globals; for a
    block at module level, the run of its module code in ``namespace``.

    Compiled in a class that uses ``super()`` or ``__class__``, the function has the free
    variable ``__class__``: its cell holds the caller's class, read from the caller's frame.
    Compiled inside a function, it may read that function's name as a free variable too.
    """
    namespace["__builtins__"] = builtins
    namespace.setdefault("__name__", block.module_name)
    if block.module_level:
        # No frame of afar's between the task and the block's code: exec is C.
        return functools.partial(exec, code, namespace)
    namespace[LOCALS_NAME] = builtins.locals
    unbound = namespace[UNBOUND_NAME] = _Unbound()
    closure = None
    if code.co_freevars:
        closure = tuple(types.CellType(namespace.pop(name, None)) for name in code.co_freevars)
    function = types.FunctionType(code, namespace, None, None, closure)
    keywords = [name for name in block.seeds if name != block.instance]
    if keywords:
        function.__kwdefaults__ = dict.fromkeys(keywords, unbound)
    return function


class _Unbound:
    """The value of a parameter whose variable is not bound (see UNBOUND_NAME)."""

    __slots__ = ()


def call_block(
    block: BlockCode, function: Callable[..., Any], namespace: dict[str, Any]
) -> Callable[[], Any]:
    """The call of the block's function: its seeds by name, the method's instance first.

    At module level the seeds stay in the namespace, where module code reads them.
    """
    if block.module_level:
        return function
    seeds = {name: namespace.pop(name) for name in block.seeds if name in namespace}
    if block.instance is None:
        return functools.partial(function, **seeds)
    instance = (
        seeds.pop(block.instance) if block.instance in seeds else namespace.get(block.instance)
    )
    return functools.partial(function, instance, **seeds)
