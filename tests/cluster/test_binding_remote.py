"""Saved names of remote blocks are bound where the ``with`` stands, inside functions (issue 2).

3.13 writes through ``frame.f_locals`` (PEP 667); 3.10-3.12 sync the frame's fast locals. Run
this file on each supported Python.
"""

from __future__ import annotations

import linecache
import sys

import pytest
from _remote_helpers import RESULT_TIMEOUT
from distributed import Future

import afar
from afar import remotely

GLOBAL_TARGET = "before"


def test_new_and_overwritten_locals(client):
    overwritten = "before"
    with afar.get("fresh", "overwritten", timeout=RESULT_TIMEOUT), remotely:
        fresh = 1
        overwritten = "after"
    assert (fresh, overwritten) == (1, "after")


def test_run_binds_futures_in_a_function(client):
    with afar.run("a", "b"), remotely:
        a = 1
        b = a + 1
    assert isinstance(a, Future) and isinstance(b, Future)
    assert (a.result(timeout=RESULT_TIMEOUT), b.result(timeout=RESULT_TIMEOUT)) == (1, 2)


def test_a_parameter_is_rebound(client):
    def shout(word="argument"):
        with afar.get(timeout=RESULT_TIMEOUT), remotely:
            word = word + "!"
        return word

    assert shout() == "argument!"
    assert shout("hey") == "hey!"


def test_a_cell_variable_read_by_an_inner_function(client):
    with afar.get(timeout=RESULT_TIMEOUT), remotely:
        shared = "from the block"

    def read():
        return shared

    assert read() == "from the block"


def test_a_nonlocal_declaration_of_the_enclosing_function(client):
    outer = "before"

    def change():
        nonlocal outer
        with afar.get(timeout=RESULT_TIMEOUT), remotely:
            outer = "after"

    change()
    assert outer == "after"


def test_a_global_declaration_of_the_enclosing_function(client):
    def change():
        global GLOBAL_TARGET
        with afar.get(timeout=RESULT_TIMEOUT), remotely:
            GLOBAL_TARGET = "after"

    try:
        change()
        assert GLOBAL_TARGET == "after"
        assert "GLOBAL_TARGET" not in change.__code__.co_varnames
    finally:
        globals()["GLOBAL_TARGET"] = "before"


def test_two_blocks_in_one_function_and_a_block_in_a_loop(client):
    with afar.get(timeout=RESULT_TIMEOUT), remotely:
        first = 10
    squares = []
    for step in range(3):
        with afar.get(timeout=RESULT_TIMEOUT), remotely:
            square = first + step * step
        squares.append(square)
    assert squares == [10, 11, 14]


def test_a_block_in_a_generator_and_in_a_method(client):
    def produce():
        for step in range(2):
            with afar.get(timeout=RESULT_TIMEOUT), remotely:
                produced = step * 10
            yield produced

    class Holder:
        def compute(self, base):
            with afar.get(timeout=RESULT_TIMEOUT), remotely:
                computed = base + 1
            return computed

    assert list(produce()) == [0, 10]
    assert Holder().compute(41) == 42


def test_a_class_body_inside_a_function(client):
    class Settings:
        with afar.get(timeout=RESULT_TIMEOUT), remotely:
            size = 3

    assert Settings.size == 3


def test_a_name_bound_by_a_block_in_a_nested_function_stays_there(client):
    outer = "untouched"

    def inner():
        with afar.get(timeout=RESULT_TIMEOUT), remotely:
            outer = "inner"
        return outer

    assert inner() == "inner"
    assert outer == "untouched"


@pytest.mark.parametrize("count", [1, 30])
def test_many_saved_names(client, count):
    names = [f"name_{i}" for i in range(count)]
    namespace: dict[str, object] = {}
    source = (
        "def bind():\n"
        f"    with afar.get({', '.join(map(repr, names))}, timeout={RESULT_TIMEOUT}), remotely:\n"
        + "".join(f"        {name} = {i}\n" for i, name in enumerate(names))
        + f"    return [{', '.join(names)}]\n"
    )
    filename = f"<afar binding test {count} {sys.version_info[:2]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        exec(compile(source, filename, "exec"), {"afar": afar, "remotely": remotely}, namespace)
        assert namespace["bind"]() == list(range(count))
    finally:
        linecache.cache.pop(filename, None)
