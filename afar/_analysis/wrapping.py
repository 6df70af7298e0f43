"""The body as a function's body, in one place on the client: analysed and shipped.

A ``with`` block's body is indented: ``def _afar_block_():`` on the line above its first line
makes it a function body with every line at its own number, which symtable analyses and the
worker compiles as it is. A notebook cell (``%%afar``) starts at column 0 and may start on line
1: it is analysed indented under a ``def`` one line higher (``line_offset=-1``) and travels as
it is; the worker wraps its syntax tree (``afar._worker.compiling.compile_block``, which needs
no afar). ``wrap`` is the one entry point.
"""

from __future__ import annotations

from dataclasses import dataclass

from afar._analysis.names import WRAPPER_NAME, Analysis, analyse
from afar._analysis.source import Site


@dataclass(frozen=True)
class Wrapped:
    """A body analysed, and the text of it that travels to the worker."""

    analysis: Analysis
    text: str
    wrapped: bool  # ``text`` is ``def`` + body (a with block), or the bare body (a cell)


def wrap(site: Site, *, cell: bool = False) -> Wrapped:
    """Analyse the body of ``site`` and give the text to ship (see the module's docstring)."""
    if cell:
        source = "".join(site.lines)
        indented = "".join("    " + line if line.strip() else line for line in site.lines)
        analysis = analyse(site, f"def {WRAPPER_NAME}():\n{indented}\n", line_offset=-1)
        text = source
    else:
        text = wrapped_text(site)
        analysis = analyse(site, text)
    return Wrapped(analysis=analysis, text=text, wrapped=not cell)


def wrapped_text(site: Site) -> str:
    """The body as the body of ``def``, every line at its original number."""
    start = site.body_first_line
    head = "\n" * (start - 2) + f"def {WRAPPER_NAME}():\n"
    return head + "".join(site.lines[start - 1 : site.body_last_line])
