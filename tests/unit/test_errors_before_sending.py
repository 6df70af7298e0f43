"""Errors afar raises at the ``with``, before the body could run anywhere.

Every body here appends to ``effects``: it must stay empty, proving the body did not run here.
"""

from __future__ import annotations

import linecache
import textwrap
import traceback
from pathlib import Path

import distributed
import pytest
from unit_helpers import exec_registered, fake_filename, register

import afar

AFAR_DIR = str(Path(afar.__file__).parent)

# (source defining result(effects), exception, message pattern, line named by the error or None)
# The line numbers count from the first line of the source below "import ...".
PRELUDE = "import asyncio\nimport contextlib\nimport afar\n"
PRELUDE_LINES = PRELUDE.count("\n")

AT_THE_WITH = {
    "no-location": (
        """\
        def result(effects):
            with afar.run:
                effects.append(1)
        """,
        afar.LocationError,
        r"names no location.*with afar\.run, remotely:",
        2,
    ),
    "get-without-location": (
        """\
        def result(effects):
            with afar.get("y"):
                effects.append(1)
                y = 1
        """,
        afar.LocationError,
        "names no location",
        2,
    ),
    "context-manager-before-a-run-without-location": (
        """\
        def result(effects):
            with contextlib.nullcontext(), afar.run:
                effects.append(1)
        """,
        afar.LocationError,
        "names no location",
        2,
    ),
    "no-run-among-the-items": (
        """\
        def result(effects):
            with contextlib.nullcontext() and afar.run, locally:
                effects.append(1)
        """,
        afar.LocationError,
        r"cannot find afar\.run \(or afar\.get\) among the items",
        None,
    ),
    "second-item-a-call-of-something-else": (
        """\
        def result(effects):
            with afar.run, contextlib.nullcontext():
                effects.append(1)
        """,
        afar.LocationError,
        r"cannot tell where to run `contextlib\.nullcontext\(\)`",
        2,
    ),
    "second-item-a-variable-of-something-else": (
        """\
        def result(effects):
            manager = contextlib.nullcontext()
            with afar.run, manager:
                effects.append(1)
        """,
        afar.LocationError,
        "`manager`, is not an afar location but a nullcontext",
        3,
    ),
    "second-item-an-unknown-name": (
        """\
        def result(effects):
            with afar.run, elsewhere:
                effects.append(1)
        """,
        afar.LocationNameError,
        "name 'elsewhere' is not defined. The item after afar.run.*remotely, locally or later",
        2,
    ),
    "a-misspelled-location": (
        """\
        def result(effects):
            with afar.get, remotly:
                effects.append(1)
        """,
        afar.LocationNameError,
        "name 'remotly' is not defined. Did you mean: 'remotely'?",
        2,
    ),
    "a-misspelled-location-called": (
        """\
        def result(effects):
            with afar.run, remotly(retries=2):
                effects.append(1)
        """,
        afar.LocationNameError,
        "name 'remotly' is not defined",
        2,
    ),
    "a-misspelled-location-after-a-context-manager": (
        """\
        def result(effects):
            with contextlib.nullcontext(), afar.get, lokally:
                effects.append(1)
        """,
        afar.LocationNameError,
        "name 'lokally' is not defined. Did you mean: 'locally'?",
        2,
    ),
    "an-attribute-that-is-not-a-location": (
        """\
        def result(effects):
            with afar.run, afar.remotly:
                effects.append(1)
        """,
        afar.LocationError,
        r"cannot tell where to run `afar\.remotly`",
        2,
    ),
    "context-manager-after-the-location": (
        """\
        def result(effects):
            with afar.run, locally, contextlib.nullcontext():
                effects.append(1)
        """,
        afar.LocationError,
        r"`contextlib\.nullcontext\(\)` stands after the location",
        2,
    ),
    "context-manager-after-the-location-behind-one-before": (
        """\
        def result(effects):
            with contextlib.nullcontext(), afar.run, locally, contextlib.nullcontext():
                effects.append(1)
        """,
        afar.LocationError,
        r"`contextlib\.nullcontext\(\)` stands after the location",
        2,
    ),
    "context-manager-after-a-bare-location": (
        """\
        def result(effects):
            with afar.run, remotely, contextlib.nullcontext():
                effects.append(1)
        """,
        afar.LocationError,
        "stands after the location",
        2,
    ),
    "body-on-the-header-line": (
        """\
        def result(effects):
            with afar.run, locally: effects.append(1)
        """,
        afar.BlockSyntaxError,
        "must start on a new line",
        2,
    ),
    "return": (
        """\
        def result(effects):
            with afar.run, locally:
                effects.append(1)
                return 1
        """,
        afar.BlockSyntaxError,
        "`return` cannot leave the caller",
        4,
    ),
    "return-inside-an-if": (
        """\
        def result(effects):
            with afar.run, locally:
                effects.append(1)
                if effects:
                    return 1
        """,
        afar.BlockSyntaxError,
        "`return`",
        5,
    ),
    "yield": (
        """\
        def result(effects):
            with afar.run, locally:
                effects.append(1)
                yield 1
        """,
        afar.BlockSyntaxError,
        "`yield` cannot suspend the caller",
        4,
    ),
    "yield-from": (
        """\
        def result(effects):
            with afar.run, locally:
                effects.append(1)
                x = yield from range(2)
        """,
        afar.BlockSyntaxError,
        "`yield`",
        4,
    ),
    "await": (
        """\
        async def result(effects):
            with afar.run, locally:
                effects.append(1)
                await asyncio.sleep(0)
        """,
        afar.BlockSyntaxError,
        "`await`",
        4,
    ),
    "await-in-an-expression": (
        """\
        async def result(effects):
            with afar.run, locally:
                effects.append(1)
                x = [await asyncio.sleep(0)]
        """,
        afar.BlockSyntaxError,
        "`await`",
        4,
    ),
    "async-for": (
        """\
        async def result(effects):
            with afar.run, locally:
                effects.append(1)
                async for x in source():
                    pass
        """,
        afar.BlockSyntaxError,
        "async for",
        4,
    ),
    "async-with": (
        """\
        async def result(effects):
            with afar.run, locally:
                effects.append(1)
                async with contextlib.nullcontext():
                    pass
        """,
        afar.BlockSyntaxError,
        "async with",
        4,
    ),
    "break": (
        """\
        def result(effects):
            for _ in range(2):
                with afar.run, locally:
                    effects.append(1)
                    break
        """,
        afar.BlockSyntaxError,
        "`break` at the top level",
        5,
    ),
    "continue-inside-an-if": (
        """\
        def result(effects):
            for _ in range(2):
                with afar.run, locally:
                    effects.append(1)
                    if effects:
                        continue
        """,
        afar.BlockSyntaxError,
        "`continue`",
        6,
    ),
    "break-in-a-for-else": (
        """\
        def result(effects):
            while True:
                with afar.run, locally:
                    for i in range(2):
                        effects.append(i)
                    else:
                        break
        """,
        afar.BlockSyntaxError,
        "`break`",
        7,
    ),
    "continue-in-a-try": (
        """\
        def result(effects):
            for _ in range(2):
                with afar.run, locally:
                    try:
                        effects.append(1)
                    except ValueError:
                        continue
        """,
        afar.BlockSyntaxError,
        "`continue`",
        7,
    ),
    "break-in-a-with": (
        """\
        def result(effects):
            for _ in range(2):
                with afar.run, locally:
                    with contextlib.nullcontext():
                        effects.append(1)
                        break
        """,
        afar.BlockSyntaxError,
        "`break`",
        6,
    ),
    "break-in-a-match-case": (
        """\
        def result(effects):
            for _ in range(2):
                with afar.run, locally:
                    match effects:
                        case []:
                            break
        """,
        afar.BlockSyntaxError,
        "`break`",
        6,
    ),
    "global": (
        """\
        def result(effects):
            with afar.run, locally:
                effects.append(1)
                global counter
                counter = 1
        """,
        afar.BlockSyntaxError,
        "`global counter`",
        4,
    ),
    "nonlocal-in-the-block": (
        """\
        def result(effects):
            counter = 0
            def inner():
                with afar.run, locally:
                    effects.append(1)
                    nonlocal counter
                    counter = 1
            inner()
        """,
        afar.BlockSyntaxError,
        "`nonlocal counter`",
        6,
    ),
    "a-requested-name-never-assigned": (
        """\
        def result(effects):
            with afar.run("missing", "y"), locally:
                effects.append(1)
                y = 1
        """,
        afar.SavedNameError,
        "never assigns 'missing'.*Names it assigns: y",
        2,
    ),
    "a-private-variable-in-a-method": (
        """\
        class Holder:
            def method(self, effects):
                with afar.run, locally:
                    effects.append(1)
                    __total = 1

        def result(effects):
            return Holder().method(effects)
        """,
        afar.BlockSyntaxError,
        "`__total` is a private name: inside class Holder Python renames it to `_Holder__total`",
        5,
    ),
    "a-requested-name-only-read": (
        """\
        def result(effects):
            with afar.run("effects"), locally:
                effects.append(1)
        """,
        afar.AfarError,
        "never assigns 'effects'",
        2,
    ),
    "unimported-remotely-with-an-unknown-option": (
        """\
        def result(effects):
            with afar.run, remotely(gpus=1):
                effects.append(1)
        """,
        TypeError,
        "remotely\\(\\) got unknown option\\(s\\) gpus",
        None,
    ),
    "unimported-remotely-with-key": (
        """\
        def result(effects):
            with afar.run, remotely(key="mine"):
                effects.append(1)
        """,
        afar.LocationError,
        "does not take key",
        None,
    ),
    "unimported-locally-with-submit-options": (
        """\
        def result(effects):
            with afar.run, locally(resources={"GPU": 1}):
                effects.append(1)
        """,
        afar.LocationError,
        "locally takes no client or submit options",
        None,
    ),
    "unimported-remotely-with-a-walrus-argument": (
        """\
        def result(effects):
            with afar.run, remotely(retries=(n := 2)):
                effects.append(1)
        """,
        afar.LocationError,
        r"`\(n := 2\)` in the arguments of `remotely\(...\)` cannot be evaluated by afar",
        2,
    ),
    "unimported-remotely-with-a-failing-argument": (
        """\
        def result(effects):
            with afar.run, remotely(retries={}["retries"]):
                effects.append(1)
        """,
        KeyError,
        "retries",
        None,
    ),
    "remotely-owned-option-key": (
        """\
        def result(effects):
            with afar.run, afar.remotely(key="mine"):
                effects.append(1)
        """,
        afar.LocationError,
        "does not take key",
        None,
    ),
    "remotely-owned-option-actor": (
        """\
        def result(effects):
            with afar.run, afar.remotely(actor=True):
                effects.append(1)
        """,
        afar.LocationError,
        "does not take actor",
        None,
    ),
    "remotely-owned-option-pure": (
        """\
        def result(effects):
            with afar.run, afar.remotely(pure=True):
                effects.append(1)
        """,
        afar.LocationError,
        "does not take pure",
        None,
    ),
    "remotely-unknown-option": (
        """\
        def result(effects):
            with afar.run, afar.remotely(gpus=1):
                effects.append(1)
        """,
        TypeError,
        "unknown option",
        None,
    ),
    "locally-with-submit-options": (
        """\
        def result(effects):
            with afar.run, afar.locally(resources={"GPU": 1}):
                effects.append(1)
        """,
        afar.LocationError,
        "locally takes no client or submit options",
        None,
    ),
    "run-name-not-a-string": (
        """\
        def result(effects):
            with afar.run(1), locally:
                effects.append(1)
        """,
        TypeError,
        r"takes the names of variables to save, as strings.*1 is not one",
        None,
    ),
    "run-name-not-an-identifier": (
        """\
        def result(effects):
            with afar.run("not a name"), locally:
                effects.append(1)
        """,
        TypeError,
        "'not a name' is not one",
        None,
    ),
    "run-name-a-keyword": (
        """\
        def result(effects):
            with afar.run("class"), locally:
                effects.append(1)
        """,
        TypeError,
        "'class' is not one",
        None,
    ),
    "get-name-not-a-string": (
        """\
        def result(effects):
            with afar.get("y", None), locally:
                effects.append(1)
                y = 1
        """,
        TypeError,
        r"afar\.get\(\) takes the names.*None is not one",
        None,
    ),
    "data-a-list": (
        """\
        def result(effects):
            with afar.run(data=[1, 2]), locally:
                effects.append(1)
        """,
        TypeError,
        "data= must be a mutable mapping.*not list",
        None,
    ),
    "data-a-read-only-mapping": (
        """\
        import types
        def result(effects):
            with afar.run(data=types.MappingProxyType({})), locally:
                effects.append(1)
        """,
        TypeError,
        "data= must be a mutable mapping.*mappingproxy",
        None,
    ),
    "get-timeout-not-positive": (
        """\
        def result(effects):
            with afar.get(timeout=0), locally:
                effects.append(1)
        """,
        TypeError,
        "timeout= must be a positive number",
        None,
    ),
}


def call(scope: dict[str, object], effects: list[object]) -> object:
    """Call ``result(effects)`` of ``scope``, driving a generator or a coroutine if it is one."""
    got = scope["result"](effects)  # type: ignore[operator]
    if hasattr(got, "__next__"):
        return list(got)  # type: ignore[call-overload]
    if hasattr(got, "__await__"):
        import asyncio

        return asyncio.run(got)  # type: ignore[arg-type]
    return got


@pytest.mark.parametrize(
    ("source", "error", "pattern", "line"), AT_THE_WITH.values(), ids=AT_THE_WITH.keys()
)
def test_error_at_the_with_in_a_module_file(load_module, effects, source, error, pattern, line):
    source = PRELUDE + textwrap.dedent(source)
    module = load_module(source)
    with pytest.raises(error, match=f"(?s){pattern}") as info:
        call(vars(module), effects)
    assert effects == []
    if line is not None:
        assert f"line {PRELUDE_LINES + line}" in str(info.value)
        assert module.__file__ in str(info.value)
    if isinstance(info.value, afar.BlockSyntaxError):
        assert info.value.filename == module.__file__
        assert info.value.lineno == PRELUDE_LINES + line
    if isinstance(info.value, afar.AfarError):
        # The traceback ends at the user's with statement: one frame of afar's at most.
        frames = traceback.extract_tb(info.value.__traceback__)
        afar_frames = [f for f in frames if f.filename.startswith(AFAR_DIR)]
        assert len(afar_frames) <= 1, "".join(traceback.format_exception(info.value))


@pytest.mark.parametrize(
    ("source", "error", "pattern", "line"), AT_THE_WITH.values(), ids=AT_THE_WITH.keys()
)
def test_error_at_the_with_in_registered_source(effects, source, error, pattern, line):
    scope = exec_registered(PRELUDE + textwrap.dedent(source))
    with pytest.raises(error, match=f"(?s){pattern}"):
        call(scope, effects)
    assert effects == []


@pytest.mark.parametrize(
    "header",
    [
        "with afar.run:",
        "with contextlib.nullcontext(), afar.run:",
        "with afar.run, contextlib.nullcontext():",
        "with afar.run, locally, contextlib.nullcontext():",
    ],
)
def test_location_errors_at_module_level(load_module, effects, header, monkeypatch):
    monkeypatch.setattr(afar, "_unit_effects", effects, raising=False)
    source = f"import contextlib\nimport afar\n{header}\n    afar._unit_effects.append(1)\n"
    with pytest.raises(afar.LocationError, match="line 3"):
        load_module(source)
    assert effects == []


def test_star_import_in_a_block(load_module, effects, monkeypatch):
    """``from m import *`` compiles at module level only; afar refuses it in a block."""
    monkeypatch.setattr(afar, "_unit_effects", effects, raising=False)
    source = (
        "import afar\n"
        "with afar.run, locally:\n"
        "    afar._unit_effects.append(1)\n"
        "    from os.path import *\n"
    )
    with pytest.raises(afar.BlockSyntaxError, match=r"from \.\.\. import \*") as info:
        load_module(source)
    assert info.value.lineno == 4
    assert effects == []


def test_global_at_module_level_block(load_module, effects, monkeypatch):
    monkeypatch.setattr(afar, "_unit_effects", effects, raising=False)
    source = (
        "import afar\n"
        "with afar.run, locally:\n"
        "    afar._unit_effects.append(1)\n"
        "    global counter\n"
        "    counter = 1\n"
    )
    with pytest.raises(afar.BlockSyntaxError, match="`global counter`") as info:
        load_module(source)
    assert info.value.lineno == 4
    assert effects == []


# -- source that afar cannot see, or that is not the running code -----------------------------
BLOCK_SOURCE = """\
import afar

def result(effects):
    with afar.run, locally:
        effects.append(1)
        y = 1
    return y
"""


def test_source_not_available(effects):
    """exec() of a string whose file name is not in linecache: afar has no source to read."""
    filename = fake_filename()
    assert not linecache.getlines(filename)
    scope: dict[str, object] = {}
    exec(compile(BLOCK_SOURCE, filename, "exec"), scope)
    with pytest.raises(afar.SourceError, match="afar needs the source of the block") as info:
        scope["result"](effects)  # type: ignore[operator]
    assert "linecache" in str(info.value)
    assert effects == []


def test_source_not_available_at_module_level(effects):
    source = "import afar\nwith afar.run, locally:\n    effects.append(1)\n    y = 1\n"
    with pytest.raises(afar.SourceError, match="needs the source"):
        exec(compile(source, fake_filename(), "exec"), {"effects": effects})
    assert effects == []


# Edits that keep every line where it was: only comparing the code itself catches them.
SAME_LINES_EDITS = {
    "constant": ("y = 1", "y = 2"),
    "name-read": ("effects.append(1)", "effects.append(y)"),
    "operation": ("y = 1", "y = -1"),
    "name-saved": ("y = 1", "z = 1"),
    "call": ("effects.append(1)", "effects.extend(1)"),
}


@pytest.mark.parametrize(("old", "new"), SAME_LINES_EDITS.values(), ids=SAME_LINES_EDITS.keys())
def test_module_file_edited_after_import(load_module, effects, old, new):
    module = load_module(BLOCK_SOURCE)
    path = module.__file__
    with open(path) as file:
        text = file.read()
    with open(path, "w") as file:
        file.write(text.replace(old, new))
    linecache.checkcache(path)
    with pytest.raises(afar.SourceError, match="not the code that is running") as info:
        module.result(effects)
    assert f"{path}, line 4" in str(info.value)
    assert effects == []


def test_module_file_edited_so_that_lines_moved(load_module, effects):
    module = load_module(BLOCK_SOURCE)
    path = module.__file__
    with open(path) as file:
        text = file.read()
    with open(path, "w") as file:
        file.write("# a line added at the top\n\n" + text)
    linecache.checkcache(path)
    with pytest.raises(afar.SourceError):
        module.result(effects)
    assert effects == []


def test_module_file_edited_elsewhere_still_runs(load_module, effects):
    """An edit outside the block, keeping line numbers, does not change what the block runs."""
    module = load_module(BLOCK_SOURCE + "\ndef other():\n    return 1\n")
    path = module.__file__
    with open(path) as file:
        text = file.read()
    with open(path, "w") as file:
        file.write(text.replace("return 1", "return 2"))
    linecache.checkcache(path)
    assert module.result(effects) == 1
    assert effects == [1]


def test_exec_under_a_name_whose_linecache_entry_holds_other_text(effects):
    filename = fake_filename()
    register("print('other text')\n" * 10, filename)
    scope: dict[str, object] = {}
    exec(compile(BLOCK_SOURCE, filename, "exec"), scope)
    with pytest.raises(afar.SourceError, match="changed after it was imported") as info:
        scope["result"](effects)  # type: ignore[operator]
    assert 'no "with" statement' in str(info.value)
    assert effects == []


def test_exec_under_a_name_whose_linecache_entry_holds_another_block(effects):
    filename = fake_filename()
    register(BLOCK_SOURCE.replace("y = 1", "y = 'other'"), filename)
    scope: dict[str, object] = {}
    exec(compile(BLOCK_SOURCE, filename, "exec"), scope)
    with pytest.raises(afar.SourceError, match="not the code that is running"):
        scope["result"](effects)  # type: ignore[operator]
    assert effects == []


def test_exec_under_a_name_whose_linecache_entry_does_not_parse(effects):
    filename = fake_filename()
    register("def broken(:\n" * 10, filename)
    scope: dict[str, object] = {}
    exec(compile(BLOCK_SOURCE, filename, "exec"), scope)
    with pytest.raises(afar.SourceError, match="cannot parse"):
        scope["result"](effects)  # type: ignore[operator]
    assert effects == []


# -- no client: remotely refuses before sending ---------------------------------------------------
def _no_default_client():
    raise ValueError("No clients found")


@pytest.mark.parametrize(
    "header",
    [
        "with afar.run, remotely:",
        "with afar.run, afar.remotely:",
        "with afar.get, remotely:",
        'with afar.run, afar.remotely(resources={"GPU": 1}):',
    ],
)
def test_no_client(monkeypatch, effects, header):
    # Dask's default client is process-wide: make sure there is none, whatever ran before.
    monkeypatch.setattr(distributed, "default_client", _no_default_client)
    with pytest.raises(afar.ClientError, match="no Dask client"):
        exec_registered(f"{header}\n    effects.append(1)\n    y = 1\n", {"effects": effects})
    assert effects == []


def test_errors_are_afar_errors_and_builtin_ones():
    """Users catch the builtin they know, or AfarError for everything afar refuses."""
    assert issubclass(afar.LocationError, TypeError)
    assert issubclass(afar.SourceError, RuntimeError)
    assert issubclass(afar.BlockSyntaxError, SyntaxError)
    assert issubclass(afar.ClientError, ValueError)
    for error in (afar.LocationError, afar.SourceError, afar.BlockSyntaxError, afar.ClientError):
        assert issubclass(error, afar.AfarError)


def test_state_is_clean_after_an_error(load_module):
    """A refused block leaves nothing behind: the next block of the same Run works."""
    module = load_module(
        """\
        import afar
        runner = afar.Run()

        def refused():
            with runner:
                pass

        def accepted():
            with runner, locally:
                y = 1
            return y
        """
    )
    with pytest.raises(afar.LocationError):
        module.refused()
    assert module.accepted() == 1


def test_block_syntax_error_shows_its_location_once_issue_10(load_module):
    """A traceback shows a SyntaxError's file and line above its message: not again in it."""
    module = load_module("import afar\n\ndef result():\n    with afar.run, locally: x = 1\n")
    with pytest.raises(afar.BlockSyntaxError) as info:
        module.result()
    shown = "".join(traceback.format_exception_only(type(info.value), info.value))
    assert shown.count("line 4") == 1, shown
    assert f'File "{module.__file__}", line 4' in shown
    assert str(info.value).endswith(f"({module.__file__}, line 4)")
