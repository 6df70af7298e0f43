"""What runs on the worker: rebuild a block's function from source, run it, return its names.

This module travels to the workers pickled by value (see ``_shipping.py``), so workers need no
afar. It may import only the standard library and ``distributed``, and nothing from afar except
modules that are shipped by value too, through ``from ... import name``. Its module globals are
a fresh copy on every task; state that must live as long as the worker process (the cache of
compiled blocks, the table of running blocks that ``Runtime.transition`` stops) lives in
dictionaries attached to the ``sys`` module.

A block travels as a ``BlockCode`` tuple of plain strings and numbers, never as a code object:
code objects differ between Python minor versions, source compiles anywhere.
"""

from __future__ import annotations
import __future__

import ast
import base64
import builtins
import contextlib
import ctypes
import linecache
import pickle
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any, NamedTuple

from distributed.diagnostics.plugin import WorkerPlugin

from afar._worker.importer import use_modules
from afar._worker.output import DISPLAY, capture_output, install_routers, remove_routers
from afar._worker.progress import watch_progress

# Names no identifier can spell, so they never collide with the user's (pytest does the same).
LOCALS_NAME = "@afar_locals"
DISPLAY_NAME = "@afar_display"
# Process-wide cache of compiled blocks, shared by every version of this module in the process.
CACHE_ATTRIBUTE = "_afar_compiled_blocks_v1"
COMPILE_LOCK_ATTRIBUTE = "_afar_compile_lock_v1"
CACHE_LIMIT = 256
# The name of a block's function, as tracebacks show it: "<afar block script.py:12>".
BLOCK_FUNCTION_PREFIX = "<afar block "
# Process-wide table of afar's worker functions, filled by the Runtime plugin, keyed by digest.
SHIPPED_ATTRIBUTE = "_afar_shipped_functions_v1"
# File name of afar's worker functions, which the client's Dask leaves out of tracebacks
# (dask config "admin.traceback.shorten"), together with the "<string>" of the task's eval.
RUNTIME_FILENAME = "<afar runtime>"
# Process-wide table of the blocks running in this worker process, by task key (see Running).
RUNNING_ATTRIBUTE = "_afar_running_blocks_v1"
# A block being stopped that is still running after this long is in a call Python cannot
# interrupt (C code): afar says so in its output and raises the stop again every this long.
STOP_GRACE_SECONDS = 0.5
# Worker-side states of a task that Dask no longer wants (cancelled, released, forgotten).
UNWANTED_STATES = frozenset({"cancelled", "released", "forgotten"})
# The first item of what a block stopped at its time limit returns instead of its names.
TIMED_OUT = "@afar_timed_out"


class BlockCode(NamedTuple):
    """Everything the worker needs to rebuild a block's function: plain data only."""

    filename: str
    # Source whose lines stand at their original line numbers: either ``def ...:`` followed by
    # the block's body (``wrapped``), or a module-level body (a notebook cell).
    text: str
    wrapped: bool
    # Original source lines of the with statement (header and body) and the number of the first
    # one, registered in ``linecache`` on the worker so that tracebacks show them.
    shown_lines: tuple[str, ...]
    first_shown_line: int
    seeds: tuple[str, ...]  # names read before assignment: parameters of the function
    saved: tuple[str, ...]  # names returned
    single: bool  # return the one saved name's value instead of a dict
    display: bool  # the last statement is an expression whose value is displayed
    label: str  # "file.py:12", for messages
    future_features: tuple[str, ...]  # names of the ``from __future__`` features in force
    secede: bool = False  # leave the worker's thread pool while running (it may wait on Dask)


class Runtime(WorkerPlugin):
    """Loads afar's worker functions (pickled by value) into every worker process once.

    Tasks then name a function by its digest instead of carrying its pickled bytes.
    """

    idempotent = True

    def __init__(self, functions: dict[str, Callable[..., Any]]) -> None:
        self.functions = functions

    def setup(self, worker: Any) -> None:
        for function in self.functions.values():
            function.__code__ = function.__code__.replace(co_filename=RUNTIME_FILENAME)
        sys.__dict__.setdefault(SHIPPED_ATTRIBUTE, {}).update(self.functions)
        # Blocks' prints reach their clients through routers in front of sys.stdout/stderr.
        install_routers()

    def teardown(self, worker: Any) -> None:
        remove_routers()

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        """Stop a running block as soon as Dask no longer wants it (cancelled or released)."""
        if finish in UNWANTED_STATES:
            running = running_blocks()["blocks"].get(key)
            if running is not None:
                running.stop("cancelled")


class BlockStopped(BaseException):
    """Raised asynchronously in the thread of a block that is being stopped.

    A BaseException, as KeyboardInterrupt is: ``except Exception`` in the block does not catch
    it.
    """


def running_blocks() -> dict[str, Any]:
    """The process-wide table of running blocks and the one class of the stop exception.

    Every copy of this module (each task may get its own) uses the same ones.
    """
    table = sys.__dict__.get(RUNNING_ATTRIBUTE)
    if table is None:
        table = sys.__dict__.setdefault(RUNNING_ATTRIBUTE, {"blocks": {}, "error": BlockStopped})
    return table


def _set_async_exc(thread: int, error: Any) -> None:
    """Raise ``error`` (a ``py_object`` of a class) in ``thread`` at its next Python line.

    None withdraws an exception not delivered yet.
    """
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), error)


class Running:
    """One block running in a worker thread, and the stop window of that thread.

    The stop exception is raised into the block's thread only while the block's own function
    runs: ``start`` opens the window right before the call, ``close`` shuts it right after and
    withdraws an exception not delivered yet. They and ``stop`` hold the lock, so an exception
    never lands in Dask's code after the block returned. A stop raises it once (the watchdog
    again, under the lock, while the window is open), so after ``close`` none is pending.
    """

    __slots__ = (
        "emitter",
        "error",
        "label",
        "limit",
        "lock",
        "reason",
        "state",
        "thread",
    )

    def __init__(self, label: str, error: type[BaseException], limit: float | None) -> None:
        self.thread = threading.get_ident()
        self.label = label
        self.error = error
        self.limit = limit
        self.lock = threading.Lock()
        self.state = "starting"  # starting, running, stopping, done
        self.reason: str | None = None  # "cancelled" or "timeout"
        self.emitter: Any = None

    def start(self) -> None:
        """Open the window; a stop asked for before it opened is raised here, at once."""
        with self.lock:
            if self.reason is None:
                self.state = "running"
                return
            self.state = "stopping"
        raise self.error

    def stop(self, reason: str) -> None:
        """Stop the block (from any thread): raise the stop exception in its thread."""
        with self.lock:
            if self.reason is not None or self.state == "done":
                return
            self.reason = reason
            if self.state != "running":
                return  # not started yet: ``start`` raises it
            self.state = "stopping"
            _set_async_exc(self.thread, ctypes.py_object(self.error))
            if self.emitter is not None:
                self.emitter.stop(keep=reason == "timeout")
        threading.Thread(target=self._watch, name="afar-stop-watchdog", daemon=True).start()

    def close(self) -> None:
        """Shut the window (on the block's thread, right after its function); idempotent."""
        with self.lock:
            if self.state == "stopping":
                _set_async_exc(self.thread, None)
            self.state = "done"

    def _watch(self) -> None:
        """Say so when the block does not stop at once (a long call in C), and insist."""
        told = False
        while True:
            time.sleep(STOP_GRACE_SECONDS)  # checks again, also after the block stopped: cheap
            with self.lock:
                if self.state != "stopping":
                    return
                if not told and self.emitter is not None:
                    told = True
                    self.emitter.stop(keep=False, notice=self._notice())
                _set_async_exc(self.thread, ctypes.py_object(self.error))

    def _notice(self) -> str:
        why = (
            f"it ran past its time limit of {self.limit:g} s"
            if self.reason == "timeout"
            else "it was cancelled"
        )
        return (
            f"[afar] {self.label}: stopping the block ({why}); it is in a call that Python "
            "cannot interrupt (C code such as time.sleep or a NumPy operation) and stops at "
            "its next Python line\n"
        )

    def timed_out(self) -> tuple[str, str]:
        """What the block's task returns when stopped at its limit: ``(TIMED_OUT, message)``."""
        return (
            TIMED_OUT,
            f"the block at {self.label} ran past its time limit of {self.limit:g} s "
            f"(remotely(timeout=...)) on {_worker_address()} and was stopped",
        )


def compiled_blocks() -> dict[bytes, tuple[BlockCode, types.CodeType]]:
    cache = getattr(sys, CACHE_ATTRIBUTE, None)
    if cache is None:
        cache = sys.__dict__.setdefault(CACHE_ATTRIBUTE, {})
    return cache


def block_and_code(packed: bytes) -> tuple[BlockCode, types.CodeType]:
    """The block (pickled plain tuple) and its function's code, compiled once per process."""
    cache = compiled_blocks()
    found = cache.get(packed)
    if found is None:
        block = BlockCode(*pickle.loads(packed))
        # Syntax trees are converted under one process-wide lock: CPython 3.11 and 3.12
        # (gh-106905) raise SystemError when two threads do it at once.
        with sys.__dict__.setdefault(COMPILE_LOCK_ATTRIBUTE, threading.Lock()):
            found = (block, compile_block(block))
        register_source(block)
        if len(cache) >= CACHE_LIMIT:
            cache.pop(next(iter(cache)), None)
        cache[packed] = found
    return found


def compile_block(block: BlockCode) -> types.CodeType:
    """Turn the body into ``def <block>(*, seeds): body; return locals()``, keeping its lines."""
    tree = ast.parse(block.text, block.filename, "exec", type_comments=False)
    if block.wrapped:
        function = tree.body[0]
    else:
        function = ast.parse("def _(): pass").body[0]
        function.body = tree.body  # type: ignore[attr-defined]
        tree.body = [function]
    if not isinstance(function, ast.FunctionDef):
        raise TypeError(f"afar: the block at {block.label} did not compile to a function")
    body = function.body
    # The function starts on the body's first line: tools that show a frame's source by its
    # code's first line (stack_data in IPython's tracebacks) then show the body, not the header.
    first = body[0]
    starts = [first.lineno, *(d.lineno for d in getattr(first, "decorator_list", ()))]
    function.lineno = min(starts)
    function.col_offset = 0
    last = body[-1]
    if block.display and isinstance(last, ast.Expr):
        body[-1] = ast.copy_location(
            ast.Assign(targets=[ast.Name(DISPLAY_NAME, ast.Store())], value=last.value), last
        )
    returned = ast.Return(value=ast.Call(ast.Name(LOCALS_NAME, ast.Load()), [], []))
    body.append(ast.copy_location(returned, last))
    function.name = f"{BLOCK_FUNCTION_PREFIX}{block.label}>"
    function.args = ast.arguments(
        posonlyargs=[],
        args=[],
        vararg=None,
        kwonlyargs=[ast.arg(name) for name in block.seeds],
        kw_defaults=[None for _ in block.seeds],
        kwarg=None,
        defaults=[],
    )
    function.end_lineno = max(node.end_lineno or node.lineno for node in body)
    ast.fix_missing_locations(tree)
    flags = 0
    for feature in block.future_features:  # this interpreter's own flags for them
        flags |= getattr(__future__, feature).compiler_flag
    module = compile(tree, block.filename, "exec", flags=flags, dont_inherit=True)
    return next(c for c in module.co_consts if isinstance(c, types.CodeType))


def register_source(block: BlockCode) -> None:
    """Show the block's lines in tracebacks where its file does not exist (the worker)."""
    filename = block.filename
    entry = linecache.cache.get(filename)
    lines: list[str] = list(entry[2]) if entry is not None and len(entry) == 4 else []
    end = block.first_shown_line - 1 + len(block.shown_lines)
    if lines[block.first_shown_line - 1 : end] == list(block.shown_lines):
        return  # the real file (the client, `locally`): leave its entry as linecache keeps it
    if len(lines) < end:
        lines.extend("\n" for _ in range(end - len(lines)))
    lines[block.first_shown_line - 1 : end] = block.shown_lines
    # mtime None: linecache.checkcache keeps the entry (as IPython does for its cells).
    linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)


def new_function(code: types.CodeType, namespace: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """The block's function with ``namespace`` (the variables it reads) as its globals."""
    namespace["__builtins__"] = builtins
    namespace[LOCALS_NAME] = builtins.locals
    namespace.setdefault("__name__", "__afar_block__")
    return types.FunctionType(code, namespace)


def saved_values(block: BlockCode, scope: dict[str, Any]) -> Any:
    """One value (``block.single``) or a dict of the saved names the block assigned."""
    if block.single:
        (name,) = block.saved
        if name not in scope:
            raise missing_name(name, block.label)
        return scope[name]
    return {name: scope[name] for name in block.saved if name in scope}


def missing_name(name: str, label: str) -> NameError:
    """A saved name the block did not assign: a NameError, as reading it would raise.

    A builtin type, since workers have no afar: the client shows it as ``afar.SavedNameError``
    where afar raises it (``afar.get``, the report of a failed ``afar.run`` block); a Future's
    ``result()``, which is Dask's, raises it as this NameError.
    """
    return NameError(
        f"the block at {label} did not assign {name!r} (the statement that assigns it did not "
        "run), so afar cannot save it",
        name=name,
    )


def pick(values: dict[str, Any], which: bytes) -> Any:
    """Getter task: one saved name (``which`` pickles ``(name, label)``) of a block's dict."""
    name, label = pickle.loads(which)
    if isinstance(values, tuple) and values[:1] == (TIMED_OUT,):
        raise TimeoutError(values[1])
    if name not in values:
        raise missing_name(name, label)
    return values[name]


def unpicklable_names(values: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Culprit task: the saved names whose values cannot be pickled, as (name, type, reason).

    Runs where the block's result lives, only after sending the result back has failed.
    """
    import cloudpickle

    found = []
    for name, value in values.items():
        try:
            cloudpickle.dumps(value, protocol=5)
        except Exception as error:
            found.append((name, type(value).__qualname__, f"{type(error).__name__}: {error}"))
    return found


def load_inputs(payload: bytes, label: str) -> dict[str, Any]:
    """Unpickle the variables the block reads; say which module the worker lacks."""
    if not payload:
        return {}
    try:
        return pickle.loads(payload)
    except ModuleNotFoundError as error:
        worker = _worker_address()
        raise ModuleNotFoundError(
            f"The block at {label} reads a variable that needs the module {error.name!r}, "
            f"which {worker} cannot import: install it in the workers' environment "
            "(for example with distributed.diagnostics.plugin.PipInstall).",
            name=error.name,
        ) from None


def run_block(packed: bytes, payload: bytes, futures: dict[str, Any], settings: bytes) -> Any:
    """The body task: bind the inputs, run the block, stream its output, return its names.

    ``packed`` is the pickled ``BlockCode``; ``payload`` the pickled plain variables the block
    reads, ``futures`` those that held Dask Futures (resolved by Dask). Those named by
    ``block.seeds`` are passed as parameters: the block may read them before assigning them.
    ``settings`` pickles ``(stream, strict, limit, modules)``. ``stream`` is ``(topic, the
    client's stream identity, progress)`` for output (None: not captured); with ``progress``,
    the counts of the Dask work the block submits are sent too.
    With ``strict``, every saved name must have been assigned (``afar.get``); otherwise missing
    ones are left out (getter tasks raise). ``limit``: seconds the block may run. ``modules``
    names the versions of the client's own modules the block needs, as ``(name, digest)`` pairs
    (see ``_importer``).

    The block can be stopped while it runs (see ``Running``): when Dask no longer wants its
    task, it returns None (Dask drops it); past ``limit``, it returns ``Running.timed_out()``.

    Everything happens in this one frame, so that a traceback shows one frame of afar's (which
    the client's Dask hides, see ``RUNTIME_FILENAME``) above the user's lines.
    """
    from distributed import get_worker

    stream, strict, limit, modules = pickle.loads(settings)
    block, code = block_and_code(packed)
    if modules:
        use_modules(modules, block.label)  # before unpickling: inputs may refer to them
    namespace = load_inputs(payload, block.label)
    namespace.update(futures)
    seeds = {name: namespace.pop(name) for name in block.seeds if name in namespace}
    function = new_function(code, namespace)
    key = get_worker().get_current_task()
    if stream is None:
        capturing: Any = contextlib.nullcontext(None)
        progress = False
    else:
        # (topic, client's stream identity[, whether to report the progress of Dask work])
        options: list[Any]
        topic, client_streams, *options = stream
        progress = bool(options and options[0])
        capturing = capture_output(topic, str(key), block.label, client_streams=client_streams)
    table = running_blocks()
    stop_error = table["error"]
    running = Running(block.label, stop_error, limit)
    seceded = block.secede and _secede()
    table["blocks"][key] = running
    timer = None
    try:
        with capturing as emitter:
            running.emitter = emitter if hasattr(emitter, "stop") else None  # None: quiet
            watcher = watch_progress(emitter) if progress else None
            try:
                try:
                    try:
                        if limit is not None:
                            timer = threading.Timer(limit, running.stop, ("timeout",))
                            timer.daemon = True
                            timer.start()
                        running.start()
                        scope = function(**seeds)
                    finally:
                        running.close()
                except stop_error:
                    running.close()  # if the stop landed in the first close
                    return running.timed_out() if running.reason == "timeout" else None
                except ModuleNotFoundError as error:
                    if not (error.name and _raised_by_block(error, block)):
                        raise
                    # An import in the block itself: keep the type, say where and what to do.
                    message = (
                        f"No module named {error.name!r} on {_worker_address()} (block at "
                        f"{block.label}): install it in the workers' environment, for example "
                        "with distributed.diagnostics.plugin.PipInstall"
                    )
                    raise ModuleNotFoundError(message, name=error.name).with_traceback(
                        error.__traceback__.tb_next if error.__traceback__ else None
                    ) from None
            finally:
                if watcher is not None:
                    watcher.stop()
            shown = scope.pop(DISPLAY_NAME, None)
            if emitter is not None and shown is not None:
                emitter.send(DISPLAY, mimebundle(shown))
    finally:
        if timer is not None:
            timer.cancel()
        table["blocks"].pop(key, None)
        if seceded:
            from distributed import rejoin

            rejoin()
    values = saved_values(block, scope)
    if strict and not block.single:
        missing = [name for name in block.saved if name not in values]
        if missing:
            raise missing_name(missing[0], block.label)
    return values


def _secede() -> bool:
    """Leave the worker's thread pool, so that tasks the block waits for can run."""
    from distributed import secede

    try:
        secede()
    except (ValueError, KeyError):  # not in a worker's task thread
        return False
    return True


def run_here(
    packed: bytes, namespace: dict[str, Any], show: Callable[[Any], None] | None
) -> dict[str, Any]:
    """Run a block in this process (``locally``): the same function, no pickling of inputs."""
    block, code = block_and_code(packed)
    seeds = {name: namespace.pop(name) for name in block.seeds if name in namespace}
    scope = new_function(code, namespace)(**seeds)
    shown = scope.pop(DISPLAY_NAME, None)
    if show is not None and shown is not None:
        show(shown)
    values = saved_values(block, scope)
    return {block.saved[0]: values} if block.single else values


def _raised_by_block(error: BaseException, block: BlockCode) -> bool:
    tb = error.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and last.tb_frame.f_code.co_filename == block.filename


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return f"worker {get_worker().address}"
    except (ImportError, ValueError):
        return "this process"


def mimebundle(value: Any) -> dict[str, str]:
    """The value's rich representations, computed where the value lives (IPython's protocol)."""
    bundle: dict[str, str] = {}
    method = getattr(value, "_repr_mimebundle_", None)
    if callable(method):
        try:
            produced = method()
        except Exception:
            produced = None
        if isinstance(produced, tuple):
            produced = produced[0]
        if isinstance(produced, dict):
            bundle.update({k: v for k, v in produced.items() if isinstance(v, str)})
    for mime, name in REPR_METHODS:
        if mime in bundle:
            continue
        method = getattr(value, name, None)
        if not callable(method) or isinstance(value, type):
            continue
        try:
            text = method()
        except Exception:
            continue
        if isinstance(text, tuple):
            text = text[0]
        if isinstance(text, bytes) and mime.startswith("image/"):
            text = base64.b64encode(text).decode("ascii")  # as IPython puts images in bundles
        if isinstance(text, str):
            bundle[mime] = text
    bundle.setdefault("text/plain", _plain_repr(value))
    return bundle


def _plain_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as error:
        return f"<repr of {type(value).__name__} failed: {error!r}>"


REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("text/latex", "_repr_latex_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("application/json", "_repr_json_"),
)
