"""Bodies of the semantics matrix: each runs plainly and as an afar block, with equal results.

Shared by ``tests/unit/test_semantics_locally.py`` (``locally``) and the cluster tests
(``remotely``). A body reads only the outer variables that ``OUTER`` defines, imports what it
uses itself, and saves plain, picklable values under ``names``, so that results compare equal
wherever the block ran.

Use ``function_source`` / ``module_source`` to build a module that runs a body plainly
(``header=None``) or under a header such as ``'with afar.get(*names), remotely:'``::

    for body in BODIES:
        plain = function_source(body)
        remote = function_source(body, "with afar.get({names}), remotely:")
"""

from __future__ import annotations

import textwrap
from typing import NamedTuple


class Body(NamedTuple):
    id: str
    source: str  # the statements of the block, dedented
    names: tuple[str, ...]  # the names the block saves and the test compares


# Outer variables every body may read; they stand before the block, in the same scope.
OUTER = """\
x = 41
items = [3, 1, 2]
"""

# Number of locals of the "many-locals" body (issue 2: "300 locals").
MANY_LOCALS = 300


def _many_locals() -> str:
    lines = ["v0 = 1"]
    lines += [f"v{i} = v{i - 1} + {i}" for i in range(1, MANY_LOCALS)]
    lines.append(f"total = sum([{', '.join(f'v{i}' for i in range(MANY_LOCALS))}])")
    return "\n".join(lines) + "\n"


def _body(id: str, source: str, *names: str) -> Body:
    return Body(id, textwrap.dedent(source), names)


BODIES: list[Body] = [
    _body(
        "closures",
        """\
        def make_adder(n):
            def add(v):
                return v + n
            return add
        add_two = make_adder(2)
        base = 10
        def shifted(v):
            return v + base
        base = 20
        result = [add_two(i) for i in range(3)] + [shifted(1)]
        """,
        "result",
    ),
    _body(
        "closure-reads-outer-name",
        """\
        def scaled(v):
            return v * x
        result = [scaled(v) for v in items]
        """,
        "result",
    ),
    _body(
        "closures-in-a-loop",
        """\
        late = [lambda: i for i in range(3)]
        early = [lambda i=i: i for i in range(3)]
        result = ([f() for f in late], [f() for f in early])
        """,
        "result",
    ),
    _body(
        "lambdas",
        """\
        square = lambda v: v * v
        squares = list(map(square, items))
        ordered = sorted(items, key=lambda v: -v)
        compose = lambda f, g: lambda v: f(g(v))
        composed = compose(square, lambda v: v + 1)(2)
        """,
        "squares",
        "ordered",
        "composed",
    ),
    _body(
        "recursion",
        """\
        def fact(n):
            return 1 if n <= 1 else n * fact(n - 1)
        def is_even(n):
            return True if n == 0 else is_odd(n - 1)
        def is_odd(n):
            return False if n == 0 else is_even(n - 1)
        result = (fact(10), is_even(10), is_odd(7))
        """,
        "result",
    ),
    _body(
        "nonlocal-in-nested-functions",
        """\
        def counter():
            count = 0
            def increment(by=1):
                nonlocal count
                count += by
                return count
            return increment
        step = counter()
        step()
        step(5)
        result = step()
        """,
        "result",
    ),
    _body(
        "nonlocal-of-a-block-variable",
        """\
        total = 0
        def add(n):
            nonlocal total
            total += n
        for v in items:
            add(v)
        """,
        "total",
    ),
    _body(
        "classes-with-super",
        """\
        class Base:
            registry = []
            def __init_subclass__(cls, **kwargs):
                super().__init_subclass__(**kwargs)
                Base.registry.append(cls.__name__)
            def __init__(self, value):
                self.value = value
            def describe(self):
                return f"value {self.value}"
            @classmethod
            def make(cls):
                return cls(x)
        class Child(Base):
            def __init__(self, value):
                super().__init__(value * 2)
            def describe(self):
                return "child " + super().describe()
        result = (Child(3).describe(), Child.make().value, Base.registry)
        """,
        "result",
    ),
    _body(
        "class-body-reads-block-variable",
        """\
        factor = 3
        class Holder:
            scaled = factor * 2
            doubled = scaled * 2
        result = (Holder.scaled, Holder.doubled)
        """,
        "result",
    ),
    _body(
        "dataclass",
        """\
        import dataclasses
        @dataclasses.dataclass(frozen=True)
        class Point:
            x: int
            y: int = 0
        result = (Point(1, 2), dataclasses.astuple(Point(3)))
        result = (dataclasses.astuple(result[0]), result[1])
        """,
        "result",
    ),
    _body(
        "generators",
        """\
        def countdown(n):
            while n > 0:
                yield n
                n -= 1
        def chained():
            yield from countdown(2)
            received = yield "ready"
            yield received * 2
        gen = chained()
        firsts = [next(gen), next(gen), next(gen)]
        sent = gen.send(21)
        lazy = sum(v * v for v in countdown(4))
        """,
        "firsts",
        "sent",
        "lazy",
    ),
    _body(
        "comprehensions-with-walrus",
        """\
        total = 0
        running = [total := total + v for v in items]
        doubled = [y for v in items if (y := v * 2) > 2]
        pairs = {k: v for k, v in zip("abc", items)}
        unique = {v % 2 for v in items}
        nested = [[i * j for j in range(3)] for i in range(2)]
        """,
        "total",
        "running",
        "doubled",
        "y",
        "pairs",
        "unique",
        "nested",
    ),
    _body(
        "try-except-else-finally",
        """\
        log = []
        for divisor in (1, 0):
            try:
                log.append(10 // divisor)
            except ZeroDivisionError as error:
                log.append(type(error).__name__)
            else:
                log.append("else")
            finally:
                log.append("finally")
        try:
            error
        except NameError:
            log.append("error unbound")
        try:
            try:
                raise KeyError("inner")
            except KeyError as inner:
                raise ValueError("outer") from inner
        except ValueError as outer:
            log.append(repr(outer.__cause__))
        """,
        "log",
    ),
    _body(
        "nested-with",
        """\
        import contextlib
        log = []
        @contextlib.contextmanager
        def tracked(name):
            log.append("enter " + name)
            try:
                yield name.upper()
            finally:
                log.append("exit " + name)
        with tracked("a") as a, tracked("b") as b:
            with tracked("c") as c:
                log.append(a + b + c)
        with contextlib.suppress(ZeroDivisionError):
            log.append(1 / 0)
        log.append("after suppress")
        """,
        "log",
        "a",
        "c",
    ),
    _body(
        "loops-break-continue-else",
        """\
        found = None
        for v in range(10):
            if v % 2:
                continue
            if v > 4:
                found = v
                break
        else:
            found = -1
        log = []
        n = 0
        while n < 5:
            n += 1
            if n == 2:
                continue
            log.append(n)
        else:
            log.append("done")
        for v in []:
            pass
        else:
            log.append("empty else")
        """,
        "found",
        "log",
        "n",
    ),
    _body(
        "match",
        """\
        import dataclasses
        @dataclasses.dataclass
        class Point:
            x: int
            y: int
        def describe(subject):
            match subject:
                case []:
                    return "empty"
                case [first, *rest] if first > 2:
                    return ("starts big", first, rest)
                case [_, *_]:
                    return "a list"
                case {"kind": "circle", "r": r, **others}:
                    return ("circle", r, others)
                case Point(x=0, y=y):
                    return ("on the y axis", y)
                case Point(x, y) if x == y:
                    return ("diagonal", x)
                case int() | float() as number:
                    return ("number", number)
                case str(text):
                    return ("text", text)
                case _:
                    return "other"
        subjects = [[], items, [1], {"kind": "circle", "r": 2, "c": 3}, Point(0, 5),
                    Point(4, 4), 2.5, "s", None]
        result = [describe(s) for s in subjects]
        """,
        "result",
    ),
    _body(
        "starred-unpacking",
        """\
        first, *middle, last = range(6)
        merged = [*items, *range(2)]
        options = {**{"a": 1}, "b": 2}
        def collect(*args, **kwargs):
            return args, kwargs
        called = collect(*items, **options)
        (head, *_), tail = [items, "t"]
        """,
        "first",
        "middle",
        "last",
        "merged",
        "called",
        "head",
        "tail",
    ),
    _body(
        "del",
        """\
        temporary = 1
        del temporary
        try:
            temporary
        except NameError:
            gone = True
        numbers = [1, 2, 3, 4]
        del numbers[0], numbers[-1]
        mapping = {"a": 1, "b": 2}
        del mapping["a"]
        del x
        try:
            x
        except NameError:
            outer_gone = True
        """,
        "gone",
        "numbers",
        "mapping",
        "outer_gone",
    ),
    _body(
        "async-def",
        """\
        import asyncio
        async def twice(v):
            await asyncio.sleep(0)
            return 2 * v
        async def main():
            values = await asyncio.gather(*(twice(v) for v in items))
            async def agen():
                for v in values:
                    yield v
            return [v async for v in agen()]
        result = asyncio.run(main())
        """,
        "result",
    ),
    _body("many-locals", _many_locals(), "total", "v0", "v150", f"v{MANY_LOCALS - 1}"),
    _body(
        "rebind-outer-name",
        """\
        x = x + 1
        items = items + [4]
        """,
        "x",
        "items",
    ),
    _body(
        "augmented-outer-name",
        """\
        x += 1
        x *= 2
        """,
        "x",
    ),
    _body(
        "outer-name-read-then-assigned-in-a-branch",
        """\
        if len(items) > 10:
            x = 0
        result = x
        """,
        "result",
    ),
    _body(
        "late-binding-of-block-names",
        """\
        def get():
            return later_value
        later_value = 5
        result = get()
        later_value = 6
        result = (result, get())
        """,
        "result",
    ),
    _body(
        "decorators",
        """\
        import functools
        calls = []
        def logged(f):
            @functools.wraps(f)
            def wrapper(*args):
                calls.append(f.__name__)
                return f(*args)
            return wrapper
        @logged
        def add(a, b):
            return a + b
        @functools.lru_cache(maxsize=None)
        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)
        result = (add(1, 2), add.__name__, fib(30), calls)
        """,
        "result",
    ),
    _body(
        "imports",
        """\
        import os.path
        from collections import Counter as Tally
        import json, math
        result = (os.path.join("a", "b"), Tally("abca").most_common(1), json.dumps([1]),
                  math.floor(2.5))
        """,
        "result",
    ),
    _body(
        "annotations",
        """\
        count: int = 3
        def typed(v: int) -> str:
            return str(v)
        result = (count, typed(count), typed.__annotations__ == {"v": int, "return": str})
        """,
        "result",
    ),
]

# Bodies that cannot stand at module level even plainly (``nonlocal`` needs a function).
FUNCTION_ONLY = frozenset({"nonlocal-of-a-block-variable"})


def _indent(text: str, prefix: str = "    ") -> str:
    return textwrap.indent(text, prefix, lambda line: True)


def _returned(names: tuple[str, ...]) -> str:
    return "{" + ", ".join(f"{name!r}: {name}" for name in names) + "}"


def function_source(body: Body, header: str | None = None) -> str:
    """A module whose ``block_results()`` runs ``body`` in a function, plainly or under ``header``.

    ``header`` may hold ``{names}``, replaced by the saved names as string literals:
    ``'with afar.run({names}), locally:'``. ``block_results()`` returns a dict of the saved names.
    """
    block = body.source
    if header is not None:
        block = header.format(names=", ".join(map(repr, body.names))) + "\n" + _indent(block)
    return (
        "import afar\n\n"
        "def block_results():\n"
        f"{_indent(OUTER)}{_indent(block)}"
        f"    return {_returned(body.names)}\n"
    )


def module_source(body: Body, header: str | None = None) -> str:
    """A module that runs ``body`` at its top level; ``block_results()`` returns the saved names."""
    block = body.source
    if header is not None:
        block = header.format(names=", ".join(map(repr, body.names))) + "\n" + _indent(block)
    return (
        f"import afar\n\n{OUTER}{block}\ndef block_results():\n    return {_returned(body.names)}\n"
    )
