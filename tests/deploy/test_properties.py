"""Generated straight-line bodies give the same names plainly, `locally` and `remotely` (issue 6).

Hypothesis builds a body (assignments, augmented assignments, tuple unpacking, arithmetic,
comprehensions, calls of the module's helpers, rebinding the function's parameters); the test
writes a module with three functions running it (plainly, under `afar.get(...), locally` and
under `afar.get(...), remotely`), imports it from its file, and compares what each returns.

The generated module is not put in sys.modules: its helpers travel by value, as a script's do.
"""

from __future__ import annotations

import importlib.util
import itertools
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = 25
MAX_STATEMENTS = 6
# Depth of nested expressions: enough for calls of calls, small enough to read a failure.
MAX_DEPTH = 2
PARAMETERS = ("a", "b")
NEW_NAMES = ("x", "y", "z", "total")
LIST_NAMES = ("items", "squares")
# Read-only module globals of the generated module: an int and a list.
GLOBAL_INT = "K"
GLOBAL_LIST = "SEQ"
RESULT_TIMEOUT = 20

MODULE_TEMPLATE = """\
import afar
from afar import locally, remotely

{global_int} = 7
{global_list} = [3, 1, 4, 1, 5]


def double(value):
    return 2 * value


def combine(left, right):
    return left * 3 - right


def plain({parameters}):
{body}
    return {result}


def run_locally({parameters}):
    with afar.get({saved}), locally:
{body_in_block}
    return {result}


def run_remotely({parameters}, client):
    with afar.get({saved}), remotely(client=client):
{body_in_block}
    return {result}
"""

_module_numbers = itertools.count()


@st.composite
def int_expressions(draw, names: tuple[str, ...], depth: int = 0) -> str:
    leaves = [st.integers(-9, 9).map(str), st.sampled_from(names)]
    if depth >= MAX_DEPTH:
        return draw(st.one_of(leaves))
    inner = int_expressions(names, depth + 1)
    kind = draw(st.sampled_from(["leaf", "binary", "floor", "call", "builtin"]))
    if kind == "leaf":
        return draw(st.one_of(leaves))
    if kind == "binary":
        operator = draw(st.sampled_from(["+", "-", "*"]))
        return f"({draw(inner)} {operator} {draw(inner)})"
    if kind == "floor":  # by a positive constant: never a division by zero
        operator = draw(st.sampled_from(["//", "%"]))
        return f"({draw(inner)} {operator} {draw(st.integers(1, 5))})"
    if kind == "call":
        if draw(st.booleans()):
            return f"double({draw(inner)})"
        return f"combine({draw(inner)}, {draw(inner)})"
    function = draw(st.sampled_from(["abs", "min", "max"]))
    if function == "abs":
        return f"abs({draw(inner)})"
    return f"{function}({draw(inner)}, {draw(inner)})"


@st.composite
def bodies(draw) -> tuple[list[str], list[str]]:
    """(lines of a straight-line body, names it binds in order of first binding)."""
    ints = [*PARAMETERS, GLOBAL_INT]
    lists = [GLOBAL_LIST]
    bound: list[str] = []
    lines = []
    for _ in range(draw(st.integers(1, MAX_STATEMENTS))):
        kind = draw(
            st.sampled_from(["assign", "augmented", "unpack", "list", "comprehension", "reduce"])
        )
        if kind == "assign":
            target = draw(st.sampled_from(NEW_NAMES + PARAMETERS))
            lines.append(f"{target} = {draw(int_expressions(tuple(ints)))}")
            new_ints = [target]
        elif kind == "augmented":  # rebinds a name that is already an int
            target = draw(st.sampled_from([n for n in ints if n != GLOBAL_INT]))
            operator = draw(st.sampled_from(["+=", "-=", "*="]))
            lines.append(f"{target} {operator} {draw(int_expressions(tuple(ints)))}")
            new_ints = [target]
        elif kind == "unpack":
            first, second = draw(
                st.lists(st.sampled_from(NEW_NAMES + PARAMETERS), min_size=2, max_size=2).filter(
                    lambda pair: pair[0] != pair[1]
                )
            )
            lines.append(
                f"{first}, {second} = "
                f"{draw(int_expressions(tuple(ints)))}, {draw(int_expressions(tuple(ints)))}"
            )
            new_ints = [first, second]
        elif kind == "list":
            target = draw(st.sampled_from(LIST_NAMES))
            elements = draw(st.lists(int_expressions(tuple(ints)), max_size=3))
            lines.append(f"{target} = [{', '.join(elements)}]")
            lists.append(target)
            bound.append(target)
            continue
        elif kind == "comprehension":
            target = draw(st.sampled_from(LIST_NAMES))
            source = draw(st.sampled_from([*lists, f"range({draw(st.integers(0, 4))})"]))
            element = draw(int_expressions((*ints, "v")))
            condition = draw(st.sampled_from(["", " if v % 2", f" if v < {ints[0]}"]))
            lines.append(f"{target} = [{element} for v in {source}{condition}]")
            lists.append(target)
            bound.append(target)
            continue
        else:
            target = draw(st.sampled_from(NEW_NAMES))
            function = draw(st.sampled_from(["sum", "len"]))
            lines.append(f"{target} = {function}({draw(st.sampled_from(lists))})")
            new_ints = [target]
        # Int names and list names are disjoint: a name keeps its type when rebound.
        for name in new_ints:
            if name not in ints:
                ints.append(name)
            bound.append(name)
    return lines, list(dict.fromkeys(bound))


def write_module(directory, lines: list[str], bound: list[str]):
    """Write the three functions running `lines` to a new file; import it (not in sys.modules)."""
    body = textwrap.indent("\n".join(lines), " " * 4)
    names = list(dict.fromkeys([*PARAMETERS, *bound]))
    source = MODULE_TEMPLATE.format(
        global_int=GLOBAL_INT,
        global_list=GLOBAL_LIST,
        parameters=", ".join(PARAMETERS),
        body=body,
        body_in_block=textwrap.indent(body, " " * 4),
        saved=", ".join(repr(name) for name in bound),
        result="{" + ", ".join(f"{name!r}: {name}" for name in names) + "}",
    )
    path = directory / f"generated_{next(_module_numbers)}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, source


@pytest.fixture(scope="module")
def property_client(shared_cluster):
    """One client for all examples (Hypothesis runs them inside one test call)."""
    with shared_cluster.deployment.client() as client:
        yield client


@pytest.fixture(scope="module")
def module_directory(tmp_path_factory):
    return tmp_path_factory.mktemp("generated")


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(body=bodies(), a=st.integers(-20, 20), b=st.integers(-20, 20))
def test_a_body_gives_the_same_names_plainly_locally_and_remotely(
    property_client, module_directory, body, a, b
):
    lines, bound = body
    module, source = write_module(module_directory, lines, bound)
    expected = module.plain(a, b)
    assert module.run_locally(a, b) == expected, source
    assert module.run_remotely(a, b, property_client) == expected, source
