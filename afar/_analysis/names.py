"""What a block's body does with names: reads from outside, assigns, saves, displays.

Which names the block's scope binds, and which it reads from outside, is symtable's answer for
the body wrapped in a function (``afar._analysis.wrapping``): the compiler's own rules, not a
copy of them. Where the order of statements matters (a name read before it is assigned is
seeded from outside; the last name bound is saved by default) the syntax tree is walked, and
every such question about what a node binds is answered by ``afar._analysis.bindings``.
"""

from __future__ import annotations

import ast
import symtable
from dataclasses import dataclass
from typing import Any

from afar._analysis.bindings import (
    COMPREHENSION,
    DEFINITION,
    DELETE,
    PATTERN,
    STORE,
    bindings,
    bound_names,
    scope_nodes,
)
from afar._analysis.source import Site
from afar.errors import BlockSyntaxError

# The name of the function a body is wrapped in for analysis and on the worker (text form,
# see afar._analysis.wrapping).
WRAPPER_NAME = "_afar_block_"
_NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
# ``try: ... except* ...`` (Python 3.11+) has the fields of ``try``.
_TRY_STAR = (ast.TryStar,) if hasattr(ast, "TryStar") else ()


@dataclass(frozen=True)
class Analysis:
    """The names of one block, computed once per code location."""

    reads: tuple[str, ...]  # read from outside and never assigned by the block
    seeds: tuple[str, ...]  # assigned by the block but possibly read before: seeded from outside
    assigned: frozenset[str]  # every name the block's own scope can bind
    last_bound: str | None  # the name saved when none is given
    final_expression: bool  # the last statement is an expression without a trailing ";"
    waits_on_dask: bool = False  # may wait for other tasks of its cluster (see below)


def analyse(site: Site, text: str, line_offset: int = 0) -> Analysis:
    """Names of the body; ``text`` is the body wrapped in a function (``wrapped_text``), whose
    line numbers are those of the site plus ``-line_offset``."""
    check_top_level(site)
    table = _function_table(site, text, line_offset)
    assigned: set[str] = set()
    reads: set[str] = set()
    for symbol in table.get_symbols():
        name = symbol.get_name()
        if symbol.is_declared_global():
            raise BlockSyntaxError(
                f"`global {name}` at the top level of an afar block has no meaning: the block "
                "runs elsewhere and cannot assign the caller's globals. Save the name instead "
                f"(afar.run({name!r})) and it is bound where the with statement stands",
                site.filename,
                _line_of_declaration(site, name, ast.Global),
            )
        if symbol.is_nonlocal():
            raise BlockSyntaxError(
                f"`nonlocal {name}` at the top level of an afar block cannot reach the caller's "
                f"variables. Save the name instead (afar.run({name!r}))",
                site.filename,
                _line_of_declaration(site, name, ast.Nonlocal),
            )
        if symbol.is_local():
            assigned.add(name)
        elif symbol.is_referenced():
            reads.add(name)
    # From 3.12 symtable shows comprehension variables as the function's locals (PEP 709
    # inlines comprehensions), yet they are invisible after the comprehension, as before 3.12.
    assigned -= comprehension_variables(site.body)
    for child in _descendants(table):
        for symbol in child.get_symbols():
            name = symbol.get_name()
            if symbol.is_global() and name not in assigned and not name.startswith("."):
                reads.add(name)
    reads.discard("__class__")
    seeds = read_before_assigned(site.body, assigned)
    return Analysis(
        reads=tuple(sorted(reads)),
        seeds=tuple(sorted(seeds)),
        assigned=frozenset(assigned),
        last_bound=last_bound_name(site.body),
        final_expression=has_final_expression(site),
        waits_on_dask=may_wait_on_dask(site.body),
    )


# A block that computes Dask collections or waits on Futures of its own cluster must not hold a
# worker thread while the tasks it waits for need one (a worker with one thread would deadlock):
# the worker then secedes from its thread pool for the block (Dask's own answer, as in
# worker_client). Seceding costs a message to the worker's loop and, at the end, waiting for a
# free thread, so it is done only for blocks that may wait: those whose source names Dask or
# calls one of these methods.
_DASK_MODULES = frozenset({"dask", "distributed", "dask_cudf", "dask_ml", "xgboost"})
_WAITING_CALLS = frozenset(
    {"compute", "persist", "result", "gather", "get_client", "worker_client", "wait", "Client"}
)


def may_wait_on_dask(body: list[ast.stmt]) -> bool:
    """Whether the block may wait for other tasks of its cluster (see ``_WAITING_CALLS``)."""
    for statement in body:
        for node in ast.walk(statement):
            if isinstance(node, ast.Import):
                if any(a.name.partition(".")[0] in _DASK_MODULES for a in node.names):
                    return True
            elif isinstance(node, ast.ImportFrom):
                if (node.module or "").partition(".")[0] in _DASK_MODULES:
                    return True
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in _WAITING_CALLS:
                    return True
    return False


def _function_table(site: Site, text: str, line_offset: int) -> symtable.SymbolTable:
    try:
        module = symtable.symtable(text, site.filename, "exec")
    except SyntaxError as error:
        message = error.msg
        if "import *" in message:
            message = (
                "`from ... import *` cannot be used in an afar block: the block runs as a "
                "function on the worker. Import the names you need (from m import a, b) or the "
                "module (import m)"
            )
        lineno = error.lineno + line_offset if error.lineno else None
        raise BlockSyntaxError(message, site.filename, lineno) from None
    # The function the body is wrapped in (from 3.14 the module may hold annotation scopes too).
    (table,) = (t for t in module.get_children() if t.get_name() == WRAPPER_NAME)
    return table


def _descendants(table: symtable.SymbolTable) -> list[symtable.SymbolTable]:
    found = []
    stack = list(table.get_children())
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(child.get_children())
    return found


def _line_of_declaration(site: Site, name: str, kind: type[ast.stmt]) -> int:
    for node in scope_nodes(site.body):
        if isinstance(node, kind) and name in node.names:  # type: ignore[attr-defined]
            return node.lineno
    return site.node.lineno


def check_top_level(site: Site) -> None:
    """Refuse what a block cannot do at its top level: leave the caller, await, break out."""
    for node in scope_nodes(site.body):
        problem = None
        if isinstance(node, ast.Return):
            problem = "`return` cannot leave the caller from inside an afar block"
        elif isinstance(node, (ast.Yield, ast.YieldFrom)):
            problem = "`yield` cannot suspend the caller from inside an afar block"
        elif isinstance(node, (ast.Await, ast.AsyncFor, ast.AsyncWith)):
            problem = (
                "`await` (and `async for`/`async with`) cannot run at the top level of an afar "
                "block: the block runs as a plain function on a worker. Define an async "
                "function in the block and run it with asyncio.run(...)"
            )
        if problem:
            raise BlockSyntaxError(
                f"{problem}. Assign the result to a name instead; afar binds it where the "
                "with statement stands",
                site.filename,
                node.lineno,  # type: ignore[attr-defined]
            )
        if site.class_name and isinstance(node, ast.Name) and _is_private(node.id):
            mangled = f"_{site.class_name.lstrip('_')}{node.id}"
            raise BlockSyntaxError(
                f"`{node.id}` is a private name: inside class {site.class_name} Python renames "
                f"it to `{mangled}`, and afar cannot carry such a variable into or out of a "
                "block. Use a name without two leading underscores (private attributes such "
                f"as `self.{node.id}` work)",
                site.filename,
                node.lineno,
            )
        if isinstance(node, ast.Nonlocal):
            # Refused here: symtable would only say "no binding for nonlocal ... found".
            name = node.names[0]
            raise BlockSyntaxError(
                f"`nonlocal {name}` at the top level of an afar block cannot reach the caller's "
                f"variables. Save the name instead (afar.run({name!r}))",
                site.filename,
                node.lineno,
            )
    _check_loop_control(site, site.body, in_loop=False)


def _is_private(name: str) -> bool:
    """A name Python mangles inside a class: two leading underscores, not two trailing."""
    return name.startswith("__") and not name.endswith("__")


def _check_loop_control(site: Site, body: list[ast.stmt], in_loop: bool) -> None:
    for statement in body:
        if isinstance(statement, (ast.Break, ast.Continue)) and not in_loop:
            word = "break" if isinstance(statement, ast.Break) else "continue"
            raise BlockSyntaxError(
                f"`{word}` at the top level of an afar block cannot reach a loop outside the "
                "block: the block runs elsewhere. Save a flag and test it after the block",
                site.filename,
                statement.lineno,
            )
        if isinstance(statement, (*_NESTED_SCOPES,)):
            continue
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            inner = getattr(statement, field, None) or []
            loop_body = isinstance(statement, (ast.For, ast.While)) and field == "body"
            for item in inner:
                if isinstance(item, (ast.ExceptHandler, ast.match_case)):
                    _check_loop_control(site, item.body, in_loop)
            statements = [s for s in inner if isinstance(s, ast.stmt)]
            _check_loop_control(site, statements, in_loop or loop_body)


def read_before_assigned(body: list[ast.stmt], assigned: set[str]) -> set[str]:
    """Names of the block that may be read before the block assigns them (``x = x + 1``).

    Conservative: a name counts as assigned only where every path to the read assigns it first
    (in the same branch, the loop's own body, the ``with`` or ``case`` that binds it). Anything
    else is seeded with the outer value, which costs shipping it (issue 2: only what the body
    reads from outside travels). A name read only inside a nested function is read later.
    """
    early: set[str] = set()
    _flow(body, set(), assigned, early)
    return early


def _flow(
    body: list[ast.stmt], definite: set[str], assigned: set[str], early: set[str]
) -> set[str]:
    """Note the early reads of ``body``; return the names definitely bound after it."""
    definite = set(definite)

    def read(*nodes: ast.AST | None) -> None:
        for node in nodes:
            if node is not None:
                early.update(n for n in _names_read(node) if n in assigned and n not in definite)

    for statement in body:
        if isinstance(statement, ast.If):
            read(statement.test)
            after_body = _flow(statement.body, definite, assigned, early)
            after_else = _flow(statement.orelse, definite, assigned, early)
            definite |= after_body & after_else
        elif isinstance(statement, ast.For):
            read(statement.iter, statement.target)
            loop_bound = definite | bound_names([statement.target], STORE)
            _flow(statement.body, loop_bound, assigned, early)
            _flow(statement.orelse, definite, assigned, early)  # the loop may not run
        elif isinstance(statement, ast.While):
            read(statement.test)
            _flow(statement.body, definite, assigned, early)
            _flow(statement.orelse, definite, assigned, early)
        elif isinstance(statement, ast.With):
            for item in statement.items:
                read(item.context_expr, item.optional_vars)
                if item.optional_vars is not None:
                    definite |= bound_names([item.optional_vars], STORE)
            # The context manager may swallow an exception: the body's names stay uncertain.
            _flow(statement.body, definite, assigned, early)
        elif isinstance(statement, (ast.Try, *_TRY_STAR)):
            tried: Any = statement  # ast.Try, or ast.TryStar (3.11+): the same fields
            after_body = _flow(tried.body, definite, assigned, early)
            for handler in tried.handlers:
                read(handler.type)
                caught = {handler.name} if handler.name else set()
                _flow(handler.body, definite | caught, assigned, early)
            _flow(tried.orelse, after_body, assigned, early)
            definite = _flow(tried.finalbody, definite, assigned, early)
        elif isinstance(statement, ast.Match):
            read(statement.subject)
            for case in statement.cases:
                read(case.pattern)
                guard = [ast.Expr(case.guard)] if case.guard is not None else []
                bound = definite | bound_names([case.pattern], PATTERN)
                _flow([*guard, *case.body], bound, assigned, early)
        else:
            read(statement)
            definite = _bound_after(statement, definite)
    return definite


def _bound_after(statement: ast.stmt, definite: set[str]) -> set[str]:
    """``definite`` updated by a simple statement (or a def or class)."""
    if isinstance(statement, ast.Delete):
        return definite - bound_names(statement.targets, DELETE)
    if isinstance(statement, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and (
        not isinstance(statement, ast.AnnAssign) or statement.value is not None
    ):
        targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        return definite | bound_names(targets, STORE)
    if isinstance(statement, (ast.Import, ast.ImportFrom)):
        return definite | bound_names([statement])
    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return definite | {statement.name}  # not what its decorators may bind: they may not
    return definite


def _names_read(statement: ast.AST) -> set[str]:
    names = set()
    for node in scope_nodes([statement]):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Load, ast.Del)):
            names.add(node.id)  # `del x` needs a value of x, as reading it does
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)  # x += 1 reads x first
    return names


def comprehension_variables(body: list[ast.stmt]) -> set[str]:
    """Names the block binds only as comprehension variables (``i`` of ``[i for i in r]``)."""
    only: set[str] = set()
    elsewhere: set[str] = set()
    for binding in bindings(body):
        (only if binding.kind == COMPREHENSION else elsewhere).add(binding.name)
    return only - elsewhere


def last_bound_name(body: list[ast.stmt]) -> str | None:
    """The last name that the block's own statements bind, in source order.

    ``x: int`` binds nothing; ``del x`` unbinds; an ``except ... as`` name is unbound at the
    handler's end; a comprehension's variables are its own. Imports do not count: a block that
    imports ``json`` to use it must not bind the caller's ``json`` to a Future.
    """
    kinds = (STORE, DEFINITION, PATTERN)
    bound = [(b.position, b.name) for b in bindings(body) if b.kind in kinds]
    return max(bound)[1] if bound else None


def has_final_expression(site: Site) -> bool:
    """The body ends with an expression statement whose value IPython would display."""
    last = site.body[-1]
    if not isinstance(last, ast.Expr) or last.end_lineno is None:
        return False
    line = site.line(last.end_lineno).encode()
    rest = line[last.end_col_offset :].decode(errors="replace").strip()
    return not rest.startswith(";")
