"""What a block's output looks like in a notebook: text, bundles and HTML, computed without IPython.

Pure functions of the text and bundles that arrive, tested without a kernel: how a line
rewritten with carriage returns shows (as a terminal shows it), how the progress of a block's
Dask work is drawn, and how a mix of stdout, stderr and displays becomes one mimebundle for a
display that is updated in place.
"""

from __future__ import annotations

import html
from typing import Any

from afar._worker.protocol import STDERR, STDOUT

# Jupyter's own rendering of stderr, for stderr text inside an HTML display.
STDERR_HTML_STYLE = (
    "background-color: var(--jp-rendermime-error-background, #fdd); margin: 0; padding: 1px 4px"
)
STDOUT_HTML_STYLE = "margin: 0; padding: 1px 4px"
# MIME type that JupyterLab renders the way it renders a stderr stream.
STDERR_MIME = "application/vnd.jupyter.stderr"
EMPTY_BUNDLE: dict[str, str] = {}


def progress_html(label: str, counts: dict[str, Any]) -> str:
    done, total = int(counts.get("done", 0)), int(counts.get("total", 0))
    computations = int(counts.get("computations", 1))
    more = f", {computations} computations" if computations > 1 else ""
    share = done / total if total > 0 else 0.0
    return (
        f'<div style="font-family: var(--jp-code-font-family, monospace)">'
        f"<code>{html.escape(label)}</code> "
        f'<progress value="{done}" max="{max(total, 1)}" style="vertical-align: middle"></progress>'
        f" {done:,} / {total:,} tasks ({share:.0%}{html.escape(more)})</div>"
    )


def shown_line(line: str) -> str:
    """What a terminal shows of ``line`` after its carriage returns: the last full rewrite."""
    parts = [part for part in line.split("\r") if part]
    if not parts:
        return ""
    shown = parts[-1]
    # A shorter rewrite leaves the end of the longer text before it on a terminal.
    for part in reversed(parts[:-1]):
        if len(part) > len(shown):
            shown += part[len(shown) :]
    return shown


def shown_text(text: str) -> str:
    """``text`` with each line as a terminal shows it after its carriage returns."""
    if "\r" not in text:
        return text
    return "\n".join(shown_line(line) for line in text.split("\n"))


def line_bundle(stream: str, line: str) -> dict[str, str]:
    shown = shown_line(line)
    if stream == STDERR:
        return {STDERR_MIME: shown, "text/plain": shown}
    return {"text/plain": shown}


def as_bundle(payload: Any) -> dict[str, Any]:
    if isinstance(payload, dict) and payload and all(isinstance(k, str) for k in payload):
        return payload
    return {"text/plain": repr(payload)}


def render(segments: list[tuple[str, Any]]) -> dict[str, Any]:
    """One mimebundle for a sequence of ``(kind, data)``: stdout/stderr text and bundles.

    Text of one stream alone stays text (stderr with the MIME type JupyterLab styles as
    stderr); a single bundle stays that bundle; a mix becomes HTML with stderr styled as
    Jupyter does, with a ``text/plain`` version of everything.

    Examples
    --------
    >>> render([("stdout", "hello\\n")])
    {'text/plain': 'hello\\n'}
    """
    if not segments:
        return dict(EMPTY_BUNDLE)
    kinds = {kind for kind, _ in segments}
    if kinds == {"display"} and len(segments) == 1:
        return dict(segments[0][1])
    if kinds == {STDOUT}:
        return {"text/plain": "".join(text for _, text in segments)}
    if kinds == {STDERR}:
        text = "".join(text for _, text in segments)
        return {STDERR_MIME: text, "text/plain": text}
    plain: list[str] = []
    rich: list[str] = []
    for kind, data in segments:
        if kind == "display":
            text = str(data.get("text/plain", ""))
            plain.append(text if text.endswith("\n") or not text else text + "\n")
            rich.append(bundle_html(data))
        else:
            plain.append(data)
            style = STDERR_HTML_STYLE if kind == STDERR else STDOUT_HTML_STYLE
            rich.append(f'<pre style="{style}">{html.escape(data)}</pre>')
    return {"text/html": "\n".join(rich), "text/plain": "".join(plain)}


def bundle_html(bundle: dict[str, Any]) -> str:
    """The HTML of a mimebundle: its own, an embedded image, or its escaped plain text."""
    if isinstance(bundle.get("text/html"), str):
        return bundle["text/html"]
    for mime in ("image/png", "image/jpeg"):
        if isinstance(bundle.get(mime), str):
            return f'<img src="data:{mime};base64,{bundle[mime]}">'
    if isinstance(bundle.get("image/svg+xml"), str):
        return bundle["image/svg+xml"]
    return f"<pre>{html.escape(str(bundle.get('text/plain', '')))}</pre>"
