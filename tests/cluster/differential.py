"""Code nobody on this project wrote, run as plain Python and as afar blocks, compared.

The snippets are the ``>>>`` examples of docstrings in the standard library and in installed
packages, as ``doctest`` finds them: the examples of one docstring make one snippet. Each
snippet becomes a module, written to a folder and imported: once with its body under ``if
True:`` (plain Python, in this process), and once per way of writing a block, the body under
``with afar.get(...)`` or ``with afar.run(...)`` at module level, in a function and in a method.
An example that is an expression has its value's repr appended to a list named ``shown`` (what
doctest would print): the one change made to the code, the same in every run.

What is compared, per name the plain run bound: the type (module and qualified name), a class's
or function's ``__module__`` and ``__qualname__`` (the module's own name made the same), the
value (``==``, NumPy's ``array_equal``, else the repr without memory addresses), and what the
snippet printed. What cannot be compared is skipped and counted by reason: snippets whose
examples expect an exception, use the clock, randomness, files, the process or object identity.

``run(client, snippets)`` returns the counts; ``tests/cluster/test_differential.py`` runs a set
of them in the test suite, and ``python tests/cluster/differential.py`` runs them all (or as
many as asked) on a LocalCluster of its own and prints the counts.
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import importlib
import importlib.util
import io
import itertools
import re
import sys
import tempfile
import textwrap
import types
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Where the snippets come from: standard library modules with examples, NumPy and pandas.
SOURCES = (
    "statistics",
    "collections",
    "difflib",
    "fractions",
    "json",
    "decimal",
    "enum",
    "typing",
    "textwrap",
    "heapq",
    "ipaddress",
    "math",
    "numpy",
    "pandas",
)
# Names doctest's examples of these packages take for granted.
PRELUDES = {
    "numpy": "import numpy as np\n",
    "pandas": "import numpy as np\nimport pandas as pd\n",
}
# What a snippet must not use to be compared: its results differ from run to run, or from
# process to process, whatever runs it.
UNCOMPARABLE = {
    "the clock": re.compile(r"\btime\.|datetime\.(now|today)|\bnow\(|\btoday\(|timeit"),
    "randomness": re.compile(r"\brandom\b|\brng\b|default_rng|RandomState|\bseed\b|uuid"),
    "files or the process": re.compile(
        r"\bopen\(|tempfile|\bos\.|\bsys\.|read_csv|to_csv|read_|to_pickle|Path\(|getcwd"
    ),
    "object identity": re.compile(r"\bid\(|\bhash\(|0x[0-9a-f]{6,}"),
    "uninitialized memory": re.compile(r"\bempty(_like)?\("),
    # Settings of the whole process: they would stay on the worker (and in this process) for
    # every later snippet, as for any Dask task (see the README, "What does not follow").
    "process-wide settings": re.compile(
        r"set_printoptions|printoptions\(|seterr|setbufsize|set_option|option_context"
    ),
}
SHOWN = "shown"  # the list that collects the reprs of expression examples
TIMEOUT = 60
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_numbers = itertools.count()

# The ways a block is written around a snippet's body: (name, template). ``{body}`` is the
# body indented for the place, ``{names}`` the names to save.
WAYS = {
    "module level, afar.get": "with afar.get({names}, timeout={timeout}), remotely:\n{body4}",
    "in a function, afar.get": (
        "def snippet():\n"
        "    with afar.get({names}, timeout={timeout}), remotely:\n{body8}"
        "    return {{name: value for name, value in locals().items() if name in ({names},)}}\n"
        "values = snippet()\n"
    ),
    "in a method, afar.get": (
        "class Holder:\n"
        "    def snippet(self):\n"
        "        with afar.get({names}, timeout={timeout}), remotely:\n{body12}"
        "        return {{n: v for n, v in locals().items() if n in ({names},)}}\n"
        "values = Holder().snippet()\n"
    ),
    # Waited for here, so that what the block prints has arrived when the module is imported.
    "module level, afar.run": (
        "with afar.run({names}), remotely:\n{body4}"
        "__import__('distributed').wait([globals()[n] for n in ({names},)], timeout={timeout})\n"
    ),
}
PLAIN = {
    "module level, afar.get": "if True:\n{body4}",
    "in a function, afar.get": (
        "def snippet():\n"
        "    if True:\n{body8}"
        "    return {{name: value for name, value in locals().items() if name in ({names},)}}\n"
        "values = snippet()\n"
    ),
    "in a method, afar.get": (
        "class Holder:\n"
        "    def snippet(self):\n"
        "        if True:\n{body12}"
        "        return {{n: v for n, v in locals().items() if n in ({names},)}}\n"
        "values = Holder().snippet()\n"
    ),
    "module level, afar.run": "if True:\n{body4}",
}


@dataclass
class Snippet:
    source: str  # the module, the package it documents
    name: str  # the docstring's name, as doctest gives it
    body: str  # the examples, one statement after another
    prelude: str  # imports of what the examples read of the module


@dataclass
class Counts:
    compared: int = 0
    same: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    different: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [
            f"snippets compared: {self.compared} (runs: plain and {len(WAYS)} ways of a block)",
            f"  the same in every way: {self.same}",
            f"  different: {len(self.different)}",
        ]
        lines += [f"    {entry}" for entry in self.different]
        lines.append(f"snippets skipped: {sum(self.skipped.values())}")
        lines += [f"  {reason}: {count}" for reason, count in self.skipped.most_common()]
        return "\n".join(lines)


def snippets(sources: tuple[str, ...] = SOURCES) -> tuple[list[Snippet], Counter[str]]:
    """The snippets of ``sources`` that can be compared, and how many were skipped, by why."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    found: list[Snippet] = []
    skipped: Counter[str] = Counter()
    for source in sources:
        try:
            module = importlib.import_module(source)
        except ImportError:
            skipped["package not installed"] += 1
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # looking at every attribute wakes deprecated ones
            tests = finder.find(module)
        for test in sorted(tests, key=lambda t: t.name):
            if not test.examples:
                continue
            snippet, reason = _snippet(source, module, test)
            if snippet is None:
                skipped[reason] += 1
            else:
                found.append(snippet)
    return found, skipped


def _snippet(
    source: str, module: types.ModuleType, test: doctest.DocTest
) -> tuple[Snippet | None, str]:
    statements = []
    for example in test.examples:
        if example.exc_msg is not None:
            return None, "expects an exception"
        if example.options.get(doctest.SKIP):
            return None, "marked to be skipped (+SKIP)"
        text = example.source
        try:
            tree = ast.parse(text)
        except SyntaxError:
            return None, "not valid Python (a fragment)"
        if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr) and example.want:
            text = f"{SHOWN}.append(repr({text.strip()}))\n"
        statements.append(text if text.endswith("\n") else text + "\n")
    body = f"{SHOWN} = []\n" + "".join(statements)
    for reason, pattern in UNCOMPARABLE.items():
        if pattern.search(body):
            return None, f"uses {reason}"
    try:
        tree = ast.parse(body)
    except SyntaxError:
        return None, "not valid Python (a fragment)"
    leaves = any(isinstance(n, (ast.Return, ast.Yield, ast.Await)) for n in ast.walk(tree))
    if leaves and not any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in tree.body
    ):
        return None, "not valid Python (a fragment)"
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    imports = [
        f"{name} = __import__({module.__name__!r}, fromlist=['_']).{name}\n"
        for name in sorted(read)
        if name in vars(module) and not isinstance(vars(module)[name], types.ModuleType)
    ]
    prelude = PRELUDES.get(source, "") + "".join(imports)
    return Snippet(source, test.name, body, prelude), ""


def bound_names(body: str) -> list[str]:
    """The names the body binds at its top level, in order."""
    names: list[str] = []
    for statement in ast.parse(body).body:
        targets: list[ast.AST] = []
        if isinstance(statement, ast.Assign):
            targets = list(statement.targets)
        elif isinstance(statement, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor)):
            targets = [statement.target]
        elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(statement.name)
        elif isinstance(statement, (ast.Import, ast.ImportFrom)):
            names += [(a.asname or a.name).split(".")[0] for a in statement.names if a.name != "*"]
        for target in targets:
            names += _target_names(target)
    return list(dict.fromkeys(names))


def _target_names(target: ast.AST) -> list[str]:
    """The names an assignment target binds (``a, *b = ...``), not those it only reads
    (``x[i] = ...`` binds nothing)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for item in target.elts for name in _target_names(item)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return []


def _module_text(snippet: Snippet, template: str, names: list[str]) -> str:
    body = snippet.body
    quoted = ", ".join(repr(name) for name in names) or "'shown'"
    return (
        "import afar\n"
        + snippet.prelude
        + template.format(
            names=quoted,
            timeout=TIMEOUT,
            body4=textwrap.indent(body, " " * 4),
            body8=textwrap.indent(body, " " * 8),
            body12=textwrap.indent(body, " " * 12),
        )
    )


def _import(folder: Path, text: str) -> tuple[types.ModuleType | None, str, str | None]:
    """Write and import a module: (module, what it printed, the error it raised)."""
    name = f"afar_differential_{next(_numbers)}"
    path = folder / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    printed = io.StringIO()
    try:
        # Warnings are not errors here, as they are not on the workers (pytest makes them so).
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec.loader.exec_module(module)
    except Exception as error:  # the snippet's own failure: compared like anything else
        return module, printed.getvalue(), f"{type(error).__name__}: {error}"
    return module, printed.getvalue(), None


def _values(module: types.ModuleType, way: str, names: list[str]) -> dict[str, Any]:
    if way.startswith("in a"):
        found = dict(getattr(module, "values", {}))
    else:
        found = {n: getattr(module, n) for n in names if hasattr(module, n)}
    if way.endswith("afar.run"):
        from distributed import Future

        found = {
            n: v.result(timeout=TIMEOUT) if isinstance(v, Future) else v for n, v in found.items()
        }
    return found


def describe(value: Any, module_name: str) -> tuple[Any, ...]:
    """What is compared of a value, with the module's own name made the same everywhere."""
    kind = type(value)
    described: list[Any] = [f"{kind.__module__}.{kind.__qualname__}".replace(module_name, "M")]
    if isinstance(value, (type, types.FunctionType)):
        described.append((value.__module__.replace(module_name, "M"), value.__qualname__))
    return tuple(described)


def same_value(left: Any, right: Any, names: tuple[str, str] = ("", "")) -> bool:
    try:
        import numpy as np

        if isinstance(left, np.ndarray) or isinstance(right, np.ndarray):
            return bool(np.array_equal(left, right, equal_nan=left.dtype.kind in "fc"))
    except (ImportError, TypeError, ValueError, AttributeError):
        pass
    try:
        equal = left == right
        if isinstance(equal, bool) and equal:
            return True
        if hasattr(equal, "all"):  # pandas objects
            equals = getattr(left, "equals", None)
            if equals is not None and equals(right):
                return True
    except Exception:
        pass
    return _shown(repr(left), names[0]) == _shown(repr(right), names[1])


def _shown(text: str, module_name: str) -> str:
    """A repr without memory addresses and with the snippet module's own name made the same."""
    text = _ADDRESS.sub("", text)
    return text.replace(module_name, "M") if module_name else text


class Uncomparable(Exception):
    """The snippet cannot be compared: its ``args[0]`` says why."""


def _kind(error: str | None) -> str | None:
    """The error's type: afar's messages add where (the block, the worker) on purpose."""
    return None if error is None else error.split(":", 1)[0]


def _holds_a_set_of_strings(value: Any, depth: int = 0) -> bool:
    if isinstance(value, (set, frozenset)):
        return any(isinstance(item, str) for item in value)
    if depth < 3 and isinstance(value, (list, tuple)):
        return any(_holds_a_set_of_strings(item, depth + 1) for item in value)
    if depth < 3 and isinstance(value, dict):
        return any(_holds_a_set_of_strings(item, depth + 1) for item in value.values())
    return False


def compare(snippet: Snippet, folder: Path) -> list[str]:
    """The differences between the plain runs and the blocks' runs of ``snippet``."""
    import cloudpickle

    problems = []
    for way, template in WAYS.items():
        names = bound_names(snippet.body)
        plain, plain_printed, plain_error = _import(
            folder, _module_text(snippet, PLAIN[way], names)
        )
        assert plain is not None
        expected = _values(plain, way, names)
        saved = [n for n in names if n in expected]
        for name in saved:
            try:
                cloudpickle.dumps(expected[name])
            except Exception:
                # A block's values travel back pickled (a generator, an open file cannot).
                raise Uncomparable("binds a value that cannot be pickled") from None
            if _holds_a_set_of_strings(expected[name]) or re.search(r"\{'|\{\"", plain_printed):
                raise Uncomparable(
                    "shows a set of strings (its order follows the process's hash seed)"
                )
        remote, printed, error = _import(folder, _module_text(snippet, template, saved))
        if error is None and plain_error is not None and way.endswith("afar.run"):
            # afar.run raises nothing at the with: its Futures hold the block's error.
            try:
                _values(remote, way, saved)
            except Exception as raised:
                error = f"{type(raised).__name__}: {raised}"
        if _kind(error) != _kind(plain_error):
            problems.append(f"{way}: raised {error!r}, plain Python {plain_error!r}")
            continue
        if error is not None:
            # Both raised the same error. A failed block binds nothing (Python would keep
            # what ran before the error): the README's Limits say so; not compared here.
            continue
        if printed != plain_printed:
            problems.append(f"{way}: printed {printed!r}, plain Python {plain_printed!r}")
        try:
            got = _values(remote, way, saved) if remote is not None else {}
        except Exception as error:
            problems.append(f"{way}: the values did not come back: {type(error).__name__}")
            continue
        for name in saved:
            if name not in got:
                problems.append(f"{way}: {name!r} not bound")
                continue
            left = describe(got[name], remote.__name__ if remote else "")
            right = describe(expected[name], plain.__name__)
            if left != right:
                problems.append(f"{way}: {name!r} is {left}, plain Python {right}")
            elif not isinstance(expected[name], (type, types.FunctionType, types.ModuleType)):
                module_names = (remote.__name__ if remote else "", plain.__name__)
                if not same_value(got[name], expected[name], module_names):
                    problems.append(
                        f"{way}: {name!r} = {_ADDRESS.sub('', repr(got[name]))[:200]}, plain "
                        f"Python {_ADDRESS.sub('', repr(expected[name]))[:200]}"
                    )
    return problems


def run(chosen: list[Snippet], skipped: Counter[str]) -> Counts:
    """Compare each snippet on the default Dask client (see the module's docstring)."""
    counts = Counts(skipped=Counter(skipped))
    with tempfile.TemporaryDirectory(prefix="afar-differential-") as folder:
        sys.path.insert(0, folder)
        try:
            for snippet in chosen:
                try:
                    problems = compare(snippet, Path(folder))
                except Uncomparable as why:
                    counts.skipped[why.args[0]] += 1
                    continue
                counts.compared += 1
                if problems:
                    counts.different.append(f"{snippet.name}: {problems[0]}")
                else:
                    counts.same += 1
        finally:
            sys.path.remove(folder)
            for name in [n for n in sys.modules if n.startswith("afar_differential_")]:
                del sys.modules[name]
    return counts


def main() -> None:
    import argparse

    from distributed import Client, LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="at most this many snippets")
    args = parser.parse_args()
    found, skipped = snippets()
    chosen = found[: args.limit] if args.limit else found
    with (
        LocalCluster(n_workers=2, threads_per_worker=2, dashboard_address=":0") as cluster,
        Client(cluster),
    ):
        print(run(chosen, skipped).report())


if __name__ == "__main__":
    main()
