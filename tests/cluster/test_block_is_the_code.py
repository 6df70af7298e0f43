"""A block is the code as written (issue 19): module semantics at module level, and the names
Python gives to what a block defines, on the worker and back on the client.

Each test writes a module whose blocks run remotely, imports it, and compares with the same
module where every ``with afar...`` line is ``if True:`` (plain Python, here).
"""

from __future__ import annotations

import importlib.util
import itertools
import pickle
import re
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _remote_helpers import RESULT_TIMEOUT
from distributed import Client

_numbers = itertools.count()
HEADER = re.compile(r"^(\s*)with afar\.(get|run)\b.*remotely[^:]*:\s*$", re.MULTILINE)


def plain(source: str) -> str:
    """The module without afar: each block's header becomes ``if True:``."""
    return HEADER.sub(lambda match: f"{match.group(1)}if True:", source)


@pytest.fixture
def load(tmp_path: Path, client: Client) -> Iterator[Callable[[str, bool], types.ModuleType]]:
    """Write ``source`` as a module (plain or with afar) and import it, under a new name."""
    names: list[str] = []

    def load(source: str, with_afar: bool = True) -> types.ModuleType:
        name = f"afar_block_is_code_{next(_numbers)}"
        text = textwrap.dedent(source).replace("TIMEOUT", str(RESULT_TIMEOUT))
        path = tmp_path / f"{name}.py"
        path.write_text(text if with_afar else plain(text))
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # importable by name, as a user's module is
        names.append(name)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in names:
        sys.modules.pop(name, None)


MODULE_SEMANTICS = """\
import afar

with afar.get(timeout=TIMEOUT), remotely:
    x = 10
    exec("x += 5")
after_exec = x

with afar.get("names", timeout=TIMEOUT), remotely:
    hidden = 1
    names = dir()

with afar.get(timeout=TIMEOUT), remotely:
    greeting = "hi"
    def read():
        return globals()["greeting"]
    value = read()

with afar.get("made", timeout=TIMEOUT), remotely:
    def make():
        globals()["made"] = 42
    make()

with afar.get(timeout=TIMEOUT), remotely:
    counter = 0
    def bump():
        global counter
        counter += 1
    bump()
    bump()
    seen = (counter, "counter" in vars(), locals() is globals(), eval("counter + 1"))
"""


def test_a_module_level_block_has_module_semantics(load: Callable[..., types.ModuleType]) -> None:
    remote, here = load(MODULE_SEMANTICS), load(MODULE_SEMANTICS, with_afar=False)
    assert remote.after_exec == here.after_exec == 15
    assert remote.value == here.value == "hi"
    assert remote.made == here.made == 42
    assert remote.seen == here.seen == (2, True, True, 3)
    # One namespace, the block's: its inputs and what it binds (and what a module has).
    assert "hidden" in remote.names and "names" not in remote.names
    assert "__name__" in remote.names and "x" not in remote.names


NAMES = """\
import dataclasses
import enum
import functools
import pickle
import collections

import afar

with afar.get("Point", "double", "Color", "Pair", "wrapper", "shown", timeout=TIMEOUT), remotely:
    @dataclasses.dataclass
    class Point:
        x: int

    def double(v):
        return 2 * v

    class Color(enum.Enum):
        RED = 1

    Pair = collections.namedtuple("Pair", "a b")

    @functools.wraps(double)
    def wrapper(v):
        return double(v)

    shown = (repr(Point(1)), repr(Color.RED), repr(Pair(1, 2)), str(Point), wrapper.__qualname__)


def in_function():
    with afar.get("P", "inner", "shown", timeout=TIMEOUT), remotely:
        @dataclasses.dataclass
        class P:
            x: int

        def inner():
            return 1

        shown = (repr(P(1)), P.__qualname__, inner.__qualname__, P.__module__)
    return P, inner, shown


class Holder:
    def method(self):
        with afar.get("M", "shown", timeout=TIMEOUT), remotely:
            class M:
                pass

            shown = (M.__qualname__, M.__module__)
        return M, shown
"""


def described(thing: object) -> tuple[str, str]:
    return thing.__module__, thing.__qualname__  # type: ignore[attr-defined]


def test_what_a_block_defines_is_named_as_python_names_it(
    load: Callable[..., types.ModuleType],
) -> None:
    remote, here = load(NAMES), load(NAMES, with_afar=False)
    rename = {here.__name__: remote.__name__}

    def same(value: str) -> str:
        for old, new in rename.items():
            value = value.replace(old, new)
        return value

    # On the worker (what the block printed and computed there) and back here.
    assert remote.shown == tuple(same(text) for text in here.shown)
    for name in ("Point", "double", "Color", "Pair", "wrapper"):
        assert described(getattr(remote, name)) == (
            remote.__name__,
            described(getattr(here, name))[1],
        )
    P, inner, shown = remote.in_function()
    plain_class, plain_inner, plain_shown = here.in_function()
    assert P.__qualname__ == plain_class.__qualname__
    assert shown == tuple(same(text) for text in plain_shown)
    assert (
        P.__qualname__ == "in_function.<locals>.P"
        and inner.__qualname__ == plain_inner.__qualname__
    )
    M, shown = remote.Holder().method()
    assert shown == (("Holder.method.<locals>.M", remote.__name__))
    assert M.__qualname__ == "Holder.method.<locals>.M"


def test_what_a_module_level_block_defines_pickles_by_reference_here(
    load: Callable[..., types.ModuleType],
) -> None:
    remote = load(NAMES)
    for thing in (remote.Point, remote.double, remote.Color):
        assert pickle.loads(pickle.dumps(thing)) is thing  # found by name, as without afar
    assert pickle.loads(pickle.dumps(remote.Point(3))) == remote.Point(3)
    assert pickle.loads(pickle.dumps(remote.Color.RED)) is remote.Color.RED


TRAVEL = """\
import afar

with afar.run("double", "Point"), remotely:
    from distributed import get_client

    def double(v):
        return 2 * v

    class Point:
        def __init__(self, x):
            self.x = x

    nested = get_client().submit(double, 21).result()  # a task of the block's own
    assert nested == 42, nested

def elsewhere(address):
    with afar.get(timeout=TIMEOUT), remotely(workers=[address]):
        made = (double(5), Point(7).x, type(Point(1)).__qualname__)
    return made
"""


def test_what_a_block_defines_travels_inside_the_cluster(
    load: Callable[..., types.ModuleType], client: Client
) -> None:
    remote = load(TRAVEL)
    assert remote.double.result(timeout=RESULT_TIMEOUT)(4) == 8
    for address in client.scheduler_info()["workers"]:
        assert remote.elsewhere(address) == (10, 7, "Point")
