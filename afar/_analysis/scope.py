"""Evaluate an expression of a ``with`` header in the caller's scope, as Python would there.

Used once per block for ``remotely(...)`` written without importing ``remotely``: Python raised
``NameError`` on the name before it evaluated the arguments, so afar evaluates them itself,
exactly once. A plain ``eval`` with the frame's ``f_locals`` would be wrong inside functions:
a lambda or a comprehension in the arguments would look the caller's local variables up as
globals. The expression is compiled instead inside a function (or a class body, for a class
body caller) whose free variables are the caller's local variables and closure cells, and run
with the caller's globals: every name then resolves as it does at the ``with``.
"""

from __future__ import annotations

import ast
import builtins
import functools
import sys
import types
from collections import ChainMap
from collections.abc import Mapping
from typing import Any

from afar import _cpython
from afar._cpython import is_optimized

# Names of the generated scopes; the user's names never reach them (they are the functions'
# own names, not variables the expression can see).
_OUTER = "_afar_scope_"
_INNER = "_afar_header_"
_VALUE = "_afar_value_"
# Python 3.12+ (PEP 695) requires the type parameters of functions and classes in a tree.
_NO_TYPE_PARAMS: dict[str, Any] = {"type_params": []} if sys.version_info >= (3, 12) else {}


# Code compiled per call site and set of captured names: a block in a loop compiles once.
CODE_CACHE_SIZE = 256


def call_arguments(
    frame: types.FrameType, call: ast.Call, filename: str, flags: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positional and keyword arguments of ``call``, evaluated once in ``frame``'s scope."""
    local_names = frame.f_locals
    if local_names is frame.f_globals:  # module level: plain eval is exact
        return eval(_code(call, None, False, filename, flags), frame.f_globals)
    class_body = not is_optimized(frame.f_code)
    visible = enclosing_values(frame) if class_body else local_names
    captured = tuple(name for name in _names_used(call) if name in visible)
    code = _code(call, captured, class_body, filename, flags)
    closure = tuple(types.CellType(visible[name]) for name in code.co_freevars)
    function = types.FunctionType(code, frame.f_globals, _INNER, None, closure)
    if not class_body:
        return function()
    # A class body looks its own names up in its namespace first (top level only), then in its
    # closure cells, globals and builtins: run the generated body on a view of that namespace
    # which keeps the generated body's own writes (__module__, __qualname__...) to itself.
    namespace = ChainMap({}, local_names)
    builtins.__build_class__(function, _INNER, metaclass=_Namespace(namespace))
    return namespace.maps[0][_VALUE]


@functools.lru_cache(maxsize=CODE_CACHE_SIZE)
def _names_used(call: ast.Call) -> tuple[str, ...]:
    return tuple(sorted({n.id for n in ast.walk(call) if isinstance(n, ast.Name)}))


@functools.lru_cache(maxsize=CODE_CACHE_SIZE)
def _code(
    call: ast.Call, captured: tuple[str, ...] | None, class_body: bool, filename: str, flags: int
) -> types.CodeType:
    """Code computing ``(args, kwargs)`` of ``call``: an expression (``captured`` None, module
    level) or the inner scope of a function whose variables are ``captured``."""
    capture = ast.Lambda(
        args=ast.arguments(
            posonlyargs=[],
            args=[],
            vararg=ast.arg("args"),
            kwonlyargs=[],
            kw_defaults=[],
            kwarg=ast.arg("kwargs"),
            defaults=[],
        ),
        body=ast.Tuple([ast.Name("args", ast.Load()), ast.Name("kwargs", ast.Load())], ast.Load()),
    )
    packed = ast.copy_location(
        ast.Call(func=ast.copy_location(capture, call), args=call.args, keywords=call.keywords),
        call,
    )
    expression = ast.fix_missing_locations(packed)
    if captured is None:
        return _cpython.compile_tree(ast.Expression(expression), filename, "eval", flags)
    return _compiled(expression, list(captured), class_body, filename, flags)


def _compiled(
    expression: ast.expr, captured: list[str], class_body: bool, filename: str, flags: int
) -> types.CodeType:
    """Code of a function (or class body) computing ``expression``, free in ``captured``."""
    # The generated statements stand where the expression stands, as far as locations go.
    line: dict[str, Any] = {
        "lineno": expression.lineno,
        "col_offset": expression.col_offset,
        "end_lineno": expression.end_lineno,
        "end_col_offset": expression.end_col_offset,
    }
    if class_body:
        inner: ast.stmt = ast.ClassDef(
            name=_INNER,
            bases=[],
            keywords=[],
            body=[ast.Assign([ast.Name(_VALUE, ast.Store(), **line)], expression, **line)],
            decorator_list=[],
            **_NO_TYPE_PARAMS,
            **line,
        )
    else:
        inner = ast.FunctionDef(
            name=_INNER,
            args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]),
            body=[ast.Return(expression, **line)],
            decorator_list=[],
            returns=None,
            **_NO_TYPE_PARAMS,
            **line,
        )
    # Assigned in the outer function, the captured names are free variables of the inner scope.
    binds = [
        ast.Assign([ast.Name(name, ast.Store(), **line)], ast.Constant(None, **line), **line)
        for name in captured
    ]
    outer = ast.FunctionDef(
        name=_OUTER,
        args=ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[]),
        body=[*binds, inner],
        decorator_list=[],
        returns=None,
        **_NO_TYPE_PARAMS,
        **line,
    )
    module = ast.fix_missing_locations(ast.Module(body=[outer], type_ignores=[]))
    compiled = _cpython.compile_tree(module, filename, "exec", flags)
    outer_code = next(c for c in compiled.co_consts if isinstance(c, types.CodeType))
    return next(c for c in outer_code.co_consts if isinstance(c, types.CodeType))


def enclosing_values(frame: types.FrameType) -> Mapping[str, Any]:
    """The values of a class body's closure cells: variables of the function it stands in.

    A class body runs when its ``class`` statement does, called (by ``__build_class__``, a C
    function) from the frame of the enclosing scope: that frame holds the cells' values.
    """
    free = frame.f_code.co_freevars
    outer = frame.f_back
    while outer is not None and free:
        if is_optimized(outer.f_code):
            values = outer.f_locals
            return {name: values[name] for name in free if name in values}
        outer = outer.f_back  # a class body inside a class body: its function is further out
    return {}


class _Namespace:
    """A metaclass for ``__build_class__`` that runs the body in a given namespace."""

    def __init__(self, namespace: ChainMap[str, Any]) -> None:
        self.namespace = namespace

    def __prepare__(self, name: str, bases: tuple[type, ...], **kwargs: Any) -> ChainMap:
        return self.namespace

    def __call__(self, name: str, bases: tuple[type, ...], namespace: Any) -> Any:
        return namespace
