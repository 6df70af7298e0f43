"""Capture: afar finds the ``with`` statement that is executing and takes exactly its body."""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

import pytest
from unit_helpers import (
    blocks_of,
    captured,
    exec_registered,
    import_file,
    indent,
    site_from_source,
)

import afar
from afar._analysis import wrapping
from afar._analysis.source import check_body_not_on_header, with_at_line

# The block every placement and header test runs: it saves ``y``, which the test then reads.
BODY = "x = 20\ny = x + 1\n"
EXPECTED_Y = 21

# Headers spelled every way the grammar allows; each saves ``y`` (by name or as last bound).
HEADERS = {
    "plain": "with afar.run, locally:",
    "named": 'with afar.run("y"), locally:',
    "two-names": 'with afar.run("x", "y"), locally:',
    "as-data": "with afar.run as data, locally:",
    "get": "with afar.get, locally:",
    "get-timeout": 'with afar.get("y", timeout=5), locally:',
    "comment-on-header": "with afar.run, locally:  # runs here, in this process",
    "parenthesized": "with (afar.run, locally):",
    "parenthesized-multiline": """\
        with (
            afar.run("y"),
            locally,
        ):""",
    "parenthesized-comments": """\
        with (  # the items
            afar.run(
                "y",  # the name saved
            ) as data,
            # where to run
            locally,
        ):""",
    "backslash": """\
        with afar.run("y"), \\
                locally:""",
    "backslash-twice": """\
        with \\
            afar.run, \\
            locally:""",
    "call-split-over-lines": """\
        with afar.run(
            "y",
        ), locally:""",
    "afar-dot-location": "with afar.run, afar.locally:",
    "location-called": "with afar.run, afar.locally():",
    "location-variable": "with afar.run, here:",
    "imported": "with run, locally:",
    "module-alias": "with af.run, af.locally:",
    "data-mapping": "with afar.run(data={}), locally:",
}
# What each header needs defined before it (imports, variables).
PRELUDE = """\
import afar
import afar as af
from afar import run
here = afar.locally
"""


def function_module(header: str, body: str = BODY) -> str:
    header = textwrap.dedent(header).strip("\n")
    return f"{PRELUDE}\ndef block():\n{indent(header)}{indent(body, '        ')}    return y\n"


@pytest.mark.parametrize("header", HEADERS.values(), ids=HEADERS.keys())
def test_header_spellings_in_a_function(load_module, header):
    module = load_module(function_module(header))
    assert module.block() == EXPECTED_Y
    (block,) = blocks_of(module.block.__code__)
    assert block.source == indent(BODY, "        ")  # exactly the body, whatever the header


@pytest.mark.parametrize("header", HEADERS.values(), ids=HEADERS.keys())
def test_header_spellings_at_module_level(load_module, header):
    header = textwrap.dedent(header).strip("\n")
    module = load_module(f"{PRELUDE}\n{header}\n{indent(BODY)}")
    assert module.y == EXPECTED_Y
    assert not hasattr(module, "x") or "x" in header  # only saved names come back


# -- the body: exactly its lines, whatever they hold ----------------------------------------------
BODIES = {
    "one-line": "y = 1\n",
    "comments-and-blank-lines": """\
        # leading comment is not part of the body

        a = 1  # trailing comment

        # interior comment
        y = a + 1
        # trailing comment line
    """,
    "nested-function": """\
        def double(v):
            return 2 * v
        y = double(3)
    """,
    "decorated-function-first": """\
        @staticmethod
        def double(v):
            return 2 * v
        y = double.__func__(4)
    """,
    "decorator-with-arguments-first": """\
        @functools.lru_cache(
            maxsize=None,
        )
        def square(v):
            return v * v
        y = square(5)
    """,
    "decorated-class-first": """\
        @dataclasses.dataclass
        class Point:
            x: int
            y: int = 0
        y = Point(1, 2).y
    """,
    "class": """\
        class Base:
            def name(self):
                return "base"
        class Child(Base):
            def name(self):
                return "child of " + super().name()
        y = Child().name()
    """,
    "nested-with": """\
        with contextlib.nullcontext(3) as three:
            with contextlib.nullcontext(4) as four:
                y = three * four
    """,
    "try": """\
        try:
            1 / 0
        except ZeroDivisionError as error:
            y = type(error).__name__
        else:
            y = "no error"
        finally:
            done = True
    """,
    "match": """\
        match [1, 2, 3]:
            case [first, *rest]:
                y = (first, rest)
            case _:
                y = None
    """,
    "multi-line-string": '''\
        text = """
        with afar.run, locally:
            not = code
        """
        y = text.count("\\n")
    ''',
    "continuation-lines": """\
        total = 1 + \\
            2 + \\
            3
        y = (total,
             total * 2)
    """,
    "semicolons": "a = 1; b = 2; y = a + b\n",
    "last-statement-multi-line-call": """\
        y = dict(
            a=1,
            b=2,
        )
    """,
    "inner-function-holds-a-with": """\
        def opened():
            with contextlib.nullcontext(7) as seven:
                return seven
        y = opened()
    """,
    "loop-with-else": """\
        for i in range(3):
            if i == 5:
                break
        else:
            y = i
    """,
}
BODY_PRELUDE = "import contextlib\nimport dataclasses\nimport functools\nimport afar\n"


def body_lines(body: str) -> str:
    """The lines afar takes: from the first statement (or decorator) to the last one."""
    lines = indent(body, "        ").splitlines(keepends=True)  # captured() wraps in a def
    code = [i for i, line in enumerate(lines) if line.strip() and not line.strip().startswith("#")]
    last = code[-1]
    # The last statement may end with a closing line ("    )") that is code too.
    return "".join(lines[code[0] : last + 1])


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_bodies_run_locally(load_module, body):
    plain = load_module(f"{BODY_PRELUDE}\ndef block():\n{indent(body)}    return y\n")
    module = load_module(
        f"{BODY_PRELUDE}\ndef block():\n"
        f'    with afar.run("y"), locally:\n{indent(body, "        ")}    return y\n'
    )
    assert module.block() == plain.block()


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_bodies_are_captured_exactly(body):
    got = captured(body, "y")
    assert got.source == body_lines(body)
    assert got.names_saved == ("y",)
    assert "y" in got.names_assigned


# -- where the with statement stands ---------------------------------------------------------------
BLOCK = 'with afar.run("y"), locally:\n' + indent(BODY)
# Each template holds the line "BLOCK" where the block goes, and defines result() returning y.
PLACEMENTS = {
    "module": """\
        BLOCK
        def result():
            return y
    """,
    "module-if": """\
        if True:
            BLOCK
        def result():
            return y
    """,
    "module-for": """\
        for _ in range(2):
            BLOCK
        def result():
            return y
    """,
    "function": """\
        def result():
            BLOCK
            return y
    """,
    "if": """\
        def result():
            if len("a") == 1:
                BLOCK
            return y
    """,
    "else": """\
        def result():
            if len("a") == 2:
                pass
            else:
                BLOCK
            return y
    """,
    "for": """\
        def result():
            for _ in range(3):
                BLOCK
            return y
    """,
    "while": """\
        def result():
            n = 0
            while n < 2:
                n += 1
                BLOCK
            return y
    """,
    "try": """\
        def result():
            try:
                BLOCK
            finally:
                pass
            return y
    """,
    "except": """\
        def result():
            try:
                raise KeyError
            except KeyError:
                BLOCK
            return y
    """,
    "finally": """\
        def result():
            try:
                pass
            finally:
                BLOCK
            return y
    """,
    "other-with": """\
        import contextlib
        def result():
            with contextlib.nullcontext():
                BLOCK
            return y
    """,
    "other-with-same-line-count": """\
        import contextlib
        def result():
            with contextlib.nullcontext(), contextlib.nullcontext():
                BLOCK
                z = 1
            return y
    """,
    "match": """\
        def result():
            match 1:
                case 1:
                    BLOCK
            return y
    """,
    "nested-function": """\
        def result():
            def inner():
                BLOCK
                return y
            return inner()
    """,
    "class-body": """\
        class Holder:
            BLOCK
        def result():
            return Holder.y
    """,
    "class-in-function": """\
        def result():
            class Holder:
                BLOCK
            return Holder.y
    """,
    "method": """\
        class Holder:
            def method(self):
                BLOCK
                return y
        def result():
            return Holder().method()
    """,
    "staticmethod": """\
        class Holder:
            @staticmethod
            def method():
                BLOCK
                return y
        def result():
            return Holder.method()
    """,
    "generator": """\
        def produce():
            BLOCK
            yield y
        def result():
            return next(produce())
    """,
    "coroutine": """\
        import asyncio
        async def produce():
            BLOCK
            return y
        def result():
            return asyncio.run(produce())
    """,
    "async-with": """\
        import asyncio
        async def produce():
            async BLOCK
            return y
        def result():
            return asyncio.run(produce())
    """,
}


def place(template: str, block: str = BLOCK) -> str:
    """``template`` with its ``BLOCK`` line replaced by ``block``, indented to match."""
    lines = []
    for line in textwrap.dedent(template).splitlines(keepends=True):
        stripped = line.lstrip()
        if stripped.startswith(("BLOCK", "async BLOCK")):
            prefix = line[: len(line) - len(stripped)]
            text = block if stripped.startswith("BLOCK") else "async " + block
            lines.append(indent(text, prefix))
        else:
            lines.append(line)
    return "import afar\n" + "".join(lines)


@pytest.mark.parametrize("template", PLACEMENTS.values(), ids=PLACEMENTS.keys())
def test_placements(load_module, template):
    module = load_module(place(template))
    assert module.result() == EXPECTED_Y


@pytest.mark.parametrize("template", PLACEMENTS.values(), ids=PLACEMENTS.keys())
def test_placements_in_registered_source(template):
    """The same placements from a source that exists only in linecache (an IPython cell)."""
    scope = exec_registered(place(template))
    assert scope["result"]() == EXPECTED_Y


# Text after a module that does not parse: afar finds each block without reading it, from the
# top-level statement that holds the block (issue 19, point 5: the first entry of a block costs
# what its statement costs, not its file).
UNPARSED_TAIL = "\n\ndef broken(:\n"


@pytest.mark.parametrize("template", PLACEMENTS.values(), ids=PLACEMENTS.keys())
def test_placements_read_only_their_own_statement(template):
    source = textwrap.dedent(place(template))
    scope = exec_registered(source, registered=source + UNPARSED_TAIL)
    assert scope["result"]() == EXPECTED_Y


@pytest.mark.parametrize("header", HEADERS.values(), ids=HEADERS.keys())
def test_header_spellings_read_only_their_own_statement(header):
    source = function_module(header)
    assert exec_registered(source, registered=source + UNPARSED_TAIL)["block"]() == EXPECTED_Y
    header = textwrap.dedent(header).strip("\n")
    source = f"{PRELUDE}\n{header}\n{indent(BODY)}"
    assert exec_registered(source, registered=source + UNPARSED_TAIL)["y"] == EXPECTED_Y


def test_two_blocks_in_one_function(load_module):
    module = load_module(
        """\
        import afar

        def result():
            with afar.run, locally:
                a = 1
            with afar.run, locally:
                b = a + 1
            return a, b
        """
    )
    assert module.result() == (1, 2)
    blocks = blocks_of(module.result.__code__)
    assert [b.site.node.lineno for b in blocks] == [4, 6]
    assert [b.source.strip() for b in blocks] == ["a = 1", "b = a + 1"]


def test_two_blocks_in_one_module(load_module):
    module = load_module(
        """\
        import afar
        with afar.run, locally:
            a = 1
        with afar.run, later:
            b = a + 1
        with afar.run, locally:
            c = a + 2
        """
    )
    assert (module.a, module.c) == (1, 3)
    assert not hasattr(module, "b")


def test_block_in_a_loop_is_analysed_once(load_module, monkeypatch):
    # Private on purpose: how often a block is analysed has no public sign but its cost.
    analysed = []
    real_analyse = wrapping.analyse

    def counting_analyse(site, text, line_offset=0):
        analysed.append(site.node.lineno)
        return real_analyse(site, text, line_offset)

    monkeypatch.setattr(wrapping, "analyse", counting_analyse)
    module = load_module(
        """\
        import afar

        def result():
            found = []
            for i in range(5):
                with afar.run, locally:
                    doubled = i * 2
                found.append(doubled)
            return found
        """
    )
    assert module.result() == [0, 2, 4, 6, 8]
    assert module.result() == [0, 2, 4, 6, 8]
    assert analysed == [6]
    assert len(blocks_of(module.result.__code__)) == 1


def test_block_object_is_reused_across_entries(load_module):
    module = load_module(
        """\
        import afar

        def result(runner):
            for _ in range(3):
                with runner, later:
                    value = 1
            return runner.captured
        """
    )
    runner = afar.Run()
    first = module.result(runner)
    blocks = blocks_of(module.result.__code__)
    assert len(blocks) == 1
    module.result(runner)
    assert blocks_of(module.result.__code__) == blocks
    assert blocks_of(module.result.__code__)[0] is blocks[0]
    assert runner.captured == first


# -- remotely, locally, later: bare, from afar, imported ------------------------------------------
SPELLINGS = {
    "bare": ("", "{name}"),
    "attribute": ("", "afar.{name}"),
    "imported": ("from afar import {name}\n", "{name}"),
    "imported-as": ("from afar import {name} as where\n", "where"),
    "variable": ("where = afar.{name}\n", "where"),
}


@pytest.mark.parametrize("spelling", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_spellings_of_locally(spelling):
    prelude, location = (part.format(name="locally") for part in spelling)
    scope = exec_registered(f"{prelude}with afar.run, {location}:\n    y = 5\n")
    assert scope["y"] == 5


@pytest.mark.parametrize("spelling", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_spellings_of_later(spelling, effects):
    prelude, location = (part.format(name="later") for part in spelling)
    runner = afar.Run()
    scope = exec_registered(
        f"{prelude}with runner, {location}:\n    effects.append(1)\n    y = 5\n",
        {"runner": runner, "effects": effects},
    )
    assert effects == []
    assert "y" not in scope
    assert runner.captured is not None
    assert runner.captured.names_saved == ("y",)


class ClosedClient:
    """Stands for a closed ``distributed.Client``: afar refuses it before sending anything."""

    status = "closed"


@pytest.mark.parametrize("spelling", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_spellings_of_remotely(spelling, effects):
    """``remotely`` is recognised however it is spelled: afar then looks for a client."""
    prelude, location = (part.format(name="remotely") for part in spelling)
    source = f"{prelude}with afar.run(client=client), {location}:\n    effects.append(1)\n"
    with pytest.raises(afar.ClientError, match="closed"):
        exec_registered(source, {"client": ClosedClient(), "effects": effects})
    assert effects == []


def test_later_exposes_what_was_captured(load_module):
    module = load_module(
        """\
        import afar

        offset = 10

        def result():
            scale = 3
            with afar.run, later:
                import math
                total = offset * scale
                total += math.floor(2.5)
                label = f"{total}"
            return afar.run.captured
        """
    )
    got = module.result()
    assert isinstance(got, afar.Captured)
    assert got.source == (
        "        import math\n"
        "        total = offset * scale\n"
        "        total += math.floor(2.5)\n"
        '        label = f"{total}"\n'
    )
    assert set(got.names_read) >= {"offset", "scale"}
    assert got.names_assigned == {"math", "total", "label"}
    assert got.names_saved == ("label",)
    assert got.label == f"{module.__name__}.py:7"


def test_later_with_names_given(effects):
    got = captured("a = 1\nb = 2\neffects.append(1)\n", "b", "a")
    assert got.names_saved == ("b", "a")
    assert got.names_assigned == {"a", "b"}
    assert "effects" in got.names_read


def test_later_binds_nothing(load_module):
    module = load_module(
        """\
        import afar
        y = "before"
        with afar.run, later:
            y = "after"
        """
    )
    assert module.y == "before"


def test_as_data_gives_the_saved_values(load_module):
    module = load_module(
        """\
        import afar
        with afar.run("a", "b") as data, locally:
            a = 1
            b = 2
            c = 3
        """
    )
    assert module.data == {"a": 1, "b": 2}
    assert (module.a, module.b) == (1, 2)
    assert not hasattr(module, "c")


def test_data_mapping_is_read_first_and_receives_results(load_module):
    module = load_module(
        """\
        import afar
        a = "from the module"
        store = {"a": "from data"}
        with afar.run("b", data=store), locally:
            b = a + "!"
        """
    )
    assert module.b == "from data!"
    assert module.store == {"a": "from data", "b": "from data!"}


def test_future_annotations_module(load_module):
    module = load_module(
        """\
        from __future__ import annotations
        import afar

        def result():
            with afar.run("y", "f"), locally:
                def f(v: SomeUndefinedType) -> int:
                    return v
                y: int = f(4)
            return y, f.__annotations__["v"]
        """
    )
    # Compiled with the module's future flags: the annotation stays a string, never evaluated.
    assert module.result() == (4, "SomeUndefinedType")


# -- internal: which with statement, and where its body starts ------------------------------------
WITH_AT_LINE_SOURCE = """\
with a:                    # 1
    with b(                # 2
        c,                 # 3
    ):                     # 4
        # comment          # 5

        x = 1              # 7
    with d:                # 8
        @decorator         # 9
        def f():           # 10
            with e: pass   # 11
"""


@pytest.mark.parametrize(
    ("line", "expected"),
    [(1, 1), (2, 2), (3, 2), (4, 2), (5, 2), (6, 2), (7, None), (8, 8), (9, None), (11, 11)],
)
def test_with_at_line(line, expected):
    found = with_at_line(ast.parse(WITH_AT_LINE_SOURCE), line)
    assert (found.lineno if found is not None else None) == expected


@pytest.mark.parametrize(
    "source",
    [
        "with afar.run, locally: x = 1\n",
        "with afar.run, locally: x = 1; y = 2\n",
        "with (afar.run,\n      locally): x = 1\n",
    ],
)
def test_body_on_the_header_line_is_refused(source):
    with pytest.raises(afar.BlockSyntaxError, match="new line") as info:
        check_body_not_on_header(site_from_source(source))
    assert info.value.lineno == 1


@pytest.mark.parametrize(
    ("source", "saved"),
    [
        ("with afar.run, locally:\n    x = 1\n", "x"),
        ("with afar.run, locally:  # comment: x = 1\n    x = 1\n", "x"),
        ("with (afar.run,\n      locally):\n    x = 1\n", "x"),
        ("with afar.run, locally:\n    @decorator\n    def f(): return 1\n", "f"),
    ],
)
def test_body_on_its_own_lines_is_accepted(load_module, source, saved):
    assert check_body_not_on_header(site_from_source(source)) is None
    # Accepted: the block runs where it stands and binds its last name there.
    prelude = "import afar\nfrom afar import locally\n\ndef decorator(f):\n    return f\n\n"
    module = load_module(prelude + source)
    value = getattr(module, saved)
    assert (value() if saved == "f" else value) == 1


def test_same_code_in_two_files_is_two_blocks(load_module):
    """Code objects compare equal across files; each file's block keeps its own file name."""
    source = "import afar\n\ndef result():\n    with afar.run, later:\n        y = 1\n"
    first, second = load_module(source), load_module(source)
    assert first.result.__code__ == second.result.__code__  # what Python says
    first.result()
    label_one = afar.run.captured.label
    second.result()
    label_two = afar.run.captured.label
    assert label_one == f"{Path(first.__file__).name}:4"
    assert label_two == f"{Path(second.__file__).name}:4"


def test_source_lines_at_column_zero_inside_the_body(load_module):
    module = load_module(
        "import afar\n"
        "\n"
        "def result():\n"
        "    with afar.run, locally:\n"
        '        text = """\n'
        "no indentation\n"
        '"""\n'
        "        total = 1 + \\\n"
        "2\n"
        "        y = (text, total)\n"
        "    return y\n"
    )
    assert module.result() == ("\nno indentation\n", 3)


def test_tabs_and_unicode_in_the_body(load_module):
    module = load_module(
        "# -*- coding: utf-8 -*-\n"
        "import afar\n"
        "def result():\n"
        "\twith afar.run, locally:\n"
        "\t\tπ = 3.14  # ç\n"
        "\t\tnaïve = 'café' ; y = (π, naïve)\n"
        "\treturn y\n"
    )
    assert module.result() == (3.14, "café")


@pytest.mark.parametrize("separator", ["\x0c", "\x1c", "\x85", "\u2028"])
def test_a_line_separator_inside_a_string_before_the_block(load_module, separator):
    """str.splitlines() breaks lines there, Python's tokenizer does not: afar numbers lines as
    linecache and the parser do (it used to shift every line after one)."""
    module = load_module(
        f'import afar\ns = "a{separator}b"\ndef result():\n    with afar.run, locally:\n'
        "        y = 1\n    return y\n"
    )
    assert module.result() == 1


def test_latin_1_source_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    path = tmp_path / "latin.py"
    path.write_bytes(
        "# -*- coding: latin-1 -*-\nimport afar\nwith afar.run, locally:\n    y = 'é' * 2\n".encode(
            "latin-1"
        )
    )
    module = import_file(path, "afar_unit_latin")
    try:
        assert module.y == "éé"
    finally:
        sys.modules.pop("afar_unit_latin", None)


# -- blocks written in this very file: pytest rewrote its asserts -------------------------------
def test_block_in_a_test_function():
    with afar.run, afar.locally:
        y = 1
    assert y == 1


def test_assert_inside_a_block_of_a_pytest_module():
    """pytest rewrites assert statements of test modules; afar accepts those lines."""
    with afar.run("y"), afar.locally:
        y = 2
        assert y == 2, "a plain assert in the block"

        def check(v):
            assert v
            return v

        check(y)
    assert y == 2


def test_failing_assert_inside_a_block_of_a_pytest_module():
    with pytest.raises(AssertionError, match="plain message"):  # noqa: SIM117 - two statements
        with afar.run, afar.locally:
            y = 0
            assert y, "plain message"
