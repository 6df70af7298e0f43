"""Binding back: saved names land where the ``with`` statement stands, on every Python.

Functions are the hard case: 3.13 writes through ``frame.f_locals`` (PEP 667), 3.10-3.12 sync
the frame's fast locals from its ``f_locals`` snapshot. Run these on each supported Python.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
from unit_helpers import exec_registered

# Where each source is run: a module file imported from disk, or a text in linecache only.
LOADERS = ["file", "registered"]


@pytest.fixture(params=LOADERS)
def run_source(request, load_module):
    """Run a module source; return its namespace as a dict."""

    def run(source: str) -> dict[str, object]:
        source = textwrap.dedent(source)
        if request.param == "file":
            return vars(load_module(source))
        return exec_registered(source)

    return run


# Each source defines result() whose return value is compared with the expected one.
FUNCTION_CASES = {
    "new-local": (
        """\
        def result():
            with afar.run, locally:
                y = 1
            return y
        """,
        1,
    ),
    "overwrite-local": (
        """\
        def result():
            y = "before"
            with afar.run, locally:
                y = "after"
            return y
        """,
        "after",
    ),
    "parameter": (
        """\
        def result(y="argument"):
            with afar.run, locally:
                y = y + "!"
            return y
        """,
        "argument!",
    ),
    "several-names": (
        """\
        def result():
            with afar.run("a", "b", "c"), locally:
                a, b = 1, 2
                c = a + b
            return a, b, c
        """,
        (1, 2, 3),
    ),
    "unsaved-names-stay-unbound": (
        """\
        def result():
            with afar.run("a"), locally:
                a = 1
                b = 2
            try:
                b
            except UnboundLocalError:
                return a, "b unbound"
        """,
        (1, "b unbound"),
    ),
    "other-unbound-local-untouched": (
        """\
        def result():
            with afar.run, locally:
                a = 1
            try:
                assigned_later
            except UnboundLocalError:
                pass
            assigned_later = a + 1
            return assigned_later
        """,
        2,
    ),
    "cell-read-by-a-closure-defined-before": (
        """\
        def result():
            y = "before"
            read = lambda: y
            with afar.run, locally:
                y = "after"
            return read(), y
        """,
        ("after", "after"),
    ),
    "cell-read-by-a-closure-defined-after": (
        """\
        def result():
            with afar.run, locally:
                y = "after"
            read = lambda: y
            return read()
        """,
        "after",
    ),
    "cell-and-plain-local-together": (
        """\
        def result():
            with afar.run("cell", "plain"), locally:
                cell = 1
                plain = 2
            return (lambda: cell)() + plain
        """,
        3,
    ),
    "nonlocal-of-enclosing-function": (
        """\
        def result():
            v = 0
            def inner():
                nonlocal v
                with afar.run, locally:
                    v = 9
            inner()
            return v
        """,
        9,
    ),
    "nonlocal-two-levels-up": (
        """\
        def result():
            v = 0
            def middle():
                def inner():
                    nonlocal v
                    with afar.run, locally:
                        v = v + 5
                inner()
            middle()
            return v
        """,
        5,
    ),
    "free-variable-read-then-block-binds-a-local": (
        """\
        def result():
            seen = "outer"
            def inner():
                with afar.run, locally:
                    y = seen + "!"
                return y
            return inner()
        """,
        "outer!",
    ),
    "global-declared-in-the-function": (
        """\
        G = "module"
        def result():
            global G
            with afar.run, locally:
                G = G + "!"
            return G, globals()["G"]
        """,
        ("module!", "module!"),
    ),
    "global-and-local-in-one-block": (
        """\
        G = 0
        def result():
            global G
            with afar.run("G", "local"), locally:
                G = 1
                local = 2
            return G, local, globals()["G"]
        """,
        (1, 2, 1),
    ),
    "method": (
        """\
        class Holder:
            def method(self):
                with afar.run, locally:
                    y = type(self).__name__
                return y
        def result():
            return Holder().method()
        """,
        "Holder",
    ),
    "generator": (
        """\
        def produce():
            for i in range(3):
                with afar.run, locally:
                    y = i * 10
                yield y
        def result():
            return list(produce())
        """,
        [0, 10, 20],
    ),
    "coroutine": (
        """\
        import asyncio
        async def produce():
            await asyncio.sleep(0)
            with afar.run, locally:
                y = 4
            await asyncio.sleep(0)
            return y
        def result():
            return asyncio.run(produce())
        """,
        4,
    ),
    "star-args-and-kwargs": (
        """\
        def result(*args, **kwargs):
            with afar.run, locally:
                y = len(args) + len(kwargs)
            return y, args, kwargs
        """,
        (0, (), {}),
    ),
    "locals-called-before": (
        """\
        def result():
            a = 1
            snapshot = dict(locals())
            with afar.run, locally:
                y = a + 1
            return y, sorted(snapshot), sorted(locals())
        """,
        (2, ["a"], ["a", "snapshot", "y"]),
    ),
    "loop-rebinds-each-time": (
        """\
        def result():
            total = 0
            for i in range(4):
                with afar.run, locally:
                    total = total + i
            return total
        """,
        6,
    ),
    "as-data-and-names": (
        """\
        def result():
            with afar.get("a") as data, locally:
                a = 7
            return a, data
        """,
        (7, {"a": 7}),
    ),
}


@pytest.mark.parametrize(("source", "expected"), FUNCTION_CASES.values(), ids=FUNCTION_CASES.keys())
def test_binding_in_functions(run_source, source, expected):
    scope = run_source("import afar\n" + textwrap.dedent(source))
    assert scope["result"]() == expected


@pytest.mark.parametrize(("source", "expected"), FUNCTION_CASES.values(), ids=FUNCTION_CASES.keys())
def test_binding_in_functions_under_a_trace_function(run_source, source, expected):
    """A tracer (a debugger, coverage) syncs frame locals around each event on 3.10-3.12."""
    scope = run_source("import afar\n" + textwrap.dedent(source))

    def tracer(frame, event, arg):
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        got = scope["result"]()
    finally:
        sys.settrace(previous)
    assert got == expected


def test_binding_many_names_in_a_function(run_source):
    names = [f"v{i}" for i in range(300)]
    body = "".join(f"        {name} = {i}\n" for i, name in enumerate(names))
    scope = run_source(
        "import afar\n"
        "def result():\n"
        f"    with afar.run({', '.join(map(repr, names))}), locally:\n{body}"
        f"    return [{', '.join(names)}]\n"
    )
    assert scope["result"]() == list(range(300))


MODULE_CASES = {
    "default-name": (
        """\
        with afar.run, locally:
            a = 1
            y = a + 1
        """,
        {"y": 2},
        {"a"},
    ),
    "several-names": (
        """\
        with afar.run("a", "y"), locally:
            a = 1
            y = a + 1
        """,
        {"a": 1, "y": 2},
        set(),
    ),
    "overwrite-and-read-outer": (
        """\
        y = 10
        with afar.run, locally:
            y = y * 2
        """,
        {"y": 20},
        set(),
    ),
    "afar-get": (
        """\
        with afar.get, locally:
            y = "value"
        """,
        {"y": "value"},
        set(),
    ),
    "def-and-class": (
        """\
        with afar.run("double", "Point"), locally:
            def double(v):
                return 2 * v
            class Point:
                pass
        """,
        {},
        {"v"},
    ),
}


@pytest.mark.parametrize(
    ("source", "bound", "absent"), MODULE_CASES.values(), ids=MODULE_CASES.keys()
)
def test_binding_at_module_level(run_source, source, bound, absent):
    scope = run_source("import afar\n" + textwrap.dedent(source))
    for name, value in bound.items():
        assert scope[name] == value
    assert not absent & set(scope)


def test_functions_and_classes_defined_in_a_block_work_after_it(run_source):
    scope = run_source(
        """\
        import afar
        with afar.run("double", "Point"), locally:
            def double(v):
                return 2 * v
            class Point:
                def __init__(self, x):
                    self.x = x
        """
    )
    assert scope["double"](4) == 8
    assert scope["Point"](3).x == 3


CLASS_CASES = {
    "module-class": (
        """\
        class Holder:
            base = 2
            with afar.run, locally:
                scaled = base * 10
            doubled = scaled * 2
        def result():
            return Holder.scaled, Holder.doubled
        """,
        (20, 40),
    ),
    "class-in-function": (
        """\
        def result():
            class Holder:
                with afar.run("a", "b"), locally:
                    a = 1
                    b = 2
            return Holder.a, Holder.b
        """,
        (1, 2),
    ),
    "method-defined-in-block": (
        """\
        class Holder:
            with afar.run, locally:
                def method(self):
                    return "method"
        def result():
            return Holder().method()
        """,
        "method",
    ),
    "global-declared-in-the-class-body": (
        """\
        G = "module"
        class Holder:
            global G
            with afar.run, locally:
                G = "from the block"
        def result():
            return G, "G" in vars(Holder)
        """,
        ("from the block", False),
    ),
    "nested-class": (
        """\
        class Outer:
            class Inner:
                with afar.run, locally:
                    y = 3
        def result():
            return Outer.Inner.y
        """,
        3,
    ),
}


@pytest.mark.parametrize(("source", "expected"), CLASS_CASES.values(), ids=CLASS_CASES.keys())
def test_binding_in_class_bodies(run_source, source, expected):
    scope = run_source("import afar\n" + textwrap.dedent(source))
    assert scope["result"]() == expected


def test_data_mapping_receives_results_and_names_are_bound(run_source):
    scope = run_source(
        """\
        import afar
        store = {}
        def result():
            with afar.run("a", "b", data=store), locally:
                a = 1
                b = 2
            return a, b
        """
    )
    assert scope["result"]() == (1, 2)
    assert scope["store"] == {"a": 1, "b": 2}


def test_block_changes_to_outer_objects_do_not_come_back_unless_saved(run_source):
    """Locally, objects are shared (no pickling): mutation shows, rebinding does not."""
    scope = run_source(
        """\
        import afar
        def result():
            items = [1]
            other = "kept"
            with afar.run("y"), locally:
                items.append(2)
                other = "rebound in the block"
                y = 1
            return items, other
        """
    )
    assert scope["result"]() == ([1, 2], "kept")


def test_blocks_in_functions_called_from_a_block(run_source):
    """Each entered block has its own state, also when one runs inside another's body."""
    scope = run_source(
        """\
        import afar
        def inner(v):
            with afar.run, locally:
                w = v * 2
            return w
        def result():
            with afar.run, locally:
                y = inner(3) + inner(4)
            return y
        """
    )
    assert scope["result"]() == 14


def test_the_same_block_in_several_threads(run_source):
    scope = run_source(
        """\
        import threading
        import afar
        barrier = threading.Barrier(4)
        def result(v):
            barrier.wait()
            with afar.run, locally:
                w = v * 10
            barrier.wait()
            return w
        """
    )
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(scope["result"], range(4))) == [0, 10, 20, 30]


def test_the_same_run_object_in_several_coroutines(run_source):
    scope = run_source(
        """\
        import asyncio
        import afar
        runner = afar.Run()
        async def one(v):
            await asyncio.sleep(0)
            async with runner, locally:
                w = v + 1
            await asyncio.sleep(0)
            return w
        async def main():
            return await asyncio.gather(*(one(v) for v in range(5)))
        def result():
            return asyncio.run(main())
        """
    )
    assert scope["result"]() == [1, 2, 3, 4, 5]


def test_binding_a_nonlocal_of_a_class_body(run_source):
    scope = run_source(
        """\
        import afar
        def result():
            v = "before"
            class Holder:
                nonlocal v
                with afar.run, locally:
                    v = "after"
            return v, "v" in vars(Holder)
        """
    )
    assert scope["result"]() == ("after", False)
