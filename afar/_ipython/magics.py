"""``%afar`` and ``%%afar``: run a cell, or evaluate an expression, on a Dask worker from IPython.

A magic is one function for both forms, made per name: ``%afar`` by ``load_ipython_extension``,
others by ``new_magic`` with some options fixed. What a line says is read by ``options`` (one
table of options, IPython's parser); this module turns it into a block: the cell's code, or the
line's expression assigned to a name in a copy of the user's namespace, run by ``Run`` as any
``with`` block is.

IPython is imported only when a magic is made or runs, so that ``import afar`` works without it.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from afar import _cpython
from afar._ipython.options import (
    OptionError,
    Settings,
    cell_names,
    check_arguments,
    parse_line,
    parser_for,
    settings_from,
    usage_error,
)
from afar._locations import Location, Where, remotely
from afar._run import Captured, Get, Run
from afar._run import get as _afar_get
from afar._run import run as _afar_run

__all__ = ["load_ipython_extension", "new_magic"]

MAGIC_NAME = "afar"
# The line magic assigns its expression to this name, in a copy of the user's namespace: the
# user's own variables are never touched.
RESULT_NAME = "_afar_line_value"
_INSTALL_HINT = 'pip install "afar[ipython]"'


def run_for(settings: Settings, names: tuple[str, ...]) -> Run:
    """The Run (or Get) that ``settings`` ask for, saving ``names`` (by default the Run's)."""
    base = settings.run
    if base is None:
        base = _afar_get if settings.get else _afar_run
    elif settings.get and not isinstance(base, Get):
        base = Get(*base.names, client=base.client, data=base.data)
    names = names or base.names
    client = settings.client if settings.client is not None else base.client
    data = settings.data if settings.data is not None else base.data
    if names == base.names and client is base.client and data is base.data:
        return base
    if isinstance(base, Get):
        return base(*names, client=client, data=data, timeout=base.timeout)
    return base(*names, client=client, data=data)


# -- running ------------------------------------------------------------------------------------
def _execution_number(shell: Any) -> int:
    """The number of the running cell (IPython 9 counts it before it runs, IPython 8 after)."""
    history = getattr(getattr(shell, "history_manager", None), "input_hist_raw", None)
    if history:
        return len(history) - 1  # the running cell's input is stored first, under its number
    return int(getattr(shell, "execution_count", 0) or 0)


def run_cell(
    settings: Settings, names_text: str, cell: str, shell: Any, magic: str
) -> Captured | None:
    """``%%afar``: the cell as a block whose scope is the user's namespace."""
    __tracebackhide__ = True
    names = cell_names(names_text, magic)
    if not cell.strip():
        raise OptionError(
            f"%%{magic} runs the code below it in the cell, and there is none: write the code "
            f"on the lines after %%{magic}"
        )
    run = run_for(settings, names)
    # One empty line stands for the magic's own line, so that line numbers in tracebacks are
    # the cell's.
    source = "\n" + cell
    filename = shell.compile.cache(source, _execution_number(shell), raw_code=source)
    location = settings.where or remotely
    run.run_source(source, filename, shell.user_ns, location)
    return run.captured if location.where is Where.LATER else None


def run_line(
    settings: Settings, expression: str, shell: Any, local_ns: Mapping[str, Any] | None, magic: str
) -> Any:
    """``%afar expression``: the expression's Future (its value with -g)."""
    __tracebackhide__ = True
    if not expression:
        raise OptionError(
            f"%{magic} evaluates an expression on a worker, and the line has none. Write, e.g.: "
            f"total = %{magic} -g sum(range(10)); for statements, use %%{magic} in a cell"
        )
    filename = f"<%{magic} In[{_execution_number(shell)}]>"
    expression = without_final_semicolon(expression)
    _check_expression(expression, filename, magic)
    run = run_for(settings, (RESULT_NAME,))
    # A copy: the block binds its result there, not among the user's variables.
    scope = {**shell.user_ns, **(local_ns or {})}
    location = settings.where or remotely
    results = run.run_source(
        f"{RESULT_NAME} = (\n{expression}\n)\n", filename, scope, location, display=False
    )
    if location.where is Where.LATER:
        return run.captured
    # With -d, results is the user's mapping: the result is returned, not left there.
    return results.pop(RESULT_NAME, None)


def without_final_semicolon(expression: str) -> str:
    """The expression without a final ``;``, which IPython reads as "do not display" on any
    line (the magic's own line included: ``w = %afar -g x + 1;``)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expression).readline))
    except (tokenize.TokenError, SyntaxError):
        return expression  # not Python: the check of the expression says what is wrong
    for token in reversed(tokens):
        if token.type in _NOT_CODE:
            continue
        if token.type == tokenize.OP and token.string == ";":
            lines = expression.splitlines(keepends=True)
            row, column = token.start
            return "".join(lines[: row - 1]) + lines[row - 1][:column]
        break
    return expression


_NOT_CODE = frozenset(
    {tokenize.ENDMARKER, tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT, tokenize.INDENT}
)


def silenced_in_cell(shell: Any, magic: str, line: str) -> bool:
    """Whether the running cell uses ``%magic line`` as a statement of its own whose value
    IPython would show, and ``line`` ends with ``;``: then its value is not returned.

    IPython decides what to display from the cell as it transformed it, where the ``;`` stands
    inside the magic's argument string (``get_ipython().run_line_magic('afar', 'x + 1;')``), so
    it would show the value: the magic returns None instead. Assigned (``w = %afar -g x;``),
    the value is returned as any other line would assign it.
    """
    if without_final_semicolon(line) == line:
        return False
    history = getattr(getattr(shell, "history_manager", None), "input_hist_parsed", None)
    if not history:
        return False
    try:
        tree = _cpython.parse(history[-1])
    except SyntaxError:
        return False
    statements = 0
    elsewhere = 0
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            if _is_magic_call(child, magic, line):
                if isinstance(node, ast.Expr):
                    statements += 1
                else:
                    elsewhere += 1
    return statements > 0 and elsewhere == 0


def _is_magic_call(node: ast.AST, magic: str, line: str) -> bool:
    """``node`` is IPython's ``get_ipython().run_line_magic(magic, line)``."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "run_line_magic"
        and len(node.args) == 2
        and all(isinstance(a, ast.Constant) for a in node.args)
        and [a.value for a in node.args] == [magic, line]  # type: ignore[attr-defined]
    )


def _check_expression(expression: str, filename: str, magic: str) -> None:
    try:
        _cpython.parse(expression, filename, "eval")
    except SyntaxError:
        try:
            _cpython.parse(expression, filename, "exec")
        except SyntaxError:
            raise  # not Python at all: the user's own syntax error
        raise OptionError(
            f"%{magic} evaluates an expression, and {expression!r} is a statement. Run "
            f"statements as a cell: put %%{magic} on the cell's first line and the code below"
        ) from None


# -- the magic functions ------------------------------------------------------------------------
def _magic_function(name: str, baked: Settings) -> Callable[..., Any]:
    from IPython.core.magic import no_var_expand

    # Made once: %name (an expression) and %%name (names) read their lines with these.
    parsers = {form: parser_for(name, baked, expression=form) for form in (True, False)}

    def magic(line: str, cell: str | None = None, local_ns: Any = None) -> Any:
        __tracebackhide__ = True  # IPython leaves this frame out of tracebacks
        from IPython import get_ipython

        shell = get_ipython()
        namespaces = (local_ns, shell.user_ns) if local_ns is not None else (shell.user_ns,)
        try:
            expression = cell is None
            given, rest = parse_line(
                line, parsers[expression], baked, magic=name, expression=expression
            )
            settings = settings_from(given, baked, namespaces, name)
            if cell is None:
                value = run_line(settings, rest, shell, local_ns, name)
                return None if silenced_in_cell(shell, name, line) else value
            return run_cell(settings, rest, cell, shell, name)
        except OptionError as error:
            raise usage_error(str(error)) from None

    magic.__name__ = magic.__qualname__ = name
    # The help, %name?, is the parser's: the table's options that are left, and their use.
    magic.__doc__ = parsers[True].format_help()
    # Read local variables when used inside a function (IPython passes them as local_ns).
    magic.needs_local_scope = True  # type: ignore[attr-defined]
    # Keep `{...}` and `$name` in expressions as written (IPython would expand them).
    return no_var_expand(magic)


def new_magic(
    name: str,
    *,
    get: bool = False,
    run: Run | None = None,
    data: MutableMapping[str, Any] | None = None,
    where: Location | None = None,
    client: Any = None,
) -> None:
    """Make and register a ``%name``/``%%name`` magic like ``%afar``, with options fixed.

    The options fixed here disappear from the magic (and from its help, ``%name?``).

    Parameters
    ----------
    name
        The magic's name, without ``%``.
    get, run, data, where, client
        As the options ``-g``, ``-r``, ``-d``, ``-w`` and ``-c`` of ``%afar``, but values
        rather than names of variables.

    Examples
    --------
    >>> afar.new_magic("on_gpus", where=afar.remotely(resources={"GPU": 1}))  # doctest: +SKIP
    >>> %%on_gpus model  # doctest: +SKIP
    ... model = train(data)
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(
            f"afar.new_magic: the name of a magic is an identifier such as 'on_gpus', not {name!r}"
        )
    shell = _running_shell("afar.new_magic")
    given = {"get": bool(get), "run": run, "data": data, "where": where, "client": client}
    check_arguments(given)
    settings = Settings(**given)
    magic = _magic_function(name, settings)
    shell.register_magic_function(magic, magic_kind="line_cell", magic_name=name)


def _running_shell(what: str) -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        raise ImportError(f"{what} needs IPython: {_INSTALL_HINT}") from None
    shell = get_ipython()
    if shell is None:
        raise RuntimeError(
            f"{what} registers an IPython magic, and IPython is not running here: call it in "
            "IPython or in a Jupyter notebook"
        )
    return shell


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext afar``: register ``%afar``/``%%afar``; follow cells for live output."""
    magic = _magic_function(MAGIC_NAME, Settings())
    ipython.register_magic_function(magic, magic_kind="line_cell", magic_name=MAGIC_NAME)
    from afar._ipython.debugging import install_debugger

    install_debugger(ipython)  # %debug and %pdb on open a failed block on its worker
    if getattr(ipython, "kernel", None) is not None:
        from afar._ipython.cells import tracker_for

        # From now on the cells are followed, so the first block already knows its cell.
        tracker_for(ipython)
