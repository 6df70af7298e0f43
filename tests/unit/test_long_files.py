"""Long files, many blocks: a block's first entry reads its own statement, and keeps its lines.

Issue 19, point 5: the first entry of a block parsed, walked and disassembled its whole file, and
each cached block kept a copy of every line of it. afar now parses the top-level statement that
holds the block (a *piece*) alone, trusts it once the running code is its code, and parses the
whole file only when that fails; a block keeps the lines of its own statement.
"""

from __future__ import annotations

import ast
import linecache
import traceback
from pathlib import Path

import pytest
from unit_helpers import blocks_of, exec_registered, fake_filename, register

import afar
from afar._analysis.index import class_of, index_for, scope_names, with_statements
from afar._analysis.source import parsed, with_at_line

FILLER_UNIT = '''\
def helper_{i}(values, scale=2):
    """Scale the values.
Text of a docstring at column 0: x = 1
    """
    total = 0
    for value in values:
        total += value * scale + {i}
    with open(__file__) as file:
        first = file.readline()
    return total, first


'''


def filler(units: int) -> str:
    """Ordinary code: functions with docstrings (at column 0 too) and with statements."""
    return "".join(FILLER_UNIT.format(i=i) for i in range(units))


def index_of(source: str):
    return index_for(fake_filename(), 0, text=source, parse=parsed)


def header_lines(source: str) -> list[int]:
    """Every line of every with statement's header (what a frame's line may be)."""
    lines = []
    for node, _ in with_statements(ast.parse(source).body):
        end = max(node.lineno, min(s.lineno for s in node.body) - 1)
        lines.extend(range(node.lineno, end + 1))
    return lines


def assert_pieces_agree(source: str) -> tuple[int, int]:
    """At each with statement's header line, the piece found from that line alone (and the one
    the whole file's index gives) holds the statement ``ast.parse`` of the whole source finds
    there, at the same positions, in the same class; (found, not found)."""
    tree = ast.parse(source)
    context = {
        id(node): (*class_of(scopes), scope_names(scopes))
        for node, scopes in with_statements(tree.body)
    }
    index = index_of(source)
    found = missed = 0
    for line in header_lines(source):
        node = with_at_line(tree, line)
        assert node is not None
        expected = (ast.dump(node, include_attributes=True), *context[id(node)])
        whole = index.whole().piece_holding(line)
        assert whole is not None and _described(whole.with_at(line)) == expected, line
        piece = index.piece_at(line)
        if piece is None:
            missed += 1
            continue
        assert _described(piece.with_at(line)) == expected, line
        found += 1
    return found, missed


def _described(found) -> tuple[object, ...]:
    assert found is not None
    node, class_name, instance, scopes = found
    return ast.dump(node, include_attributes=True), class_name, instance, scopes


# Layouts where a line at column 0 does not start a statement, or a statement does not start at
# column 0 on its own: each must give the right piece, or none (then the whole file decides).
LAYOUTS = {
    "module-level": "import afar\nx = 1\nwith afar.run, locally:\n    y = x\nz = 2\n",
    "last-statement": "import afar\nwith afar.run, locally:\n    y = 1",
    "decorated": (
        "import functools\n\n@functools.lru_cache\n# a comment\n@staticmethod\n"
        "def f():\n    with open('x') as file:\n        pass\n"
    ),
    "docstring-at-column-0": (
        'def f():\n    """Doc.\nx = 1\nwith open("y"):\n    """\n    with open("z"):\n'
        "        pass\n"
    ),
    "string-at-column-0-in-the-body": (
        'def f():\n    with open("x"):\n        s = """\ny = 1\n"""\n        t = 2\n    return s\n'
    ),
    "closing-brackets": "x = f(\n    1,\n)\nwith open('x'):\n    y = [\n1,\n]\nz = 1\n",
    "continuation": "with open('x'):\n    y = 1 + \\\n2\n    z = 3\nw = 4\n",
    "clauses": (
        "if x:\n    pass\nelse:\n    with open('x'):\n        pass\n"
        "try:\n    pass\nexcept OSError:\n    with open('y'):\n        pass\n"
        "finally:\n    with open('z'):\n        pass\n"
    ),
    "shared-lines": "a = 1; b = 2\nwith open('x'): pass\nc = 3; d = 4\n",
    "class-and-method": (
        "class A:\n    '''Doc\nclass B:\n    '''\n    def m(self):\n        with open('x'):\n"
        "            super().m()\n    class C:\n        with open('y'):\n            pass\n"
    ),
    "multi-line-header": "with (\n    open('x') as a,\n    open('y') as b,\n):\n    pass\n",
    "nested": "with open('a'):\n    with open('b'):\n        with open('c'):\n            pass\n",
    "match": "match x:\n    case 1:\n        with open('x'):\n            pass\n",
    "async": "async def f():\n    async with x:\n        pass\n    with y:\n        pass\n",
    # Far from the file's start for its size: parsed alone, then renumbered (PADDING_PER_LINE).
    "deep-in-a-file": "x = 1\n" * 1200 + "with open('x'):\n    pass\nclass A:\n    with y: pass\n",
}


@pytest.mark.parametrize("source", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_the_piece_found_from_a_line_is_the_whole_files(source):
    found, missed = assert_pieces_agree(source)
    assert found and not missed  # each found without parsing the whole file


# afar's own modules and tests: real code, with statements in every placement.
REAL_FILES = sorted(
    str(path)
    for folder in ("afar", "tests")
    for path in (Path(__file__).parents[2] / folder).rglob("*.py")
)


def test_pieces_of_real_files_are_the_whole_files():
    found = missed = 0
    for path in REAL_FILES:
        f, m = assert_pieces_agree(Path(path).read_text(encoding="utf-8"))
        found, missed = found + f, missed + m
    assert found > 100
    assert missed <= found // 20  # the whole file decides rarely


def test_a_piece_is_found_where_the_rest_of_the_file_does_not_parse():
    source = "def f():\n    with open('x'):\n        pass\n\ndef broken(:\n"
    index = index_of(source)
    piece = index.piece_at(2)
    assert piece is not None and piece.with_at(2) is not None
    with pytest.raises(afar.SourceError, match="cannot parse"):
        index.whole()


BLOCK_SOURCE = """\
import afar
import json

def result(effects):
    with afar.run, locally:
        effects.append(json.dumps(1))
        y = 1
    return y
"""


def test_a_block_runs_when_the_rest_of_its_file_was_broken_after_it_ran(effects):
    """Only the block's own lines are compared with the running code: an edit elsewhere, even
    one that does not parse, does not stop it (before, afar parsed the whole file)."""
    filename = fake_filename()
    register(BLOCK_SOURCE + "\ndef broken(:\n", filename)
    scope: dict[str, object] = {}
    exec(compile(BLOCK_SOURCE, filename, "exec"), scope)
    assert scope["result"](effects) == 1  # type: ignore[operator]
    assert effects == ["1"]


def test_an_edited_block_is_still_refused_where_the_rest_does_not_parse(effects):
    filename = fake_filename()
    register(BLOCK_SOURCE.replace("y = 1", "y = 2") + "\ndef broken(:\n", filename)
    scope: dict[str, object] = {}
    exec(compile(BLOCK_SOURCE, filename, "exec"), scope)
    with pytest.raises(afar.SourceError, match="cannot parse"):
        scope["result"](effects)  # type: ignore[operator]
    assert effects == []


def module_blocks(count: int) -> str:
    return "".join(f"with afar.run, locally:\n    y_{j} = {j} + 1\n" for j in range(count))


def function_blocks(count: int) -> str:
    blocks = "".join(
        f"    with afar.run, locally:\n        y_{j} = {j} + 1\n    found.append(y_{j})\n"
        for j in range(count)
    )
    return f"def result():\n    found = []\n{blocks}    return found\n"


MANY = 400


def test_many_blocks_at_module_level_after_a_long_file(load_module):
    module = load_module("import afar\n" + filler(100) + module_blocks(MANY))
    assert [getattr(module, f"y_{j}") for j in range(MANY)] == [j + 1 for j in range(MANY)]


def test_many_blocks_in_one_function_after_a_long_file(load_module):
    module = load_module("import afar\n" + filler(100) + function_blocks(MANY))
    assert module.result() == [j + 1 for j in range(MANY)]


def test_many_blocks_in_registered_source():
    scope = exec_registered("import afar\n" + filler(20) + function_blocks(50) + "r = result()\n")
    assert scope["r"] == [j + 1 for j in range(50)]


LATE_BLOCK = """\
def result():
    with afar.run, locally:
        y = 1
        z = y + 1
    return z
"""


def test_a_cached_block_keeps_its_own_lines_not_its_files(load_module):
    module = load_module("import afar\n" + filler(200) + LATE_BLOCK)
    assert module.result() == 2
    (block,) = blocks_of(module.result.__code__)
    with_line = block.site.node.lineno
    assert block.site.lines == tuple(
        linecache.getlines(module.__file__)[with_line - 1 : with_line + 2]
    )
    assert len(block.text) < 100  # the function's text, not a blank line per line before it


def test_a_block_travels_alike_wherever_it_stands_in_its_file(load_module):
    short = load_module("import afar\n" + LATE_BLOCK)
    long = load_module("import afar\n" + filler(200) + LATE_BLOCK)
    sizes = []
    for module in (short, long):
        assert module.result() == 2
        (block,) = blocks_of(module.result.__code__)
        sizes.append(len(block.packed((), ("z",), True, False)))
    assert abs(sizes[0] - sizes[1]) < 16  # the line numbers differ, nothing else


def test_an_error_deep_in_a_long_file_shows_its_line(load_module):
    source = "import afar\n" + filler(200) + "def result():\n    with afar.run, locally:\n"
    source += "        y = 1\n        z = y / 0\n    return z\n"
    module = load_module(source)
    with pytest.raises(ZeroDivisionError) as info:
        module.result()
    last = traceback.extract_tb(info.tb)[-1]
    assert (last.filename, last.lineno, last.line) == (
        module.__file__,
        source.count("\n") - 1,
        "z = y / 0",
    )


@pytest.mark.parametrize("edit", ["same-lines", "does-not-parse"])
def test_a_long_file_edited_elsewhere_after_import(load_module, edit):
    """The block's first entry after an edit elsewhere: its own lines match the running code."""
    module = load_module("import afar\n" + filler(50) + LATE_BLOCK)
    path = Path(module.__file__)
    text = path.read_text()
    if edit == "same-lines":
        path.write_text(text.replace("scale + ", "scale - "))
    else:
        path.write_text(text.replace("def helper_3(values", "def helper_3(:values"))
    assert module.result() == 2
