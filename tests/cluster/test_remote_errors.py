"""Errors raised in a block on a worker come back as themselves, pointing at the block (issue 2).

``afar.get`` raises at the ``with``; ``afar.run`` on ``.result()``. The traceback shows this
file's name, the exact lines of the block and their source, and at most one frame of afar.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import pytest
from _remote_helpers import RESULT_TIMEOUT, label, lineno

import afar
from afar import remotely

AFAR_DIR = str(Path(afar.__file__).parent)
THIS_FILE = str(Path(__file__))
THIS_SOURCE = Path(__file__).read_text().splitlines()
# Frames of what afar runs on the worker carry file names such as "<afar runtime>".
AFAR_WORKER_FILENAME_PREFIX = "<afar"


def line_marked(mark: str) -> int:
    """The number of the one line of this file whose comment ends with ``mark``."""
    found = [
        number
        for number, text in enumerate(THIS_SOURCE, 1)
        if "#" in text and text.rstrip().endswith(mark) and "line_marked" not in text
    ]
    assert len(found) == 1, f"mark {mark!r} found on lines {found}"
    return found[0]


def afar_frames(error: BaseException) -> list[traceback.FrameSummary]:
    return [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if frame.filename.startswith((AFAR_DIR, AFAR_WORKER_FILENAME_PREFIX))
    ]


def block_frames(error: BaseException) -> list[traceback.FrameSummary]:
    """Frames of this file below the test function's own (where the error surfaced): the
    block's, named as Python names it (the test function), and what it calls here."""
    mine = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == THIS_FILE]
    return mine[1:]


def assert_shows_block_line(error: BaseException, line: int, with_line: int) -> None:
    """The formatted traceback names this file, the line, and shows that line's source; the
    block's frame is named as it is without afar: after the function it stands in."""
    text = "".join(traceback.format_exception(error))
    source = THIS_SOURCE[line - 1].strip()
    function = sys._getframe(1).f_code.co_name
    shown = f'File "{THIS_FILE}", line {line}, in {function}'
    assert shown in text, text
    after = text.split(shown, 1)[1].splitlines()[1].strip()
    assert after == source, text


def test_get_raises_the_original_exception_at_the_with(client):
    with pytest.raises(ZeroDivisionError) as raised:
        with_line = lineno() + 1
        with afar.get(timeout=RESULT_TIMEOUT), remotely:
            numerator = 1
            ratio = numerator / 0  # noqa: F841 - get: divides by zero
    assert type(raised.value) is ZeroDivisionError
    assert_shows_block_line(raised.value, line_marked("get: divides by zero"), with_line)
    assert len(afar_frames(raised.value)) <= 1, traceback.format_exception(raised.value)


def test_run_raises_the_original_exception_on_result(client):
    with_line = lineno() + 1
    with afar.run, remotely:
        numerator = 1
        ratio = numerator / 0  # run: divides by zero
    with pytest.raises(ZeroDivisionError) as raised:
        ratio.result(timeout=RESULT_TIMEOUT)
    assert type(raised.value) is ZeroDivisionError
    assert_shows_block_line(raised.value, line_marked("run: divides by zero"), with_line)
    assert len(afar_frames(raised.value)) <= 1, traceback.format_exception(raised.value)


def test_traceback_goes_through_functions_defined_in_the_block(client):
    with pytest.raises(json.JSONDecodeError) as raised:
        with_line = lineno() + 1
        with afar.get(timeout=RESULT_TIMEOUT), remotely:

            def parse(text):
                return json.loads(text)  # parses

            parsed = parse("{")  # noqa: F841 - calls parse
    error = raised.value
    assert (error.pos, error.doc) == (1, "{")  # the exception's own attributes came back
    assert_shows_block_line(error, line_marked("calls parse"), with_line)
    frames = block_frames(error)
    assert [(frame.lineno, frame.name) for frame in frames] == [
        (line_marked("calls parse"), "test_traceback_goes_through_functions_defined_in_the_block"),
        (line_marked("parses"), "parse"),
    ]
    assert frames[1].line == "return json.loads(text)  # parses"
    assert len(afar_frames(error)) <= 1, traceback.format_exception(error)


def test_an_error_deep_in_a_longer_block_points_at_its_line(client):
    with pytest.raises(KeyError) as raised:
        with_line = lineno() + 1
        with afar.get(timeout=RESULT_TIMEOUT), remotely:
            table = {"a": 1}
            total = 0
            for key in ["a", "a", "b"]:
                if key in table:
                    total += table[key]
                else:
                    total += table[key] * 2  # missing key
    assert raised.value.args == ("b",)
    assert_shows_block_line(raised.value, line_marked("missing key"), with_line)


def test_exception_chains_raised_in_the_block_come_back(client):
    with pytest.raises(ValueError, match="wrapped") as raised:  # noqa: SIM117
        with afar.get(timeout=RESULT_TIMEOUT), remotely:
            try:
                {}["inner"]
            except KeyError as error:
                raise ValueError("wrapped") from error
    assert isinstance(raised.value.__cause__, KeyError)
    assert raised.value.__cause__.args == ("inner",)


def test_the_error_of_a_block_does_not_break_the_next_one(client):
    for attempt in range(2):
        with pytest.raises(RuntimeError, match=f"attempt {attempt}"):  # noqa: SIM117
            with afar.get(timeout=RESULT_TIMEOUT), remotely:
                raise RuntimeError(f"attempt {attempt}")
    with afar.get(timeout=RESULT_TIMEOUT), remotely:
        fine = "fine"
    assert fine == "fine"


# -- what Dask would let end the worker's process -----------------------------------------------
def worker_pids(client) -> set[int]:
    return set(client.run(os.getpid).values())


def test_sys_exit_in_a_block_raises_system_exit_at_the_with_and_no_worker_dies(client):
    """Dask lets a task's SystemExit end its worker's process (and then tries the task on
    other workers until KilledWorker); a block's sys.exit() ends the block, as it would here."""
    pids = worker_pids(client)
    with pytest.raises(SystemExit) as raised:
        with_line = lineno() + 1
        with afar.get(timeout=RESULT_TIMEOUT), remotely:
            import sys

            sys.exit(3)  # get: exits
    assert type(raised.value) is SystemExit and raised.value.code == 3
    assert_shows_block_line(raised.value, line_marked("get: exits"), with_line)
    assert worker_pids(client) == pids
    with afar.get(timeout=RESULT_TIMEOUT), remotely:
        after = "still here"
    assert after == "still here"


def test_sys_exit_in_an_afar_run_block_fails_its_future_and_no_worker_dies(client):
    pids = worker_pids(client)
    with_line = lineno() + 1
    with afar.run, remotely:
        import sys

        sys.exit("bye")
        code = 0
    # Dask's result() raises what the task raised on the worker, which has no afar.
    with pytest.raises(RuntimeError, match=r"raised sys\.exit\('bye'\) on worker") as raised:
        code.result(timeout=RESULT_TIMEOUT)
    assert label(__file__, with_line) in str(raised.value)
    assert worker_pids(client) == pids


def test_a_keyboard_interrupt_raised_by_the_block_comes_back_as_itself(client):
    pids = worker_pids(client)
    with pytest.raises(KeyboardInterrupt) as raised:
        with_line = lineno() + 1
        with afar.get(timeout=RESULT_TIMEOUT), remotely:
            raise KeyboardInterrupt("from the block")  # get: interrupts
    assert raised.value.args == ("from the block",)
    assert_shows_block_line(raised.value, line_marked("get: interrupts"), with_line)
    assert worker_pids(client) == pids
