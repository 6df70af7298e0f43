"""Client-side helpers of the afar deployment tests: labels of blocks, bounded waits on output.

Nothing here runs on a worker or on the scheduler (they cannot import this module): what must
run there is defined in the test modules themselves, which travel by value.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

# Seconds. Bounds on what a block takes on a loaded 2-core machine, far above what it needs.
RESULT_TIMEOUT = 20.0
# How long a block may wait on a distributed.Event that the test sets.
GATE_TIMEOUT = 30.0
# How long afar's report of a failed block may take to reach stderr (a done-callback thread).
REPORT_TIMEOUT = 10.0
POLL_INTERVAL = 0.05
# What afar.run/afar.get keys start with: "afar-<file>:<line>-<token>[-<name>]".
KEY_PREFIX = "afar-"


def lineno() -> int:
    """The caller's current line: ``line = lineno() + 1`` just above a ``with`` gives its line."""
    return sys._getframe(1).f_lineno


def label(test_file: str, line: int) -> str:
    """How afar names the block at ``line`` of ``test_file``: the file name without its folder."""
    return f"{Path(test_file).name}:{line}"


def unique(name: str) -> str:
    """A name for a distributed.Event or Variable that no other test uses."""
    return f"afar-deploy-{name}-{uuid.uuid4().hex}"


def wait_for_stderr(capsys, text: str, timeout: float = REPORT_TIMEOUT) -> str:
    """Read captured stderr until it contains ``text``; return all of it read meanwhile."""
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} did not reach stderr within {timeout} s; got {seen!r}")
        time.sleep(POLL_INTERVAL)
        seen += capsys.readouterr().err
    return seen
