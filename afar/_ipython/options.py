"""The options of ``%afar``/``%%afar``, read by IPython's own argument parser.

One table, ``_OPTIONS``, describes every option once; from it come the parser (IPython's
``MagicArgumentParser``, an argparse parser whose errors are ``UsageError``), the help that
``%afar?`` shows, the check of the value each option's variable holds, and the check of
``afar.new_magic``'s keyword arguments, whose names are the options' long names. An option is
added by adding a row (and a field of ``Settings`` and a keyword of ``new_magic``, which a test
holds to the table).

Options name variables of the notebook rather than taking Python expressions, so that a magic's
line stays a line of words. argparse only sees where the options end: the line magic's
expression is then taken from the line as written (argparse would split and unquote it), and an
expression that starts with ``-`` needs ``--`` before it rather than being read as an option.

IPython and distributed are imported only when a parser is made or a client checked.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from typing import Any

from afar._locations import DEFAULT_LOCATIONS, Location
from afar._run import Get, Run


@dataclass(frozen=True)
class _Option:
    """One option of the magics, and the matching keyword argument of ``afar.new_magic``.

    This table is the only place an option is described: the magic's parser (IPython's
    ``MagicArgumentParser``), its help, the check of the value a variable holds and the check of
    ``new_magic``'s argument all read it.
    """

    short: str
    long: str
    metavar: str | None  # None: a flag
    help: str
    example: str  # a variable assignment that makes a value for this option
    kind: Callable[[], type] | None = None  # the type a value must have (imported when needed)
    wanted: str = ""  # what the value of the variable must be, for %afar's messages
    argument: str = ""  # what new_magic's keyword argument takes, for its messages

    @property
    def flags(self) -> str:
        return f"-{self.short}/--{self.long}"

    def spelled(self) -> str:
        if self.metavar is None:
            return f"-{self.short}, --{self.long}"
        return f"-{self.short} {self.metavar}, --{self.long} {self.metavar}"

    def usage_hint(self, magic: str) -> str:
        """``for example: x = ..., then %magic -x x``."""
        return f"{self.example}, then %{magic} -{self.short} {self.example.split(' =')[0]}"


def _client_type() -> type:
    from distributed import Client

    return Client


_OPTIONS = (
    _Option("g", "get", None, "wait, and bind (or return) plain values as afar.get does", ""),
    _Option(
        "r",
        "run",
        "RUN",
        "an afar.run(...) or afar.get(...) to run with: its names, client, data, timeout",
        "r = afar.get(timeout=60)",
        lambda: Run,
        "an afar.run(...) or afar.get(...) object",
        "afar.run(...) or afar.get(...)",
    ),
    _Option(
        "d",
        "data",
        "MAPPING",
        "a dict looked up first for the names read; saved results are added to it",
        "data = {}",
        lambda: MutableMapping,
        "a mutable mapping such as a dict",
        "a mutable mapping such as a dict",
    ),
    _Option(
        "w",
        "where",
        "LOCATION",
        "where to run: remotely (the default), locally, later, or remotely(...) in a variable",
        'gpus = afar.remotely(resources={"GPU": 1})',
        lambda: Location,
        "an afar location (remotely, locally, later, remotely(...))",
        "an afar location such as afar.remotely(...)",
    ),
    _Option(
        "c",
        "client",
        "CLIENT",
        "the Dask client to submit with (by default Dask's default client)",
        'client = Client("tcp://scheduler:8786")',
        _client_type,
        "a dask.distributed Client",
        "a dask.distributed Client",
    ),
)
_BY_LONG = {option.long: option for option in _OPTIONS}
_TOKEN = re.compile(r"\S+")
_DOTTED_NAME = re.compile(r"[^\W\d]\w*(\.[^\W\d]\w*)*")
# Where the parser puts the words that are not options: the expression, or the cell's names.
_REST = "rest"


@dataclass(frozen=True)
class Settings:
    """What a magic runs with: the values of its options, baked in or given on the line.

    Its fields are the options' long names (a test holds them to the table).
    """

    get: bool = False
    run: Run | None = None
    data: MutableMapping[str, Any] | None = None
    where: Location | None = None
    client: Any = None


class OptionError(ValueError):
    """A magic line afar cannot read; the magic raises it again as IPython's UsageError."""


def usage_error(message: str) -> Exception:
    from IPython.core.error import UsageError

    return UsageError(message)


def _is_fixed(option: _Option, baked: Settings) -> bool:
    """Whether ``new_magic`` fixed ``option`` (a Get as run= fixes -g too)."""
    return getattr(baked, option.long) not in (None, False) or (
        option.long == "get" and isinstance(baked.run, Get)
    )


# -- reading the magic line ---------------------------------------------------------------------
def _action(option: _Option, magic: str, fixed: bool) -> type:
    """The argparse action of ``option``: stores the word given (True for a flag) once."""
    import argparse

    class Once(argparse.Action):
        def __call__(self, parser: Any, namespace: Any, values: Any, flag: Any = None) -> None:
            if fixed:
                raise OptionError(
                    f"%{magic} has {option.flags} fixed already (by afar.new_magic); leave the "
                    "option out"
                )
            if getattr(namespace, self.dest) is not None:
                raise OptionError(f"%{magic}: {option.flags} is given twice")
            setattr(namespace, self.dest, True if option.metavar is None else values)

    return Once


def parser_for(magic: str, baked: Settings, *, expression: bool) -> Any:
    """IPython's argument parser for ``%magic`` (``expression``) or ``%%magic``, with the
    options of the table: the fixed ones are refused and left out of the help.

    Options stop at the first word that is not one (or at ``--``) in a line magic, whose
    expression is the rest; in a cell magic they may stand among the names.
    """
    import argparse

    from IPython.core.magic_arguments import MagicArgumentParser, MagicHelpFormatter

    parser = MagicArgumentParser(
        prog=magic,
        usage=argparse.SUPPRESS,
        description=_description(magic, baked),
        epilog=_epilog(magic, baked),
        formatter_class=lambda prog: MagicHelpFormatter(prog, width=_HELP_WIDTH),
    )
    parser.allow_abbrev = False  # --wh is not --where
    parser.exit_on_error = False  # errors are ArgumentErrors, which the magic words itself
    group = parser.add_argument_group(
        "Options (each upper-case word is the name of a variable of the notebook)"
    )
    for option in _OPTIONS:
        fixed = _is_fixed(option, baked)
        group.add_argument(
            f"-{option.short}",
            f"--{option.long}",
            action=_action(option, magic, fixed),
            nargs=0 if option.metavar is None else None,
            metavar=option.metavar,
            default=None,
            help=argparse.SUPPRESS if fixed else option.help,
        )
    parser.add_argument(
        _REST, nargs=argparse.REMAINDER if expression else "*", help=argparse.SUPPRESS
    )
    return parser


_HELP_WIDTH = 96


def parse_line(
    line: str, parser: Any, baked: Settings, *, magic: str, expression: bool
) -> tuple[dict[str, Any], str]:
    """Split a magic line into ``{long option: word given, or True}`` and the rest, with the
    ``parser_for`` the magic and its form.

    With ``expression``, the rest is the line from the first word that is not an option, as
    written (argparse sees only where it starts); otherwise the other words joined by spaces
    (the names of a cell magic), up to a comment.
    """
    import argparse

    tokens = list(_TOKEN.finditer(line))
    if not expression:
        comment = next((i for i, t in enumerate(tokens) if t.group().startswith("#")), None)
        tokens = tokens[:comment]
    words = [token.group() for token in tokens]
    try:
        if expression:
            namespace, unknown = parser.parse_known_args(words)
        else:
            namespace, unknown = parser.parse_known_intermixed_args(words)
    except argparse.ArgumentError as error:
        raise OptionError(_argument_error(error, words, baked, magic, expression)) from None
    if unknown:
        raise OptionError(_unknown_option(unknown[0], baked, magic, expression))
    given = {
        option.long: getattr(namespace, option.long)
        for option in _OPTIONS
        if getattr(namespace, option.long) is not None
    }
    rest: list[str] = getattr(namespace, _REST)
    if not expression:
        return given, " ".join(word for word in rest if word != "--")
    start = len(words) - len(rest)  # argparse may or may not keep a "--" that ends options
    if start < len(words) and words[start] == "--":
        start += 1
    return given, line[tokens[start].start() :].strip() if start < len(words) else ""


def _argument_error(
    error: Any, words: list[str], baked: Settings, magic: str, expression: bool
) -> str:
    """Our words for what argparse refused: an option without its value, a flag with one."""
    option = next((o for o in _OPTIONS if o.flags == error.argument_name), None)
    if option is None:
        return f"%{magic}: {error.message} (see %{magic}?)"
    if option.metavar is not None:  # the only error of an option taking a value: no value
        flag = next((w for w in words if w.startswith("--" + option.long)), "-" + option.short)
        return (
            f"%{magic}: {flag} needs the name of a variable holding {option.metavar}, "
            f"for example: {option.example}, then %{magic} {flag} "
            f"{option.example.split(' =')[0]}"
        )
    if any(word.startswith(f"--{option.long}=") for word in words):
        return f"%{magic}: --{option.long} takes no value; write --{option.long}"
    # -gX: the letters after a flag are read as more options, and one of them is none.
    known = {o.short for o in _OPTIONS}
    for word in words:
        if word.startswith("-") and not word.startswith("--") and option.short in word[1:]:
            after = word[word.index(option.short, 1) + 1 :]
            letter = next((c for c in after if c not in known), after[:1])
            return _unknown_option(f"-{letter}", baked, magic, expression)
    return f"%{magic}: {error.argument_name}: {error.message} (see %{magic}?)"


def _unknown_option(flag: str, baked: Settings, magic: str, expression: bool) -> str:
    if not flag.startswith("--"):
        flag = flag[:2]  # -xyz: -x is the first letter that is no option
    known = ", ".join(
        option.spelled().split(",")[0] for option in _OPTIONS if not _is_fixed(option, baked)
    )
    message = f"%{magic}: unknown option {flag}. Options: {known or 'none'} (see %{magic}?)."
    if expression:
        message += f" If the expression starts with '-', put -- before it: %{magic} -- -x + 1"
    return message


def cell_names(text: str, magic: str) -> tuple[str, ...]:
    names = tuple(name for name in re.split(r"[,\s]+", text.strip()) if name)
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise OptionError(
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
        raise OptionError(
            f"%{magic} {flag} {text}: {option.metavar} is the name of a variable, not an "
            f"expression. Assign the value first, e.g. {option.usage_hint(magic)}"
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
            raise OptionError(
                f"%{magic} {flag} {text}: there is no variable {first!r}. Define it first, "
                f"e.g. {option.example}"
            )
    for attribute in attributes:
        try:
            value = getattr(value, attribute)
        except AttributeError:
            raise OptionError(
                f"%{magic} {flag} {text}: {type(value).__name__} object has no attribute "
                f"{attribute!r}"
            ) from None
    return _checked(option, text, value, magic)


def _checked(option: _Option, text: str, value: Any, magic: str) -> Any:
    if option.kind is not None and not isinstance(value, option.kind()):
        raise OptionError(
            f"%{magic} -{option.short} {text}: {text} is {_a(type(value).__name__)}, not "
            f"{option.wanted}. For example: {option.usage_hint(magic)}"
        )
    return value


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def settings_from(
    given: dict[str, Any], baked: Settings, namespaces: tuple[Mapping[str, Any], ...], magic: str
) -> Settings:
    values: dict[str, Any] = {
        name: value is True
        if _BY_LONG[name].metavar is None
        else _resolve(_BY_LONG[name], value, namespaces, magic)
        for name, value in given.items()
    }
    return replace(baked, **values)


def _description(name: str, baked: Settings) -> str:
    values = baked.get or isinstance(baked.run, Get)
    mode, single = ("plain values", "a value") if values else ("Dask Futures", "a Future")
    return "\n".join(
        [
            "Run a cell, or evaluate an expression, on a Dask worker (afar).",
            "",
            f"%%{name} [options] [names]",
            "    Runs the cell as the body of `with afar.run, remotely:`. Binds the names given",
            "    (comma- or space-separated), by default the last name the cell assigns, as",
            f"    {mode}. A final expression's value is shown, its representation computed on",
            "    the worker (end the line with ';' to hide it).",
            "",
            f"result = %{name} [options] expression",
            f"    Evaluates the expression there and returns it as {single}. Put -- before an",
            "    expression that starts with '-'.",
        ]
    )


def _epilog(name: str, baked: Settings) -> str:
    lines = [""]  # IPython's help formatter dedents all lines but the first
    fixed = [
        f"{option.long}={getattr(baked, option.long)!r}"
        for option in _OPTIONS
        if getattr(baked, option.long) not in (None, False)
    ]
    if fixed:
        lines += [f"Fixed by afar.new_magic: {', '.join(fixed)}", ""]
    left = {option.long for option in _OPTIONS if not _is_fixed(option, baked)}
    lines += ["Examples:", f"    %%{name} total", "    total = sum(range(10))", ""]
    lines.append(f"    twice = %{name}{' -g' if 'get' in left else ''} total * 2")
    if "where" in left:
        lines += ["", "    To debug, run it here:", f"    %%{name} -w locally", "    total = 45"]
    return "\n".join(lines)


def check_arguments(given: Mapping[str, Any]) -> None:
    """Refuse a keyword argument of ``afar.new_magic`` that is not what its option takes."""
    for option in _OPTIONS:
        value = given[option.long]
        if option.kind is not None and value is not None and not isinstance(value, option.kind()):
            raise TypeError(
                f"afar.new_magic: {option.long}= takes {option.argument}, "
                f"not a {type(value).__name__}"
            )
