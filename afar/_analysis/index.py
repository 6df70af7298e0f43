"""A source file read once: where its ``with`` statements are, its pieces parsed on demand.

The first entry of a block must cost what its own block costs, not its file (issue 19). A file
is parsed once per (file name, ``from __future__`` flags, text), and what is kept of it is
small: its lines (the strings linecache holds), the line ranges of its top-level statements,
and per ``with`` statement its position and the class it stands in. The file's syntax tree is
not kept (tens of MB for a 20,000-line file): the top-level statement holding a block is parsed
again alone, at its own line numbers, which gives the same nodes; the last few are kept, with
their code compiled once, so that the blocks of one long function share them. What the running
code does on the lines of ``with`` statements is read once per code object (``signature``).
"""

from __future__ import annotations

import ast
import dis
import sys
import threading
import types
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from afar import _cpython

# Files indexed and kept (a notebook cell is one): a block entered again needs none of this.
FILE_INDEXES_KEPT = 16
# Per file: pieces parsed (usually the one whose blocks are being entered) and code objects
# whose operations are read (the running module or function, and the fresh compile of it).
PIECES_KEPT = 2
CODE_TABLES_KEPT = 8

SCOPE_NODES = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
# One operation the source check counts, and the code object it makes, if any.
Operation = tuple[tuple[object, ...], types.CodeType | None]
LineTable = dict[int, list[Operation]]


@dataclass(frozen=True)
class WithStatement:
    """Where one ``with`` statement of a file stands, and what surrounds it."""

    lineno: int
    col_offset: int
    piece: int  # the index of the piece (see ``FileIndex.pieces``) that holds it
    # The innermost class it stands in, and the first parameter of the function it stands in
    # when that function is in the class: what ``super()`` and name mangling need.
    class_name: str | None
    instance: str | None


class Piece:
    """One piece of a file parsed alone, with the piece after it (the code that follows it)."""

    def __init__(self, filename: str, flags: int, span: tuple[int, int], tree: ast.Module) -> None:
        self.filename = filename
        self.flags = flags
        self.tree = tree
        first, last = span
        self.own = [s for s in tree.body if first <= first_line(s) <= last]
        self.nodes = {
            (node.lineno, node.col_offset): node for node, _ in with_statements(self.own)
        }
        self._code: types.CodeType | None | bool = False  # False: not compiled yet

    def code(self) -> types.CodeType | None:
        """The piece and the next one compiled as a module; None if that does not compile."""
        if self._code is False:
            try:
                self._code = _cpython.compile_tree(self.tree, self.filename, "exec", self.flags)
            except SyntaxError:
                self._code = None
        return self._code  # type: ignore[return-value]

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


class FileIndex:
    """A file's ``with`` statements and top-level statements; built by ``index_for``."""

    def __init__(
        self,
        filename: str,
        flags: int,
        read: tuple[str, ...],
        lines: tuple[str, ...],
        tree: ast.Module,
    ) -> None:
        self.filename = filename
        self.flags = flags
        self.read = read  # the lines as read (before IPython's transformation, if any)
        self.read_from: object = None  # linecache's list they came from: the same, unchanged
        self.lines = lines  # the lines parsed, one string per line, with line endings
        # Pieces: runs of top-level statements that share lines (``a = 1; b = 2``), as
        # (first line, decorators included, last line). Each is whole lines of whole statements.
        self.pieces: list[tuple[int, int]] = []
        for statement in tree.body:
            first, last = first_line(statement), statement.end_lineno or statement.lineno
            if self.pieces and first <= self.pieces[-1][1]:
                self.pieces[-1] = (self.pieces[-1][0], max(last, self.pieces[-1][1]))
            else:
                self.pieces.append((first, last))
        # Line -> the innermost with statement whose header spans it; and the lines that any
        # with statement spans, the only ones whose operations are read.
        self.headers: dict[int, WithStatement] = {}
        self.covered = bytearray(len(lines) + 2)
        piece = 0
        for statement in tree.body:
            while self.pieces[piece][1] < first_line(statement):
                piece += 1
            for node, scopes in with_statements([statement]):
                found = WithStatement(node.lineno, node.col_offset, piece, *class_of(scopes))
                header_end = max(node.lineno, first_line(node.body[0]) - 1)
                for line in range(node.lineno, header_end + 1):
                    existing = self.headers.get(line)
                    if existing is None or node.lineno > existing.lineno:
                        self.headers[line] = found
                end = min(node.end_lineno or node.lineno, len(lines))
                self.covered[node.lineno : end + 1] = b"\x01" * (end + 1 - node.lineno)
        self._lock = threading.Lock()
        self._parsed: OrderedDict[int, Piece] = OrderedDict()
        self._tables: OrderedDict[int, tuple[types.CodeType, LineTable]] = OrderedDict()
        self._module: types.CodeType | None | bool = False

    def with_at(self, lineno: int) -> WithStatement | None:
        """The innermost ``with`` statement whose header spans ``lineno``."""
        return self.headers.get(lineno)

    def piece(self, number: int) -> Piece:
        """Piece ``number`` (and the one after it) parsed alone, at their own line numbers."""
        with self._lock:
            found = self._parsed.get(number)
            if found is not None:
                self._parsed.move_to_end(number)
                return found
        first = self.pieces[number][0]
        last = self.pieces[min(number + 1, len(self.pieces) - 1)][1]
        # Blank lines before it keep its line numbers (the tokenizer skips them at C speed).
        text = "\n" * (first - 1) + "".join(self.lines[first - 1 : last])
        try:
            tree = _cpython.parse(text, self.filename, "exec", self.flags)
        except SyntaxError:  # never seen: whole statements parse alone; take them from the file
            whole = _cpython.parse("".join(self.lines), self.filename, "exec", self.flags)
            body = [s for s in whole.body if first <= first_line(s) <= last]
            tree = ast.Module(body=body, type_ignores=[])
        found = Piece(self.filename, self.flags, self.pieces[number], tree)
        with self._lock:
            self._parsed[number] = found
            while len(self._parsed) > PIECES_KEPT:
                self._parsed.popitem(last=False)
        return found

    def node(self, statement: WithStatement) -> ast.With | ast.AsyncWith | None:
        return self.piece(statement.piece).nodes.get((statement.lineno, statement.col_offset))

    def module_code(self) -> types.CodeType | None:
        """The whole file compiled (None if it does not compile on its own): only when the
        running code matches none of its pieces, to compare with it as a whole."""
        if self._module is False:
            try:
                self._module = compile(
                    "".join(self.lines), self.filename, "exec", flags=self.flags, dont_inherit=True
                )
            except SyntaxError:
                self._module = None
        return self._module  # type: ignore[return-value]

    def table(self, code: types.CodeType) -> LineTable:
        """What ``code`` does on the lines of ``with`` statements, read once per code object."""
        key = id(code)  # the table keeps the code alive: no other object gets its id meanwhile
        with self._lock:
            found = self._tables.get(key)
            if found is not None and found[0] is code:
                self._tables.move_to_end(key)
                return found[1]
        table = line_table(code, self.covered)
        with self._lock:
            self._tables[key] = (code, table)
            while len(self._tables) > CODE_TABLES_KEPT:
                self._tables.popitem(last=False)
        return table


_indexes: OrderedDict[tuple[str, int], FileIndex] = OrderedDict()
_indexes_lock = threading.Lock()


def index_for(
    filename: str,
    flags: int,
    lines: Sequence[str] | None = None,
    text: str | None = None,
    *,
    parse: Callable[[str, str, int], tuple[ast.Module, str]],
) -> FileIndex:
    """The index of a file's source, given as its linecache ``lines`` or as ``text``.

    Built once per (file name, flags, text); ``parse(filename, text, flags)`` returns the tree
    and the text it parsed (IPython's syntax transformed). The lines linecache holds for an
    unchanged file are the same list each time: recognised without reading them.
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
    source = "".join(read) if text is None else text
    tree, parsed_text = parse(filename, source, flags)
    parsed_lines = read if parsed_text == source else tuple(parsed_text.splitlines(True))
    index = FileIndex(filename, flags, read, parsed_lines, tree)
    index.read_from = lines
    with _indexes_lock:
        _indexes[key] = index
        _indexes.move_to_end(key)
        while len(_indexes) > FILE_INDEXES_KEPT:
            _indexes.popitem(last=False)
    return index


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
        parts = _cpython.FAST_VARIANTS.get(name)
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


def line_table(code: types.CodeType, covered: bytearray | None = None) -> LineTable:
    """The operations of ``code`` by line; only on ``covered`` lines if given."""
    table: LineTable = {}
    for line, operation in operations(code):
        if covered is None or (0 <= line < len(covered) and covered[line]):
            table.setdefault(line, []).append(operation)
    return table


def signature(
    code: types.CodeType | LineTable,
    first: int,
    last: int,
    skipped: frozenset[int] = frozenset(),
) -> Counter[tuple[object, ...]]:
    """What ``code`` (or its ``line_table``) does on lines ``first``..``last`` (but
    ``skipped``): a multiset of (line, operation, operand); a function or class defined there
    counts with what its own code does."""
    if isinstance(code, types.CodeType):
        if first == 0 and last == sys.maxsize:
            table = line_table(code)
        else:
            table = {}
            for line, operation in operations(code):
                if first <= line <= last:
                    table.setdefault(line, []).append(operation)
    else:
        table = code
    tokens: Counter[tuple[object, ...]] = Counter()
    lines = range(first, last + 1) if last - first < len(table) else sorted(table)
    for line in lines:
        if line in skipped or not first <= line <= last:
            continue
        for token, inner in table.get(line, ()):
            if inner is not None:
                body = sorted(signature(inner, 0, sys.maxsize, skipped).items(), key=repr)
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
