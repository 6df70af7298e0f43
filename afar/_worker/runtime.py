"""What runs on the worker: the worker plugin, and the task that runs a block and returns its names.

This package travels to the workers pickled by value (see ``afar/_worker/__init__.py``), so
workers need no afar. Its module globals are a fresh copy on every task; state that must live as
long as the worker process (the cache of compiled blocks, the table of running blocks that
``Runtime.transition`` stops) lives in dictionaries attached to the ``sys`` module. Rebuilding
the block's function is ``compiling``'s; stopping it, ``stopping``'s; its output, ``output``'s.
"""

from __future__ import annotations

import contextlib
import itertools
import pickle
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from afar._worker.compiling import (
    DISPLAY_NAME,
    BlockCode,
    block_and_code,
    call_block,
    new_function,
)
from afar._worker.debugging import ReadingInput, install_input, keep_failure, remove_input
from afar._worker.display import Displayer, mimebundle
from afar._worker.importer import use_modules
from afar._worker.output import DISPLAY, capture_output
from afar._worker.plots import install_backend, plots_for
from afar._worker.progress import watch_progress
from afar._worker.routing import install_routers, remove_routers
from afar._worker.stopping import (
    TIMED_OUT,
    UNWANTED_STATES,
    Running,
    running_blocks,
    worker_address,
)

# Process-wide table of afar's worker functions, filled by the Runtime plugin, keyed by digest.
SHIPPED_ATTRIBUTE = "_afar_shipped_functions_v1"
# File name of afar's worker functions, which the client's Dask leaves out of tracebacks
# (dask config "admin.traceback.shorten"), together with the "<string>" of the task's eval.
RUNTIME_FILENAME = "<afar runtime>"


class Runtime(WorkerPlugin):
    """Loads afar's worker functions (pickled by value) into every worker process once.

    Tasks then name a function by its digest instead of carrying its pickled bytes.
    """

    idempotent = True

    def __init__(
        self, functions: dict[str, Callable[..., Any]], client_process: Any = None
    ) -> None:
        self.functions = functions
        # (host, pid) of the client that registered it: a worker in that process keeps the
        # client's pyplot backend (see afar._worker.plots).
        self.client_process = client_process

    def setup(self, worker: Any) -> None:
        for function in self.functions.values():
            function.__code__ = function.__code__.replace(co_filename=RUNTIME_FILENAME)
        sys.__dict__.setdefault(SHIPPED_ATTRIBUTE, {}).update(self.functions)
        # Blocks' prints reach their clients through routers in front of sys.stdout/stderr.
        install_routers()
        # Their input() and breakpoint() read from their clients (afar._worker.debugging).
        install_input()
        install_backend(self.client_process)

    def teardown(self, worker: Any) -> None:
        remove_input()
        remove_routers()

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        """Stop a running block as soon as Dask no longer wants it (cancelled or released)."""
        if finish in UNWANTED_STATES:
            running = running_blocks()["blocks"].get(key)
            if running is not None:
                running.stop("cancelled")


def saved_values(block: BlockCode, scope: dict[str, Any]) -> Any:
    """One value (``block.single``) or a dict of the saved names the block assigned."""
    if block.single:
        (name,) = block.saved
        if name not in scope:
            raise missing_name(name, block.label)
        return keep_exact_type(scope[name])
    values = {name: scope[name] for name in block.saved if name in scope}
    for value in values.values():
        keep_exact_type(value)
    return values


# The entry of a block's dict of values that names the qualified names of the classes among
# them (see ``nested_qualnames``); no identifier can spell it.
QUALNAMES_NAME = "@afar_qualnames"


def nested_qualnames(values: dict[str, Any]) -> dict[str, str]:
    """``__qualname__`` of the classes the block defined in a function, by saved name.

    cloudpickle sends a class defined in a block by value and rebuilds it with its ``__name__``
    as its ``__qualname__`` (``P`` for ``f.<locals>.P``): the client puts it back. For a saved
    class, and for the class of a saved instance.
    """
    found = {}
    for name, value in values.items():
        kind = value if isinstance(value, type) else type(value)
        qualname = getattr(kind, "__qualname__", None)
        if isinstance(qualname, str) and "<locals>" in qualname:
            found[name] = qualname
    return found


# Process-wide: the ndarray subclasses for which this process's Dask serializes by pickle.
EXACT_TYPES_ATTRIBUTE = "_afar_exact_types_v1"


def keep_exact_type(value: Any, depth: int = 0) -> Any:
    """Make Dask send ``value`` (and what a list, tuple or dict of it holds) as it is.

    Dask's NumPy serializer rebuilds a subclass of ``ndarray`` (a masked or record array, a
    user's subclass with attributes) as a plain ``ndarray``; only ``np.matrix`` has its own.
    For such a type, this process's Dask gets a serializer that declines (NotImplementedError:
    Dask then pickles it, protocol 5, buffers out of band), so the type, its attributes and its
    layout arrive as they left. Types are looked at, never the data, a few levels deep (a dict
    may hold itself: ``g = globals()``). Returns ``value``.
    """
    kind = type(value)
    if kind in (list, tuple, dict):
        if depth < EXACT_SCAN_DEPTH:
            items = value.values() if kind is dict else value
            for item in itertools.islice(items, EXACT_SCAN_ITEMS):
                keep_exact_type(item, depth + 1)
    elif kind.__module__ != "numpy" or kind.__name__ != "ndarray":
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(value, numpy.ndarray) and kind is not numpy.matrix:
            registered = sys.__dict__.setdefault(EXACT_TYPES_ATTRIBUTE, set())
            if kind not in registered:
                from distributed.protocol import dask_serialize

                dask_serialize.register(kind)(_pickled_by_dask)
                registered.add(kind)
    return value


# How deep into lists, tuples and dicts keep_exact_type looks.
EXACT_SCAN_DEPTH = 3
# Items of a list, tuple or dict looked at for such types (a long list is not walked whole).
EXACT_SCAN_ITEMS = 64


def _pickled_by_dask(value: Any, context: Any = None) -> Any:
    raise NotImplementedError  # Dask goes on to its pickle serializer


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
    return keep_exact_type(values[name])


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
        worker = worker_address()
        raise ModuleNotFoundError(
            f"The block at {label} reads a variable that needs the module {error.name!r}, "
            f"which {worker} cannot import: install it in the workers' environment "
            "(for example with distributed.diagnostics.plugin.PipInstall).",
            name=error.name,
        ) from None


def private_copies(namespace: dict[str, Any], kept: tuple[str, ...]) -> dict[str, Any]:
    """The block's own copies of its large inputs (``afar._worker.kept.Kept``), by name: one per
    kept value, so that two names of one value are one object in the block too. Each is a
    ``Lease``, to give back once the block is over (``give_back``)."""
    leases: dict[int, Any] = {}
    found = {}
    for name in kept:
        stored = namespace[name]
        if id(stored) not in leases:
            leases[id(stored)] = stored.lease()
        found[name] = leases[id(stored)]
    return found


# The attribute of the RuntimeError that stands in for a block's SystemExit or KeyboardInterrupt:
# (the builtin's name, its args). Exceptions pickle their ``__dict__``: it reaches the client.
ENDED_ATTRIBUTE = "afar_ended_process"


def ended_process(error: BaseException, label: str) -> RuntimeError:
    """A RuntimeError for a block's own SystemExit (``sys.exit()``) or KeyboardInterrupt.

    Dask lets those two end the worker's process, as asyncio does, and then runs the task again
    elsewhere until it gives up (KilledWorker): a block that calls ``sys.exit()`` would take
    down workers one by one. A builtin type (workers have no afar), with the original's name and
    args in ``ENDED_ATTRIBUTE``, from which the client raises the original again at the ``with``.
    """
    kind = "SystemExit" if isinstance(error, SystemExit) else "KeyboardInterrupt"
    shown = f"sys.exit({error.code!r})" if isinstance(error, SystemExit) else kind
    ended = RuntimeError(
        f"the block at {label} raised {shown} on {worker_address()}, which would end the "
        "worker's process: afar ended the block instead"
    )
    setattr(ended, ENDED_ATTRIBUTE, (kind, error.args))
    return ended.with_traceback(error.__traceback__)


def run_block(packed: bytes, payload: bytes, futures: dict[str, Any], settings: bytes) -> Any:
    """The body task: bind the inputs, run the block, stream its output, return its names.

    ``packed`` is the pickled ``BlockCode``; ``payload`` the pickled plain variables the block
    reads, ``futures`` those that held Dask Futures (resolved by Dask). Those named by
    ``block.seeds`` are passed as parameters: the block may read them before assigning them.
    ``settings`` pickles ``(stream, strict, limit, modules, displays, kept, plotting,
    debugging)``; ``debugging`` is ``(secret, debug, keep_seconds)``: the block's input comes from
    its client, which answers with ``secret``; ``debug`` whether ``breakpoint()`` opens pdb; a
    failed block's traceback is kept ``keep_seconds`` for a post-mortem (see ``debugging``);
    ``plotting`` is what the client wants of the block's pyplot figures (see ``plots_for``);
    ``displays`` names
    the variables that held IPython's ``display`` on the client (see ``Displayer``); ``kept``
    those among ``futures`` that are large values kept on the cluster (see ``private_copies``).
    ``stream`` is ``(topic, the client's stream identity, progress)`` for output (None: not
    captured); with ``progress``, the counts of the Dask work the block submits are sent too.
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

    stream, strict, limit, modules, displays, kept, plotting, debugging = pickle.loads(settings)
    block, code = block_and_code(packed)
    if modules:
        use_modules(modules, block.label)  # before unpickling: inputs may refer to them
    namespace = load_inputs(payload, block.label)
    namespace.update(futures)
    leases = private_copies(namespace, kept) if kept else {}
    namespace.update({name: lease.value for name, lease in leases.items()})
    displayer = Displayer() if displays else None
    namespace.update(dict.fromkeys(displays, displayer))
    call = call_block(block, new_function(block, code, namespace), namespace)
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
            secret, debug, keep_seconds = debugging
            reading = ReadingInput(str(key), secret, running.emitter, block.filename, debug)
            if displayer is not None:
                displayer.emitter = running.emitter
            # The block's pyplot figures: sent where the client wants them, and closed.
            plots = plots_for(plotting, running.emitter, block.label)
            with plots:
                watcher = watch_progress(emitter) if progress else None
                try:
                    if limit is not None:
                        timer = threading.Timer(limit, running.stop, ("timeout",))
                        timer.daemon = True
                        timer.start()
                    # Past this call no stop is pending for this thread or can come (see Running).
                    with reading:
                        returned, scope = running.call(call)
                    if returned and block.module_level:
                        scope = namespace  # module code: its namespace is its scope
                finally:
                    if watcher is not None:
                        watcher.stop()
                if not returned:
                    error = scope
                    if isinstance(error, stop_error):
                        # Let go of the block's frames (and the Futures they hold, which cancels
                        # the work they started) now, not after ``rejoin`` below, which may wait:
                        # their locals are cleared, whatever cycle holds the frames (on 3.13 one
                        # did, until the collector ran seconds later), and a module-level
                        # block's namespace is emptied.
                        traceback.clear_frames(error.__traceback__)
                        namespace.clear()
                        del error, scope
                        plots.discard()  # a stopped block's figures are closed, not sent
                        return running.timed_out() if running.reason == "timeout" else None
                    if (
                        isinstance(error, ModuleNotFoundError)
                        and error.name
                        and _raised_by_block(error, block)
                    ):
                        # An import in the block itself: keep the type, say where and what to do.
                        message = (
                            f"No module named {error.name!r} on {worker_address()} (block at "
                            f"{block.label}): install it in the workers' environment, for example "
                            "with distributed.diagnostics.plugin.PipInstall"
                        )
                        raise ModuleNotFoundError(message, name=error.name).with_traceback(
                            error.__traceback__
                        ) from None
                    if isinstance(error, (SystemExit, KeyboardInterrupt)):
                        raise ended_process(error, block.label) from None
                    if stream is not None:
                        keep_failure(
                            stream[0],
                            str(key),
                            secret,
                            block.label,
                            block.filename,
                            error,
                            keep_seconds,
                            running.emitter,
                        )
                    raise error
                shown = scope.pop(DISPLAY_NAME, None)
                if emitter is not None and shown is not None:
                    emitter.send(DISPLAY, plots.bundle(shown) or mimebundle(shown))
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
    if not block.single:
        qualnames = nested_qualnames(values)
        if qualnames:
            values[QUALNAMES_NAME] = qualnames
    if leases:
        # What the block made is dropped first: a mapping is taken back only if nothing uses it.
        del scope, namespace, call
        for lease in leases.values():
            lease.give_back()
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
    call = call_block(block, new_function(block, code, namespace), namespace)
    scope = call()
    if block.module_level:
        scope = namespace
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
