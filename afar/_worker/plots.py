"""A block's pyplot figures on the worker: made with a backend of afar's, sent to the client.

Worker processes get ``MPLBACKEND=module://_afar_pyplot_backend`` from the worker plugin (only
worker processes of their own: a worker in the client's process keeps the client's pyplot). The
backend is Agg's canvas, so a worker never opens a window, and a ``show`` of afar's: at
``plt.show()`` in a block, and once more when the block ends, the figures the block made are
sent to its client with the block's output and closed. How they are sent is the client's choice
(``PlotMode``): rendered in the client's inline formats and settings (a notebook), or pickled, so
that the client's own pyplot takes them (a script, a terminal).

pyplot keeps one current figure per process. Blocks that may use it (the client tells, from the
block's imports and variables) take turns on a worker: from the block's start to its end, one
block at a time uses pyplot there. A block starts with no figure of another block's, and its
own are closed when it ends, shown or not. Nothing here imports matplotlib unless a block does.
Like the rest of ``afar._worker`` this module travels to workers by value.
"""

from __future__ import annotations

import base64
import io
import os
import pickle
import sys
import threading
import types
from typing import Any, NamedTuple

from afar._worker.protocol import DISPLAY, FIGURE

BACKEND_MODULE = "_afar_pyplot_backend"
BACKEND = f"module://{BACKEND_MODULE}"
# Process-wide: the plots of the blocks running now, by thread; the turn of blocks using pyplot.
STATE_ATTRIBUTE = "_afar_plots_v1"
INLINE = "inline"  # rendered where the block was written: a notebook cell
FIGURES = "figures"  # pickled, for the client's own pyplot: a script, a terminal
# Seconds a block waits for its turn on pyplot before it goes on without it (and says so): a
# block that waits for another block of the same worker while that one waits for the turn
# would wait forever otherwise.
TURN_TIMEOUT_SECONDS = 120
# Inline formats: (matplotlib's format, MIME type, dpi factor); "retina" is PNG at twice the dpi.
INLINE_FORMATS = {
    "png": ("png", "image/png", 1),
    "retina": ("png", "image/png", 2),
    "png2x": ("png", "image/png", 2),
    "jpg": ("jpeg", "image/jpeg", 1),
    "jpeg": ("jpeg", "image/jpeg", 1),
    "svg": ("svg", "image/svg+xml", 1),
    "pdf": ("pdf", "application/pdf", 1),
}
TEXT_MIME_TYPES = frozenset({"image/svg+xml"})


class PlotMode(NamedTuple):
    """What the client wants of a block's figures (plain data: it travels in the settings)."""

    kind: str  # INLINE or FIGURES
    formats: tuple[str, ...] = ("png",)  # the client's InlineBackend.figure_formats
    print_kwargs: tuple[tuple[str, Any], ...] = (("bbox_inches", "tight"),)
    rc: tuple[tuple[str, Any], ...] = ()  # rcParams the client changed (style included)


def _state() -> Any:
    state = sys.__dict__.get(STATE_ATTRIBUTE)
    if state is None:
        fresh = types.SimpleNamespace(blocks={}, turn=threading.RLock(), installed=False)
        state = sys.__dict__.setdefault(STATE_ATTRIBUTE, fresh)
    return state


def install_backend(client_process: tuple[str, int] | None) -> None:
    """Make afar's backend the default of pyplot in this worker process (plugin setup).

    Not where the client runs too (a worker in the client's process): the client's pyplot is
    the user's. The module stands in ``sys.modules`` and builds its classes when pyplot first
    asks for them, so that nothing of matplotlib is imported here.
    """
    import socket

    if client_process is not None and client_process == (socket.gethostname(), os.getpid()):
        return
    _state().installed = True
    module = sys.modules.get(BACKEND_MODULE)
    if module is None:
        module = types.ModuleType(BACKEND_MODULE, "afar: pyplot's backend in a block")
        module.__getattr__ = _backend_attribute  # type: ignore[method-assign]
        sys.modules.setdefault(BACKEND_MODULE, module)
    os.environ["MPLBACKEND"] = BACKEND


def _backend_attribute(name: str) -> Any:
    """The backend's module attributes, made on first use (PEP 562)."""
    if name not in ("FigureCanvas", "FigureManager", "show"):
        raise AttributeError(name)
    from matplotlib.backend_bases import FigureManagerBase
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    class FigureManager(FigureManagerBase):
        """A figure's manager: no window; shows by sending, through the block's plots."""

        def __init__(self, canvas: Any, num: Any) -> None:
            super().__init__(canvas, num)
            self.afar_thread = threading.get_ident()  # whose figure it is (see BlockPlots)

        def show(self) -> None:
            plots = running_plots()
            if plots is not None:
                plots.send([self.canvas.figure], shown=True)

    class FigureCanvas(FigureCanvasAgg):
        manager_class = FigureManager

    module = sys.modules[BACKEND_MODULE]
    module.FigureManager = FigureManager  # type: ignore[attr-defined]
    module.FigureCanvas = FigureCanvas  # type: ignore[attr-defined]
    module.show = show  # type: ignore[attr-defined]
    return getattr(module, name)


def show(*args: Any, **kwargs: Any) -> None:
    """``plt.show()`` in a block: send the block's open figures, then close them."""
    plots = running_plots()
    if plots is not None:
        plots.send(plots.open_figures(), shown=True)


def plots_for(plotting: Any, emitter: Any, label: str) -> BlockPlots:
    """The context of a block's figures (``with``): ``plotting`` is ``(mode, turn)`` from the
    client, a ``PlotMode`` as a tuple and whether the block may use pyplot (it then takes its
    turn); None, or a worker in the client's own process: nothing to do."""
    if plotting is None or not _state().installed:
        return BlockPlots(None, None, label, False)
    mode, turn = plotting
    return BlockPlots(PlotMode(*mode), emitter, label, bool(turn))


def running_plots() -> BlockPlots | None:
    """The plots of the block running in this thread, if it sends any."""
    found: BlockPlots | None = _state().blocks.get(threading.get_ident())
    return found


class BlockPlots:
    """One block's figures: which they are, and how they reach the client."""

    def __init__(self, mode: PlotMode | None, emitter: Any, label: str, turn: bool) -> None:
        self.mode = mode
        self.emitter = emitter
        self.label = label
        self.takes_turn = turn
        self._thread = threading.get_ident()
        self._rc: Any = None
        self._had_turn = False

    def __enter__(self) -> BlockPlots:
        """Before the block runs (outside its stop window: a lock may be taken here)."""
        if self.mode is None:
            return self
        state = _state()
        if self.takes_turn:
            import matplotlib

            self._had_turn = state.turn.acquire(timeout=TURN_TIMEOUT_SECONDS)
            if not self._had_turn:
                print(
                    f"[afar] {self.label}: another block of this worker kept pyplot for "
                    f"{TURN_TIMEOUT_SECONDS} s; this one goes on without its turn, and its "
                    "figures may mix with that block's",
                    file=sys.stderr,
                )
            self._switch_backend()
            if self.mode.rc:
                rc: Any = dict(self.mode.rc)
                self._rc = matplotlib.rc_context(rc)
                self._rc.__enter__()
        state.blocks[self._thread] = self
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """After the block (outside its window): send and close the figures still open."""
        if self.mode is None:
            return
        state = _state()
        try:
            self.send(self.open_figures(), shown=False)
        finally:
            state.blocks.pop(self._thread, None)
            if self._rc is not None:
                self._rc.__exit__(None, None, None)
            if self._had_turn:
                state.turn.release()

    def bundle(self, value: Any) -> dict[str, str] | None:
        """The block's final value as a notebook would show it, if it is a figure: rendered in
        the client's inline formats (IPython renders figures so, not by a ``_repr_*_``)."""
        figure_module = sys.modules.get("matplotlib.figure")
        if self.mode is None or self.mode.kind != INLINE or figure_module is None:
            return None
        if not isinstance(value, figure_module.Figure):
            return None
        try:
            return rendered(value, self.mode)
        except Exception:
            return None  # its plain representation, then; an open figure is reported below

    def discard(self) -> None:
        """The block was stopped: close its figures without sending them."""
        self.emitter = None

    def _switch_backend(self) -> None:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            import matplotlib

            if os.environ.get("MPLBACKEND") == BACKEND:
                matplotlib.rcParams["backend"] = BACKEND
            return
        if pyplot.get_backend() != BACKEND and os.environ.get("MPLBACKEND") == BACKEND:
            pyplot.switch_backend(BACKEND)

    def open_figures(self) -> list[Any]:
        """The figures this block made (in its thread) that are still open, by their number."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return []
        found = []
        for number in pyplot.get_fignums():
            figure = pyplot.figure(number)
            manager = figure.canvas.manager
            if getattr(manager, "afar_thread", None) == self._thread:
                found.append(figure)
        return found

    def send(self, figures: list[Any], *, shown: bool) -> None:
        """Send ``figures`` to the client and close them on the worker.

        A figure that cannot be rendered or pickled is reported with the block's errors, in
        its cell, and closed: the block's values still come back.
        """
        if not figures or self.mode is None:
            return
        pyplot = sys.modules.get("matplotlib.pyplot")
        for figure in figures:
            try:
                if self.emitter is None:
                    pass  # quiet, or stopped: closed only
                elif self.mode.kind == INLINE:
                    self.emitter.send(DISPLAY, rendered(figure, self.mode))
                else:
                    import cloudpickle  # Dask's: a figure may hold a lambda (a formatter)

                    data = cloudpickle.dumps(figure, protocol=pickle.HIGHEST_PROTOCOL)
                    self.emitter.send(FIGURE, {"pickle": data, "show": shown})
            except Exception as error:
                print(
                    f"[afar] {self.label}: a figure could not be sent to the client "
                    f"({type(error).__name__}: {error})",
                    file=sys.stderr,
                )
            finally:
                if pyplot is not None:
                    pyplot.close(figure)


def rendered(figure: Any, mode: PlotMode) -> dict[str, str]:
    """The figure in each of the client's inline formats, as a mimebundle (as IPython's)."""
    bundle: dict[str, str] = {}
    for name in mode.formats:
        known = INLINE_FORMATS.get(name)
        if known is None or known[1] in bundle:
            continue
        kind, mime, scale = known
        options = dict(mode.print_kwargs)
        if scale != 1:
            options["dpi"] = scale * figure.dpi
        buffer = io.BytesIO()
        figure.canvas.print_figure(buffer, format=kind, **options)
        data = buffer.getvalue()
        if mime in TEXT_MIME_TYPES:
            bundle[mime] = data.decode("utf-8")
        else:
            bundle[mime] = base64.b64encode(data).decode("ascii")
    bundle.setdefault("text/plain", repr(figure))
    return bundle
