"""Find the ``with`` statement executing in the caller's frame and take its body from the source."""

from __future__ import annotations

import ast
import linecache
import types
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from afar import _cpython, _ipython
from afar._analysis.index import (
    FileIndex,
    Piece,
    code_table,
    first_line,
    index_for,
    signature,
    with_statements,
)
from afar.errors import BlockSyntaxError, SourceError

# IPython runs ``%%time`` cells under these file names, without registering them in linecache.
IPYTHON_TIME_FILENAMES = frozenset({"<timed exec>", "<timed eval>"})
# ``%%timeit`` wraps the cell in a function of its own: the running code cannot be compared with
# the cell's source, which comes from IPython's input history instead.
IPYTHON_TIMEIT_FILENAMES = frozenset({"<magic-timeit>"})


@dataclass(frozen=True)
class Site:
    """One ``with afar...`` statement in the source: what every later stage starts from."""

    filename: str
    # The statement's own lines, from line ``lines_from`` (its first) to the end of its body,
    # with line endings: a block keeps these, not its whole file (issue 19).
    lines: tuple[str, ...]
    lines_from: int
    node: ast.With | ast.AsyncWith
    body_first_line: int  # first line of the body, decorators included
    body_last_line: int
    future_features: tuple[str, ...]  # ``from __future__`` features the code was compiled with
    # The innermost class the statement stands in (Python mangles ``__private`` names by it),
    # and the first parameter of the function it stands in when that is in a class: what a
    # zero-argument ``super()`` in the body uses, with the class.
    class_name: str | None = None
    instance: str | None = None
    # The functions and classes the statement stands in, outermost first: ("def" | "class",
    # name). Empty at module level.
    scopes: tuple[tuple[str, str], ...] = ()

    @property
    def future_flags(self) -> int:
        return _cpython.future_flags(self.future_features)

    @cached_property
    def label(self) -> str:
        """``script.py:12``; in IPython, a cell as its tracebacks name it: ``In[6]:2``."""
        name = ipython_cell_name(self.filename) or short_filename(self.filename)
        return f"{name}:{self.node.lineno}"

    @property
    def body(self) -> list[ast.stmt]:
        return self.node.body

    def where(self, lineno: int | None = None) -> str:
        return f'File "{self.filename}", line {lineno or self.node.lineno}'

    def line(self, lineno: int) -> str:
        """Line ``lineno`` of the file (one of the statement's own)."""
        return self.lines[lineno - self.lines_from]

    def lines_between(self, first: int, last: int) -> tuple[str, ...]:
        """Lines ``first`` to ``last`` of the file (the statement's own), with line endings."""
        return self.lines[first - self.lines_from : last - self.lines_from + 1]


def ipython_cell_name(filename: str) -> str | None:
    """``In[6]`` for the file name IPython compiled cell 6 under, else None."""
    shell = _ipython.shell()
    format_code_name = getattr(getattr(shell, "compile", None), "format_code_name", None)
    if format_code_name is None:
        return None
    try:
        named = format_code_name(filename)
    except Exception:  # another shell's compiler: keep the file's own name
        return None
    return str(named[1]) if isinstance(named, tuple) and len(named) == 2 else None


def short_filename(filename: str) -> str:
    return filename.replace("\\", "/").rsplit("/", 1)[-1]


def site_for(frame: types.FrameType) -> Site:
    """The afar ``with`` statement that ``frame`` is entering; raise if it cannot be trusted.

    The statement is looked for in the top-level statement around the frame's line, parsed
    alone, and trusted once the running code is shown to be its code (its cost is the block's,
    not the file's: issue 19). Otherwise the whole file is parsed, which decides and says what
    is wrong.
    """
    filename = frame.f_code.co_filename
    features = _cpython.future_features(frame.f_code)
    index = file_index(frame, _cpython.future_flags(features))
    if filename not in IPYTHON_TIMEIT_FILENAMES:  # a %%timeit cell has no running code to match
        found = index.piece_at(frame.f_lineno)
        site = _site(frame, found, features) if found is not None else None
        if (
            found is not None
            and site is not None
            and running_code_matches(frame, site, _candidates(frame, found, site))
        ):
            check_body_not_on_header(site)
            return site
    whole = index.whole()
    piece = whole.piece_holding(frame.f_lineno)
    site = _site(frame, piece, features) if piece is not None else None
    if piece is None or site is None:
        raise SourceError(
            f'{filename}, line {frame.f_lineno}: the source afar found there holds no "with" '
            "statement. The file was probably changed after it was imported: restart the "
            "process (or re-run the cell) so that the running code matches its source."
        )
    check_body_not_on_header(site)
    if filename in IPYTHON_TIMEIT_FILENAMES:
        return site
    if running_code_matches(frame, site, _candidates(frame, piece, site)):
        return site
    module = whole.module_code()
    if module is None:
        # The source parsed as a tree but does not compile on its own (an IPython cell with
        # top-level await, for instance): nothing to compare with.
        return site
    if not running_code_matches(frame, site, iter([module])):
        raise SourceError(
            f"{site.filename}, line {site.node.lineno}: the source of this block is not the "
            "code that is running (the file was edited after it was imported, or exec() ran "
            "other text under this file name). afar does not run code it cannot see: restart "
            "the process or re-import the module so that the source matches."
        )
    return site


def _site(frame: types.FrameType, piece: Piece, features: tuple[str, ...]) -> Site | None:
    found = piece.with_at(frame.f_lineno)
    if found is None:
        return None
    node, class_name, instance, scopes = found
    last = node.body[-1].end_lineno or node.body[-1].lineno
    return Site(
        filename=frame.f_code.co_filename,
        lines=piece.lines[node.lineno - 1 : last],
        lines_from=node.lineno,
        node=node,
        body_first_line=first_line(node.body[0]),
        body_last_line=last,
        future_features=features,
        class_name=class_name,
        instance=instance,
        scopes=scopes,
    )


def file_index(frame: types.FrameType, flags: int) -> FileIndex:
    """The index of the source of the code ``frame`` runs (see ``afar._analysis.index``)."""
    filename = frame.f_code.co_filename
    if filename in IPYTHON_TIME_FILENAMES or filename in IPYTHON_TIMEIT_FILENAMES:
        text = ipython_magic_cell()
        if text is not None:
            return index_for(filename, flags, text=text, parse=parsed)
        if filename in IPYTHON_TIME_FILENAMES:  # not a %%time cell: the %time line magic
            raise SourceError(
                "afar needs the source of the block, but IPython's %time line magic keeps "
                "none: put the block in a cell and time the whole cell with %%time on its "
                "first line."
            )
    # A module edited and reloaded (importlib.reload, IPython's autoreload) runs new code while
    # linecache still holds the old text: refresh the entry first, as `executing` does, and keep
    # it if the file has gone (a name that only exists in linecache).
    entry = linecache.cache.get(filename)
    linecache.checkcache(filename)
    lines = linecache.getlines(filename, frame.f_globals)
    if not lines and entry is not None:
        linecache.cache[filename] = entry
        lines = linecache.getlines(filename, frame.f_globals)
    if not lines:
        raise SourceError(
            f"afar needs the source of the block, but there is none for {filename!r} "
            f"(line {frame.f_lineno}): code given to `python -c` or to exec() as a string has "
            "no source file. Put the code in a file, run it in IPython or Jupyter, or register "
            "the string in linecache (linecache.cache[filename] = (len(text), None, "
            "text.splitlines(True), filename)) and compile it with that file name."
        )
    return index_for(filename, flags, lines=lines, parse=parsed)


def ipython_magic_cell() -> str | None:
    """The body of the ``%%time``/``%%timeit`` cell running now, from IPython's input history.

    The history holds the cell as IPython transformed it:
    ``get_ipython().run_cell_magic('time', '', '<body>')``; the body's line 1 is line 1 of the
    code the magic compiles.
    """
    shell = _ipython.shell()
    history = getattr(shell, "history_manager", None)
    if history is None or not history.input_hist_parsed:
        return None
    try:
        statements = _cpython.parse(history.input_hist_parsed[-1]).body
    except SyntaxError:
        return None
    call = statements[-1].value if statements and isinstance(statements[-1], ast.Expr) else None
    if not isinstance(call, ast.Call) or len(call.args) < 3:
        return None
    try:
        body = ast.literal_eval(call.args[2])
    except ValueError:
        return None
    return shell.transform_cell(body) if isinstance(body, str) else None


def parsed(filename: str, text: str, flags: int) -> tuple[ast.Module, str]:
    """The syntax tree of a source; IPython syntax (``%magic``, ``!cmd``) transformed if needed."""
    try:
        return _parse(text, filename, flags), text
    except SyntaxError as error:
        transformed = _ipython_transform(text)
        if transformed is None or transformed == text:
            raise SourceError(
                f"{filename}, line {error.lineno}: afar cannot parse the source of the running "
                f"code ({error.msg}). It was probably changed after it was imported: restart "
                "the process so that the running code matches its source."
            ) from None
        return _parse(transformed, filename, flags), transformed


def _parse(text: str, filename: str, flags: int) -> ast.Module:
    return _cpython.parse(text, filename, "exec", flags)


def _ipython_transform(text: str) -> str | None:
    shell = _ipython.shell()
    if shell is None:
        return None
    return shell.transform_cell(text)


def with_at_line(tree: ast.Module, lineno: int) -> ast.With | ast.AsyncWith | None:
    """The innermost ``with`` statement whose header spans ``lineno``."""
    found: ast.With | ast.AsyncWith | None = None
    for node, _ in with_statements(tree.body):
        header_end = max(node.lineno, first_line(node.body[0]) - 1)
        if node.lineno <= lineno <= header_end and (found is None or node.lineno > found.lineno):
            found = node
    return found


def check_body_not_on_header(site: Site) -> None:
    statement = site.body[0]
    line = site.line(site.body_first_line)
    column = statement.col_offset if site.body_first_line == statement.lineno else None
    if column is None:
        return  # decorators stand on their own lines
    before = line.encode()[:column].decode(errors="replace").strip()
    if before:
        raise BlockSyntaxError(
            "the body of an afar block must start on a new line after the ':' of the with "
            "statement, for example\n    with afar.run, remotely:\n        x = 1",
            site.filename,
            site.node.lineno,
        )


# The running code and the source must be the same code: compile the source and compare what
# each does on the lines of the with statement (``afar._analysis.index.signature``).
# pytest rewrites the assert statements of test modules, whose globals then hold this name: the
# running code of an assert line differs from its source by design, so those lines are skipped.
PYTEST_REWRITE_MARKER = "@pytest_ar"


def _candidates(
    frame: types.FrameType, piece: Piece, site: Site
) -> Iterator[types.CodeType | None]:
    """Fresh code to compare with the running code, each compiled only if the one before does
    not match: the piece with the code that follows it, as the whole file compiles it on the
    block's lines; at module level, the top-level statement alone too, as IPython compiles a
    cell (one top-level statement at a time)."""
    yield piece.code()
    if frame.f_code.co_name == "<module>":
        yield piece.statement_alone(site.node.lineno)


def running_code_matches(
    frame: types.FrameType, site: Site, candidates: Iterator[types.CodeType | None]
) -> bool:
    """Whether one of ``candidates`` (modules compiled from the source) does on the block's
    lines what the code ``frame`` runs does there."""
    code = frame.f_code
    first, last = site.node.lineno, site.body_last_line
    skipped = _assert_lines(site) if PYTEST_REWRITE_MARKER in frame.f_globals else frozenset()
    module_level = code.co_name == "<module>"
    running = signature(code_table(code), first, last, skipped)
    for fresh in candidates:
        if fresh is not None and not module_level:
            fresh = find_code(fresh, code)
        if fresh is not None and signature(code_table(fresh), first, last, skipped) == running:
            return True
    return False


def find_code(module: types.CodeType, target: types.CodeType) -> types.CodeType | None:
    qualname = getattr(target, "co_qualname", None)
    stack = [module]
    while stack:
        code = stack.pop()
        if (
            code.co_name == target.co_name
            and code.co_firstlineno == target.co_firstlineno
            and getattr(code, "co_qualname", None) == qualname
        ):
            return code
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return None


def _assert_lines(site: Site) -> frozenset[int]:
    lines: set[int] = set()
    for node in ast.walk(site.node):
        if isinstance(node, ast.Assert):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return frozenset(lines)
