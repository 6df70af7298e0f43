"""A source file as afar reads it: the top-level statement holding a block, parsed alone.

The first entry of a block must cost what its own block costs, not its file (issue 19). What
holds a block is one top-level statement (a function, a class, a ``with`` or ``if`` at module
level) and the statements sharing its lines: a *piece*, whole lines of whole statements, which
parses alone at its own line numbers to the same nodes as in the whole file. Each is found
from the block's line without reading the rest of the file (``FileIndex.piece_at``): a top-level
statement starts on a line with no indentation, and a piece cut anywhere else (inside a string
or brackets, before an ``else:``) does not parse. A piece found so is trusted only once the
running code is shown to be its code; otherwise the whole file is parsed once
(``FileIndex.whole``), which decides, as before. The last few pieces are kept with their code
compiled, so that the blocks of one long function share them; the syntax tree of the whole file
is not kept (tens of MB for a 20,000-line file).

What code does on each line is read once per code object (``code_table``): the running module
of a script is disassembled once, not once per block.
"""

from __future__ import annotations

import ast
import bisect
import dis
import re
import sys
import threading
import types
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence

from afar import _cpython

# Files whose source is kept as read (a notebook cell is one); a block entered again needs none
# of this, only its first entry does.
FILE_INDEXES_KEPT = 16
# Pieces kept parsed per file: usually the one whose blocks are being entered.
PIECES_KEPT = 2
# Code objects whose operations are kept by line: the running module or function, and the
# fresh compile of a piece.
CODE_TABLES_KEPT = 8
# Parses tried to find a piece before parsing the whole file: a piece cut where no statement
# starts (a line at column 0 inside a string) does not parse, and a longer one is tried.
PIECE_ATTEMPTS = 8
STARTS_TRIED = 4
# Blank lines before a piece put it at its line numbers when it is parsed alone; the tokenizer
# skips one (about 25 ns) 500 times faster than the nodes of a line of code are renumbered
# (about 15 us): more blank lines than this many per line of the piece, and it is renumbered.
PADDING_PER_LINE = 500

# A line at column 0 may start a top-level statement unless it starts with one of these (or is
# a clause of the statement before it).
NOT_A_START = frozenset(" \t\f\r\n#)]}\\")
CLAUSE = re.compile(r"(?:else|elif|except|finally)\b")
DEFINITION = re.compile(r"(?:async\s+def|def|class)\b")
# A statement after the piece, so that it compiles as it does when code follows it (a with
# statement: 3.11+ jumps over its exit handling, 3.10 inlines that handling). Never run. Eight
# names long: CPython copies code that ends the module into the exits of what precedes it when
# it is at most 4 instructions (MAX_COPY_SIZE), which code that follows in a file seldom is;
# the statement compiled alone stands for the rare case (see ``_candidates``).
FOLLOWING = "__afar_following__ = (" + ", ".join(["__afar_following__"] * 8) + ")\n"

SCOPE_NODES = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# One operation the source check counts, and the code object it makes (a function), if any.
Operation = tuple[tuple[object, ...], types.CodeType | None]
LineTable = dict[int, list[Operation]]
Parse = Callable[[str, str, int], tuple[ast.Module, str]]
# A with statement, the class it stands in, and the first parameter of the function it stands
# in when that function is in the class (what ``super()`` and name mangling need).
# A with statement; the innermost class around it and the method's first parameter; and the
# functions and classes around it, outermost first, as ("def" | "class", name).
Found = tuple[ast.With | ast.AsyncWith, str | None, str | None, tuple[tuple[str, str], ...]]


class Piece:
    """Whole top-level statements of a file parsed alone, and the ``with`` statements in them.

    ``tree`` may end with a statement that follows them (``own`` leaves it out).
    """

    def __init__(
        self,
        filename: str,
        flags: int,
        lines: tuple[str, ...],
        span: tuple[int, int],
        tree: ast.Module,
    ) -> None:
        self.filename = filename
        self.flags = flags
        self.lines = lines  # the file's lines it was parsed from
        self.span = span
        self.tree = tree
        first, last = span
        self.own = [s for s in tree.body if first <= first_line(s) <= last]
        # Line -> the innermost with statement whose header spans it, and what surrounds it.
        self.headers: dict[int, Found] = {}
        for node, scopes in with_statements(self.own):
            header_end = max(node.lineno, first_line(node.body[0]) - 1)
            for line in range(node.lineno, header_end + 1):
                existing = self.headers.get(line)
                if existing is None or node.lineno > existing[0].lineno:
                    self.headers[line] = (node, *class_of(scopes), scope_names(scopes))
        self._code: types.CodeType | None = None
        self._compiled = False

    def with_at(self, lineno: int) -> Found | None:
        """The innermost ``with`` statement whose header spans ``lineno``, and its context."""
        return self.headers.get(lineno)

    def code(self) -> types.CodeType | None:
        """The piece (and what follows it) compiled as a module; None if it does not compile."""
        if not self._compiled:
            try:
                self._code = _cpython.compile_tree(self.tree, self.filename, "exec", self.flags)
            except SyntaxError:
                self._code = None
            self._compiled = True
        return self._code

    def statement_alone(self, lineno: int) -> types.CodeType | None:
        """The top-level statement holding line ``lineno`` compiled as a module of its own."""
        for statement in self.own:
            if first_line(statement) <= lineno <= (statement.end_lineno or statement.lineno):
                alone = ast.Module(body=[statement], type_ignores=[])
                try:
                    return _cpython.compile_tree(alone, self.filename, "exec", self.flags)
                except SyntaxError:
                    return None
        return None


class WholeFile:
    """The whole file parsed once: where each top-level statement stands, and its pieces."""

    def __init__(self, filename: str, flags: int, lines: tuple[str, ...], tree: ast.Module):
        self.filename = filename
        self.flags = flags
        self.lines = lines  # the lines parsed (IPython's syntax transformed, if it had to be)
        self.spans: list[tuple[int, int]] = []  # (first line, decorators included; last line)
        for statement in tree.body:
            first, last = first_line(statement), statement.end_lineno or statement.lineno
            if self.spans and first <= self.spans[-1][1]:  # ``a = 1; b = 2``: one piece
                self.spans[-1] = (self.spans[-1][0], max(last, self.spans[-1][1]))
            else:
                self.spans.append((first, last))
        self._firsts = [first for first, _ in self.spans]
        self._lock = threading.Lock()
        self._parsed: OrderedDict[int, Piece] = OrderedDict()
        self._module: types.CodeType | None = None
        self._compiled = False

    def piece_holding(self, lineno: int) -> Piece | None:
        """The piece holding line ``lineno``, parsed with the one after it (its following code)."""
        number = bisect.bisect_right(self._firsts, lineno) - 1
        if number < 0 or self.spans[number][1] < lineno:
            return None
        with self._lock:
            found = self._parsed.get(number)
            if found is not None:
                self._parsed.move_to_end(number)
                return found
        first = self.spans[number][0]
        last = self.spans[min(number + 1, len(self.spans) - 1)][1]
        try:
            tree = _parse_at(first, self.lines[first - 1 : last], self.filename, self.flags)
        except SyntaxError:  # never seen: whole statements parse alone; take them from the file
            whole = _cpython.parse("".join(self.lines), self.filename, "exec", self.flags)
            body = [s for s in whole.body if first <= first_line(s) <= last]
            tree = ast.Module(body=body, type_ignores=[])
        found = Piece(self.filename, self.flags, self.lines, self.spans[number], tree)
        with self._lock:
            self._parsed[number] = found
            while len(self._parsed) > PIECES_KEPT:
                self._parsed.popitem(last=False)
        return found

    def module_code(self) -> types.CodeType | None:
        """The whole file compiled (None if it does not compile on its own)."""
        if not self._compiled:
            try:
                self._module = compile(
                    "".join(self.lines), self.filename, "exec", flags=self.flags, dont_inherit=True
                )
            except SyntaxError:
                self._module = None
            self._compiled = True
        return self._module


class FileIndex:
    """A file's source as read, and the pieces of it found so far; built by ``index_for``."""

    def __init__(self, filename: str, flags: int, read: tuple[str, ...], parse: Parse) -> None:
        self.filename = filename
        self.flags = flags
        self.read = read  # the lines as read, with line endings
        self.read_from: object = None  # linecache's list they came from (the same while unchanged)
        self._parse = parse
        self._lock = threading.Lock()
        self._pieces: OrderedDict[tuple[int, int], Piece] = OrderedDict()
        self._whole: WholeFile | None = None

    def piece_at(self, lineno: int) -> Piece | None:
        """The piece holding the ``with`` statement whose header spans ``lineno``, found without
        parsing the whole file; None when no parse of the lines around it finds one."""
        with self._lock:
            for span, piece in reversed(self._pieces.items()):
                if span[0] <= lineno <= span[1] and piece.with_at(lineno) is not None:
                    self._pieces.move_to_end(span)
                    return piece
        found = self._find_piece(lineno)
        if found is not None:
            with self._lock:
                self._pieces[found.span] = found
                while len(self._pieces) > PIECES_KEPT:
                    self._pieces.popitem(last=False)
        return found

    def _find_piece(self, lineno: int) -> Piece | None:
        lines = self.read
        if not 1 <= lineno <= len(lines):
            return None
        attempts = 0
        for first in _starts_up_to(lines, lineno, STARTS_TRIED):
            for end in _starts_after(lines, lineno):
                attempts += 1
                if attempts > PIECE_ATTEMPTS:
                    return None
                following = FOLLOWING if end <= len(lines) else ""
                try:
                    tree = _parse_at(
                        first, lines[first - 1 : end - 1], self.filename, self.flags, following
                    )
                except SyntaxError as error:
                    if error.lineno is not None and error.lineno < lineno:
                        break  # wrong before the block (a start inside a string): start earlier
                    continue  # cut inside the block or after it: end later
                except ValueError:  # a null byte
                    return None
                piece = Piece(self.filename, self.flags, lines, (first, end - 1), tree)
                if piece.with_at(lineno) is not None:
                    return piece
                break  # whole statements without the block: start earlier
        return None

    def whole(self) -> WholeFile:
        """The whole file parsed (once): raises ``SourceError`` if it does not parse."""
        if self._whole is None:
            source = "".join(self.read)
            tree, parsed = self._parse(self.filename, source, self.flags)
            lines = self.read if parsed == source else tuple(parsed.splitlines(keepends=True))
            self._whole = WholeFile(self.filename, self.flags, lines, tree)
        return self._whole


_indexes: OrderedDict[tuple[str, int], FileIndex] = OrderedDict()
_indexes_lock = threading.Lock()


def index_for(
    filename: str,
    flags: int,
    lines: Sequence[str] | None = None,
    text: str | None = None,
    *,
    parse: Parse,
) -> FileIndex:
    """The index of a file's source, given as the list linecache holds or as ``text``.

    One per (file name, flags), replaced when the text changes. ``parse(filename, text,
    flags)`` gives the tree of the whole text and the text it parsed (IPython's syntax
    transformed). linecache holds the same list for a file while it is unchanged: recognised
    without reading it.
    """
    key = (filename, flags)
    with _indexes_lock:
        index = _indexes.get(key)
        if index is not None:
            _indexes.move_to_end(key)
    if index is not None and lines is not None and index.read_from is lines:
        return index
    read = tuple(lines) if lines is not None else tuple((text or "").splitlines(keepends=True))
    if index is not None and index.read == read:
        index.read_from = lines
        return index
    index = FileIndex(filename, flags, read, parse)
    index.read_from = lines
    with _indexes_lock:
        _indexes[key] = index
        _indexes.move_to_end(key)
        while len(_indexes) > FILE_INDEXES_KEPT:
            _indexes.popitem(last=False)
    return index


def _parse_at(
    first: int, lines: Sequence[str], filename: str, flags: int, following: str = ""
) -> ast.Module:
    """``lines`` (then ``following``) parsed as a source whose first line is line ``first``.

    Blank lines before them are the cheaper way for a piece near its file's start, renumbering
    the nodes for one deep in it (see ``PADDING_PER_LINE``); the nodes are the same either way.
    """
    text = "".join(lines)
    if not text.endswith("\n"):
        text += "\n"
    text += following
    if first - 1 <= PADDING_PER_LINE * len(lines):
        return _cpython.parse("\n" * (first - 1) + text, filename, "exec", flags)
    try:
        tree = _cpython.parse(text, filename, "exec", flags)
    except SyntaxError as error:
        if error.lineno is not None:
            error.lineno += first - 1
        raise
    return ast.increment_lineno(tree, first - 1)


def _may_start(line: str) -> bool:
    """Whether a top-level statement may start on ``line`` (no indentation, not a clause)."""
    return bool(line) and line[0] not in NOT_A_START and CLAUSE.match(line) is None


def _starts_up_to(lines: Sequence[str], lineno: int, count: int) -> Iterator[int]:
    """Lines at or before ``lineno`` where a top-level statement may start, nearest first: a
    definition's decorators included."""
    number = lineno
    while number >= 1 and count > 0:
        if not _may_start(lines[number - 1]):
            number -= 1
            continue
        start = number
        if DEFINITION.match(lines[number - 1]):
            above = number - 1
            while above >= 1:
                text = lines[above - 1]
                if text.startswith("@"):
                    start = above
                elif text.strip() and not text.lstrip().startswith("#"):
                    break
                above -= 1
        yield start
        count -= 1
        number = start - 1


def _starts_after(lines: Sequence[str], lineno: int) -> Iterator[int]:
    """Lines after ``lineno`` where a top-level statement may start, then the end of the file."""
    for number in range(lineno + 1, len(lines) + 1):
        if _may_start(lines[number - 1]):
            yield number
    yield len(lines) + 1


def first_line(statement: ast.stmt) -> int:
    decorators = getattr(statement, "decorator_list", None) or []
    return min([statement.lineno, *(d.lineno for d in decorators)])


def with_statements(
    statements: list[ast.stmt], scopes: tuple[ast.AST, ...] = ()
) -> Iterator[tuple[ast.With | ast.AsyncWith, tuple[ast.AST, ...]]]:
    """Every ``with`` statement in ``statements``, with the classes and functions around it.

    Only statement lists are visited: a statement never stands inside an expression, and a
    file has several expression nodes per statement.
    """
    for statement in statements:
        if isinstance(statement, (ast.With, ast.AsyncWith)):
            yield statement, scopes
        inner = (*scopes, statement) if isinstance(statement, SCOPE_NODES) else scopes
        for field in statement._fields:
            value = getattr(statement, field, None)
            if not isinstance(value, list) or not value:
                continue
            if isinstance(value[0], ast.stmt):
                yield from with_statements(value, inner)
            elif isinstance(value[0], (ast.excepthandler, ast.match_case)):
                for clause in value:
                    yield from with_statements(clause.body, inner)


def scope_names(scopes: tuple[ast.AST, ...]) -> tuple[tuple[str, str], ...]:
    """The functions and classes ``scopes`` holds, as ("def" | "class", name)."""
    return tuple(
        ("class" if isinstance(scope, ast.ClassDef) else "def", scope.name)  # type: ignore[attr-defined]
        for scope in scopes
    )


def class_of(scopes: tuple[ast.AST, ...]) -> tuple[str | None, str | None]:
    """The innermost class among ``scopes``, and the first parameter of the function a with
    statement stands in if that function is inside the class (a method, or a function in one)."""
    classes = [s for s in scopes if isinstance(s, ast.ClassDef)]
    if not classes:
        return None, None
    function = scopes[-1]
    instance = None
    if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        positional = [*function.args.posonlyargs, *function.args.args]
        instance = positional[0].arg if positional else None
    return classes[-1].name, instance


# -- what code does, line by line ----------------------------------------------------------
# The running code and the source must be the same code: afar compares what each does on the
# lines of the with statement (names, constants, operations), so that an edit which keeps line
# numbers is caught too. How each opcode is treated: afar._cpython.

_tables: OrderedDict[int, tuple[types.CodeType, LineTable]] = OrderedDict()
_tables_lock = threading.Lock()


def code_table(code: types.CodeType) -> LineTable:
    """The operations of ``code`` by line, read once per code object (the last few kept)."""
    key = id(code)  # the table keeps its code alive: no other object has its id meanwhile
    with _tables_lock:
        found = _tables.get(key)
        if found is not None and found[0] is code:
            _tables.move_to_end(key)
            return found[1]
    table = line_table(code)
    with _tables_lock:
        _tables[key] = (code, table)
        while len(_tables) > CODE_TABLES_KEPT:
            _tables.popitem(last=False)
    return table


def operations(code: types.CodeType) -> Iterator[tuple[int, Operation]]:
    """(line, operation) for each operation of ``code`` that the comparison counts."""
    line: int | None = code.co_firstlineno
    instructions = list(dis.get_instructions(code))
    for index, instruction in enumerate(instructions):
        line = _cpython.instruction_line(instruction, line)
        if line is None:
            continue
        name = instruction.opname
        if name in _cpython.IGNORED_OPNAMES or _returns_none(instructions, index):
            continue
        parts = _cpython.VARIANTS.get(name)
        if parts is not None:
            argval = instruction.argval
            for part, local in zip(parts, argval if isinstance(argval, tuple) else (argval,)):
                yield line, ((line, part, repr(local)), None)
        elif instruction.opcode in _cpython.JUMP_OPCODES:
            yield line, ((line, name), None)
        elif isinstance(instruction.argval, types.CodeType):
            yield line, ((line, name), instruction.argval)
        else:
            yield line, ((line, name, repr(instruction.argval)), None)


def line_table(code: types.CodeType) -> LineTable:
    table: LineTable = {}
    for line, operation in operations(code):
        table.setdefault(line, []).append(operation)
    return table


def signature(
    code: types.CodeType | LineTable,
    first: int = 0,
    last: int = sys.maxsize,
    skipped: frozenset[int] = frozenset(),
) -> Counter[tuple[object, ...]]:
    """What ``code`` (or its ``line_table``) does on lines ``first``..``last`` (but
    ``skipped``): a multiset of (line, operation, operand); a function or class defined there
    counts with what its own code does."""
    table = line_table(code) if isinstance(code, types.CodeType) else code
    tokens: Counter[tuple[object, ...]] = Counter()
    lines = range(first, last + 1) if last - first < len(table) else sorted(table)
    for line in lines:
        if line in skipped or not first <= line <= last:
            continue
        for token, inner in table.get(line, ()):
            if inner is not None:
                body = sorted(signature(inner, skipped=skipped).items(), key=repr)
                token = (*token, inner.co_name, tuple(body))
            tokens[token] += 1
    return tokens


def _returns_none(instructions: list[dis.Instruction], index: int) -> bool:
    following = instructions[index + 1] if index + 1 < len(instructions) else None
    return (
        instructions[index].opname == "LOAD_CONST"
        and instructions[index].argval is None
        and following is not None
        and following.opname == "RETURN_VALUE"
    )
