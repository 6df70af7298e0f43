"""Traceback surgery: an error shows the block's own lines, not afar's or Dask's frames.

Errors come back from workers with Dask's and afar's runtime frames around the block's; Ctrl-C
strikes in Dask's waiting code; IPython shows a cell's stub frames at the wrong line. Every
rewrite of what the user sees of an error lives here, so the with protocol only has to raise
the result from its own frame (the one afar frame a user sees above the block's lines).
"""

from __future__ import annotations

import itertools
import re
import types
from typing import TYPE_CHECKING

from afar import _ipython
from afar._worker.runtime import ENDED_ATTRIBUTE, RUNTIME_FILENAME, run_here
from afar.errors import SavedNameError

if TYPE_CHECKING:
    from afar._variables import Entry

# File names of afar's worker functions as tracebacks from workers show them (by-value code).
# With `locally`, the same functions run from afar's own file.
_WORKER_FILENAMES = frozenset({RUNTIME_FILENAME, "<dynamic-code>", run_here.__code__.co_filename})
# The file name of the task's own ``eval`` (see ``afar._shipping``).
_TASK_FILENAME = "<string>"


def _unassigned_name(error: NameError) -> str | None:
    """The name in the worker's message (``missing_name``): pickling drops ``NameError.name``."""
    found = re.search(r"did not assign '([^']+)'", str(error))
    return found.group(1) if found else None


# What a block's SystemExit or KeyboardInterrupt became on the worker, by name (see above).
_ENDED: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
}


def shown_from_block(
    error: BaseException, skipped: BaseException | None, filename: str
) -> BaseException:
    """The error as the user should see it: from the block's first line, not afar's frames.

    Raised in ``__exit__``, it would show the location's skip signal as its context ("During
    handling of the above exception..."): that context is noise, the block's error is the news.
    """
    tb = block_frames(error.__traceback__, filename)
    ended = getattr(error, ENDED_ATTRIBUTE, None)
    if type(error) is RuntimeError and isinstance(ended, tuple) and len(ended) == 2:
        kind, args = ended
        original = _ENDED.get(kind)
        if original is not None and isinstance(args, tuple):
            # The block's own sys.exit() (or KeyboardInterrupt), which afar caught on the
            # worker (``ended_process``): raised here as it would have been, run here.
            error = original(*args).with_traceback(error.__traceback__)
    if tb is None and type(error) is NameError and _raised_by_afar_on_the_worker(error):
        # A saved name the block did not assign (a builtin NameError: workers have no afar).
        error = SavedNameError(*error.args, name=error.name or _unassigned_name(error))
    elif tb is not None or _raised_by_afar_on_the_worker(error):
        error = error.with_traceback(_for_ipython(tb))
    elif isinstance(error, KeyboardInterrupt):
        # Ctrl-C while afar waited: it struck in Dask's or threading's code, which says nothing
        # to the user. Raised again from __exit__, it points at the with statement.
        error = error.with_traceback(None)
    if error.__context__ is None or error.__context__ is skipped:
        error.__suppress_context__ = True
    return error


def block_frames(tb: types.TracebackType | None, filename: str) -> types.TracebackType | None:
    """The traceback from the block's own frame on, or None if the block raised nothing itself.

    The block's frame is named as Python names it where it is written (the caller's function,
    ``<module>``), so it is found by its place: after afar's last runtime frame (the task's
    ``eval``, the worker function, ``run_here``), or, where Dask left those out of a worker's
    traceback (``admin.traceback.shorten``), the first frame of the block's file.
    """
    after_runtime = None
    seen_runtime = False
    node = tb
    while node is not None:
        name = node.tb_frame.f_code.co_filename
        if name in _WORKER_FILENAMES or name == _TASK_FILENAME:
            seen_runtime = True
            after_runtime = node.tb_next
        node = node.tb_next
    if seen_runtime:
        return after_runtime
    node = tb
    while node is not None and node.tb_frame.f_code.co_filename != filename:
        node = node.tb_next
    return node


def _for_ipython(tb: types.TracebackType | None) -> types.TracebackType | None:
    """In IPython, the block's frames as module-level frames, whose source IPython shows right.

    The block's frames come from the worker, rebuilt by Dask (tblib) as stub frames. IPython 9
    shows a stub frame of a cell by the source block starting at its code's first line (the
    with statement) unless the frame is a module's, which it shows at its line: such a frame,
    at the same file and line, replaces each of the block's own frames.
    """
    if tb is None or _ipython.shell() is None:
        return tb
    frames: list[types.TracebackType] = []
    node: types.TracebackType | None = tb
    while node is not None:
        code = node.tb_frame.f_code
        if node is tb:  # the block's own frame
            frames.append(_module_frame(code.co_filename, node.tb_lineno) or node)
        else:
            frames.append(node)
        node = node.tb_next
    for frame, following in itertools.pairwise(frames):
        frame.tb_next = following
    frames[-1].tb_next = None
    return frames[0]


def _module_frame(filename: str, lineno: int) -> types.TracebackType | None:
    """A traceback entry of a module-level frame of ``filename`` stopped at ``lineno``."""
    stub = compile("\n" * (lineno - 1) + "raise __afar_stub__", filename, "exec")
    try:
        exec(stub, {"__afar_stub__": RuntimeError()})
    except RuntimeError as raised:
        entry = raised.__traceback__.tb_next if raised.__traceback__ else None
        if entry is not None:
            entry.tb_next = None
        return entry
    return None


def note_block(error: BaseException, entry: Entry) -> BaseException:
    """Dask's own errors about the block (KilledWorker, a cancelled Future), made clear.

    KilledWorker names only the task's key: a note names the block (Python 3.11+). Their
    traceback runs through Dask's client code, whose frames hold the block's Future: dropped.
    """
    if isinstance(error, KeyboardInterrupt) and error.__traceback__ is None:
        if hasattr(error, "add_note"):
            error.add_note(f"[afar] the block at {entry.block.label} was stopped on the worker")
        return error
    if type(error).__module__.startswith("distributed."):
        error = error.with_traceback(None)
        if hasattr(error, "add_note"):
            error.add_note(f"[afar] raised for the block at {entry.block.site.where()}")
    return error


def _raised_by_afar_on_the_worker(error: BaseException) -> bool:
    """afar's own errors on the worker (a saved name not assigned) say all in their message."""
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in _WORKER_FILENAMES:
            return True
        tb = tb.tb_next
    return False


def cause(error: BaseException) -> BaseException | None:
    return error.__cause__
