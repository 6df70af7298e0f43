"""What a piece of a block binds, in the block's own scope: the one walker every analysis uses.

A name is bound by an assignment target, ``del``, an import, a ``def`` or ``class``, an
``except ... as``, or a ``case`` pattern. Nested functions, lambdas and classes have scopes of
their own: only what runs in the block's scope is walked (decorators, defaults, bases). A
comprehension has its own scope too, yet PEP 572 puts the target of a ``:=`` inside it in the
enclosing scope (``any((hit := v) > 1 for v in values)`` binds ``hit``); its own variables are
reported as such, for the analyses that must tell them apart. Each answer carries its kind and
its position, so one walk serves the seeding of reads, the name saved by default, the
variables only comprehensions bind, and the shadowing of globals by nested functions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)

# Kinds of binding.
STORE = "store"  # an assignment target, a ``for``/``with`` target, ``:=``, ``type X = ...``
ANNOTATION = "annotation"  # ``x: int`` without a value: makes x local, binds nothing
DELETE = "delete"  # ``del x``: makes x local, unbinds it
IMPORT = "import"
DEFINITION = "definition"  # def, async def, class
HANDLER = "handler"  # ``except ... as e``: unbound again at the handler's end
PATTERN = "pattern"  # a ``case`` pattern's capture (``case [a, *rest]``, ``**rest``, ``as``)
COMPREHENSION = "comprehension"  # a comprehension's own variable: not the block's


@dataclass(frozen=True)
class Binding:
    name: str
    kind: str
    # When the name is bound, as an order: where it stands, after the end of the value it
    # receives when it is a target (``total = (count := 3) * 2`` binds count, then total).
    position: tuple[int, ...]


def bindings(nodes: Iterable[ast.AST]) -> Iterator[Binding]:
    """Every binding that ``nodes`` (statements, targets, patterns) make, in walk order."""
    inside: set[int] = set()  # nodes inside a comprehension
    walrus_targets: set[int] = set()
    annotated_only: set[int] = set()
    after_value: dict[int, tuple[int, int]] = {}  # target names -> end of the value they get
    for node in scope_nodes(list(nodes)):
        if id(node) in inside or isinstance(node, _COMPREHENSIONS):
            inside.update(id(child) for child in ast.iter_child_nodes(node))
        if isinstance(node, ast.NamedExpr):
            walrus_targets.add(id(node.target))
        elif isinstance(node, ast.AnnAssign) and node.value is None:
            annotated_only.add(id(node.target))
        for target, value in _targets_and_values(node):
            end = (value.end_lineno or value.lineno, value.end_col_offset or 0)
            after_value.update((id(name), end) for name in ast.walk(target))
        yield from _bound_by(
            node,
            id(node) in inside and id(node) not in walrus_targets,
            id(node) in annotated_only,
            after_value.get(id(node), ()),
        )


def _targets_and_values(node: ast.AST) -> Iterator[tuple[ast.AST, ast.expr]]:
    """The targets of a statement that binds them to a value it evaluates first."""
    if isinstance(node, ast.Assign):
        for target in node.targets:
            yield target, node.value
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and node.value is not None:
        yield node.target, node.value
    elif isinstance(node, (ast.For, ast.AsyncFor)):
        yield node.target, node.iter
    elif isinstance(node, (ast.With, ast.AsyncWith)):
        for item in node.items:
            if item.optional_vars is not None:
                yield item.optional_vars, item.context_expr


def _bound_by(
    node: ast.AST, comprehension: bool, annotated_only: bool, after: tuple[int, ...]
) -> Iterator[Binding]:
    if isinstance(node, ast.Name):
        if isinstance(node.ctx, ast.Load):
            return
        if comprehension:
            kind = COMPREHENSION
        elif isinstance(node.ctx, ast.Del):
            kind = DELETE
        else:
            kind = ANNOTATION if annotated_only else STORE
        yield Binding(node.id, kind, (*after, node.lineno, node.col_offset))
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
        for alias in node.names:
            where = alias if hasattr(alias, "lineno") else node
            yield Binding(imported_name(alias), IMPORT, (where.lineno, where.col_offset))
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield Binding(node.name, DEFINITION, (node.lineno, node.col_offset))
    elif isinstance(node, ast.ExceptHandler) and node.name:
        yield Binding(node.name, HANDLER, (node.lineno, node.col_offset))
    elif isinstance(node, (ast.MatchAs, ast.MatchStar, ast.MatchMapping)):
        name = node.rest if isinstance(node, ast.MatchMapping) else node.name
        if name:
            # The name ends the pattern (`[a] as whole`, `{"k": a, **rest}`): the pattern's
            # start would put it before the names inside.
            yield Binding(name, PATTERN, (node.end_lineno, node.end_col_offset))


def bound_names(nodes: Iterable[ast.AST], *kinds: str) -> set[str]:
    """The names that ``nodes`` bind in the block's scope, of the given kinds (default: all
    but comprehension variables)."""
    kinds = kinds or tuple(k for k in _ALL_KINDS if k != COMPREHENSION)
    return {b.name for b in bindings(nodes) if b.kind in kinds}


_ALL_KINDS = (STORE, ANNOTATION, DELETE, IMPORT, DEFINITION, HANDLER, PATTERN, COMPREHENSION)


def imported_name(alias: ast.alias) -> str:
    return alias.asname or alias.name.partition(".")[0]


def scope_nodes(body: Sequence[ast.AST]) -> Iterator[ast.AST]:
    """Every node of ``body`` that runs in the block's own scope (not in nested functions)."""
    stack: list[ast.AST] = list(reversed(body))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            children: list[ast.AST] = [*node.decorator_list, *node.args.defaults]
            children += [d for d in node.args.kw_defaults if d is not None]
        elif isinstance(node, ast.Lambda):
            children = [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]
        elif isinstance(node, ast.ClassDef):
            children = [*node.decorator_list, *node.bases, *node.keywords]
        else:
            children = list(ast.iter_child_nodes(node))
        stack.extend(reversed(children))
