"""Everything afar relies on in the running CPython's internals, per version, in one place.

afar reads three kinds of interpreter detail, and nothing else in the package may:

* **code flags** — which ``from __future__`` features a frame's code was compiled with (they
  must be passed on to ``compile()``), and whether a frame's locals live in fast slots
  (``CO_OPTIMIZED``). The flag values come from ``__future__`` and ``inspect``, never from
  hand-written numbers: 3.14 gave bits that were free before to ``CO_HAS_DOCSTRING`` and
  ``CO_METHOD``, which ``compile()`` refuses.
* **frame locals** — how a value is written into a function's local variable. 3.10-3.12:
  ``frame.f_locals`` is a snapshot dict copied back with ``PyFrame_LocalsToFast``. 3.13+
  (PEP 667): ``frame.f_locals`` is a write-through proxy and that C function is gone.
* **opcodes** — afar compares what the running code does on the lines of a ``with`` statement
  with what its source compiles to (``afar._analysis.source``), so that it never ships a source
  that is not the running code. Every opcode name is classified below: ignored (it reflects how the
  code was compiled, not what the source says), a variant of a plain load or store, or compared
  as it is. ``tests/unit/test_cpython.py`` walks ``dis.opmap`` and every code flag of the running
  interpreter and fails on anything new, so that a new CPython breaks a test, not a user.

Version by version (checked on 3.10.13, 3.11.7, 3.12.1, 3.13.0, 3.14.10, 3.15.2):
3.11 added ``co_positions`` (instruction line numbers; 3.10 has only ``starts_line``);
3.12 added ``LOAD_FAST_CHECK`` and ``RETURN_CONST``; 3.13 the fused ``LOAD_FAST_LOAD_FAST``
family and PEP 667; 3.14 ``LOAD_FAST_BORROW``, ``LOAD_SMALL_INT``, ``LOAD_SPECIAL``,
``NOT_TAKEN``, ``POP_ITER`` and the two code flags; 3.15 ``TRACE_RECORD`` and PEP 765
(``return``/``break``/``continue`` leaving a ``finally`` block is a SyntaxError).

The worker package (``afar._worker``) cannot import this module: it travels to workers by value
and imports only the standard library, ``distributed`` and itself. Its two interpreter details
are therefore written there, and named here: the syntax-tree lock of gh-106905 again
(``_worker/compiling.py``), and ``PyThreadState_SetAsyncExc``, the one way to raise in another
thread, unchanged from 3.10 to 3.15 (``_worker/stopping.py``).
"""

from __future__ import annotations
import __future__

import ast
import ctypes
import dis
import functools
import inspect
import operator
import sys
import threading
import types
from collections.abc import Iterable, Mapping
from typing import Any

# -- syntax trees ---------------------------------------------------------------------------
# CPython 3.11 and 3.12 (gh-106905) keep the recursion depth of converting between syntax
# trees and Python objects per interpreter, not per thread: two threads parsing to a tree (or
# compiling one) at once can raise "SystemError: AST constructor recursion depth mismatch".
# Blocks first entered in several threads at once do exactly that, so afar converts under a lock.
_SYNTAX_TREES = threading.RLock()


def parse(
    source: str | bytes, filename: str = "<unknown>", mode: str = "exec", flags: int = 0
) -> Any:
    """``ast.parse`` that is safe to call from several threads (see ``_SYNTAX_TREES``)."""
    with _SYNTAX_TREES:
        return compile(source, filename, mode, flags=flags | ast.PyCF_ONLY_AST, dont_inherit=True)


def compile_tree(
    tree: ast.Module | ast.Expression, filename: str, mode: str = "exec", flags: int = 0
) -> types.CodeType:
    """``compile`` of a syntax tree, safe to call from several threads."""
    with _SYNTAX_TREES:
        return compile(tree, filename, mode, flags=flags, dont_inherit=True)


# -- code flags -----------------------------------------------------------------------------
CO_OPTIMIZED = inspect.CO_OPTIMIZED


def _active_future_features() -> dict[str, int]:
    """The ``__future__`` features that still change compilation here, with their flags.

    A feature that became mandatory (``nested_scopes``, ``division``...) has no effect, and its
    old flag may mean something else now: only features not yet mandatory are carried over.
    """
    features = {}
    for name in __future__.all_feature_names:
        feature = getattr(__future__, name)
        mandatory = feature.getMandatoryRelease()
        if (mandatory is None or mandatory > sys.version_info) and feature.compiler_flag:
            features[name] = feature.compiler_flag
    return features


FUTURE_FEATURES = _active_future_features()
FUTURE_FLAGS = functools.reduce(operator.or_, FUTURE_FEATURES.values(), 0)


def future_features(code: types.CodeType) -> tuple[str, ...]:
    """The names of the ``from __future__`` features ``code`` was compiled with."""
    return tuple(name for name, flag in FUTURE_FEATURES.items() if code.co_flags & flag)


def future_flags(features: Iterable[str]) -> int:
    """The ``compile()`` flags of ``features`` (names from ``future_features``)."""
    return functools.reduce(operator.or_, (FUTURE_FEATURES.get(f, 0) for f in features), 0)


def is_optimized(code: types.CodeType) -> bool:
    """Whether ``code`` keeps its locals in fast slots (a function), not in a namespace dict."""
    return bool(code.co_flags & CO_OPTIMIZED)


# What afar does with each code flag a frame's code can carry (``dis.COMPILER_FLAG_NAMES``).
CODE_FLAG_ROLES = {
    "OPTIMIZED": "read: a function's frame, whose locals are written through the frame",
    "NEWLOCALS": "not read",
    "VARARGS": "not read",
    "VARKEYWORDS": "not read",
    "NESTED": "not read",
    "GENERATOR": "not read: a generator's frame is bound into as any function's",
    "NOFREE": "not read",
    "COROUTINE": "not read: an `async with` block's frame is bound into as any function's",
    "ITERABLE_COROUTINE": "not read",
    "ASYNC_GENERATOR": "not read",
    "HAS_DOCSTRING": "not read, never passed to compile() (3.14+)",
    "METHOD": "not read, never passed to compile() (3.14+)",
}

# -- frame locals ---------------------------------------------------------------------------
# PEP 667 (Python 3.13): frame.f_locals of a function is a write-through proxy.
WRITE_THROUGH_LOCALS = sys.version_info >= (3, 13)


def write_function_locals(frame: types.FrameType, values: Mapping[str, Any]) -> None:
    """Assign ``values`` to local variables (or cells) of a running function's frame."""
    if WRITE_THROUGH_LOCALS:
        proxy = frame.f_locals
        for name, value in values.items():
            proxy[name] = value  # cells (nonlocal, closures) are written through too
        return
    # Python 3.10-3.12: f_locals is a snapshot dict; reading it refreshes the snapshot from the
    # fast slots, then PyFrame_LocalsToFast copies it back, cells included.
    snapshot = frame.f_locals
    snapshot.update(values)
    ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(frame), ctypes.c_int(0))
    # The snapshot lives as long as the frame and keeps every value it copied: a Future that
    # the caller then deletes would stay alive, and its data on the cluster. The next read of
    # f_locals (or locals()) fills it again from the fast slots.
    snapshot.clear()


def release_locals_snapshot(frame: types.FrameType) -> None:
    """Python 3.10-3.12: empty the f_locals snapshot of a function's frame.

    Reading ``f_locals`` there copies every local into a dict that lives as long as the frame;
    3.13+ has no snapshot.
    """
    if not WRITE_THROUGH_LOCALS and is_optimized(frame.f_code):
        frame.f_locals.clear()


# -- opcodes --------------------------------------------------------------------------------
# Left out of the comparison: they reflect how the code was compiled (a cell run statement by
# statement, the implicit "return None" of a module, 3.14's branch hints), not the source.
IGNORED_OPNAMES = frozenset(
    {
        "CACHE",
        "COPY_FREE_VARS",
        "EXTENDED_ARG",
        "MAKE_CELL",
        "NOP",
        "NOT_TAKEN",
        "POP_TOP",
        "PRINT_EXPR",
        "PUSH_NULL",
        "RESERVED",
        "RESUME",
        "RETURN_CONST",
        "RETURN_VALUE",
        "TRACE_RECORD",
    }
)
# Python 3.12+ chooses among these by a flow analysis of the whole function (is the local surely
# bound here? may the reference be borrowed?) and 3.13+ fuses neighbours into superinstructions:
# the same lines compile to other ones when code elsewhere in the function differs (pytest's
# assertion rewriting). They are compared as the plain loads and stores of each local.
# Python 3.11 loads the function of ``m.f()`` with LOAD_ATTR, not LOAD_METHOD, when the module
# imports ``m`` at its top level (bpo-44313, ``is_import_originated``): the same line compiles to
# the other one when the statement holding it is compiled apart from the file's imports, as afar
# does (issue 19). It is compared as LOAD_ATTR (3.12 made both one LOAD_ATTR).
VARIANTS = {
    "LOAD_METHOD": ("LOAD_ATTR",),
    "LOAD_FAST_CHECK": ("LOAD_FAST",),
    "LOAD_FAST_BORROW": ("LOAD_FAST",),
    "LOAD_FAST_LOAD_FAST": ("LOAD_FAST", "LOAD_FAST"),
    "LOAD_FAST_BORROW_LOAD_FAST_BORROW": ("LOAD_FAST", "LOAD_FAST"),
    "STORE_FAST_LOAD_FAST": ("STORE_FAST", "LOAD_FAST"),
    "STORE_FAST_STORE_FAST": ("STORE_FAST", "STORE_FAST"),
}
# Compared by name and operand (jumps by name only: their targets move with unrelated code).
COMPARED_OPNAMES = frozenset(
    [
        "ANNOTATIONS_PLACEHOLDER",
        "ASYNC_GEN_WRAP",
        "BEFORE_ASYNC_WITH",
        "BEFORE_WITH",
        "BINARY_ADD",
        "BINARY_AND",
        "BINARY_FLOOR_DIVIDE",
        "BINARY_LSHIFT",
        "BINARY_MATRIX_MULTIPLY",
        "BINARY_MODULO",
        "BINARY_MULTIPLY",
        "BINARY_OP",
        "BINARY_OR",
        "BINARY_POWER",
        "BINARY_RSHIFT",
        "BINARY_SLICE",
        "BINARY_SUBSCR",
        "BINARY_SUBTRACT",
        "BINARY_TRUE_DIVIDE",
        "BINARY_XOR",
        "BUILD_CONST_KEY_MAP",
        "BUILD_INTERPOLATION",
        "BUILD_LIST",
        "BUILD_MAP",
        "BUILD_SET",
        "BUILD_SLICE",
        "BUILD_STRING",
        "BUILD_TEMPLATE",
        "BUILD_TUPLE",
        "CALL",
        "CALL_FUNCTION",
        "CALL_FUNCTION_EX",
        "CALL_FUNCTION_KW",
        "CALL_INTRINSIC_1",
        "CALL_INTRINSIC_2",
        "CALL_KW",
        "CALL_METHOD",
        "CHECK_EG_MATCH",
        "CHECK_EXC_MATCH",
        "CLEANUP_THROW",
        "COMPARE_OP",
        "CONTAINS_OP",
        "CONVERT_VALUE",
        "COPY",
        "COPY_DICT_WITHOUT_KEYS",
        "DELETE_ATTR",
        "DELETE_DEREF",
        "DELETE_FAST",
        "DELETE_GLOBAL",
        "DELETE_NAME",
        "DELETE_SUBSCR",
        "DICT_MERGE",
        "DICT_UPDATE",
        "DUP_TOP",
        "DUP_TOP_TWO",
        "END_ASYNC_FOR",
        "END_FOR",
        "END_SEND",
        "ENTER_EXECUTOR",
        "EXIT_INIT_CHECK",
        "FORMAT_SIMPLE",
        "FORMAT_VALUE",
        "FORMAT_WITH_SPEC",
        "FOR_ITER",
        "GEN_START",
        "GET_AITER",
        "GET_ANEXT",
        "GET_AWAITABLE",
        "GET_ITER",
        "GET_LEN",
        "GET_YIELD_FROM_ITER",
        "IMPORT_FROM",
        "IMPORT_NAME",
        "IMPORT_STAR",
        "INPLACE_ADD",
        "INPLACE_AND",
        "INPLACE_FLOOR_DIVIDE",
        "INPLACE_LSHIFT",
        "INPLACE_MATRIX_MULTIPLY",
        "INPLACE_MODULO",
        "INPLACE_MULTIPLY",
        "INPLACE_OR",
        "INPLACE_POWER",
        "INPLACE_RSHIFT",
        "INPLACE_SUBTRACT",
        "INPLACE_TRUE_DIVIDE",
        "INPLACE_XOR",
        "INTERPRETER_EXIT",
        "IS_OP",
        "JUMP",
        "JUMP_ABSOLUTE",
        "JUMP_BACKWARD",
        "JUMP_BACKWARD_NO_INTERRUPT",
        "JUMP_FORWARD",
        "JUMP_IF_FALSE",
        "JUMP_IF_FALSE_OR_POP",
        "JUMP_IF_NOT_EXC_MATCH",
        "JUMP_IF_TRUE",
        "JUMP_IF_TRUE_OR_POP",
        "JUMP_NO_INTERRUPT",
        "KW_NAMES",
        "LIST_APPEND",
        "LIST_EXTEND",
        "LIST_TO_TUPLE",
        "LOAD_ASSERTION_ERROR",
        "LOAD_ATTR",
        "LOAD_BUILD_CLASS",
        "LOAD_CLASSDEREF",
        "LOAD_CLOSURE",
        "LOAD_COMMON_CONSTANT",
        "LOAD_CONST",
        "LOAD_DEREF",
        "LOAD_FAST",
        "LOAD_FAST_AND_CLEAR",
        "LOAD_FROM_DICT_OR_DEREF",
        "LOAD_FROM_DICT_OR_GLOBALS",
        "LOAD_GLOBAL",
        "LOAD_LOCALS",
        "LOAD_NAME",
        "LOAD_SMALL_INT",
        "LOAD_SPECIAL",
        "LOAD_SUPER_ATTR",
        "LOAD_SUPER_METHOD",
        "LOAD_ZERO_SUPER_ATTR",
        "LOAD_ZERO_SUPER_METHOD",
        "MAKE_FUNCTION",
        "MAP_ADD",
        "MATCH_CLASS",
        "MATCH_KEYS",
        "MATCH_MAPPING",
        "MATCH_SEQUENCE",
        "POP_BLOCK",
        "POP_EXCEPT",
        "POP_ITER",
        "POP_JUMP_BACKWARD_IF_FALSE",
        "POP_JUMP_BACKWARD_IF_NONE",
        "POP_JUMP_BACKWARD_IF_NOT_NONE",
        "POP_JUMP_BACKWARD_IF_TRUE",
        "POP_JUMP_FORWARD_IF_FALSE",
        "POP_JUMP_FORWARD_IF_NONE",
        "POP_JUMP_FORWARD_IF_NOT_NONE",
        "POP_JUMP_FORWARD_IF_TRUE",
        "POP_JUMP_IF_FALSE",
        "POP_JUMP_IF_NONE",
        "POP_JUMP_IF_NOT_NONE",
        "POP_JUMP_IF_TRUE",
        "PRECALL",
        "PREP_RERAISE_STAR",
        "PUSH_EXC_INFO",
        "RAISE_VARARGS",
        "RERAISE",
        "RETURN_GENERATOR",
        "ROT_FOUR",
        "ROT_N",
        "ROT_THREE",
        "ROT_TWO",
        "SEND",
        "SETUP_ANNOTATIONS",
        "SETUP_ASYNC_WITH",
        "SETUP_CLEANUP",
        "SETUP_FINALLY",
        "SETUP_WITH",
        "SET_ADD",
        "SET_FUNCTION_ATTRIBUTE",
        "SET_UPDATE",
        "STORE_ATTR",
        "STORE_DEREF",
        "STORE_FAST",
        "STORE_FAST_MAYBE_NULL",
        "STORE_GLOBAL",
        "STORE_NAME",
        "STORE_SLICE",
        "STORE_SUBSCR",
        "SWAP",
        "TO_BOOL",
        "UNARY_INVERT",
        "UNARY_NEGATIVE",
        "UNARY_NOT",
        "UNARY_POSITIVE",
        "UNPACK_EX",
        "UNPACK_SEQUENCE",
        "WITH_EXCEPT_START",
        "YIELD_FROM",
        "YIELD_VALUE",
    ]
)
# The monitoring twins of ordinary opcodes (sys.monitoring, 3.12+): dis shows the ordinary one.
INSTRUMENTED_PREFIX = "INSTRUMENTED_"
JUMP_OPCODES = frozenset(dis.hasjrel) | frozenset(dis.hasjabs)


def opcode_role(opname: str) -> str | None:
    """How the source comparison treats an opcode: "ignored", "variant", "compared", or None
    for an opcode afar has never seen (a newer CPython)."""
    if opname in IGNORED_OPNAMES:
        return "ignored"
    if opname in VARIANTS:
        return "variant"
    if opname in COMPARED_OPNAMES:
        return "compared"
    if opname.startswith(INSTRUMENTED_PREFIX) and opname[len(INSTRUMENTED_PREFIX) :]:
        return "ignored"  # never in dis output
    return None


def instruction_line(instruction: dis.Instruction, previous: int | None) -> int | None:
    """The source line of ``instruction`` (``previous``: the line of the one before it)."""
    positions = getattr(instruction, "positions", None)
    if positions is not None:  # Python 3.11+
        return positions.lineno
    starts = instruction.starts_line  # Python 3.10: the line number where a line starts
    return starts if isinstance(starts, int) and not isinstance(starts, bool) else previous


@functools.lru_cache(maxsize=256)
def names_stored(code: types.CodeType, opnames: tuple[str, ...]) -> frozenset[str]:
    """Names that ``code`` assigns with ``opnames``: a class body's ``global x; x = 1``."""
    return frozenset(i.argval for i in dis.get_instructions(code) if i.opname in opnames)
