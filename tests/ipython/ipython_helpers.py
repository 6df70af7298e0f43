"""Helpers of the IPython tests: running cells, recording displays."""

from __future__ import annotations

import threading
from typing import Any

from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell


def run(shell: InteractiveShell, source: str) -> Any:
    """Run a cell as a notebook would (stored in the history); return IPython's result."""
    return shell.run_cell(source, store_history=True)


def ok(shell: InteractiveShell, source: str) -> Any:
    """Run a cell that must succeed; return the value of its last expression, if any."""
    result = run(shell, source)
    error = result.error_before_exec or result.error_in_exec
    if error is not None:
        raise AssertionError(f"the cell failed: {error!r}\n{source}")
    return result.result


class RecordingPublisher(DisplayPublisher):
    """Records what ``display`` publishes, instead of printing it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.messages: list[dict[str, Any]] = []
        self.changed = threading.Condition()

    def publish(  # type: ignore[override]
        self,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
        *args: Any,
        transient: dict[str, Any] | None = None,
        update: bool = False,
        **kwargs: Any,
    ) -> None:
        with self.changed:
            self.messages.append(
                {
                    "type": "update_display_data" if update else "display_data",
                    "data": dict(data),
                    "display_id": (transient or {}).get("display_id"),
                }
            )
            self.changed.notify_all()

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Wait until ``predicate(messages)`` holds, at most ``timeout`` seconds."""
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self.messages), timeout)
