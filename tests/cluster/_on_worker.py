"""Functions the tests run on workers with ``Client.run``: the standard library only.

A function of a test module is pickled by reference, and a worker that runs it imports that
module, with everything it imports (afar too): ``test_workers_need_no_afar`` would then find
afar on the worker. These import nothing of afar's.
"""

from __future__ import annotations

import sys


def running_keys() -> list[str]:
    """The keys of the blocks running in this worker process (afar's stop table)."""
    table = sys.__dict__.get("_afar_running_blocks_v1", {"blocks": {}})
    return [str(key) for key in table["blocks"]]


def kept_failure(topic: str, block: str) -> bool:
    """Whether this worker keeps the failed ``block`` of the client of ``topic`` (for debugging)."""
    root = sys.modules.get("_afar_input_v1")
    failure = None if root is None else root.failures.get(topic)
    return failure is not None and failure.block == block
