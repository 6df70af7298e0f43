"""``%afar``/``%%afar`` and ``afar.new_magic`` in an in-process IPython shell (no cluster).

Blocks run ``locally`` or ``later`` here; the notebook test runs them on a cluster.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from ipython_helpers import ok, run

import afar
from afar._ipython import magics as _magic
from afar._ipython import options as _options
from afar._ipython.cells import sink_for_block
from afar._ipython.indicator import waiting_indicator
from afar._ipython.magics import RESULT_NAME, run_for
from afar._ipython.options import _OPTIONS, Settings

# Seconds a subprocess that imports afar may take.
SUBPROCESS_TIMEOUT_SECONDS = 60
# The directory holding the afar package under test, for subprocesses.
PACKAGE_ROOT = str(Path(afar.__file__).resolve().parents[1])


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter that imports this afar."""
    path = os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_SECONDS,
        check=False,
        env={**os.environ, "PYTHONPATH": path},
    )


def usage_error(shell, source: str) -> str:
    """The message of the UsageError that running ``source`` raises."""
    result = run(shell, source)
    error = result.error_in_exec
    assert isinstance(error, UsageError), f"expected a UsageError, got {error!r}"
    return str(error)


def test_load_ext_registers_a_line_and_a_cell_magic(shell):
    registered = shell.magics_manager.magics
    # One function serves both forms, as IPython's "line_cell" magics do.
    assert registered["line"]["afar"] is registered["cell"]["afar"]
    assert shell.find_line_magic("afar").__name__ == "afar"
    assert ok(shell, "%afar -w locally 40 + 2") == 42
    ok(shell, "%%afar -w locally by_cell\nby_cell = 40 + 3")
    assert shell.user_ns["by_cell"] == 43


# -- %%afar -----------------------------------------------------------------------------------
def test_cell_magic_binds_the_names_given(shell):
    ok(shell, "base = 10")
    ok(shell, "%%afar -w locally one, two\none = base + 1\ntwo = one + 1\nthree = 3")
    assert shell.user_ns["one"] == 11
    assert shell.user_ns["two"] == 12
    assert "three" not in shell.user_ns


def test_cell_magic_names_may_be_separated_by_spaces(shell):
    ok(shell, "%%afar four five -w locally\nfour = 4\nfive = 5")
    assert (shell.user_ns["four"], shell.user_ns["five"]) == (4, 5)


def test_cell_magic_line_may_end_with_a_comment(shell):
    ok(shell, "%%afar -w locally six  # the one to keep\nsix = 6")
    assert shell.user_ns["six"] == 6


def test_line_magic_expression_may_end_with_a_comment(shell):
    assert ok(shell, "%afar -w locally base + 1  # eleven") == 11


@pytest.mark.parametrize(
    "line",
    [
        "%afar -w locally base + 2;",
        "%afar -w locally base + 2 ;  # hidden",
        "%afar -g -w locally base + 2;",
    ],
)
def test_line_magic_final_semicolon_hides_the_value_issue_10(shell, line, capsys):
    ok(shell, "base = 10")
    result = run(shell, line)
    assert result.error_in_exec is None and result.error_before_exec is None
    assert result.result is None
    assert "12" not in capsys.readouterr().out


def test_assigned_line_magic_with_a_final_semicolon_keeps_its_value_issue_10(shell):
    ok(shell, "base = 10")
    ok(shell, "w = %afar -g -w locally base + 2;")
    assert shell.user_ns["w"] == 12


def test_line_magic_with_a_final_semicolon_is_evaluated_issue_10(shell):
    ok(shell, "import threading\nran = threading.Event()")
    assert ok(shell, "%afar -w locally ran.set();") is None
    assert shell.user_ns["ran"].is_set()


def test_a_semicolon_between_statements_is_still_a_statement(shell):
    ok(shell, "base = 10")
    assert "is a statement" in usage_error(shell, "%afar -w locally base; base + 1")


def test_cell_magic_binds_the_last_name_by_default(shell):
    ok(shell, "%%afar -w locally\nfirst = 1\nlast = first + 1")
    assert shell.user_ns["last"] == 2


def test_cell_magic_shows_a_final_expression(shell, capsys):
    capsys.readouterr()
    assert ok(shell, "%%afar -w locally\nshown = 6\nshown * 7") == 42
    # Shown once, as IPython shows a cell's value, and the cell's last name is still bound.
    assert re.fullmatch(r"Out\[\d+\]: 42\n", capsys.readouterr().out)
    assert shell.user_ns["shown"] == 6


def test_cell_magic_trailing_semicolon_hides_the_final_expression(shell, capsys):
    ok(shell, "%%afar -w locally\nhidden = 6\nhidden * 1000;")
    assert "6000" not in capsys.readouterr().out


def test_cell_magic_tracebacks_show_the_cells_lines(shell, capsys):
    result = run(shell, "%%afar -w locally\nfine = 1\nbroken = 1 / 0")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    shown = capsys.readouterr().out
    # Line 3 of the cell, counting the magic's line as IPython does.
    assert "line 3" in shown
    assert "broken = 1 / 0" in shown
    assert "magics.py" not in shown and "options.py" not in shown


def test_cell_magic_later_returns_what_it_captured(shell):
    captured = ok(shell, "%%afar -w later kept\nkept = base * 2")
    assert isinstance(captured, afar.Captured)
    assert captured.names_saved == ("kept",)
    assert captured.names_read == ("base",)
    assert "kept" not in shell.user_ns


# -- %afar ------------------------------------------------------------------------------------
def test_line_magic_returns_the_value_and_binds_nothing(shell):
    assert ok(shell, "%afar -w locally base + 32") == 42
    assert RESULT_NAME not in shell.user_ns
    assert shell.user_ns["base"] == 10


def test_line_magic_assignment(shell):
    ok(shell, "answer = %afar -w locally base * 4 + 2")
    assert shell.user_ns["answer"] == 42


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("{1, 2} | {3}", {1, 2, 3}),  # IPython would expand {...} in a magic's line
        ('"$HOME and {base}"', "$HOME and {base}"),
        ("[b * 2 for b in (1, 2)]", [2, 4]),
        ("(1,  2)", (1, 2)),
    ],
)
def test_line_magic_takes_the_expression_as_written(shell, expression, expected):
    assert ok(shell, f"%afar -w locally {expression}") == expected


def test_line_magic_expression_may_start_with_a_minus_after_double_dash(shell):
    assert ok(shell, "%afar -w locally -- -base") == -10


def test_line_magic_reads_local_variables_of_a_function(shell):
    ok(
        shell,
        textwrap.dedent(
            """
            def add_base(offset):
                total = %afar -w locally offset + base
                return total
            """
        ),
    )
    assert ok(shell, "add_base(5)") == 15


def test_line_magic_with_data_leaves_no_result_in_the_mapping(shell):
    ok(shell, "mapping = {'k': 7}")
    assert ok(shell, "%afar -w locally -d mapping k * 6") == 42
    assert shell.user_ns["mapping"] == {"k": 7}


def test_line_magic_later_returns_what_it_captured(shell):
    captured = ok(shell, "%afar -w later base + 1")
    assert isinstance(captured, afar.Captured)
    assert captured.names_read == ("base",)


def test_line_magic_syntax_error_is_a_syntax_error(shell):
    result = run(shell, "%afar -w locally 1 +")
    assert isinstance(result.error_in_exec, SyntaxError)


def test_long_options_and_attribute_names(shell):
    assert ok(shell, "%afar --where=afar.locally base + 1") == 11
    assert ok(shell, "%afar --where afar.locally base + 2") == 12


def test_options_may_be_combined_as_in_getopt(shell):
    assert ok(shell, "%afar -gw locally base + 3") == 13


def test_issue_4_block_in_a_cell_followed_by_more_code(shell):
    # IPython compiles a cell statement by statement: the with statement alone, not followed by
    # the rest of the cell as in the cell's whole text.
    assert ok(shell, "with afar.run, locally:\n    followed = base + 1\nfollowed * 2") == 22


def test_issue_10_a_cell_block_with_a_context_manager_and_a_location_called_unimported(shell):
    ok(shell, "import contextlib\nbase = 10\nlevel = 1")
    source = (
        "with contextlib.nullcontext(), afar.get, locally(quiet=[level][0] > 0):\n"
        "    in_cell = base + level\n"
    )
    ok(shell, source)
    assert shell.user_ns["in_cell"] == 11
    assert "locally" not in shell.user_ns  # never imported


def test_issue_10_a_misspelled_location_in_a_cell(shell):
    result = run(shell, "with afar.get, lokally:\n    never = 1")
    assert isinstance(result.error_in_exec, NameError)
    assert "Did you mean: 'locally'?" in str(result.error_in_exec)


# -- %%time and %%timeit --------------------------------------------------------------------
def test_time_cell_with_a_block(shell, capsys):
    ok(shell, "%%time\nwith afar.run, locally:\n    timed = base + 1")
    assert shell.user_ns["timed"] == 11
    assert "Wall time" in capsys.readouterr().out


def test_a_block_in_a_cell_is_labelled_as_ipython_names_the_cell(shell):
    """Labels (in keys, reports and notices) name the cell as IPython's tracebacks do."""
    ok(shell, "labelled = afar.run()")
    result = run(shell, "x = 1\nwith labelled, later:\n    y = x")
    number = result.execution_count
    assert shell.user_ns["labelled"].captured.label == f"In[{number}]:2"


def test_time_line_magic_with_a_block_points_to_the_cell_magic(shell):
    result = run(shell, "%time with afar.get, locally: timed = 1")
    assert isinstance(result.error_in_exec, afar.SourceError), repr(result.error_in_exec)
    assert "%time line magic" in str(result.error_in_exec)
    assert "%%time on its first line" in str(result.error_in_exec)


def test_timeit_cell_with_a_block(shell, capsys):
    ok(shell, "runs = []")
    ok(shell, "%%timeit -n 2 -r 1\nwith afar.run, locally:\n    runs.append(base)")
    assert shell.user_ns["runs"] == [10, 10]
    assert "per loop" in capsys.readouterr().out


# -- options ----------------------------------------------------------------------------------
def test_run_for_defaults():
    assert run_for(Settings(), ()) is afar.run
    assert run_for(Settings(get=True), ()) is afar.get
    saving = run_for(Settings(get=True), ("x",))
    assert isinstance(saving, afar.Get) and saving.names == ("x",)


def test_run_for_keeps_what_the_run_carries():
    data: dict[str, int] = {}
    slow = afar.get("y", data=data, timeout=30)
    assert run_for(Settings(run=slow), ()) is slow
    renamed = run_for(Settings(run=slow), ("z",))
    assert isinstance(renamed, afar.Get)
    assert (renamed.names, renamed.data, renamed.timeout) == (("z",), data, 30)
    as_values = run_for(Settings(get=True, run=afar.run("y", data=data)), ())
    assert isinstance(as_values, afar.Get)
    assert (as_values.names, as_values.data) == (("y",), data)


def test_data_option_reaches_the_run(shell):
    ok(shell, "values = {'hidden': 5}")
    ok(shell, "%%afar -w locally -d values\nfrom_data = hidden + 1")
    assert shell.user_ns["from_data"] == 6
    assert shell.user_ns["values"]["from_data"] == 6


def test_run_option(shell):
    ok(shell, "saver = afar.run('a', 'b')")
    ok(shell, "%%afar -r saver -w locally\na = 1\nb = 2\nc = 3")
    assert (shell.user_ns["a"], shell.user_ns["b"]) == (1, 2)
    assert "c" not in shell.user_ns


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("%afar -x 1", "unknown option -x"),
        ("%afar -x 1", "%afar -- -x"),
        ("%afar -g -x", "unknown option -x"),  # an expression starting with '-' needs --
        ("%afar -gx 1", "unknown option -x"),
        ("%afar --wh locally 1", "unknown option --wh"),  # no abbreviations
        ("%%afar -x\nx = 1", "unknown option -x"),
        ("%afar -w -x 1", "-w needs the name of a variable"),
        ("%afar --where", "--where needs the name of a variable"),
        ("%afar --nope 1", "unknown option --nope"),
        ("%afar -w", "-w needs the name of a variable"),
        ("%afar -w nowhere 1", "there is no variable 'nowhere'"),
        ("%afar -w base 1", "base is an int, not an afar location"),
        ("%afar -w afar.nowhere 1", "has no attribute 'nowhere'"),
        ("%afar -w remotely(retries=2) 1", "not an expression. Assign the value first"),
        ("%afar -d base 1", "not a mutable mapping"),
        ("%afar -r base 1", "not an afar.run(...) or afar.get(...)"),
        ("%afar -c base 1", "not a dask.distributed Client"),
        ("%afar -g -g 1", "given twice"),
        ("%afar --get=yes 1", "takes no value"),
        ("%afar", "the line has none"),
        ("%afar -w locally", "the line has none"),
        ("%afar -w locally x = 1", "is a statement"),
        ("%%afar 1x\nx = 1", "'1x' is not a variable name"),
        ("%%afar -w locally for\nx = 1", "'for' is not a variable name"),
    ],
)
def test_usage_errors_say_what_to_write(shell, source, expected):
    assert expected in usage_error(shell, source)


def test_unknown_option_message_lists_the_options(shell):
    message = usage_error(shell, "%afar -q 1")
    for flag in ("-g", "-r RUN", "-d MAPPING", "-w LOCATION", "-c CLIENT"):
        assert flag in message


def test_fixed_options_are_not_offered_as_options(shell):
    afar.new_magic("near", where=afar.locally)
    message = usage_error(shell, "%near -q 1")
    assert "-w LOCATION" not in message
    assert "-g, -r RUN" in message


def test_one_option_table_makes_the_settings_and_new_magics_arguments():
    longs = [option.long for option in _OPTIONS]
    assert [field.name for field in dataclasses.fields(Settings)] == longs
    assert list(inspect.signature(afar.new_magic).parameters)[1:] == longs


def test_line_magic_expression_starting_with_a_minus_is_not_an_option(shell):
    assert ok(shell, "%afar -w locally -1 + base") == 9
    assert ok(shell, "%afar -w locally -- -- 1") == 1


def test_cell_magic_names_may_stand_around_the_options(shell):
    ok(shell, "%%afar seven -w locally eight\nseven = 7\neight = 8")
    assert (shell.user_ns["seven"], shell.user_ns["eight"]) == (7, 8)


def test_statement_in_line_magic_points_to_the_cell_magic(shell):
    assert "%%afar" in usage_error(shell, "%afar -w locally y = 2")


# -- new_magic --------------------------------------------------------------------------------
def test_new_magic_bakes_its_options_in(shell):
    ok(shell, "afar.new_magic('here', where=afar.locally)")
    assert ok(shell, "%here base + 5") == 15
    ok(shell, "%%here kept_here\nkept_here = base - 1")
    assert shell.user_ns["kept_here"] == 9


def test_new_magic_help_shows_only_the_options_left(shell):
    afar.new_magic("on_gpus", where=afar.remotely(resources={"GPU": 1}))
    help_text = shell.find_line_magic("on_gpus").__doc__
    assert "-w LOCATION" not in help_text
    for flag in ("-g, --get", "-r RUN", "-d MAPPING", "-c CLIENT"):
        assert flag in help_text
    assert "%%on_gpus" in help_text
    assert "where=remotely(resources={'GPU': 1})" in help_text


def test_new_magic_with_get_has_no_get_option(shell):
    afar.new_magic("fetch", get=True, where=afar.locally)
    help_text = shell.find_line_magic("fetch").__doc__
    assert "--get" not in help_text
    assert "plain values" in help_text
    assert "fixed already" in usage_error(shell, "%fetch -g 1")
    afar.new_magic("fetch_with", run=afar.get(timeout=10))
    assert "--get" not in shell.find_line_magic("fetch_with").__doc__


def test_afar_help_lists_every_option(shell):
    help_text = shell.find_line_magic("afar").__doc__
    for flag in ("-g, --get", "-r RUN", "-d MAPPING", "-w LOCATION", "-c CLIENT"):
        assert flag in help_text


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": "on gpus"}, ValueError, "identifier"),
        ({"name": "x", "where": "remotely"}, TypeError, "where= takes an afar location"),
        ({"name": "x", "run": 1}, TypeError, "run= takes afar.run(...)"),
        ({"name": "x", "data": ()}, TypeError, "data= takes a mutable mapping"),
        ({"name": "x", "client": "tcp://x:1"}, TypeError, "client= takes a dask.distributed"),
    ],
)
def test_new_magic_refuses_bad_arguments(shell, kwargs, error, message):
    name = kwargs.pop("name")
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        afar.new_magic(name, **kwargs)


def test_new_magic_needs_a_running_ipython(shell, monkeypatch):
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: None)
    with pytest.raises(RuntimeError, match="IPython is not running here"):
        afar.new_magic("nowhere")


# -- outside a kernel -----------------------------------------------------------------------
def test_no_cell_sink_and_no_indicator_outside_a_kernel(shell, recorder):
    assert sink_for_block("x.py:1") is None
    with waiting_indicator("x.py:1"):
        pass
    assert recorder.messages == []


def test_afar_imports_without_ipython():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["IPython"] = None  # importing IPython now fails
        import afar
        assert callable(afar.new_magic) and callable(afar.load_ipython_extension)
        try:
            afar.new_magic("x")
        except ImportError as error:
            assert "afar[ipython]" in str(error), error
        else:
            raise AssertionError("new_magic without IPython")
        print("ok")
        """
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_importing_afar_does_not_import_ipython():
    code = "import sys, afar; print('IPython' in sys.modules)"
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_magic_module_imports_ipython_lazily():
    assert "IPython" not in _magic.__dict__
    assert "IPython" not in _options.__dict__
