"""A block's last expression, shown as a notebook shows it: its rich representations.

They are computed on the worker, where the value lives (IPython's display protocol): only the
text of each representation travels back, never the value.
"""

from __future__ import annotations

import base64
from typing import Any

from afar._worker.protocol import DISPLAY


class Displayer:
    """What IPython's ``display`` becomes in a block: each object's representations, sent with
    the block's output, so that a notebook cell shows them as ``display`` would there.

    ``emitter`` is the block's output emitter once capture starts; without one (quiet, or not
    on a worker) each object's plain text is printed, as ``display`` does outside IPython.
    Keyword options of IPython's (``display_id``, ``metadata``...) other than ``raw`` are not
    carried.
    """

    def __init__(self) -> None:
        self.emitter: Any = None

    def __call__(self, *objects: Any, raw: bool = False, **options: Any) -> None:
        for value in objects:
            bundle = value if raw and isinstance(value, dict) else mimebundle(value)
            if self.emitter is not None:
                self.emitter.send(DISPLAY, bundle)
            else:
                print(bundle.get("text/plain", ""))


def mimebundle(value: Any) -> dict[str, Any]:
    """The value's rich representations, computed where the value lives (IPython's protocol)."""
    found = library_bundle(value)
    if found is not None:
        return found
    bundle: dict[str, Any] = {}
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


def library_bundle(value: Any) -> dict[str, Any] | None:
    """What a notebook shows of a plotting library's figure, where the library's own answer
    depends on the process it runs in (a worker is no notebook).

    plotly chooses its output by its default renderer, which on a worker is not a notebook's:
    the figure's JSON under plotly's MIME type is what JupyterLab renders. bokeh shows a plot
    through the BokehJS a notebook loads with ``output_notebook()``, which the worker cannot
    see: the plot is sent as a page fragment with BokehJS inline. altair's default renderer
    outside a notebook gives HTML that loads Vega from the web: the chart's Vega-Lite spec under
    its MIME type is what JupyterLab renders itself (JupyterLab 4 knows Vega-Lite 3 to 5; altair
    6 writes Vega-Lite 6, also sent under v5's type).
    """
    module = type(value).__module__ or ""
    try:
        if module.startswith("altair.") and hasattr(value, "to_dict"):
            import altair

            major = int(str(altair.SCHEMA_VERSION).lstrip("v").split(".")[0])
            spec = value.to_dict()
            bundle = {f"application/vnd.vegalite.v{major}+json": spec}
            if major > 5:
                # JupyterLab 4 renders Vega-Lite 3 to 5: a newer spec goes under v5's type too
                # (what a simple chart needs reads the same), for a JupyterLab without v6.
                bundle["application/vnd.vegalite.v5+json"] = spec
            bundle["text/plain"] = _plain_repr(value)
            return bundle
        if module.startswith("plotly.") and hasattr(value, "to_plotly_json"):
            import plotly.io

            bundle = dict(plotly.io.renderers["plotly_mimetype"].to_mimebundle(value.to_dict()))
            bundle.setdefault("text/plain", _plain_repr(value))
            return bundle
        if module.startswith("bokeh."):
            from bokeh.model import Model

            if isinstance(value, Model):
                from bokeh.embed import file_html
                from bokeh.resources import INLINE

                return {"text/html": file_html(value, INLINE), "text/plain": _plain_repr(value)}
    except Exception:
        return None  # the library's own representations, then
    return None


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
