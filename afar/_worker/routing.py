"""The worker's sys.stdout and sys.stderr: routers handing a captured thread's writes to it.

The worker plugin's ``setup`` (``afar._worker.runtime.Runtime``) puts the routers in front of
``sys.stdout`` and ``sys.stderr`` (``install_routers``) and its ``teardown`` takes them out again
(``remove_routers``). A router looks up the writing thread in a table of active captures: a thread
without a capture writes straight to the stream the router replaced; a thread inside
``afar._worker.output.capture_output`` writes there too (the worker's own streams keep showing
everything) and its capture records the text. Where no plugin installed them, nothing is
captured.

Per-process state lives in a module object in ``sys.modules``, not in this module's globals,
which are fresh for every task. Its name and its ``lock`` attribute are shared by all versions of
this code (clients of different afar versions may share a worker); everything else lives under a
versioned attribute, and routers of different versions stack (each forwards to the stream it
replaced).
"""

from __future__ import annotations

import sys
import threading
import types
from typing import Any

from afar._worker.protocol import TEXT_KINDS

# Bump _ROUTER_VERSION whenever `_Router` or the capture methods it calls (`record`, `teeing`,
# `unechoed`) change.
_ROOT_NAME = "_afar_output"
_ROUTER_VERSION = 3
_STATE_ATTR = f"v{_ROUTER_VERSION}"
# Attribute every afar router of any version has: the stream it replaced. Installation follows it
# to tell whether its router is still in the chain below a router of another version.
_INNER_ATTR = "_afar_inner"
# Routers followed at most down such a chain: a guard against a cycle someone else made.
_MAX_CHAIN = 64

_get_ident = threading.get_ident


class _Router:
    """Stands in for sys.stdout or sys.stderr, recording the writes of threads being captured."""

    def __init__(self, inner: Any, stream: str, captures: dict[int, Any]) -> None:
        setattr(self, _INNER_ATTR, inner)
        self._afar_stream = stream
        self._afar_captures = captures

    def write(self, text: str) -> int:
        capture = self._afar_captures.get(_get_ident())
        inner = self._afar_inner
        if capture is None or capture.teeing:
            return _write(inner, text)
        if self._afar_stream in capture.unechoed:
            if not isinstance(text, str):
                raise TypeError(f"write() argument must be str, not {type(text).__name__}")
            capture.record(self._afar_stream, text)
            return len(text)
        capture.teeing = True
        try:
            written = _write(inner, text)
        finally:
            capture.teeing = False
        # Recorded after the worker's stream accepted it: text a stream rejects (bytes, say)
        # raises as it would without afar, and is not sent either.
        capture.record(self._afar_stream, text)
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._afar_inner is not None:
            self._afar_inner.flush()

    def __getattr__(self, name: str) -> Any:
        # Everything else (encoding, isatty, fileno, buffer, …) is the replaced stream's.
        if name.startswith("_afar_"):
            raise AttributeError(name)
        return getattr(self._afar_inner, name)

    def __repr__(self) -> str:
        return f"<afar output router for {self._afar_inner!r}>"


def _write(stream: Any, text: str) -> int:
    if stream is not None:
        return stream.write(text)
    # sys.stdout is None (e.g. a worker started without a console): print() is silent then,
    # and a captured block's output still reaches the client.
    if not isinstance(text, str):
        raise TypeError(f"write() argument must be str, not {type(text).__name__}")
    return len(text)


def install_routers() -> None:
    """Put this version's routers in front of sys.stdout and sys.stderr, until ``remove_routers``.

    Called by the worker plugin's ``setup`` (``afar._worker.runtime.Runtime``); each call needs
    one ``remove_routers``. Idempotent across calls and versions: a router already in place stays.
    """
    root = _root()
    with root.lock:
        state = getattr(root, _STATE_ATTR, None)
        if state is None:
            state = types.SimpleNamespace(captures={}, stdout=None, stderr=None, installs=0)
            setattr(root, _STATE_ATTR, state)
        state.installs += 1
    _in_front(state)


def remove_routers() -> None:
    """Undo one ``install_routers``; the last one takes this version's routers out of the streams.

    Routers stay while a block still captures. A router below a router of another version is
    unlinked from under it; one below a stream of someone else's stays (it only forwards).
    """
    root = sys.modules.get(_ROOT_NAME)
    state = getattr(root, _STATE_ATTR, None)
    if root is None or state is None:
        return
    with root.lock:
        if not state.installs:
            return  # not installed
        state.installs -= 1
        if state.installs or state.captures:
            return
        for name in TEXT_KINDS:
            router = getattr(state, name)
            if router is not None and _unlink(name, router):
                setattr(state, name, None)


def _root() -> Any:
    root = sys.modules.get(_ROOT_NAME)
    if root is None:
        fresh = types.ModuleType(_ROOT_NAME, "afar: per-process output routing state")
        fresh.lock = threading.Lock()  # type: ignore[attr-defined]
        # setdefault is atomic: of two threads racing here, both get the same module.
        root = sys.modules.setdefault(_ROOT_NAME, fresh)
    return root


def active_captures() -> dict[int, Any] | None:
    """The table of this process's captures by thread, its routers back in front if replaced.

    None where no worker plugin installed the routers (``install_routers``): nothing is captured
    there. A capture checks that the routers are still in place (one lookup each) and stands
    them back in front of whatever replaced them since.
    """
    root = sys.modules.get(_ROOT_NAME)
    state = getattr(root, _STATE_ATTR, None)
    if state is None or not state.installs:
        return None
    _in_front(state)
    return state.captures


def _in_front(state: Any) -> None:
    """Put this version's routers in front of sys.stdout and sys.stderr unless they are there."""
    if _in_chain(sys.stdout, state.stdout) and _in_chain(sys.stderr, state.stderr):
        return
    with _root().lock:
        for name in TEXT_KINDS:
            current = getattr(sys, name)
            if not _in_chain(current, getattr(state, name)):
                # Missing, or replaced since (e.g. by something that restored the stream it had
                # saved): stand in front of whatever is there now.
                router = _Router(current, name, state.captures)
                setattr(state, name, router)
                setattr(sys, name, router)


def _unlink(name: str, router: Any) -> bool:
    """Take ``router`` out of ``sys.<name>``'s chain of afar routers; False: not found there."""
    inner = router.__dict__.get(_INNER_ATTR)
    stream = getattr(sys, name)
    if stream is router:
        setattr(sys, name, inner)
        return True
    for _ in range(_MAX_CHAIN):
        below = getattr(stream, "__dict__", {}).get(_INNER_ATTR)
        if below is None:
            return False
        if below is router:
            setattr(stream, _INNER_ATTR, inner)
            return True
        stream = below
    return False


def _in_chain(stream: Any, router: Any) -> bool:
    """Whether ``router`` is ``stream`` or below it in a stack of afar routers of any version."""
    if router is None:
        return False
    for _ in range(_MAX_CHAIN):
        if stream is router:
            return True
        if stream is None:
            return False
        # Looked up in the instance dict: getattr() on a router without the attribute would
        # fall through to its __getattr__, and answer for the stream below.
        stream = getattr(stream, "__dict__", {}).get(_INNER_ATTR)
    return False
