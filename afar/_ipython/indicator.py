"""While afar.get waits in a notebook: a display saying that the block runs on the cluster."""

from __future__ import annotations

import contextlib
import contextvars
import html
import threading
import time
from typing import Any

from afar._ipython import kernel
from afar._ipython.rendering import EMPTY_BUNDLE
from afar._sinks import NOTICE_PREFIX

# A waiting afar.get shows its indicator only after this long: quick blocks do not flicker.
INDICATOR_DELAY_SECONDS = 0.5


class _Indicator:
    """A display saying that a block runs on the cluster, emptied when the wait ends."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.lock = threading.Lock()
        self.handle: Any = None
        self.stopped = False
        self.since = time.strftime("%H:%M:%S")
        # The waiting cell's context: the indicator is the cell's output, shown from a timer.
        self.context = contextvars.copy_context()
        self.timer = threading.Timer(INDICATOR_DELAY_SECONDS, self.show)
        self.timer.daemon = True

    def bundle(self) -> dict[str, str]:
        since = self.since
        label = html.escape(self.label)
        return {
            "text/plain": f"{NOTICE_PREFIX}{self.label} running on the cluster (since {since})",
            "text/html": (
                f'<span style="opacity: 0.7">&#x23F3; <code>{label}</code> running on the '
                f"cluster (since {since})&hellip;</span>"
            ),
        }

    def __enter__(self) -> _Indicator:
        self.timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def show(self) -> None:
        with self.lock:
            if not self.stopped:
                self.handle = self.context.run(
                    kernel.display_bundle, self.bundle(), display_id=True
                )

    def stop(self) -> None:
        self.timer.cancel()
        with self.lock:
            self.stopped = True
            if self.handle is not None:
                # No message can remove an output: an empty one is drawn as nothing.
                self.handle.update(EMPTY_BUNDLE, raw=True)


def waiting_indicator(label: str) -> contextlib.AbstractContextManager[Any]:
    """Show, while the body waits, that the block ``label`` runs on the cluster (in Jupyter).

    The indicator appears once the wait has lasted ``INDICATOR_DELAY_SECONDS``, in the cell
    that waits, and is emptied when the wait ends, however it ends: the saved notebook keeps
    an empty output (drawn as nothing) in its place. Outside a Jupyter kernel, or away from the
    kernel's main thread, it does nothing.

    Examples
    --------
    >>> with waiting_indicator("123.py:1"):  # doctest: +SKIP
    ...     values = future.result()
    """
    if kernel.kernel_shell() is None or threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    return _Indicator(label)
