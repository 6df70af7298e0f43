"""Semantics: a body behaves the same run plainly and as a block run ``locally``.

The bodies live in ``tests/bodies.py``; the cluster tests run the same ones ``remotely``.
"""

from __future__ import annotations

import textwrap

import pytest
from unit_helpers import shared_bodies

bodies = shared_bodies()
BODIES = {body.id: body for body in bodies.BODIES}
HEADERS = {
    "run": "with afar.run({names}), locally:",
    "get": "with afar.get({names}), locally:",
}


@pytest.mark.parametrize("header", HEADERS.values(), ids=HEADERS.keys())
@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_in_a_function(load_module, body, header):
    expected = load_module(bodies.function_source(body)).block_results()
    got = load_module(bodies.function_source(body, header)).block_results()
    assert got == expected


@pytest.mark.parametrize(
    "body",
    [b for b in BODIES.values() if b.id not in bodies.FUNCTION_ONLY],
    ids=lambda body: body.id,
)
def test_at_module_level(load_module, body):
    expected = load_module(bodies.module_source(body)).block_results()
    got = load_module(bodies.module_source(body, HEADERS["run"])).block_results()
    assert got == expected


def test_every_feature_of_the_issue_has_a_body():
    """Issue 2 lists these; the matrix must keep a body for each."""
    required = {
        "closures",
        "lambdas",
        "recursion",
        "nonlocal-in-nested-functions",
        "classes-with-super",
        "generators",
        "comprehensions-with-walrus",
        "try-except-else-finally",
        "nested-with",
        "loops-break-continue-else",
        "match",
        "starred-unpacking",
        "del",
        "async-def",
        "many-locals",
        "rebind-outer-name",
    }
    assert required <= set(BODIES)


def test_bodies_compare_plain_values(load_module):
    """What the bodies save must survive pickling, so that the cluster matrix can compare it."""
    import pickle

    for body in BODIES.values():
        values = load_module(bodies.function_source(body)).block_results()
        assert pickle.loads(pickle.dumps(values)) == values, body.id


# At module level a nested function's `global n` and the block's own `n = ...` are one variable.
MODULE_GLOBALS = {
    "global-in-a-nested-function": (
        """\
        count = 0
        def bump():
            global count
            count += 1
        bump()
        bump()
        """,
        ("count",),
    ),
    "global-in-a-method": (
        """\
        calls = []
        total = 0
        class Counter:
            def add(self, n):
                global total
                total = total + n
                calls.append(n)
        Counter().add(2)
        Counter().add(3)
        """,
        ("total", "calls"),
    ),
    "global-of-several-names": (
        """\
        hits = 0
        def record():
            global hits, FLAG_SET_BY_BLOCK
            hits += 1
            FLAG_SET_BY_BLOCK = True
        record()
        seen = FLAG_SET_BY_BLOCK
        """,
        ("hits", "seen"),
    ),
    "global-name-the-block-does-not-assign": (
        """\
        def configure():
            global SETTING_FROM_BLOCK
            SETTING_FROM_BLOCK = "on"
        configure()
        seen = SETTING_FROM_BLOCK
        """,
        ("seen",),
    ),
    "global-two-levels-down": (
        """\
        level = 0
        def outer():
            def inner():
                global level
                level += 10
            inner()
        outer()
        """,
        ("level",),
    ),
}


@pytest.mark.parametrize(("source", "names"), MODULE_GLOBALS.values(), ids=MODULE_GLOBALS.keys())
def test_globals_of_nested_functions_at_module_level(load_module, source, names):
    body = bodies.Body("module-globals", textwrap.dedent(source), names)
    expected = load_module(bodies.module_source(body)).block_results()
    got = load_module(bodies.module_source(body, HEADERS["run"])).block_results()
    assert got == expected


SHADOWED = """\
import afar


def result():
    return count, outer()

with afar.get("count", "outer"), locally:
    count = 0
    def outer():
        count = 1
        def inner():
            global count
            count += 1
        inner()
        return count
"""


def test_global_under_a_function_that_shadows_the_name_is_the_module_s(load_module):
    """The block runs as module code: `global count` is the module's `count`, the block's."""
    plain = SHADOWED.replace('with afar.get("count", "outer"), locally:', "if True:")
    expected = load_module(plain)
    module = load_module(SHADOWED)
    assert module.result() == expected.result()


CLASS_SOURCE = """
import afar


class Base:
    def describe(self):
        return "base"


class Child(Base):
    def __init__(self):
        self.__secret = 40

    def plainly(self):
        return (super().describe(), __class__.__name__, self.__secret + 2)

    def as_block(self):
        with afar.get, locally:
            told = (super().describe(), __class__.__name__, self.__secret + 2)
        return told

    def nested(self):
        def inner(me):
            with afar.get, locally:
                told = (super().describe(), self.__secret)  # super() takes inner's `me`
            return told

        return inner(self)

    def defines_a_private_name(self):
        with afar.get, locally:
            self.__other = 1
            told = vars(self)
        return told
"""


def test_a_method_block_compiles_as_the_method_does(load_module):
    """Inside a class Python mangles __private names and gives super() the class cell and the
    function's first argument: a block in a method gets the same."""
    module = load_module(CLASS_SOURCE)
    child = module.Child()
    assert child.as_block() == child.plainly() == ("base", "Child", 42)
    assert child.nested() == ("base", 40)
    assert child.defines_a_private_name() == {"_Child__secret": 40, "_Child__other": 1}
