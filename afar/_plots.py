"""A block's pyplot figures on the client: what the worker is asked for, and where they go.

In a notebook the worker renders the block's figures in the formats and settings of the client's
inline backend (``%config InlineBackend.figure_formats``, ``print_figure_kwargs``, the rcParams
the client changed, styles included), and the block's cell shows them: at each ``plt.show()``
while the block runs, and at its end for the figures still open, as the inline backend does.
Elsewhere (a script, a terminal) the figures come back pickled and join this process's pyplot,
as if they had been drawn here: ``plt.savefig`` after the block saves the last one, and after a
block that called ``plt.show()`` this process's ``plt.show()`` shows them (a window, with an
interactive backend). Windows are opened in the thread that waits for the block (``afar.get``)
or, for ``afar.run``, at the next afar block the main thread ends, never in Dask's threads.

Nothing here imports matplotlib unless the client already did or a figure arrives. The worker
side is ``afar._worker.plots``.
"""

from __future__ import annotations

import pickle
import re
import sys
import threading
from typing import Any

from afar._worker.plots import FIGURES, INLINE, PlotMode

# Modules whose use in a block means pyplot, directly or through them: the block then takes its
# turn on pyplot on its worker (see afar._worker.plots).
PYPLOT_MODULES = ("matplotlib", "seaborn", "pandas.plotting", "plotnine")
# Methods of pandas and xarray objects that plot with pyplot (``df.plot()``, ``s.hist()``).
PLOTTING_METHODS = re.compile(r"\.(plot|hist|boxplot|scatter_matrix|imshow|contourf?)\b")
# rcParams that are about this process, not about what a figure looks like.
LOCAL_RC_PREFIXES = (
    "backend",
    "interactive",
    "toolbar",
    "timezone",
    "webagg.",
    "tk.",
    "macosx.",
    "keymap.",
    "savefig.directory",
    "figure.hooks",
    "figure.raise_window",
)
# Backends that open no window: figures may join pyplot from any thread.
WINDOWLESS_BACKENDS = frozenset({"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"})

_pending: list[dict[str, Any]] = []  # pickled figures waiting for the main thread
_pending_lock = threading.Lock()


def plotting_for(block: Any, values: dict[str, Any], in_cell: bool) -> tuple[Any, bool]:
    """What the worker does with the block's figures: ``(PlotMode as a tuple, turn)``."""
    rc = changed_rc()
    if in_cell:
        formats, print_kwargs = inline_settings()
        mode = PlotMode(INLINE, formats, print_kwargs, rc)
    else:
        mode = PlotMode(FIGURES, rc=rc)
    return tuple(mode), may_use_pyplot(block, values)


def may_use_pyplot(block: Any, values: dict[str, Any]) -> bool:
    """Whether the block may draw with pyplot: it imports or reads matplotlib (or a library
    that plots with it), or calls a plotting method. A block that plots through other code of
    the caller's is not seen: its figures still come back, without taking turns."""
    if any(_plotting_module(name) for name in block.imports):
        return True
    for value in values.values():
        name = value.__name__ if isinstance(value, type(sys)) else type(value).__module__
        if isinstance(name, str) and _plotting_module(name):
            return True
    return bool(PLOTTING_METHODS.search(block.source))


def _plotting_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in PYPLOT_MODULES)


def changed_rc() -> tuple[tuple[str, Any], ...]:
    """The rcParams of this process that differ from matplotlib's defaults (a style too), if
    matplotlib is imported here; none of what is only about this process."""
    matplotlib = sys.modules.get("matplotlib")
    if matplotlib is None:
        return ()
    changed = []
    defaults = matplotlib.rcParamsDefault
    for key, value in matplotlib.rcParams.items():
        if key.startswith(LOCAL_RC_PREFIXES):
            continue
        try:
            same = bool(defaults[key] == value)
        except Exception:
            same = False
        if same:
            continue
        try:
            pickle.dumps(value)
        except Exception:
            continue  # what cannot travel stays (a cycler of functions, say)
        changed.append((key, value))
    return tuple(changed)


def inline_settings() -> tuple[tuple[str, ...], tuple[tuple[str, Any], ...]]:
    """The inline backend's figure formats and print options, as configured in this kernel."""
    formats: tuple[str, ...] = ("png",)
    print_kwargs: dict[str, Any] = {"bbox_inches": "tight"}
    config = sys.modules.get("matplotlib_inline.config")
    backend = getattr(config, "InlineBackend", None)
    if backend is not None and backend.initialized():
        settings = backend.instance()
        formats = tuple(sorted(settings.figure_formats)) or formats
        print_kwargs = dict(settings.print_figure_kwargs)
    else:
        configured = _shell_config()
        if configured is not None:
            formats = tuple(sorted(configured.get("figure_formats", formats))) or formats
            print_kwargs = dict(configured.get("print_figure_kwargs", print_kwargs))
    return formats, tuple(sorted(print_kwargs.items()))


def _shell_config() -> dict[str, Any] | None:
    """``%config InlineBackend...`` values the shell holds before the backend is loaded."""
    from afar import _ipython

    shell = _ipython.shell()
    config = getattr(shell, "config", None)
    if config is None or "InlineBackend" not in config:
        return None
    return dict(config.InlineBackend)


# -- figures that come back ---------------------------------------------------------------------
def arrived(payload: Any) -> None:
    """A figure of a block, pickled (on Dask's thread): into pyplot now if no window can open,
    else when the main thread next ends an afar block (``take``)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("pickle"), bytes):
        return
    if _windowless() or threading.current_thread() is threading.main_thread():
        _restore([payload])
        return
    with _pending_lock:
        _pending.append(payload)


def take() -> None:
    """On the thread that ends a block: the figures that arrived join pyplot, and
    ``plt.show()`` shows them if the block showed them. Only the main thread takes figures
    that may open windows."""
    if not _pending and not _shown:
        return
    if threading.current_thread() is not threading.main_thread() and not _windowless():
        return
    with _pending_lock:
        payloads = list(_pending)
        _pending.clear()
    if payloads:
        _restore(payloads)
    shown = _shown.pop() if _shown else None
    if shown:
        import matplotlib.pyplot as pyplot

        pyplot.show()


_shown: list[bool] = []  # a block showed figures: take() shows them here


def _restore(payloads: list[dict[str, Any]]) -> None:
    for payload in payloads:
        try:
            pickle.loads(payload["pickle"])  # joins pyplot: a figure pickles its manager's state
        except Exception as error:
            print(
                f"[afar] a figure of a block could not join this process's pyplot "
                f"({type(error).__name__}: {error})",
                file=sys.stderr,
            )
            continue
        if payload.get("show") and not _shown:
            _shown.append(True)


def _windowless() -> bool:
    """Whether pyplot here opens no window (its backend, or the one it would choose)."""
    import os

    matplotlib = sys.modules.get("matplotlib")
    chosen: Any = os.environ.get("MPLBACKEND", "")
    if matplotlib is not None:
        # Read without resolving it: reading rcParams["backend"] would import pyplot.
        chosen = dict.__getitem__(matplotlib.rcParams, "backend")
    backend = chosen.lower() if isinstance(chosen, str) else ""
    if backend in WINDOWLESS_BACKENDS or backend.startswith("module://"):
        return True
    if backend:
        return False  # an interactive backend, chosen
    # Not chosen yet: pyplot picks Agg where there is no screen to open a window on.
    screen = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    return sys.platform.startswith("linux") and not screen
