"""Compilation: the body becomes a function that keeps the user's file name and line numbers."""

from __future__ import annotations

import linecache
import pickle
import sys
import traceback

import pytest
from unit_helpers import analysis_of, blocks_of, fake_filename, site_from_source

from afar._analysis.wrapping import wrapped_text
from afar._worker import compiling as _worker

RAISING = """\
import afar

def helper(v):
    return 1 / v

def result(v):
    with afar.run, locally:
        a = 1
        b = helper(v)
        c = [1][v]
    return c
"""


def test_error_in_a_block_keeps_its_type_file_and_line(load_module):
    module = load_module(RAISING)
    with pytest.raises(ZeroDivisionError) as info:
        module.result(0)
    frames = traceback.extract_tb(info.tb)
    assert (frames[-1].filename, frames[-1].lineno, frames[-1].line) == (
        module.__file__,
        4,
        "return 1 / v",
    )
    assert (frames[-2].filename, frames[-2].lineno, frames[-2].line) == (
        module.__file__,
        9,
        "b = helper(v)",
    )
    assert frames[-2].name == "result"  # the block's frame: named as without afar


def test_error_on_the_block_line_itself(load_module):
    module = load_module(RAISING)
    with pytest.raises(IndexError) as info:
        module.result(2)
    last = traceback.extract_tb(info.tb)[-1]
    assert (last.filename, last.lineno, last.line) == (module.__file__, 10, "c = [1][v]")


def test_formatted_traceback_shows_the_block_source(load_module):
    module = load_module(RAISING)
    with pytest.raises(IndexError) as info:
        module.result(2)
    text = "".join(traceback.format_exception(info.type, info.value, info.tb))
    assert f'File "{module.__file__}", line 10' in text
    assert "c = [1][v]" in text


# (body, whether its last statement is an expression IPython would display)
FINAL_EXPRESSIONS = {
    "name": ("x = 1\nx", True),
    "call": ("print", True),
    "trailing-semicolon": ("x = 1\nx;", False),
    "semicolon-then-comment": ("x = 1\nx;  # hidden", False),
    "comment-after": ("x = 1\nx  # shown", True),
    "assignment": ("x = 1", False),
    "multi-line-expression": ("(\n    1 +\n    2\n)", True),
    "expression-then-assignment": ("1\nx = 2", False),
    "compound-statement": ("if c:\n    x", False),
}


@pytest.mark.parametrize(
    ("body", "expected"), FINAL_EXPRESSIONS.values(), ids=FINAL_EXPRESSIONS.keys()
)
def test_final_expression(body, expected):
    assert analysis_of(body).final_expression is expected


def test_final_expression_is_displayed_when_interactive(load_module, monkeypatch):
    shown = []
    monkeypatch.setattr(sys, "ps1", ">>> ", raising=False)
    monkeypatch.setattr(sys, "displayhook", shown.append)
    load_module(
        """\
        import afar
        with afar.run, locally:
            a = 20
            a + 1
        with afar.run, locally:
            a + 2;
        """
    )
    assert shown == [21]


def test_final_expression_is_not_displayed_in_a_script(load_module, monkeypatch):
    shown = []
    monkeypatch.delattr(sys, "ps1", raising=False)
    monkeypatch.setattr(sys, "displayhook", shown.append)
    load_module("import afar\nwith afar.run, locally:\n    a = 20\n    a + 1\n")
    assert shown == []


WRAPPED_SOURCES = {
    "module": "x = 0\nwith afar.run, later:\n    a = 1\n\n    # comment\n    b = a\n",
    "function": "def f():\n    with afar.run, later:\n        a = 1\n        b = a\n",
    "decorator-first": "with afar.run, later:\n    @d\n    def f():\n        pass\n",
    "multi-line-header": "with (\n    afar.run,\n    later,\n):\n    a = 1\n",
}


@pytest.mark.parametrize("source", WRAPPED_SOURCES.values(), ids=WRAPPED_SOURCES.keys())
def test_wrapped_text_keeps_every_body_line_at_its_number(source):
    site = site_from_source(source)
    text = wrapped_text(site)
    compile(text, site.filename, "exec")  # a valid function definition
    original = source.splitlines()
    wrapped = text.splitlines()
    for number in range(site.body_first_line, site.body_last_line + 1):
        assert wrapped[number - 1] == original[number - 1]


def _block_of(module, function_name="result"):
    (block,) = blocks_of(getattr(module, function_name).__code__)
    return block


def test_packed_code_is_the_same_bytes_for_the_same_variant(load_module):
    module = load_module(RAISING)
    with pytest.raises(ZeroDivisionError):
        module.result(0)
    block = _block_of(module)
    first = block.packed(("v",), ("c",), True, False)
    assert block.packed(("v",), ("c",), True, False) is first
    assert block.packed((), ("c",), True, False) != first
    code = _worker.BlockCode(*pickle.loads(first))
    assert code.filename == module.__file__
    assert code.label == f"{module.__name__}.py:7"
    assert code.seeds == ("v",)
    assert code.saved == ("c",)
    assert block.key_prefix == f"afar-{module.__name__}.py:7"


def test_compiled_function_keeps_the_body_lines(load_module):
    module = load_module(RAISING)
    with pytest.raises(ZeroDivisionError):
        module.result(0)
    block = _block_of(module)
    packed = block.packed((), ("a", "b"), False, False)
    code = _worker.compile_block(_worker.BlockCode(*pickle.loads(packed)))
    assert code.co_filename == module.__file__
    lines = {line for _, _, line in code.co_lines() if line is not None}
    assert {8, 9, 10} <= lines
    assert lines <= set(range(7, 11))
    assert code.co_kwonlyargcount == 0


def test_block_code_is_compiled_once_per_process(load_module):
    module = load_module(RAISING)
    with pytest.raises(ZeroDivisionError):
        module.result(0)
    packed = _block_of(module).packed((), ("c",), True, False)
    first = _worker.block_and_code(packed)
    assert _worker.block_and_code(packed)[1] is first[1]


def test_registered_source_shows_the_block_where_its_file_does_not_exist():
    filename = fake_filename()
    code = _worker.BlockCode(
        filename=filename,
        text="\n\ndef f():\n    y = 1\n",
        wrapped=True,
        shown_lines=("with afar.run, remotely:\n", "    y = 1\n"),
        first_shown_line=3,
        seeds=(),
        saved=("y",),
        single=True,
        display=False,
        label="cell:3",
        future_features=(),
    )
    _worker.register_source(code)
    assert linecache.getline(filename, 3) == "with afar.run, remotely:\n"
    assert linecache.getline(filename, 4) == "    y = 1\n"


def _cell_block(filename: str, line: int = 1) -> _worker.BlockCode:
    """A one-line block of a file that exists only on the client (a notebook cell)."""
    return _worker.BlockCode(
        filename=filename,
        text="def f():\n    y = 1\n",
        text_lineno=line,
        wrapped=True,
        shown_lines=("with afar.run, remotely:\n", "    y = 1\n"),
        first_shown_line=line,
        seeds=(),
        saved=("y",),
        single=True,
        display=False,
        label=f"cell:{line}",
        future_features=(),
    )


@pytest.fixture
def registered_files():
    """File names given to register_source by the test; dropped from linecache after it."""
    names: list[str] = []
    yield names
    registry, lock = _worker.registered_sources()
    with lock:
        for name in names:
            registry.pop(name, None)
            linecache.cache.pop(name, None)


def test_a_worker_keeps_the_lines_of_the_files_it_ran_last(registered_files):
    """Each notebook cell is a file: a long-lived worker keeps SOURCES_LIMIT of them."""
    registered_files += [fake_filename() for _ in range(_worker.SOURCES_LIMIT + 10)]
    for filename in registered_files:
        _worker.register_source(_cell_block(filename))
    kept = [name for name in registered_files if name in linecache.cache]
    assert kept == registered_files[-_worker.SOURCES_LIMIT :]
    assert linecache.getline(registered_files[-1], 1) == "with afar.run, remotely:\n"


def test_a_file_run_again_stays_among_those_kept(registered_files):
    registered_files += [fake_filename() for _ in range(_worker.SOURCES_LIMIT + 1)]
    first, *others = registered_files
    _worker.register_source(_cell_block(first))
    for filename in others[:-1]:
        _worker.register_source(_cell_block(filename))
    _worker.register_source(_cell_block(first))  # run again: now the most recent
    _worker.register_source(_cell_block(others[-1]))
    assert first in linecache.cache
    assert others[0] not in linecache.cache


def test_a_compiled_block_dropped_from_linecache_is_registered_again_when_run(registered_files):
    filename = fake_filename()
    registered_files.append(filename)
    packed = pickle.dumps(tuple(_cell_block(filename, line=3)), protocol=5)
    _worker.block_and_code(packed)
    del linecache.cache[filename]
    _worker.block_and_code(packed)  # compiled already: only its lines are registered again
    assert linecache.getline(filename, 3) == "with afar.run, remotely:\n"


def test_lines_not_registered_by_afar_are_never_dropped(registered_files, load_module):
    """The client's own files (``locally``), IPython's cells: their entries stay as they are."""
    module = load_module(
        "import afar\ndef result():\n    with afar.run, locally:\n        y = 1\n    return y\n"
    )
    assert module.result() == 1
    registered_files += [fake_filename() for _ in range(_worker.SOURCES_LIMIT + 1)]
    for filename in registered_files:
        _worker.register_source(_cell_block(filename))
    assert linecache.getline(module.__file__, 4) == "        y = 1\n"
    assert module.__file__ not in _worker.registered_sources()[0]


def test_a_block_deep_in_a_file_compiles_at_its_lines():
    code = _worker.compile_block(_cell_block(fake_filename(), line=5001))
    assert {line for _, _, line in code.co_lines() if line is not None} <= {5001, 5002}


RELOADED = """\
import afar

def result(runner):
    with runner, later:
        y = 1
    return runner.captured.source
"""


def test_module_edited_and_reloaded_is_captured_afresh(load_module):
    """importlib.reload (or IPython's autoreload) runs the new code: afar reads the new text."""
    import afar

    module = load_module(RELOADED)
    assert module.result(afar.Run()) == "        y = 1\n"
    with open(module.__file__, "w") as file:
        file.write(RELOADED.replace("y = 1", "y = 2"))
    module.__spec__.loader.exec_module(module)  # importlib.reload, by path
    assert module.result(afar.Run()) == "        y = 2\n"


def test_module_edited_and_reloaded_after_running_locally(load_module):
    module = load_module(
        "import afar\ndef result():\n    with afar.run, locally:\n        y = 1\n    return y\n"
    )
    assert module.result() == 1
    with open(module.__file__, "w") as file:
        file.write(
            "import afar\ndef result():\n    with afar.run, locally:\n        y = 2\n    return y\n"
        )
    module.__spec__.loader.exec_module(module)  # importlib.reload, by path
    assert module.result() == 2
