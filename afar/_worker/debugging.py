"""Worker side of a block's input: its ``sys.stdin`` and ``breakpoint()`` reach its client.

A block's thread reads its input from the client that submitted it: ``input()``, ``sys.stdin``,
and pdb, which ``breakpoint()``, ``pdb.set_trace()`` and ``pdb.Pdb().set_trace()`` open on the
block's own frames in its own thread (the worker's other threads go on). The worker plugin puts
a router in front of ``sys.stdin`` and of ``sys.breakpointhook`` (``install_input``); a thread
inside ``ReadingInput`` reads its lines through a ``Session``:

1. the read sends an ``INPUT`` item, in order after the block's output (``Emitter.send``): the
   output forwarder moves the unfinished last line of stdout (the prompt ``input()`` or pdb just
   wrote) into the item, so that the client asks with it (``{"request": n, "prompt": "(Pdb) ",
   "where": "x.py:3"}``);
2. the client that waits for the block reads a line where its user is (its terminal, its
   notebook cell's input box) and sends it back with ``Client.run`` on this worker
   (``answer``), which needs the block's secret: only the client that submitted the block knows
   it (Dask's scheduler sees it in the task; any client of a scheduler can run code on its
   workers, so this keeps afar's clients apart, it is not a defence against a hostile one);
3. the block's thread waits for the line in slices (a stop is raised between two of them) and
   goes on with it; an answer of ``None`` is the end of input (EOF).

A block that failed keeps its traceback on its worker for ``post_mortem`` (``keep_failure``):
the last failed block of each client, for at most ``keep_seconds``.

Like the rest of ``afar._worker`` this module travels to workers by value, and keeps what must
outlive a task in a module object in ``sys.modules``.
"""

from __future__ import annotations

import hmac
import io
import itertools
import os
import queue
import sys
import threading
import time
import types
from typing import Any

from afar._worker.output import capture_output
from afar._worker.protocol import INPUT, KEPT_FAILURE

_ROOT_NAME = "_afar_input_v1"
# Seconds a block's thread waits for its line in one go: a stop is raised between two waits.
WAIT_SLICE_SECONDS = 0.1

_get_ident = threading.get_ident


def _root() -> Any:
    root: Any = sys.modules.get(_ROOT_NAME)
    if root is None:
        fresh = types.ModuleType(_ROOT_NAME, "afar: per-process input routing state")
        fresh.lock = threading.Lock()  # type: ignore[attr-defined]
        fresh.sessions = {}  # type: ignore[attr-defined]  # thread ident -> Session
        fresh.blocks = {}  # type: ignore[attr-defined]  # task key -> Session
        fresh.failures = {}  # type: ignore[attr-defined]  # client topic -> Failure
        fresh.installs = 0  # type: ignore[attr-defined]
        fresh.stdin = None  # type: ignore[attr-defined]  # our router, once installed
        fresh.hook = None  # type: ignore[attr-defined]
        root = sys.modules.setdefault(_ROOT_NAME, fresh)
    return root


class Session:
    """The input of one block's thread: lines asked of its client and answered by it."""

    __slots__ = ("_answers", "_requests", "block", "debug", "emitter", "filename", "secret")

    def __init__(self, block: str, secret: str, emitter: Any, filename: str, debug: bool) -> None:
        self.block = block
        self.secret = secret
        self.emitter = emitter
        self.filename = filename
        self.debug = debug
        # (request, line): put by ``answer`` on the worker's event loop, taken by the block's
        # thread. A SimpleQueue's put and get are single C calls: a stop raised in the block's
        # thread between two bytecodes never leaves it holding a lock (cpython#148874).
        self._answers: queue.SimpleQueue[tuple[int, str | None]] = queue.SimpleQueue()
        self._requests = itertools.count()

    def readline(self) -> str:
        """A line from the client, with its newline; "" at the end of input."""
        request = next(self._requests)
        self.emitter.send(INPUT, {"request": request, "where": self._where()})
        while True:
            try:
                answered, line = self._answers.get(timeout=WAIT_SLICE_SECONDS)
            except queue.Empty:
                continue
            if answered == request:
                return "" if line is None else line + "\n"
            # an answer to an earlier request, sent twice: dropped

    def answer(self, request: int, line: str | None) -> None:
        self._answers.put((request, line))

    def outermost(self, frame: Any) -> Any:
        """The outermost frame of the block's file from ``frame`` out (``frame`` if none)."""
        found = frame
        while frame is not None:
            if frame.f_code.co_filename == self.filename:
                found = frame
            frame = frame.f_back
        return found

    def _where(self) -> str:
        """file:line of the innermost frame of the block's file in this thread."""
        frame: Any = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename == self.filename:
                return f"{os.path.basename(self.filename)}:{frame.f_lineno}"
            frame = frame.f_back
        return ""


class _StdinRouter:
    """Stands in for ``sys.stdin``: a thread reading a block's input reads it from its client."""

    def __init__(self, inner: Any, sessions: dict[int, Session]) -> None:
        self._afar_inner = inner
        self._afar_sessions = sessions

    def readline(self, size: int = -1) -> str:
        session = self._afar_sessions.get(_get_ident())
        if session is None:
            return self._inner_stream().readline(size)
        return session.readline()

    def read(self, size: int = -1) -> str:
        session = self._afar_sessions.get(_get_ident())
        if session is None:
            return self._inner_stream().read(size)
        parts: list[str] = []
        while True:
            line = session.readline()
            if not line:
                return "".join(parts)
            parts.append(line)

    def readlines(self, hint: int = -1) -> list[str]:
        return list(iter(self.readline, ""))

    def __iter__(self) -> _StdinRouter:
        return self

    def __next__(self) -> str:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def fileno(self) -> int:
        if _get_ident() in self._afar_sessions:
            # input() then writes its prompt to sys.stdout and reads sys.stdin.readline().
            raise io.UnsupportedOperation("a block's input comes from its client: no file")
        return self._inner_stream().fileno()

    def isatty(self) -> bool:
        if _get_ident() in self._afar_sessions:
            return False
        return bool(self._inner_stream().isatty())

    def _inner_stream(self) -> Any:
        if self._afar_inner is None:
            raise RuntimeError("lost sys.stdin")
        return self._afar_inner

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_afar_"):
            raise AttributeError(name)
        return getattr(self._afar_inner, name)

    def __repr__(self) -> str:
        return f"<afar input router for {self._afar_inner!r}>"


def _breakpointhook_for(previous: Any, sessions: dict[int, Session]) -> Any:
    def breakpointhook(*args: Any, **kwargs: Any) -> Any:
        session = sessions.get(_get_ident())
        if session is None:
            return previous(*args, **kwargs)
        chosen = os.environ.get("PYTHONBREAKPOINT")
        if not session.debug or chosen == "0":
            return None  # disabled, as Python's own hook does for PYTHONBREAKPOINT=0
        if chosen:
            return sys.__breakpointhook__(*args, **kwargs)  # the worker's own choice
        import pdb

        # On the caller's frame, as pdb.set_trace() would (this hook's frame is not shown).
        frame = sys._getframe(1)
        outermost = session.outermost(frame)
        debugger = pdb.Pdb()
        debugger.set_trace(frame)
        # The stack pdb shows (where, up) ends at the block's first frame, not in the worker's.
        # No call from here on: pdb traces this thread now, and would stop in it.
        debugger.botframe = outermost
        return None

    breakpointhook._afar_previous = previous  # type: ignore[attr-defined]
    return breakpointhook


def install_input() -> None:
    """Put the routers in front of ``sys.stdin`` and ``sys.breakpointhook`` (worker setup)."""
    root = _root()
    with root.lock:
        root.installs += 1
        if root.stdin is None or sys.stdin is not root.stdin:
            root.stdin = _StdinRouter(sys.stdin, root.sessions)
            sys.stdin = root.stdin
        if root.hook is None or sys.breakpointhook is not root.hook:
            root.hook = _breakpointhook_for(sys.breakpointhook, root.sessions)
            sys.breakpointhook = root.hook


def remove_input() -> None:
    """Undo one ``install_input``; the last one takes the routers out (if still in front)."""
    root: Any = sys.modules.get(_ROOT_NAME)
    if root is None:
        return
    with root.lock:
        if not root.installs:
            return
        root.installs -= 1
        if root.installs or root.sessions:
            return
        if sys.stdin is root.stdin:
            sys.stdin = root.stdin._afar_inner  # type: ignore[union-attr]
        if sys.breakpointhook is root.hook:
            sys.breakpointhook = root.hook._afar_previous  # type: ignore[attr-defined]
        root.stdin = root.hook = None


class ReadingInput:
    """Inside it, the current thread's input comes from the client (see the module docstring).

    ``emitter`` is the block's output emitter (None: the block is quiet, nobody can answer, and
    input stays the worker's own); ``debug=False`` makes ``breakpoint()`` do nothing.
    """

    def __init__(
        self, block: str, secret: str, emitter: Any, filename: str, debug: bool = True
    ) -> None:
        self.session = None
        root = sys.modules.get(_ROOT_NAME)
        if emitter is None or root is None or not root.installs:
            return
        self.session = Session(block, secret, emitter, filename, debug)
        self._root = root

    def __enter__(self) -> Session | None:
        session = self.session
        if session is not None:
            self._ident = _get_ident()
            self._previous = self._root.sessions.get(self._ident)
            self._root.sessions[self._ident] = session
            self._root.blocks[session.block] = session
        return session

    def __exit__(self, *exc_info: object) -> None:
        session = self.session
        if session is None:
            return
        sessions = self._root.sessions
        if self._previous is None:
            sessions.pop(self._ident, None)
        else:
            sessions[self._ident] = self._previous
        if self._root.blocks.get(session.block) is session:
            del self._root.blocks[session.block]


def answer(block: str, secret: str, request: int, line: str | None) -> bool:
    """``Client.run`` on the block's worker: hand ``line`` to the block waiting for it.

    False: no such block reads input here (it has ended, or was stopped). Refuses a wrong secret.
    """
    root: Any = sys.modules.get(_ROOT_NAME)
    session = None if root is None else root.blocks.get(block)
    if session is None:
        return False
    if not hmac.compare_digest(session.secret, secret):
        raise PermissionError(f"afar: the block {block} was submitted by another client")
    session.answer(int(request), None if line is None else str(line))
    return True


class Failure:
    """A failed block's traceback, kept on its worker for a post-mortem until ``until``.

    The traceback as it was when the block's error left it: the frames the error goes through
    after that (Dask's, on its way to the scheduler) are not part of it.
    """

    __slots__ = ("block", "filename", "label", "secret", "traceback", "until")

    def __init__(
        self, block: str, secret: str, label: str, filename: str, traceback: Any, until: float
    ) -> None:
        self.block, self.secret, self.label, self.filename = block, secret, label, filename
        self.traceback, self.until = traceback, until


def keep_failure(
    topic: str,
    block: str,
    secret: str,
    label: str,
    filename: str,
    error: BaseException,
    seconds: float,
    emitter: Any,
) -> None:
    """Keep ``error`` (its traceback's frames, live) as ``topic``'s client's last failure.

    The previous failure of that client is let go, and this one after ``seconds``; the client
    hears that it is kept (a ``KEPT_FAILURE`` item on its output, before the block's result).
    """
    if seconds <= 0 or emitter is None:
        return
    root = _root()
    until = time.monotonic() + seconds
    root.failures[topic] = Failure(block, secret, label, filename, error.__traceback__, until)
    _forget_expired(root)
    try:
        from distributed import get_worker

        loop = get_worker().loop
        # A timer on the worker's event loop, not a thread per failure (add_callback is the
        # thread-safe way onto the loop).
        loop.add_callback(loop.call_later, seconds, _forget_expired, root)
    except Exception:
        pass  # let go at the next failure or post-mortem of this process instead
    emitter.send(KEPT_FAILURE, {"seconds": seconds})


def _forget_expired(root: Any) -> None:
    now = time.monotonic()
    for topic, failure in list(root.failures.items()):
        if failure.until <= now:
            root.failures.pop(topic, None)


def kept_failure(topic: str, block: str, secret: str) -> Failure | str:
    """The kept failure of ``block``, or why there is none to debug (a sentence)."""
    root: Any = sys.modules.get(_ROOT_NAME)
    failure = None if root is None else root.failures.get(topic)
    if failure is not None and failure.until <= time.monotonic():
        root.failures.pop(topic, None)
        failure = None
    if failure is None or failure.block != block:
        return (
            "its traceback is not kept on its worker any more (afar keeps the last failed block "
            "of each client, for the seconds of the dask config 'afar.debug-keep-seconds')"
        )
    if not hmac.compare_digest(failure.secret, secret):
        return "the block was submitted by another client"
    return failure


def post_mortem(topic: str, block: str, secret: str, client_streams: Any) -> str | None:
    """The post-mortem task: pdb on the kept traceback of ``block``, its input from the client.

    Runs on the failed block's worker (the client submits it there), in a task thread of its
    own; its output and input are those of this task, on ``topic``. Returns None when the
    session has ended, or why it could not start.
    """
    from distributed import get_worker

    failure = kept_failure(topic, block, secret)
    if isinstance(failure, str):
        return failure
    key = str(get_worker().get_current_task())
    with capture_output(topic, key, failure.label, client_streams=client_streams) as emitter:
        sending = emitter if hasattr(emitter, "stop") else None
        with ReadingInput(key, secret, sending, failure.filename) as session:
            if session is None:
                return "this worker cannot send a session's output (afar's plugin is not on it)"
            import pdb

            pdb.post_mortem(_from_block(failure.traceback, failure.filename))
    return None


def _from_block(tb: Any, filename: str) -> Any:
    """The traceback from the block's own first frame on (the worker's frames above left out)."""
    node = tb
    while node is not None and node.tb_frame.f_code.co_filename != filename:
        node = node.tb_next
    return node if node is not None else tb
