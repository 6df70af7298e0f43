"""With statements users write (issue 10): context managers before the run, and locations
called without importing them, run ``locally`` in modules, functions and class bodies."""

from __future__ import annotations

import pytest

import afar

RECORDER = """\
import contextlib
import warnings

import afar

log = []


@contextlib.contextmanager
def around(tag):
    log.append(("enter", tag))
    try:
        yield tag
    except BaseException as error:
        log.append(("exit with", tag, type(error).__name__))
        raise
    log.append(("exit", tag))
"""


def test_context_managers_before_the_run_are_around_the_whole_block(load_module):
    module = load_module(
        RECORDER
        + """
def result():
    with around("outer"), around("inner") as inner, afar.get, locally:
        log.append(("body", inner))
        value = 1
    log.append(("after", value))
"""
    )
    module.result()
    assert module.log == [
        ("enter", "outer"),
        ("enter", "inner"),
        ("body", "inner"),
        ("exit", "inner"),
        ("exit", "outer"),
        ("after", 1),
    ]


def test_the_block_s_error_propagates_through_them_as_itself(load_module):
    module = load_module(
        RECORDER
        + """
def result():
    with around("outer"), afar.run, locally:
        value = {}["missing"]
"""
    )
    with pytest.raises(KeyError, match="missing"):
        module.result()
    assert module.log == [("enter", "outer"), ("exit with", "outer", "KeyError")]


def test_catch_warnings_before_the_run_at_module_level(load_module):
    module = load_module(
        RECORDER
        + """
with warnings.catch_warnings(record=True) as caught, around("timer"), afar.get, locally:
    warnings.simplefilter("always")
    warnings.warn("from the block")
    done = True
"""
    )
    assert module.done is True
    assert [str(w.message) for w in module.caught] == ["from the block"]
    assert module.log == [("enter", "timer"), ("exit", "timer")]


def test_a_header_over_several_lines(load_module):
    module = load_module(
        RECORDER
        + """
def result():
    with (
        around("outer"),
        afar.get("value"),
        locally,
    ):
        value = 2
    return value
"""
    )
    assert module.result() == 2
    assert module.log == [("enter", "outer"), ("exit", "outer")]


# -- a location called without importing it --------------------------------------------------
COUNTER = """\
import afar

calls = []


def counted(value):
    calls.append(value)
    return value
"""


def test_unimported_call_in_a_function_reads_locals_and_closure_cells(load_module):
    module = load_module(
        COUNTER
        + """
def result(quiet):
    wanted = {"quiet": quiet}

    def inner():
        with afar.get, locally(**{k: counted(v) for k, v in wanted.items()}):
            value = 3
        return value

    return inner()
"""
    )
    assert module.result(True) == 3
    assert module.calls == [True]  # evaluated exactly once


def test_unimported_call_in_a_class_body(load_module):
    module = load_module(
        COUNTER
        + """
def result(quiet):
    class Holder:
        flag = quiet
        with afar.get, locally(quiet=counted(flag), secede=[quiet for _ in "x"] == [flag]):
            value = 4
    return Holder.value
"""
    )
    assert module.result(True) == 4
    assert module.calls == [True]


def test_unimported_call_at_module_level(load_module):
    module = load_module(
        COUNTER
        + """
options = {"quiet": True}
with afar.get, locally(*[], **{k: counted(v) for k, v in options.items()}):
    value = 5
"""
    )
    assert module.value == 5
    assert module.calls == [True]


def test_unimported_call_is_evaluated_once_in_a_loop(load_module):
    module = load_module(
        COUNTER
        + """
def result():
    values = []
    for i in range(3):
        with afar.get, later(quiet=counted(i)):
            value = i
        values.append(i)
    return values
"""
    )
    assert module.result() == [0, 1, 2]
    assert module.calls == [0, 1, 2]


def test_unimported_remotely_gets_its_options_checked(load_module):
    module = load_module(
        """\
import afar

def result():
    with afar.run, remotely(resources={"GPU": 1}, retries=2, gpus=1):
        value = 1
"""
    )
    with pytest.raises(TypeError, match=r"remotely\(\) got unknown option\(s\) gpus") as raised:
        module.result()
    assert raised.value.__suppress_context__  # not "during handling of NameError"


def test_a_misspelled_location_is_a_name_error():
    assert issubclass(afar.LocationNameError, NameError)
    assert issubclass(afar.LocationNameError, afar.LocationError)
    # pytest.raises before the run: a context manager of the caller, around the block.
    expected = pytest.raises(NameError, match="name 'remotly' is not defined")
    with expected as raised, afar.get, remotly:  # noqa: F821 - the misspelling under test
        value = 1  # noqa: F841
    assert raised.value.name == "remotly"


def test_async_context_managers_before_the_run(load_module):
    module = load_module(
        """\
import asyncio
import contextlib

import afar

log = []


@contextlib.asynccontextmanager
async def around():
    log.append("enter")
    yield
    log.append("exit")


async def block(n):
    async with around(), afar.get, locally(quiet=[n][0] > 0):
        value = n + 1
    return value


def result():
    return asyncio.run(block(1))
"""
    )
    assert module.result() == 2
    assert module.log == ["enter", "exit"]


def test_a_default_name_not_assigned_locally_keeps_what_it_had(load_module):
    """Issue 19: afar chose the name, the user named nothing: no error, as in Python."""
    module = load_module(
        """\
import afar

def result(flag):
    value = "before"
    with afar.get, locally:
        if flag:
            value = "after"
    return value
"""
    )
    assert module.result(True) == "after"
    assert module.result(False) == "before"


def test_a_saved_name_not_assigned_locally_is_a_saved_name_error(load_module):
    """As on a worker: the statement that assigns it did not run (issue 10)."""
    module = load_module(
        """\
import afar

def result(flag):
    with afar.run("kept", "skipped"), locally:
        kept = 1
        if flag:
            skipped = 2
    return kept
"""
    )
    assert module.result(True) == 1
    with pytest.raises(afar.SavedNameError, match="did not assign 'skipped'") as raised:
        module.result(False)
    assert raised.value.name == "skipped"
