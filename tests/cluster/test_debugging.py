"""Debugging a block where it runs: breakpoint() and post mortem on its worker, from here.

The terminal cases run a real ``python script.py`` in a pseudo-terminal (pexpect), typing pdb
commands as a user does; the script's client connects to this session's LocalCluster. The rest
runs in this process, on the same cluster.
"""

from __future__ import annotations

import fcntl
import io
import os
import platform
import pty
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dask.config
import pexpect
import pexpect.fdpexpect
import pytest
from _on_worker import kept_failure, running_keys
from distributed import Client

import afar
from afar import _debugging, remotely
from afar._shipping import answer_input
from afar._stream import topic_for

# Seconds: what a terminal shows next (a Python start and a Dask client's included).
SHOWN_TIMEOUT = 60
PROMPT = r"\(Pdb\) "

HEADER = """\
import sys
import afar
from afar import remotely
from distributed import Client

client = Client(sys.argv[1])
"""


class Terminal(pexpect.fdpexpect.fdspawn):
    """A program on a pseudo-terminal, read and typed into through its leader side (pexpect).

    The program is started with ``subprocess`` (fork and exec in C): ``pexpect.spawn`` forks
    in Python, which in a process with threads (this one runs a Dask client) Python 3.12 on
    warns may deadlock the child.
    """

    process: subprocess.Popen[bytes]
    program: str

    def sendintr(self) -> None:
        """Ctrl-C at the prompt just shown: the terminal sends SIGINT to the program's group.

        CPython's ``input()`` writes its prompt before it starts reading, and a SIGINT that
        lands in between is noted but wakes nothing: the read then waits for a line (plain
        ``input()`` on a pseudo-terminal missed 14 of 100 such signals on a busy machine). A user
        presses Ctrl-C again; the test waits until the program reads instead.
        """
        wait_until_reading(self.process.pid)
        os.killpg(self.process.pid, signal.SIGINT)

    def sendeof(self) -> None:
        """Ctrl-D at the start of a line: the end of input."""
        self.send("\x04")


# The number of read(2) per machine, as /proc/<pid>/syscall shows it.
READ_SYSCALL = {"x86_64": 0, "aarch64": 63}.get(platform.machine())


def wait_until_reading(pid: int) -> None:
    """Until the main thread of process ``pid`` waits in a read of its standard input (Linux;
    elsewhere this returns at once)."""
    deadline = time.monotonic() + SHOWN_TIMEOUT
    while READ_SYSCALL is not None and time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/syscall") as file:
                fields = file.read().split()
        except OSError:
            return
        if fields[:2] == [str(READ_SYSCALL), "0x0"]:
            return
        time.sleep(0.005)
    assert READ_SYSCALL is None, f"the program did not read its terminal in {SHOWN_TIMEOUT} s"


@pytest.fixture
def terminal(cluster, tmp_path: Path) -> Iterator[object]:
    """Runs a program (HEADER + its text) in a pseudo-terminal: ``terminal(text)`` -> Terminal."""
    started: list[Terminal] = []

    def start(text: str, **environment: str) -> Terminal:
        script = tmp_path / "program.py"
        script.write_text(HEADER + textwrap.dedent(text))
        leader, follower = pty.openpty()
        termios_size = struct.pack("HHHH", 50, 200, 0, 0)
        fcntl.ioctl(follower, termios.TIOCSWINSZ, termios_size)
        process = subprocess.Popen(
            [sys.executable, str(script), cluster.scheduler_address],
            stdin=follower,
            stdout=follower,
            stderr=follower,
            cwd=tmp_path,
            env={**os.environ, **environment},
            start_new_session=True,  # its own process group, as a shell's foreground job
        )
        os.close(follower)
        child = Terminal(leader, encoding="utf-8", timeout=SHOWN_TIMEOUT)
        child.process, child.program = process, script.read_text()
        started.append(child)
        return child

    yield start
    for child in started:
        if child.process.poll() is None:
            child.process.kill()
        child.process.wait(SHOWN_TIMEOUT)
        try:
            os.close(child.child_fd)
        except OSError:
            pass


def line_of(child: Terminal, text: str) -> int:
    """The number of the program's first line holding ``text``."""
    lines = child.program.splitlines()
    return next(number for number, line in enumerate(lines, 1) if text in line)


def finish(child: Terminal) -> str:
    child.expect(pexpect.EOF)
    assert child.process.wait(SHOWN_TIMEOUT) == 0, child.before
    return child.before


def test_breakpoint_opens_pdb_on_the_worker_s_frames_in_the_terminal(terminal) -> None:
    child = terminal(
        """
        x = 41
        with afar.get("z", "pid"), remotely:
            import os
            y = x + 1
            pid = os.getpid()
            breakpoint()
            z = y * 2
        print("z is", z, "here", pid != __import__("os").getpid())
        """
    )
    child.expect(PROMPT)
    assert "program.py(" in child.before  # the block's own file
    child.sendline("p x, y, os.getpid() == pid")
    child.expect(PROMPT)
    assert "(41, 42, True)" in child.before
    child.sendline("ll")
    child.expect(PROMPT)
    assert "z = y * 2" in child.before and "y = x + 1" in child.before
    child.sendline("w")
    child.expect(PROMPT)
    assert "distributed" not in child.before  # the stack starts at the block
    child.sendline("n")  # 3.13 on stops at the breakpoint() line, earlier at the next one
    child.expect(PROMPT)
    child.sendline("display y")
    child.expect(PROMPT)
    child.sendline("c")
    child.expect("z is 84 here True")
    finish(child)


def test_pdb_set_trace_and_input_read_from_the_terminal(terminal) -> None:
    child = terminal(
        """
        with afar.get, remotely:
            import pdb
            name = input("name? ")
            values = []
            pdb.Pdb().set_trace()
            values.append(name.upper())
        print("got", values)
        """
    )
    child.expect_exact("name? ")
    child.sendline("ada")
    child.expect(PROMPT)
    child.sendline("p name")
    child.expect(PROMPT)
    assert "'ada'" in child.before
    child.sendline("c")
    child.expect_exact("got ['ADA']")
    finish(child)


def test_q_stops_the_block_and_the_next_block_runs(terminal) -> None:
    child = terminal(
        """
        import bdb
        try:
            with afar.get, remotely:
                breakpoint()
                never = True
        except bdb.BdbQuit:
            print("quit")
        with afar.get(timeout=30), remotely:
            after = "ran"
        print("after:", after)
        """
    )
    child.expect(PROMPT)
    child.sendline("q")
    child.expect("quit")
    child.expect("after: ran")
    finish(child)


def test_ctrl_c_in_the_session_stops_the_block(terminal) -> None:
    child = terminal(
        """
        try:
            with afar.get, remotely:
                breakpoint()
                never = True
        except KeyboardInterrupt:
            print("interrupted")
        with afar.get(timeout=30), remotely:
            after = "ran"
        print("after:", after)
        """
    )
    child.expect(PROMPT)
    child.sendintr()
    child.expect("interrupted")
    child.expect("after: ran")
    finish(child)


def test_post_mortem_opens_the_failed_block_s_live_frames(terminal) -> None:
    child = terminal(
        """
        def mean(values):
            total = sum(values)
            return total / (len(values) - 3)

        try:
            with afar.get, remotely:
                data = [1, 2, 3]
                result = mean(data)
        except ZeroDivisionError:
            print("failed")
        afar.debug()
        print("done")
        """
    )
    child.expect("failed")
    child.expect(PROMPT)
    child.sendline("p total, values")
    child.expect(PROMPT)
    assert "(6, [1, 2, 3])" in child.before
    child.sendline("u")
    child.expect(PROMPT)
    child.sendline("p data")
    child.expect(PROMPT)
    assert "[1, 2, 3]" in child.before
    child.sendline("w")
    child.expect(PROMPT)
    assert "distributed" not in child.before and "run_block" not in child.before
    child.sendline("q")
    child.expect("done")
    finish(child)


def test_a_block_of_afar_run_at_a_breakpoint_says_so_and_afar_debug_opens_it(terminal) -> None:
    child = terminal(
        """
        with afar.run, remotely:
            w = 5
            breakpoint()
            v = w + 1
        input("told? ")
        afar.debug()
        print("v is", v.result())
        """
    )
    notice = r"waits at a breakpoint \(program.py:\d+\); afar.debug\(\) opens it here"
    seen = set()
    while len(seen) < 2:  # the program asks at once; the notice comes when the block is there
        seen.add(child.expect([notice, r"told\? "]))
    child.sendline("")
    child.expect(PROMPT)
    child.sendline("p w")
    child.expect(PROMPT)
    assert "5" in child.before
    child.sendline("c")
    child.expect("v is 6")
    finish(child)


def test_two_blocks_at_breakpoints_are_taken_one_after_the_other(terminal) -> None:
    child = terminal(
        """
        with afar.run, remotely:
            first = 1
            breakpoint()
            one = first
        with afar.run, remotely:
            second = 2
            breakpoint()
            two = second
        input("told? ")
        afar.debug()
        print("results", one.result(), two.result())
        """
    )
    notice = r"waits at a breakpoint \(program.py:\d+\); afar.debug\(\) opens it here"
    seen = []
    while len(seen) < 3:  # two notices and the program's question, in any order
        seen.append(child.expect([notice, r"told\? "]))
    assert sorted(seen) == [0, 0, 1]
    child.sendline("")
    names = []
    for _ in range(2):
        child.expect(r"debugging the block at program.py:(\d+)")
        names.append(child.match.group(1))
        child.expect(PROMPT)
        child.sendline("p [name for name in ('first', 'second') if name in dir()]")
        child.expect(PROMPT)
        child.sendline("c")
    first, second = line_of(child, "first = 1") - 1, line_of(child, "second = 2") - 1
    assert sorted(names, key=int) == [str(first), str(second)]
    child.expect(r"results 1 2")
    finish(child)


def test_interact_and_a_breakpoint_set_in_the_session_work_on_the_worker(terminal) -> None:
    child = terminal(
        """
        with afar.get, remotely:
            total = 0
            breakpoint()
            for step in range(3):
                total += step
            done = total
        print("done", done)
        """
    )
    child.expect(PROMPT)
    child.sendline(f"b {line_of(child, 'total += step')}")
    child.expect(PROMPT)
    child.sendline("c")
    child.expect(PROMPT)
    child.sendline("p step, total")
    child.expect(PROMPT)
    assert "(0, 0)" in child.before
    child.sendline("interact")
    child.expect(">>> ")
    child.sendline("print('in', step + 40)")
    child.expect("in 40")
    child.expect(">>> ")
    child.sendeof()
    child.expect(PROMPT)
    child.sendline("clear")
    child.expect_exact("Clear all breaks? ")  # pdb's own question, asked here too
    child.sendline("y")
    child.expect(PROMPT)
    child.sendline("c")
    child.expect("done 3")
    finish(child)


# -- in this process ------------------------------------------------------------------------


def test_a_block_at_a_breakpoint_still_stops_at_its_time_limit(client: Client) -> None:
    with afar.run, remotely(timeout=1):
        breakpoint()
        never = True
    with pytest.raises(TimeoutError, match=r"1 s|limit"):
        never.result(timeout=SHOWN_TIMEOUT)


def test_debug_false_and_pythonbreakpoint_0_make_breakpoint_do_nothing(client: Client) -> None:
    with afar.get, remotely(debug=False):
        breakpoint()
        passed = True
    assert passed
    with afar.get, remotely:
        import os

        os.environ["PYTHONBREAKPOINT"] = "0"
        try:
            breakpoint()
        finally:
            del os.environ["PYTHONBREAKPOINT"]
        passed_too = True
    assert passed_too


def waiting_for_input(future) -> _debugging.BlockInput:
    """The reads of the afar.run block of ``future`` once it has asked for a line."""
    key = _debugging._body_key(str(future.key))
    deadline = time.monotonic() + SHOWN_TIMEOUT
    while time.monotonic() < deadline:
        with _debugging._lock:
            reads = _debugging._inputs.get(key)
        if reads is not None and not reads._requests.empty():
            return reads
        time.sleep(0.05)
    raise AssertionError("the block did not ask for input in time")


def test_only_the_client_that_submitted_a_block_can_answer_it(client: Client, cluster) -> None:
    with afar.run, remotely(retries=0):
        line = input()
    reads = waiting_for_input(line)
    request = reads._requests.get(timeout=SHOWN_TIMEOUT)
    with Client(cluster.scheduler_address, set_as_default=False) as other:
        function, argument = answer_input.task(reads.block, "not its secret", request.request, "x")
        with pytest.raises(PermissionError, match="submitted by another client"):
            other.run(function, argument, workers=[request.worker])
    reads._answer(request, "from its own client")
    assert line.result(timeout=SHOWN_TIMEOUT) == "from its own client"


def test_a_block_at_a_breakpoint_whose_client_leaves_stops_and_frees_its_worker(cluster) -> None:
    other = Client(cluster.scheduler_address, set_as_default=False)
    try:
        with afar.run(client=other), remotely:
            breakpoint()
            never = True
        reads = waiting_for_input(never)
        worker = reads._requests.get(timeout=SHOWN_TIMEOUT).worker
    finally:
        other.close()
    with Client(cluster.scheduler_address, set_as_default=False) as checking:
        deadline = time.monotonic() + SHOWN_TIMEOUT
        while time.monotonic() < deadline:
            running = checking.run(running_keys, workers=[worker])[worker]
            if not running:
                break
            time.sleep(0.1)
        assert not running, running


def test_afar_debug_with_nothing_to_debug_says_why(client: Client) -> None:
    with pytest.raises(TypeError, match="takes a Future"):
        afar.debug(threading)
    with pytest.raises(afar.DebugError, match="is not a block"):
        afar.debug(client.submit(int, 1))


def test_afar_debug_of_a_failed_afar_run_block_opens_its_frames(
    client: Client, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with afar.run, remotely:
        values = [1, 2]
        failed = sum(values) / 0
    with pytest.raises(ZeroDivisionError):
        failed.result(timeout=SHOWN_TIMEOUT)
    # The session's lines, as a terminal would type them.
    monkeypatch.setattr(sys, "stdin", io.StringIO("p values\nq\n"))
    afar.debug(failed)
    shown = capsys.readouterr().out
    assert "[1, 2]" in shown and "ZeroDivisionError" not in shown.split("(Pdb)")[-1]


def test_a_failed_block_is_not_kept_with_keep_seconds_0(client: Client) -> None:
    with dask.config.set({"afar.debug-keep-seconds": 0}), afar.run, remotely:
        lost = 1 / 0
    with pytest.raises(ZeroDivisionError):
        lost.result(timeout=SHOWN_TIMEOUT)
    with pytest.raises(afar.DebugError, match="is not a block"):
        afar.debug(lost)


def test_a_failed_block_s_frames_are_let_go_after_keep_seconds(client: Client) -> None:
    with dask.config.set({"afar.debug-keep-seconds": 0.5}), afar.run, remotely:
        short = 1 / 0
    with pytest.raises(ZeroDivisionError):
        short.result(timeout=SHOWN_TIMEOUT)
    deadline = time.monotonic() + SHOWN_TIMEOUT
    while time.monotonic() < deadline:  # the worker's timer lets them go
        if not any(client.run(kept_failure, topic_for(client), short.key).values()):
            break
        time.sleep(0.1)
    assert not any(client.run(kept_failure, topic_for(client), short.key).values())
    with pytest.raises(afar.DebugError, match="not kept any more"):
        afar.debug(short)
