"""What travels with a block to a worker process, and what happens when something cannot (issue 2).

Only the outer variables the body reads are sent; modules go by name and are imported again on
the worker; what cannot be pickled is refused at the ``with``, naming the variable, before
anything is sent; a module the worker lacks, or a name defined nowhere, is reported as Python
would, from the worker.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
import traceback

import numpy as np
import pytest
from _remote_helpers import (
    RESULT_TIMEOUT,
    CountsPickles,
    RefusesPickling,
    label,
    lineno,
)
from distributed import Future

import afar
from afar import remotely

# A module-level variable no block reads: pickling it would raise.
UNREAD_GLOBAL = RefusesPickling("UNREAD_GLOBAL")
READ_GLOBAL = 40
# A module the client can import (from a temporary folder) and the workers cannot.
CLIENT_ONLY_MODULE = "afar_test_client_only_module"


def here(line: int) -> str:
    return label(__file__, line)


@pytest.fixture
def client_only_module(tmp_path, monkeypatch):
    """A module the client can import and the workers cannot (their sys.path lacks its folder).

    Its folder is named site-packages: the module counts as installed, so afar does not send
    it with the block as it sends the user's own modules (issue 13).
    """
    folder = tmp_path / "site-packages"
    folder.mkdir()
    (folder / f"{CLIENT_ONLY_MODULE}.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module(CLIENT_ONLY_MODULE)
    yield module
    sys.modules.pop(CLIENT_ONLY_MODULE, None)


# -- only what the body reads -------------------------------------------------------------------
def test_only_the_variables_the_body_reads_are_sent(client):
    unread_local = RefusesPickling("unread_local")  # noqa: F841 - in scope, never read
    assigned_first = RefusesPickling("assigned_first")
    used = 2
    with afar.get("total", timeout=RESULT_TIMEOUT), remotely:
        assigned_first = 1  # assigned before any read: the outer value is not needed
        total = READ_GLOBAL + used + assigned_first
    assert total == 43


def test_names_read_inside_nested_functions_of_the_body_are_sent(client):
    offset = 100
    with afar.get(timeout=RESULT_TIMEOUT), remotely:

        def shifted(values):
            return [value + offset for value in values]

        result = shifted([1, 2])
    assert result == [101, 102]


def test_each_read_variable_is_pickled_once(client):
    """If pickling all variables fails, afar looks for the culprit then, not beforehand."""
    counted = CountsPickles(size=10)
    with afar.get(timeout=RESULT_TIMEOUT), remotely:
        size = len(counted)
    assert size == 10
    assert counted.times_pickled == 1


def test_modules_are_imported_again_on_the_worker_by_name(client, monkeypatch):
    # A mark on the client's module: a module sent by value would carry it along.
    monkeypatch.setattr(json, "afar_client_only_mark", True, raising=False)
    alias = np
    with afar.get("marked", "same", "numpy_sum", timeout=RESULT_TIMEOUT), remotely:
        import sys

        marked = hasattr(json, "afar_client_only_mark")
        same = json is sys.modules["json"] and alias is sys.modules["numpy"]
        numpy_sum = int(alias.arange(4).sum())
    assert (marked, same, numpy_sum) == (False, True, 6)


# -- what cannot be sent ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda tmp_path: threading.Lock(), id="lock"),
        pytest.param(
            lambda tmp_path: open(tmp_path / "written", "w"),  # noqa: SIM115 - closed below
            id="file-open-for-writing",
        ),
        pytest.param(lambda tmp_path: [1, threading.Lock()], id="lock-in-a-list"),
    ],
)
def test_an_unpicklable_variable_is_refused_before_anything_is_sent(
    client, graph_log, tmp_path, make
):
    culprit = make(tmp_path)
    fine = 1
    before = set(client.futures)
    try:
        with pytest.raises(afar.NotPicklableError) as raised:
            line = lineno() + 1
            with afar.run, remotely:
                result = (fine, culprit)
    finally:
        if hasattr(culprit, "close"):
            culprit.close()
    message = str(raised.value)
    assert "'culprit'" in message and "'fine'" not in message
    assert here(line) in message
    assert isinstance(raised.value, TypeError)  # what users already catch
    # The traceback shows afar's error alone: not cloudpickle's nor the with statement's
    # NameError for `remotely` (how afar skips the body), as "During handling of...".
    shown = "".join(traceback.format_exception(raised.value))
    assert "During handling" not in shown and "direct cause" not in shown, shown
    assert "result" not in locals()
    assert not [key for key in set(client.futures) - before if here(line) in str(key)]
    assert graph_log.tasks_of(here(line)) == {}


def test_an_unpicklable_result_of_run_stays_on_the_worker(client):
    with afar.run("lock", "name"), remotely:
        import threading

        lock = threading.Lock()
        name = type(lock).__name__
    assert name.result(timeout=RESULT_TIMEOUT) == "lock"
    assert isinstance(lock, Future)
    with afar.get(timeout=RESULT_TIMEOUT), remotely:
        released = not lock.locked()
    assert released


def test_an_unpicklable_result_of_get_names_the_variable(client):
    with pytest.raises(afar.NotPicklableError) as raised:
        line = lineno() + 1
        with afar.get("lock", "fine", timeout=RESULT_TIMEOUT), remotely:
            import threading

            fine = 1  # noqa: F841 - bound remotely
            lock = threading.Lock()  # noqa: F841
    message = str(raised.value)
    assert "'lock'" in message and "'fine'" not in message
    assert here(line) in message
    assert isinstance(raised.value, TypeError)
    shown = "".join(traceback.format_exception(raised.value))
    assert "During handling" not in shown and "direct cause" not in shown, shown


def test_an_unpicklable_result_of_get_raises_a_typeerror_at_the_with(client):
    """afar.NotPicklableError is a TypeError, as Dask's own error was: code that caught the one
    catches the other."""
    with pytest.raises(TypeError):  # noqa: SIM117
        with afar.get("lock", timeout=RESULT_TIMEOUT), remotely:
            import threading

            lock = threading.Lock()  # noqa: F841 - bound remotely


# -- modules the worker lacks ---------------------------------------------------------------------
def test_a_module_the_block_imports_and_the_worker_lacks(client, client_only_module):
    with pytest.raises(ModuleNotFoundError) as raised:
        line = lineno() + 1
        with afar.get(timeout=RESULT_TIMEOUT), remotely:
            import afar_test_client_only_module

            value = afar_test_client_only_module.triple(2)  # noqa: F841
    assert_says_module_is_missing(raised.value, CLIENT_ONLY_MODULE)
    assert here(line) in str(raised.value)


def test_an_import_statement_in_the_block_of_a_module_the_worker_lacks(client):
    """The import statement itself stands in the block; no such module exists anywhere."""
    line = lineno() + 1
    with afar.run, remotely:
        import afar_no_such_module_anywhere

        value = afar_no_such_module_anywhere.x
    with pytest.raises(ModuleNotFoundError) as raised:
        value.result(timeout=RESULT_TIMEOUT)
    assert_says_module_is_missing(raised.value, "afar_no_such_module_anywhere")
    assert here(line) in str(raised.value)


@pytest.mark.parametrize("what", ["module", "function"])
def test_a_variable_that_needs_a_module_the_worker_lacks(client, client_only_module, what):
    helper = client_only_module if what == "module" else client_only_module.triple
    with pytest.raises(ModuleNotFoundError) as raised:
        line = lineno() + 1
        with afar.get(timeout=RESULT_TIMEOUT), remotely:
            value = helper
    assert_says_module_is_missing(raised.value, client_only_module.__name__)
    assert here(line) in str(raised.value)
    assert "value" not in locals()


def assert_says_module_is_missing(error: ModuleNotFoundError, name: str) -> None:
    message = str(error)
    assert repr(name) in message
    assert "worker" in message
    assert "install" in message  # and how to fix it


# -- names, and what comes back -------------------------------------------------------------------
def test_a_name_defined_nowhere_is_a_nameerror_from_the_worker(client):
    with pytest.raises(NameError, match="afar_defined_nowhere"):  # noqa: SIM117
        with afar.get(timeout=RESULT_TIMEOUT), remotely:
            value = afar_defined_nowhere + 1  # noqa: F821, F841


def test_a_name_defined_nowhere_on_a_branch_not_taken_is_fine(client):
    flag = False
    with afar.get(timeout=RESULT_TIMEOUT), remotely:
        value = afar_defined_nowhere if flag else "fine"  # noqa: F821
    assert value == "fine"


def test_outer_variables_changed_in_the_block_are_not_changed_here(client):
    items = [1, 2]
    settings = {"a": 1}
    count = 10
    with afar.get("seen", timeout=RESULT_TIMEOUT), remotely:
        items.append(3)
        settings["b"] = 2
        count = count + 1
        seen = (list(items), dict(settings), count)
    assert seen == ([1, 2, 3], {"a": 1, "b": 2}, 11)
    assert (items, settings, count) == ([1, 2], {"a": 1}, 10)
