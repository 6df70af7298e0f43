"""Helpers of the unit tests: source snippets in, afar's view of them out (no cluster).

Modelled on ``getmsg()`` in pytest's ``testing/test_assertrewrite.py``: a test hands over a
body as text, the helper builds the ``with`` statement around it and returns what afar made of it.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import linecache
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import afar
from afar._analysis.bindings import bound_names
from afar._analysis.names import Analysis, analyse
from afar._analysis.source import Site
from afar._analysis.wrapping import wrapped_text

# Header of the block every helper builds unless told otherwise.
LATER_HEADER = "with afar.run, later:"
INDENT = "    "
# File names of sources that exist only in linecache: angle brackets, as "<stdin>" or IPython's.
FAKE_FILE_TEMPLATE = "<afar-unit-{}>"
_numbers = itertools.count()


def indent(text: str, prefix: str = INDENT) -> str:
    """``text`` dedented, then indented by ``prefix``; blank lines stay blank."""
    return textwrap.indent(textwrap.dedent(text).strip("\n") + "\n", prefix)


def with_block(body: str, header: str = LATER_HEADER) -> str:
    """Module source: ``header`` followed by ``body`` indented under it."""
    return f"{header}\n{indent(body)}"


def fake_filename() -> str:
    return FAKE_FILE_TEMPLATE.format(next(_numbers))


def register(text: str, filename: str) -> None:
    """Put ``text`` in linecache under ``filename``, as IPython registers its cells."""
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)


def site_from_source(source: str, filename: str = "<afar-unit-site>") -> Site:
    """The ``Site`` of the first ``with`` statement in ``source``, built without a frame."""
    source = textwrap.dedent(source)
    tree = ast.parse(source, filename)
    node = next(n for n in ast.walk(tree) if isinstance(n, (ast.With, ast.AsyncWith)))
    first = node.body[0]
    decorators = getattr(first, "decorator_list", None) or []
    last = node.body[-1].end_lineno or node.body[-1].lineno
    return Site(
        filename=filename,
        lines=tuple(source.splitlines(keepends=True))[node.lineno - 1 : last],
        lines_from=node.lineno,
        node=node,
        body_first_line=min([first.lineno, *(d.lineno for d in decorators)]),
        body_last_line=last,
        future_features=(),
    )


def analysis_of(body: str, header: str = LATER_HEADER) -> Analysis:
    """What ``_names.analyse`` makes of ``body`` under ``header`` (module level)."""
    site = site_from_source(with_block(body, header))
    return analyse(site, wrapped_text(site))


def bound_by(body: str) -> set[str]:
    """What the one binding walker says the block's own scope binds (comprehensions excluded)."""
    return bound_names(site_from_source(with_block(body)).body)


def exec_registered(
    source: str, namespace: dict[str, Any] | None = None, registered: str | None = None
) -> dict[str, Any]:
    """Run module ``source`` whose text (or ``registered`` instead) is registered in linecache;
    return its namespace."""
    source = textwrap.dedent(source)
    filename = fake_filename()
    register(source if registered is None else registered, filename)
    code = compile(source, filename, "exec", dont_inherit=True)
    scope: dict[str, Any] = {"__name__": "afar_unit_exec", "afar": afar}
    scope.update(namespace or {})
    exec(code, scope)
    return scope


def captured(body: str, *names: str, location: str = "later") -> afar.Captured:
    """``captured`` of a Run saving ``names``, after ``body`` ran under ``with <run>, later:``."""
    runner = afar.Run(*names)
    # Inside a function, so that the body may hold `nonlocal` of its own names.
    block = with_block(body, f"with runner, {location}:")
    exec_registered(f"def holder():\n{indent(block)}\nholder()\n", {"runner": runner})
    assert runner.captured is not None
    return runner.captured


def import_file(path: Path, name: str) -> types.ModuleType:
    """Import the module file at ``path`` under ``name`` (registered in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def shared_bodies() -> types.ModuleType:
    """``tests/bodies.py``, the bodies of the semantics matrix shared with the cluster tests."""
    module = sys.modules.get("bodies")
    if module is None:
        module = import_file(Path(__file__).parents[1] / "bodies.py", "bodies")
    return module


def blocks_of(code: types.CodeType) -> list[Any]:
    """The ``Block`` objects afar cached for the with statements of ``code``, in line order.

    Private on purpose: which blocks afar keeps, and that it keeps one per code location, has no
    public sign (``Run.captured`` shows a block only under ``later``, and not its cache entry).
    Tests that can read a block through ``captured`` do so instead.
    """
    from afar import _block

    found = [block for held, block in _block._blocks.values() if held is code]
    return sorted(found, key=lambda block: block.site.node.lineno)
