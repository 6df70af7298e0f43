"""Progress in a terminal: a script whose stderr is a pseudo-terminal, and the same script when
its stderr is a pipe. The script is a client of the test cluster, run as a user runs one.

What the terminal shows is worked out from the bytes the script wrote, as a terminal draws them
(carriage returns, newlines, erase to the end of the line).
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("tqdm")
pytest.importorskip("dask.array")
pty = pytest.importorskip("pty")

import afar  # noqa: E402

PACKAGE_ROOT = str(Path(afar.__file__).resolve().parents[1])
SCRIPT_TIMEOUT_SECONDS = 90
PROGRESS_LINE = re.compile(r"\[afar\] script\.py:(\d+) \[[#-]+\] ([\d,]+)/([\d,]+) tasks \(")
ERASE_LINE = "\x1b[K"

pytestmark = pytest.mark.slow

# About 140 tasks, 100 of them of 50 ms: a second or two of work on the test cluster.
WORK = """\
    import time

    import dask.array as da

    def slow(block):
        time.sleep(0.05)
        return block

    total = float(da.ones((200, 200), chunks=(20, 20)).map_blocks(slow).sum().compute())
"""
SCRIPT = f"""\
import sys

from distributed import Client

import afar
from afar import remotely

client = Client(sys.argv[1])

with afar.get, remotely:  # DASK WORK
{WORK}
print("first", total, flush=True)

with afar.get, remotely:  # TQDM
    import time

    from tqdm import tqdm

    for _ in tqdm(range(20)):
        time.sleep(0.1)

with afar.get, remotely(progress=False):  # TURNED OFF
{WORK}
with afar.get, remotely(quiet=True):  # QUIET
{WORK}
with afar.run, remotely:  # IN THE BACKGROUND
{WORK}
print("background", total.result(timeout=60), flush=True)
print("last", total.result(), flush=True)

with afar.get, remotely:  # NO DASK WORK
    import time

    time.sleep(1.5)
    slept = True

# The blocks that sent anything through the scheduler (the layout of afar._worker.output).
events = client.get_events("afar-output-" + client.id)
print("sent", *sorted({{int(message["label"].rpartition(":")[2]) for _, message in events}}))
client.close()
"""


def line_of(marker: str) -> int:
    (number,) = [n for n, line in enumerate(SCRIPT.splitlines(), 1) if marker in line]
    return number


def drawn(data: str) -> list[str]:
    """The lines a terminal shows after receiving ``data``."""
    lines = [""]
    column = 0
    position = 0
    while position < len(data):
        if data.startswith(ERASE_LINE, position):
            lines[-1] = lines[-1][:column]
            position += len(ERASE_LINE)
            continue
        char = data[position]
        position += 1
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append("")
            column = 0
        else:
            line = lines[-1]
            lines[-1] = line[:column] + char + line[column + 1 :]
            column += 1
    return lines


def run_script(tmp_path: Path, address: str, *, terminal: bool) -> tuple[str, str]:
    """Run the script; its stdout and what it wrote to stderr (a pty, or a pipe)."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([PACKAGE_ROOT, *sys.path])}
    env.pop("COLUMNS", None)
    if not terminal:
        done = subprocess.run(
            [sys.executable, str(script), address],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_SECONDS,
            check=True,
        )
        return done.stdout, done.stderr
    controller, terminal_end = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, str(script), address],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal_end,
    )
    os.close(terminal_end)
    received = bytearray()
    deadline = time.monotonic() + SCRIPT_TIMEOUT_SECONDS
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the script has closed its end (EIO on Linux)
                break
            if not chunk:
                break
            received += chunk
        out, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    assert process.returncode == 0, received.decode(errors="replace")
    return out.decode(), received.decode("utf-8", errors="replace").replace("\r\n", "\n")


@pytest.fixture(scope="module")
def in_a_terminal(tmp_path_factory, cluster) -> tuple[str, str]:
    return run_script(tmp_path_factory.mktemp("pty"), cluster.scheduler_address, terminal=True)


def test_the_dask_work_of_a_block_shows_its_progress_on_the_terminal(in_a_terminal):
    out, err = in_a_terminal
    assert out.splitlines()[:3] == ["first 40000.0", "background 40000.0", "last 40000.0"]
    drawn_counts = [
        (int(line), int(done.replace(",", "")), int(total.replace(",", "")))
        for line, done, total in PROGRESS_LINE.findall(err)
    ]
    # Only the block with progress on draws it (not the one turned off, nor the quiet one, nor
    # the afar.run block the script does not wait for at the with); it was updated as it ran.
    assert {line for line, _, _ in drawn_counts} == {line_of("# DASK WORK")}
    assert len(drawn_counts) >= 2
    (total,) = {total for _, _, total in drawn_counts}
    done = [d for _, d, _ in drawn_counts]
    assert done == sorted(done) and done[0] < total and done[-1] == total
    # One line, updated in place, left as a summary.
    shown = [line for line in drawn(err) if PROGRESS_LINE.search(line)]
    assert len(shown) == 1
    assert f"{total:,}/{total:,} tasks (100%)" in shown[0]


def test_blocks_without_dask_work_send_nothing_more(in_a_terminal):
    out, _ = in_a_terminal
    # The sleeping block ran long enough to be looked at, and sent nothing: it has no Dask work.
    assert out.splitlines()[3] == f"sent {line_of('# DASK WORK')} {line_of('# TQDM')}"


def test_a_tqdm_bar_in_a_block_is_one_line_on_the_terminal(in_a_terminal):
    _, err = in_a_terminal
    assert err.count("%|") > 2, "the bar was not drawn as it went"
    bars = [line for line in drawn(err) if "%|" in line]
    assert len(bars) == 1, bars
    assert "100%" in bars[0] and "20/20" in bars[0]


def test_nothing_is_shown_when_stderr_is_not_a_terminal(tmp_path, cluster):
    out, err = run_script(tmp_path, cluster.scheduler_address, terminal=False)
    assert out.splitlines()[:3] == ["first 40000.0", "background 40000.0", "last 40000.0"]
    # Not asked for: the block with Dask work sent no counts, hence nothing (it prints nothing).
    assert out.splitlines()[3] == f"sent {line_of('# TQDM')}"
    assert "tasks (" not in err
    assert "[afar]" not in err
    assert "100%" in err  # the block's own bar still comes through, as it is written
