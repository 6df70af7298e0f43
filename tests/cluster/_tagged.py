"""A NumPy subclass with an attribute of its own, in a module of the tests' (not of afar's).

Workers import it by name when a block reads one (LocalCluster's worker processes share the
tests' ``sys.path``): it imports nothing of afar, so that the test that workers need no afar
holds whatever ran before it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Tagged(np.ndarray):
    """An ndarray that carries a ``tag``, also through pickling."""

    def __new__(cls, data: Any, tag: str) -> Tagged:
        made = np.asarray(data).view(cls)
        made.tag = tag
        return made

    def __array_finalize__(self, obj: Any) -> None:
        self.tag = getattr(obj, "tag", None)

    def __reduce__(self) -> Any:
        rebuild, arguments, state = super().__reduce__()
        return rebuild, arguments, (state, self.tag)

    def __setstate__(self, state: Any) -> None:
        array_state, self.tag = state
        super().__setstate__(array_state)
