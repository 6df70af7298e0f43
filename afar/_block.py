"""A code location's block, analysed once: its names, and the ``BlockCode`` that travels."""

from __future__ import annotations

import ast
import functools
import linecache
import pickle
import threading
import types
from collections import OrderedDict
from dataclasses import dataclass, field

from afar import _cpython
from afar._analysis.bindings import scope_nodes
from afar._analysis.names import Analysis
from afar._analysis.source import Site, first_line, site_for
from afar._analysis.wrapping import wrap
from afar._worker.compiling import BlockCode
from afar.errors import BlockSyntaxError

# Code locations analysed and kept; a notebook makes a new code object per cell run.
BLOCK_CACHE_SIZE = 512
KEY_PREFIX = "afar"
# Calls through which module code binds names at run time.
RUN_TIME_BINDERS = frozenset({"exec", "eval", "globals", "vars", "locals", "setattr"})


@dataclass
class Block:
    """One ``with afar...`` statement: its site, its names, and its packed code per variant."""

    site: Site
    analysis: Analysis
    # The text that travels, from its line ``text_lineno`` on: the blank lines that put it at
    # its line numbers are one number, not one byte per line of the file before it (issue 19).
    text: str
    text_lineno: int = 1
    wrapped: bool = True
    # Module level (a script, a notebook cell): the body runs as module code (see BlockCode).
    module_level: bool = False
    module_name: str = "__main__"  # the caller's module's ``__name__``
    _packed: dict[tuple[object, ...], bytes] = field(default_factory=dict, repr=False)

    @functools.cached_property
    def imports(self) -> tuple[str, ...]:
        """Modules the body's own statements may import (see ``_modules.imported_names``)."""
        from afar._modules import imported_names

        return imported_names(self.site.body)

    @property
    def label(self) -> str:
        return self.site.label

    @functools.cached_property
    def instance(self) -> str | None:
        """The method's first parameter, when the body calls ``super()`` with no arguments."""
        site = self.site
        if site.class_name is None or not any(_is_bare_super(n) for n in scope_nodes(site.body)):
            return None
        return site.instance

    @functools.cached_property
    def class_reads(self) -> tuple[str, ...]:
        """The caller's variables that ``super()`` or ``__class__`` in the body read besides
        the names it reads itself: ``__class__`` (a method's cell) and the instance."""
        site = self.site
        if site.class_name is None or not any(
            _is_bare_super(node) or (isinstance(node, ast.Name) and node.id == "__class__")
            for statement in site.body
            for node in ast.walk(statement)
        ):
            return ()
        return ("__class__", self.instance) if self.instance else ("__class__",)

    @functools.cached_property
    def binds_at_run_time(self) -> bool:
        """Whether the body may bind names its source does not show, as module code can:
        ``exec``, ``globals()[...] = ...``, ``vars()``, ``setattr``, a nested ``global``."""
        for statement in self.site.body:
            for node in ast.walk(statement):
                if isinstance(node, ast.Global):
                    return True
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in RUN_TIME_BINDERS
                ):
                    return True
        return False

    @functools.cached_property
    def function_scopes(self) -> tuple[tuple[str, str], ...]:
        """Where the block's function is compiled on the worker: the functions and classes the
        with statement stands in, when it stands in a function (not a class body)."""
        scopes = self.site.scopes
        return scopes if scopes and scopes[-1][0] == "def" else ()

    @functools.cached_property
    def key_prefix(self) -> str:
        return f"{KEY_PREFIX}-{self.label}"

    @property
    def source(self) -> str:
        """The body's source, as written."""
        return "".join(self.site.lines_between(self.site.body_first_line, self.site.body_last_line))

    def packed(
        self,
        seeds: tuple[str, ...],
        saved: tuple[str, ...],
        single: bool,
        display: bool,
        secede: bool | None = None,
    ) -> bytes:
        """The pickled ``BlockCode`` for this variant; the same bytes every time it is asked.

        ``secede`` None: secede if the analysis found that the block may wait on Dask.
        """
        if secede is None:
            secede = self.analysis.waits_on_dask
        variant = (seeds, saved, single, display, secede)
        found = self._packed.get(variant)
        if found is None:
            site = self.site
            first = site.node.lineno if self.wrapped else site.body_first_line
            code = BlockCode(
                filename=site.filename,
                text=self.text,
                text_lineno=self.text_lineno,
                wrapped=self.wrapped,
                shown_lines=site.lines_between(first, site.body_last_line),
                first_shown_line=first,
                seeds=seeds,
                saved=saved,
                single=single,
                display=display,
                label=self.label,
                future_features=site.future_features,
                secede=secede,
                class_name=site.class_name,
                instance=self.instance,
                module_level=self.module_level,
                module_name=self.module_name,
                scopes=self.function_scopes,
            )
            found = self._packed[variant] = pickle.dumps(tuple(code), protocol=5)
        return found


def _is_bare_super(node: ast.AST) -> bool:
    """``super()``: the zero-argument form, which needs the class cell and the instance."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "super"
        and not node.args
        and not node.keywords
    )


def block_for_source(source: str, filename: str) -> Block:
    """A block whose body is a whole source text (a notebook cell under ``%%afar``).

    The text is registered in ``linecache`` under ``filename`` so that tracebacks show it.
    """
    with _blocks_lock:
        block = _cells.get((filename, source))
        if block is not None:
            return block
    lines = tuple(source.splitlines(keepends=True))
    linecache.cache[filename] = (len(source), None, list(lines), filename)
    try:
        tree = _cpython.parse(source, filename)
    except SyntaxError as error:
        raise BlockSyntaxError(error.msg, filename, error.lineno) from None
    if not tree.body:
        raise BlockSyntaxError("the cell has no statements to run", filename, 1)
    node = ast.With(items=[], body=tree.body, lineno=1, col_offset=0)
    last = tree.body[-1]
    site = Site(
        filename=filename,
        lines=lines,
        lines_from=1,
        node=node,
        body_first_line=first_line(tree.body[0]),
        body_last_line=last.end_lineno or last.lineno,
        future_features=(),
    )
    wrapped = wrap(site, cell=True)  # a cell runs at module level
    block = Block(
        site=site,
        analysis=wrapped.analysis,
        text=wrapped.text,
        wrapped=False,
        module_level=True,
    )
    with _blocks_lock:
        _cells[(filename, source)] = block
        while len(_cells) > BLOCK_CACHE_SIZE:
            _cells.popitem(last=False)
    return block


_cells: OrderedDict[tuple[str, str], Block] = OrderedDict()
# Keyed by the code object's id, not the code object: hashing one hashes all the code in it
# (half a millisecond for a 20,000-line script's module, at every entry of its blocks), and two
# files can hold equal code objects (their equality leaves co_filename out). The entry keeps
# its code alive, so no other code object has its id meanwhile; a hit checks that it is the
# same object.
_blocks: OrderedDict[tuple[int, int], tuple[types.CodeType, Block]] = OrderedDict()
_blocks_lock = threading.Lock()


def block_for(frame: types.FrameType) -> Block:
    """The block the caller is entering, analysed on first use of its code location."""
    code = frame.f_code
    location = (id(code), frame.f_lasti)
    with _blocks_lock:
        found = _blocks.get(location)
        if found is not None and found[0] is code:
            _blocks.move_to_end(location)
            return found[1]
    site = site_for(frame)
    # Module level: a script, a notebook cell.
    module_level = frame.f_locals is frame.f_globals
    wrapped = wrap(site)
    block = Block(
        site=site,
        analysis=wrapped.analysis,
        text=wrapped.text,
        text_lineno=wrapped.lineno,
        module_level=module_level,
        module_name=str(frame.f_globals.get("__name__", "__main__")),
    )
    with _blocks_lock:
        _blocks[location] = (code, block)
        _blocks.move_to_end(location)
        while len(_blocks) > BLOCK_CACHE_SIZE:
            _blocks.popitem(last=False)
    return block
