"""Placeholder: worker-side output capture (being written)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class _NoEmitter:
    def send(self, kind: str, payload: Any) -> None:
        return None


@contextlib.contextmanager
def capture_output(topic: str, block: str, label: str) -> Iterator[_NoEmitter]:
    yield _NoEmitter()
