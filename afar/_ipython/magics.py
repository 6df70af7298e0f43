"""``%afar`` and ``%%afar``: run a cell, or evaluate an expression, on a Dask worker from IPython.

IPython is imported only when a magic is made or runs, so that ``import afar`` works without it.
"""

from __future__ import annotations

import ast
import io
import keyword
import re
import tokenize
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from afar import _cpython
from afar._locations import DEFAULT_LOCATIONS, Location, Where, remotely
from afar._run import Captured, Get, Run
from afar._run import get as _afar_get
from afar._run import run as _afar_run

__all__ = ["load_ipython_extension", "new_magic"]

MAGIC_NAME = "afar"
# The line magic assigns its expression to this name, in a copy of the user's namespace: the
# user's own variables are never touched.
RESULT_NAME = "_afar_line_value"
_INSTALL_HINT = 'pip install "afar[ipython]"'


@dataclass(frozen=True)
class _Option:
    short: str
    long: str
    metavar: str | None  # None: a flag
    help: str
    example: str  # a variable assignment that makes a value for this option

    def spelled(self) -> str:
        if self.metavar is None:
            return f"-{self.short}, --{self.long}"
        return f"-{self.short} {self.metavar}, --{self.long} {self.metavar}"


_OPTIONS = (
    _Option("g", "get", None, "wait, and bind (or return) plain values as afar.get does", ""),
    _Option(
        "r",
        "run",
        "RUN",
        "an afar.run(...) or afar.get(...) to run with: its names, client, data, timeout",
        "r = afar.get(timeout=60)",
    ),
    _Option(
        "d",
        "data",
        "MAPPING",
        "a dict looked up first for the names read; saved results are added to it",
        "data = {}",
    ),
    _Option(
        "w",
        "where",
        "LOCATION",
        "where to run: remotely (the default), locally, later, or remotely(...) in a variable",
        'gpus = afar.remotely(resources={"GPU": 1})',
    ),
    _Option(
        "c",
        "client",
        "CLIENT",
        "the Dask client to submit with (by default Dask's default client)",
        'client = Client("tcp://scheduler:8786")',
    ),
)
_BY_SHORT = {option.short: option for option in _OPTIONS}
_BY_LONG = {option.long: option for option in _OPTIONS}
_TOKEN = re.compile(r"\S+")
_OPTION_LIKE = re.compile(r"--?[^\W\d]")
_DOTTED_NAME = re.compile(r"[^\W\d]\w*(\.[^\W\d]\w*)*")


@dataclass(frozen=True)
class Settings:
    """What a magic runs with: the values of its options, baked in or given on the line."""

    get: bool = False
    run: Run | None = None
    data: MutableMapping[str, Any] | None = None
    where: Location | None = None
    client: Any = None


class _OptionError(ValueError):
    """A magic line afar cannot read; the magic raises it again as IPython's UsageError."""


def _usage_error(message: str) -> Exception:
    from IPython.core.error import UsageError

    return UsageError(message)


# -- reading the magic line ---------------------------------------------------------------------
def parse_line(
    line: str, options: tuple[_Option, ...], *, magic: str, expression: bool
) -> tuple[dict[str, Any], str]:
    """Split a magic line into ``{long option: value or True}`` and the rest.

    With ``expression``, options stop at the first word that is not one (or at ``--``) and the
    rest of the line, as written, is the expression; otherwise options may stand anywhere and
    the other words are returned joined by spaces (the names of a cell magic).
    """
    allowed = {option.long for option in options}
    tokens = list(_TOKEN.finditer(line))
    found: dict[str, Any] = {}
    words: list[str] = []
    index = 0

    def take(option: _Option, value: Any) -> None:
        if option.long not in allowed:
            raise _OptionError(
                f"%{magic} has -{option.short}/--{option.long} fixed already (by "
                f"afar.new_magic); leave the option out"
            )
        if option.long in found:
            raise _OptionError(f"%{magic}: -{option.short}/--{option.long} is given twice")
        found[option.long] = value

    def value_after(flag: str) -> str:
        nonlocal index
        index += 1
        if index >= len(tokens):
            option = _BY_LONG.get(flag.lstrip("-")) or _BY_SHORT[flag.lstrip("-")[:1]]
            raise _OptionError(
                f"%{magic}: {flag} needs the name of a variable holding {option.metavar}, "
                f"for example: {option.example}, then %{magic} {flag} "
                f"{option.example.split(' =')[0]}"
            )
        return tokens[index].group()

    while index < len(tokens):
        token = tokens[index].group()
        if token.startswith("#") and not expression:
            break  # a comment ends the line of a cell magic
        if token == "--":
            if expression:
                return found, line[tokens[index].end() :].strip()
            words.extend(t.group() for t in tokens[index + 1 :])
            break
        if not _OPTION_LIKE.match(token):
            if expression:
                return found, line[tokens[index].start() :].strip()
            words.append(token)
            index += 1
            continue
        if token.startswith("--"):
            name, equals, value = token[2:].partition("=")
            option = _BY_LONG.get(name)
            if option is None:
                raise _OptionError(_unknown_option(token, options, magic, expression))
            if option.metavar is None:
                if equals:
                    raise _OptionError(f"%{magic}: --{name} takes no value; write --{name}")
                take(option, True)
            else:
                take(option, value if equals else value_after(token))
        else:
            letters = token[1:]
            for position, letter in enumerate(letters):
                option = _BY_SHORT.get(letter)
                if option is None:
                    raise _OptionError(_unknown_option(f"-{letter}", options, magic, expression))
                if option.metavar is None:
                    take(option, True)
                    continue
                value = letters[position + 1 :]
                take(option, value or value_after(f"-{letter}"))
                break
        index += 1
    return found, " ".join(words)


def _unknown_option(flag: str, options: tuple[_Option, ...], magic: str, expression: bool) -> str:
    known = ", ".join(option.spelled().split(",")[0] for option in options) or "none"
    message = f"%{magic}: unknown option {flag}. Options: {known} (see %{magic}?)."
    if expression:
        message += f" If the expression starts with '-', put -- before it: %{magic} -- -x + 1"
    return message


def _names(text: str, magic: str) -> tuple[str, ...]:
    names = tuple(name for name in re.split(r"[,\s]+", text.strip()) if name)
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise _OptionError(
                f"%%{magic}: {name!r} is not a variable name. After the options, list the names "
                f"the cell assigns that you want back, such as: %%{magic} total, count"
            )
    return tuple(dict.fromkeys(names))


def _resolve(
    option: _Option, text: str, namespaces: tuple[Mapping[str, Any], ...], magic: str
) -> Any:
    """The value of the variable ``text`` names (``name`` or ``name.attribute``)."""
    flag = f"-{option.short}"
    if not _DOTTED_NAME.fullmatch(text) or any(keyword.iskeyword(p) for p in text.split(".")):
        raise _OptionError(
            f"%{magic} {flag} {text}: {option.metavar} is the name of a variable, not an "
            f"expression. Assign the value first, e.g. {option.example}, then "
            f"%{magic} {flag} {option.example.split(' =')[0]}"
        )
    first, *attributes = text.split(".")
    for namespace in namespaces:
        if first in namespace:
            value = namespace[first]
            break
    else:
        if option.long == "where" and first in DEFAULT_LOCATIONS:
            value = DEFAULT_LOCATIONS[first]  # remotely, locally, later need no import
        else:
            raise _OptionError(
                f"%{magic} {flag} {text}: there is no variable {first!r}. Define it first, "
                f"e.g. {option.example}"
            )
    for attribute in attributes:
        try:
            value = getattr(value, attribute)
        except AttributeError:
            raise _OptionError(
                f"%{magic} {flag} {text}: {type(value).__name__} object has no attribute "
                f"{attribute!r}"
            ) from None
    return _checked(option, text, value, magic)


def _checked(option: _Option, text: str, value: Any, magic: str) -> Any:
    expected = {
        "run": (Run, "an afar.run(...) or afar.get(...) object"),
        "data": (MutableMapping, "a mutable mapping such as a dict"),
        "where": (Location, "an afar location (remotely, locally, later, remotely(...))"),
    }
    if option.long == "client":
        from distributed import Client

        expected["client"] = (Client, "a dask.distributed Client")
    kind, wanted = expected[option.long]
    if not isinstance(value, kind):
        raise _OptionError(
            f"%{magic} -{option.short} {text}: {text} is {_a(type(value).__name__)}, not "
            f"{wanted}. For example: {option.example}, then "
            f"%{magic} -{option.short} {option.example.split(' =')[0]}"
        )
    return value


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _settings_from(
    given: dict[str, Any], baked: Settings, namespaces: tuple[Mapping[str, Any], ...], magic: str
) -> Settings:
    values = {
        name: value if name == "get" else _resolve(_BY_LONG[name], value, namespaces, magic)
        for name, value in given.items()
    }
    return Settings(
        get=baked.get or bool(values.get("get")),
        run=values.get("run", baked.run),
        data=values.get("data", baked.data),
        where=values.get("where", baked.where),
        client=values.get("client", baked.client),
    )


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
    names = _names(names_text, magic)
    if not cell.strip():
        raise _OptionError(
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
        raise _OptionError(
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
        raise _OptionError(
            f"%{magic} evaluates an expression, and {expression!r} is a statement. Run "
            f"statements as a cell: put %%{magic} on the cell's first line and the code below"
        ) from None


# -- the magic functions ------------------------------------------------------------------------
def _help(name: str, baked: Settings, options: tuple[_Option, ...]) -> str:
    values = baked.get or isinstance(baked.run, Get)
    mode, single = ("plain values", "a value") if values else ("Dask Futures", "a Future")
    lines = [
        "Run a cell, or evaluate an expression, on a Dask worker (afar).",
        "",
        f"%%{name} [options] [names]",
        "    Runs the cell as the body of `with afar.run, remotely:`. Binds the names given",
        "    (comma- or space-separated), by default the last name the cell assigns, as",
        f"    {mode}. A final expression's value is shown, its representation computed on the",
        "    worker (end the line with ';' to hide it).",
        "",
        f"result = %{name} [options] expression",
        f"    Evaluates the expression there and returns it as {single}. Put -- before an",
        "    expression that starts with '-'.",
        "",
    ]
    if options:
        lines.append("Options (each upper-case word is the name of a variable of the notebook):")
        for option in options:
            lines += [f"    {option.spelled()}", f"        {option.help}"]
        lines.append("")
    fixed = [
        f"{field}={getattr(baked, field)!r}"
        for field in ("get", "run", "data", "where", "client")
        if getattr(baked, field) not in (None, False)
    ]
    if fixed:
        lines += [f"Fixed by afar.new_magic: {', '.join(fixed)}", ""]
    flags = {option.long for option in options}
    lines += ["Examples:", f"    %%{name} total", "    total = sum(range(10))", ""]
    lines.append(f"    twice = %{name}{' -g' if 'get' in flags else ''} total * 2")
    if "where" in flags:
        lines += ["", "    To debug, run it here:", f"    %%{name} -w locally", "    total = 45"]
    return "\n".join(lines)


def _magic_function(name: str, baked: Settings) -> Callable[..., Any]:
    from IPython.core.magic import no_var_expand

    options = tuple(
        option
        for option in _OPTIONS
        if getattr(baked, option.long) in (None, False)
        and not (option.long == "get" and isinstance(baked.run, Get))
    )

    def magic(line: str, cell: str | None = None, local_ns: Any = None) -> Any:
        __tracebackhide__ = True  # IPython leaves this frame out of tracebacks
        from IPython import get_ipython

        shell = get_ipython()
        namespaces = (local_ns, shell.user_ns) if local_ns is not None else (shell.user_ns,)
        try:
            given, rest = parse_line(line, options, magic=name, expression=cell is None)
            settings = _settings_from(given, baked, namespaces, name)
            if cell is None:
                value = run_line(settings, rest, shell, local_ns, name)
                return None if silenced_in_cell(shell, name, line) else value
            return run_cell(settings, rest, cell, shell, name)
        except _OptionError as error:
            raise _usage_error(str(error)) from None

    magic.__name__ = magic.__qualname__ = name
    magic.__doc__ = _help(name, baked, options)
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
    checks = (
        ("run", run, Run, "afar.run(...) or afar.get(...)"),
        ("data", data, MutableMapping, "a mutable mapping such as a dict"),
        ("where", where, Location, "an afar location such as afar.remotely(...)"),
    )
    for argument, value, kind, wanted in checks:
        if value is not None and not isinstance(value, kind):
            raise TypeError(
                f"afar.new_magic: {argument}= takes {wanted}, not a {type(value).__name__}"
            )
    if client is not None:
        from distributed import Client

        if not isinstance(client, Client):
            raise TypeError(
                f"afar.new_magic: client= takes a dask.distributed Client, "
                f"not a {type(client).__name__}"
            )
    shell = _running_shell("afar.new_magic")
    settings = Settings(get=bool(get), run=run, data=data, where=where, client=client)
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
    if getattr(ipython, "kernel", None) is not None:
        from afar._ipython.cells import tracker_for

        # From now on the cells are followed, so the first block already knows its cell.
        tracker_for(ipython)
