"""The body as a function's body, in one place on the client: analysed and shipped.

A ``with`` block's body is indented: ``def _afar_block_():`` on the line above its first line
makes it a function body with every line at its own number, which symtable analyses and the
worker compiles as it is. A notebook cell (``%%afar``) starts at column 0 and may start on line
1: it is analysed indented under a ``def`` one line higher (``line_offset=-1``) and travels as
it is; the worker wraps its syntax tree (``afar._worker.compiling.compile_block``, which needs
no afar). At module level, a nested function's ``global n`` of a variable the block assigns
becomes ``nonlocal n`` (``share_module_globals``). ``wrap`` is the one entry point.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from afar._analysis.bindings import bound_names, scope_nodes
from afar._analysis.names import WRAPPER_NAME, Analysis, analyse
from afar._analysis.source import Site


@dataclass(frozen=True)
class Wrapped:
    """A body analysed, and the text of it that travels to the worker."""

    analysis: Analysis
    text: str
    wrapped: bool  # ``text`` is ``def`` + body (a with block), or the bare body (a cell)
    # The line number of the text's first line: the lines before it are not written out (a
    # block deep in a long file would carry a blank line per line before it, issue 19).
    lineno: int = 1


def wrap(site: Site, *, module_level: bool, cell: bool = False) -> Wrapped:
    """Analyse the body of ``site`` and give the text to ship (see the module's docstring)."""
    if cell:
        source = "".join(site.lines)
        indented = "".join("    " + line if line.strip() else line for line in site.lines)
        analysis = analyse(site, f"def {WRAPPER_NAME}():\n{indented}\n", line_offset=-1)
        text, lineno = source, 1
    else:
        text, lineno = function_text(site)
        analysis = analyse(site, text, line_offset=lineno - 1)
    if module_level:
        text = share_module_globals(site, text, analysis.assigned, lineno)
    return Wrapped(analysis=analysis, text=text, wrapped=not cell, lineno=lineno)


def function_text(site: Site) -> tuple[str, int]:
    """The body as the body of ``def``, and the line number of the ``def``: the line above the
    body's first, so that every line of the body stands at its number from there."""
    start = site.body_first_line
    body = "".join(site.lines_between(start, site.body_last_line))
    return f"def {WRAPPER_NAME}():\n" + body, start - 1


def wrapped_text(site: Site) -> str:
    """The body as the body of ``def``, every line at its original number."""
    text, lineno = function_text(site)
    return "\n" * (lineno - 1) + text


def share_module_globals(site: Site, text: str, assigned: frozenset[str], lineno: int = 1) -> str:
    """``text`` where nested functions' ``global n`` becomes ``nonlocal n`` if the block assigns n.

    For a block at module level only: there, the block's own ``count = 0`` and a nested
    function's ``global count`` are one variable, the module's. In the block's function they
    would be two (issue 2: the block behaves as if it ran in place); ``nonlocal`` makes them
    one again, and the saved value comes back as any other. Lines keep their numbers (the
    first line of ``text`` is line ``lineno``).
    """
    lines = text.splitlines(keepends=True)
    for declaration, names in _shared_globals(site.body, assigned, frozenset()):
        if declaration.end_lineno != declaration.lineno or declaration.end_col_offset is None:
            continue  # a declaration continued over lines: left as it is
        shared = [n for n in declaration.names if n in names]
        kept = [n for n in declaration.names if n not in names]
        statement = f"nonlocal {', '.join(shared)}" + (
            f"; global {', '.join(kept)}" if kept else ""
        )
        index = declaration.lineno - lineno
        line = lines[index].encode()
        start, end = declaration.col_offset, declaration.end_col_offset
        lines[index] = (line[:start] + statement.encode() + line[end:]).decode()
    return "".join(lines)


def _shared_globals(
    body: list[ast.stmt], assigned: frozenset[str], shadowed: frozenset[str]
) -> list[tuple[ast.Global, set[str]]]:
    """``global`` declarations of nested scopes that name a variable of the block itself."""
    found = []
    for node in scope_nodes(body):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for inner in scope_nodes(node.body):
            if isinstance(inner, ast.Global):
                names = (set(inner.names) & assigned) - shadowed
                if names:
                    found.append((inner, names))
        # A function's own variables hide the block's from the functions nested in it; a class
        # body's do not (class scopes are skipped by name resolution).
        own = _own_bindings(node) if not isinstance(node, ast.ClassDef) else set()
        found += _shared_globals(node.body, assigned, shadowed | own)
    return found


def _own_bindings(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    arguments = function.args
    parameters = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
    parameters += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
    declared: set[str] = set()
    for node in scope_nodes(function.body):
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            declared.update(node.names)
    return ({a.arg for a in parameters} | bound_names(function.body)) - declared
