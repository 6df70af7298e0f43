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
    # The line number of the text's first line: the lines before it are not written out (a
    # block deep in a long file would carry a blank line per line before it, issue 19).
    lineno: int = 1


def wrap(site: Site, *, cell: bool = False) -> Wrapped:
    """Analyse the body of ``site`` and give the text to ship (see the module's docstring)."""
    if cell:
        source = "".join(site.lines)
        indented = "".join("    " + line if line.strip() else line for line in site.lines)
        analysis = analyse(site, f"def {WRAPPER_NAME}():\n{indented}\n", line_offset=-1)
        text, lineno = source, 1
    else:
        text, lineno = function_text(site)
        analysis = analyse(site, text, line_offset=lineno - 1)
    return Wrapped(analysis=analysis, text=text, wrapped=not cell, lineno=lineno)


def function_text(site: Site) -> tuple[str, int]:
    """The body as the body of ``def``, and the line number of the ``def``: the line above the
    body's first, so that every line of the body stands at its number from there."""
    start = site.body_first_line
    body = "".join(site.lines_between(start, site.body_last_line))
    return f"def {WRAPPER_NAME}():\n" + body, start - 1


def wrapped_text(site: Site) -> str:
    """The body as the body of ``def``, every line at its original number."""
    text, lineno = function_text(site)
    return "\n" * (lineno - 1) + text
