"""How afar's worker-side functions travel: pickled by value once per process, loaded once per worker.

Workers need no afar installed: the functions of ``_worker`` (and the modules it imports by
name) are pickled by value with cloudpickle. Pickling them again for every task would cost
client CPU, so each function is pickled once; its task carries those bytes with a small loader
that keeps the unpickled function in a per-process table on the worker, keyed by digest.
"""

from __future__ import annotations

import builtins
import hashlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import cloudpickle

from afar import _output, _worker

for _module in (_worker, _output):
    cloudpickle.register_pickle_by_value(_module)

_R = TypeVar("_R")

# Evaluated on the worker by ``builtins.eval``: the only callable every Python can import.
_LOADER = (
    "__import__('sys').__dict__.setdefault('_afar_shipped_functions_v1', {}).get(digest) "
    "or __import__('sys').__dict__['_afar_shipped_functions_v1'].setdefault("
    "digest, __import__('pickle').loads(payload))"
)


class Shipped(Generic[_R]):
    """A function that pickles as its by-value bytes plus a cached loader."""

    def __init__(self, function: Callable[..., _R]) -> None:
        self.function = function
        self.__name__ = function.__name__
        self._reduced: tuple[Any, ...] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> _R:
        return self.function(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        if self._reduced is None:
            payload = cloudpickle.dumps(self.function, protocol=5)
            digest = hashlib.sha256(payload).hexdigest()
            self._reduced = (builtins.eval, (_LOADER, {"payload": payload, "digest": digest}))
        return self._reduced


run_block = Shipped(_worker.run_block)
pick = Shipped(_worker.pick)
