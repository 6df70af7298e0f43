"""Find the ``with`` statement executing in the caller's frame and take its body from the source."""

from __future__ import annotations

import ast
import dis
import linecache
import sys
import types
from collections import Counter
from dataclasses import dataclass
from functools import cached_property, lru_cache

from afar import _cpython, _ipython
from afar.errors import BlockSyntaxError, SourceError

# IPython runs ``%%time`` cells under these file names, without registering them in linecache.
IPYTHON_TIME_FILENAMES = frozenset({"<timed exec>", "<timed eval>"})
# ``%%timeit`` wraps the cell in a function of its own: the running code cannot be compared with
# the cell's source, which comes from IPython's input history instead.
IPYTHON_TIMEIT_FILENAMES = frozenset({"<magic-timeit>"})
PARSE_CACHE_SIZE = 128


@dataclass(frozen=True)
class Site:
    """One ``with afar...`` statement in the source: what every later stage starts from."""

    filename: str
    lines: tuple[str, ...]  # the whole source, one string per line, with line endings
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
    """The afar ``with`` statement that ``frame`` is entering; raise if it cannot be trusted."""
    filename = frame.f_code.co_filename
    text = source_text(frame)
    features = _cpython.future_features(frame.f_code)
    tree, text = parsed(filename, text, _cpython.future_flags(features))
    node = with_at_line(tree, frame.f_lineno)
    if node is None:
        raise SourceError(
            f'{filename}, line {frame.f_lineno}: the source afar found there holds no "with" '
            "statement. The file was probably changed after it was imported: restart the "
            "process (or re-run the cell) so that the running code matches its source."
        )
    lines = tuple(text.splitlines(keepends=True))
    first = first_line(node.body[0])
    around = enclosing_scopes(tree, node)
    class_name, instance = enclosing_class(around)
    site = Site(
        filename=filename,
        lines=lines,
        node=node,
        body_first_line=first,
        body_last_line=node.body[-1].end_lineno or node.body[-1].lineno,
        future_features=features,
        class_name=class_name,
        instance=instance,
        scopes=tuple(
            ("class" if isinstance(scope, ast.ClassDef) else "def", scope.name) for scope in around
        ),
    )
    check_body_not_on_header(site)
    if filename not in IPYTHON_TIMEIT_FILENAMES:
        check_running_code(frame, text, site)
    return site


def source_text(frame: types.FrameType) -> str:
    filename = frame.f_code.co_filename
    if filename in IPYTHON_TIME_FILENAMES or filename in IPYTHON_TIMEIT_FILENAMES:
        text = ipython_magic_cell()
        if text is not None:
            return text
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
    return "".join(lines)


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


@lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse(text: str, filename: str, flags: int) -> ast.Module:
    return _cpython.parse(text, filename, "exec", flags)


@lru_cache(maxsize=PARSE_CACHE_SIZE)
def _compiled(text: str, filename: str, flags: int) -> types.CodeType:
    return compile(text, filename, "exec", flags=flags, dont_inherit=True)


def _ipython_transform(text: str) -> str | None:
    shell = _ipython.shell()
    if shell is None:
        return None
    return shell.transform_cell(text)


def first_line(statement: ast.stmt) -> int:
    decorators = getattr(statement, "decorator_list", None) or []
    return min([statement.lineno, *(d.lineno for d in decorators)])


def with_at_line(tree: ast.Module, lineno: int) -> ast.With | ast.AsyncWith | None:
    """The innermost ``with`` statement whose header spans ``lineno``."""
    found: ast.With | ast.AsyncWith | None = None
    for node in ast.walk(tree):
        if not isinstance(node, (ast.With, ast.AsyncWith)):
            continue
        header_end = max(node.lineno, first_line(node.body[0]) - 1)
        if node.lineno <= lineno <= header_end and (found is None or node.lineno > found.lineno):
            found = node
    return found


def enclosing_scopes(
    tree: ast.Module, target: ast.AST
) -> list[ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef]:
    """The classes and functions ``target`` stands in, outermost first."""
    scopes: list[ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef] = []

    def visit(node: ast.AST) -> bool:
        if node is target:
            return True
        scope = isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        if scope:
            scopes.append(node)  # type: ignore[arg-type]
        if any(visit(child) for child in ast.iter_child_nodes(node)):
            return True
        if scope:
            scopes.pop()
        return False

    return scopes if visit(tree) else []


def enclosing_class(
    scopes: list[ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef],
) -> tuple[str | None, str | None]:
    """The innermost class of ``scopes``, and the first parameter of the innermost function if
    that function is inside the class (a method, or a function in one)."""
    classes = [s for s in scopes if isinstance(s, ast.ClassDef)]
    if not classes:
        return None, None
    function = scopes[-1]
    instance = None
    if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        positional = [*function.args.posonlyargs, *function.args.args]
        instance = positional[0].arg if positional else None
    return classes[-1].name, instance


def check_body_not_on_header(site: Site) -> None:
    statement = site.body[0]
    line = site.lines[site.body_first_line - 1]
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
# each does on the lines of the with statement (names, constants, operations), so that an edit
# which keeps line numbers is caught too. How each opcode is treated: afar._cpython.
# pytest rewrites the assert statements of test modules, whose globals then hold this name: the
# running code of an assert line differs from its source by design, so those lines are skipped.
PYTEST_REWRITE_MARKER = "@pytest_ar"


def check_running_code(frame: types.FrameType, text: str, site: Site) -> None:
    try:
        module = _compiled(text, site.filename, site.future_flags)
    except SyntaxError:
        # The source parsed as a tree but does not compile on its own (an IPython cell with
        # top-level await, for instance): nothing to compare with.
        return
    code = frame.f_code
    first, last = site.node.lineno, site.body_last_line
    skipped = _assert_lines(site) if PYTEST_REWRITE_MARKER in frame.f_globals else frozenset()
    candidates = [module if code.co_name == "<module>" else find_code(module, code)]
    if code.co_name == "<module>":
        # IPython compiles a cell one top-level statement at a time, and a with statement
        # compiles differently when code follows it (3.11+: a jump over its exit handling;
        # 3.10: that handling inlined): compare with the statement compiled alone too.
        candidates.append(_statement_alone(text, site))
    running = signature(code, first, last, skipped)
    if not any(
        fresh is not None and signature(fresh, first, last, skipped) == running
        for fresh in candidates
    ):
        raise SourceError(
            f"{site.filename}, line {site.node.lineno}: the source of this block is not the "
            "code that is running (the file was edited after it was imported, or exec() ran "
            "other text under this file name). afar does not run code it cannot see: restart "
            "the process or re-import the module so that the source matches."
        )


def _statement_alone(text: str, site: Site) -> types.CodeType | None:
    """The top-level statement holding the with statement, compiled as a module of its own."""
    tree = _parse(text, site.filename, site.future_flags)
    for statement in tree.body:
        if statement.lineno <= site.node.lineno <= (statement.end_lineno or statement.lineno):
            alone = ast.Module(body=[statement], type_ignores=[])
            return _cpython.compile_tree(alone, site.filename, "exec", site.future_flags)
    return None


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


def signature(
    code: types.CodeType, first: int, last: int, skipped: frozenset[int] = frozenset()
) -> Counter[tuple[object, ...]]:
    """What ``code`` does on lines ``first``..``last`` (but ``skipped``): a multiset of
    (line, operation, operand)."""
    tokens: Counter[tuple[object, ...]] = Counter()
    line: int | None = code.co_firstlineno
    instructions = list(dis.get_instructions(code))
    for index, instruction in enumerate(instructions):
        line = _cpython.instruction_line(instruction, line)
        if line is None or not first <= line <= last or line in skipped:
            continue
        name = instruction.opname
        if name in _cpython.IGNORED_OPNAMES or _returns_none(instructions, index):
            continue
        parts = _cpython.FAST_VARIANTS.get(name)
        if parts is not None:
            argval = instruction.argval
            for part, local in zip(parts, argval if isinstance(argval, tuple) else (argval,)):
                tokens[(line, part, repr(local))] += 1
            continue
        if instruction.opcode in _cpython.JUMP_OPCODES:
            tokens[(line, name)] += 1
        elif isinstance(instruction.argval, types.CodeType):
            inner = instruction.argval
            body = sorted(signature(inner, 0, sys.maxsize, skipped).items(), key=repr)
            tokens[(line, name, inner.co_name, tuple(body))] += 1
        else:
            tokens[(line, name, repr(instruction.argval))] += 1
    return tokens


def _returns_none(instructions: list[dis.Instruction], index: int) -> bool:
    following = instructions[index + 1] if index + 1 < len(instructions) else None
    return (
        instructions[index].opname == "LOAD_CONST"
        and instructions[index].argval is None
        and following is not None
        and following.opname == "RETURN_VALUE"
    )
