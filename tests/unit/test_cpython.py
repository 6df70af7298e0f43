"""The interpreter details afar relies on are all classified, for the CPython running the tests.

A new CPython release that adds an opcode or a code flag fails here first, with the name to
classify in ``afar/_cpython.py``, instead of failing for users.
"""

from __future__ import annotations
import __future__

import ast
import dis
import pathlib
import subprocess
import sys
import textwrap
import types

import pytest

import afar
from afar import _cpython

AFAR_DIR = pathlib.Path(afar.__file__).parent

# Sources whose code objects reach frames afar reads: every kind of scope a block can stand in.
SCOPES = {
    "module": "x = 1\n",
    "function with a docstring": 'def f(a):\n    """Doc."""\n    return a\n',
    "method": "class C:\n    def m(self):\n        return self\n",
    "method with a docstring": 'class C:\n    def m(self):\n        """Doc."""\n',
    "staticmethod": "class C:\n    @staticmethod\n    def s():\n        return 1\n",
    "classmethod": "class C:\n    @classmethod\n    def c(cls):\n        return cls\n",
    "closure": "def f():\n    a = 1\n    def g():\n        return a\n    return g\n",
    "generator": "def g():\n    yield 1\n",
    "coroutine": "async def c():\n    return 1\n",
    "async generator": "async def a():\n    yield 1\n",
    "class body": "class C:\n    x = 1\n",
    "lambda": "f = lambda *a, **k: a\n",
    "future annotations": (
        "from __future__ import annotations\ndef f(a: int) -> int:\n    return a\n"
    ),
}


def _codes(code: types.CodeType):
    yield code
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _codes(constant)


def test_every_opcode_of_this_interpreter_is_classified():
    unknown = sorted(name for name in dis.opmap if _cpython.opcode_role(name) is None)
    assert not unknown, (
        f"Python {sys.version.split()[0]} has opcodes afar/_cpython.py does not classify: "
        f"{unknown}. Decide for each whether the source comparison ignores it, treats it as a "
        "variant of a plain load/store, or compares it."
    )


def test_no_opcode_has_two_roles():
    assert not _cpython.IGNORED_OPNAMES & _cpython.COMPARED_OPNAMES
    assert not set(_cpython.VARIANTS) & (_cpython.IGNORED_OPNAMES | _cpython.COMPARED_OPNAMES)
    for parts in _cpython.VARIANTS.values():
        assert set(parts) <= _cpython.COMPARED_OPNAMES


def test_every_code_flag_of_this_interpreter_is_classified():
    unknown = sorted(set(dis.COMPILER_FLAG_NAMES.values()) - set(_cpython.CODE_FLAG_ROLES))
    assert not unknown, f"code flags afar/_cpython.py does not classify: {unknown}"


@pytest.mark.parametrize("scope", SCOPES)
def test_the_flags_of_every_scope_are_known_and_pass_to_compile(scope):
    """Each bit of each code object's flags is a known code flag or a future feature's, and
    what afar passes on to compile() is accepted (3.14's CO_METHOD/CO_HAS_DOCSTRING were not)."""
    known = sum(dis.COMPILER_FLAG_NAMES) | _cpython.FUTURE_FLAGS
    module = compile(SCOPES[scope], f"<{scope}>", "exec", dont_inherit=True)
    for code in _codes(module):
        assert not code.co_flags & ~known, (scope, code.co_name, hex(code.co_flags & ~known))
        flags = _cpython.future_flags(_cpython.future_features(code))
        compile("y = 2\n", "<again>", "exec", flags=flags, dont_inherit=True)


def test_future_flags_are_the_ones_of_future_and_no_code_flag():
    assert _cpython.FUTURE_FEATURES["annotations"] == __future__.annotations.compiler_flag
    assert not _cpython.FUTURE_FLAGS & sum(dis.COMPILER_FLAG_NAMES)
    module = compile(SCOPES["future annotations"], "<f>", "exec", dont_inherit=True)
    function = next(c for c in _codes(module) if c.co_name == "f")
    assert _cpython.future_features(function) == ("annotations",)
    assert _cpython.future_features(compile("x = 1", "<m>", "exec", dont_inherit=True)) == ()


def test_write_function_locals_assigns_a_running_functions_variable():
    def function():
        value = "before"
        _cpython.write_function_locals(sys._getframe(), {"value": "after"})
        return value

    assert function() == "after"


def test_afar_has_no_assert_statements():
    """``python -O`` removes assert statements: afar's behaviour must not rest on them."""
    found = []
    for path in sorted(AFAR_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        found += [f"{path.name}:{n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.Assert)]
    assert not found


def test_blocks_behave_the_same_under_python_O(tmp_path):
    """A script run with ``-O`` gets the same results from blocks at every kind of scope."""
    script = tmp_path / "optimized.py"
    script.write_text(
        textwrap.dedent(
            '''\
            import sys
            import afar

            def documented(a):
                """Adds two."""
                with afar.get, locally:
                    b = a + 2
                return b

            class Holder:
                def method(self, a):
                    """Doc."""
                    with afar.get, locally:
                        b = a * 2
                    return b

                @staticmethod
                def static(a):
                    with afar.get, locally:
                        b = a - 1
                    return b

            with afar.get, locally:
                top = sum(range(4))

            with afar.run, later:
                never = 1

            results = [documented(40), Holder().method(21), Holder.static(43), top]
            print(sys.flags.optimize, results, sorted(afar.run.captured.names_assigned))
            '''
        )
    )
    done = subprocess.run(
        [sys.executable, "-O", str(script)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "1 [42, 42, 42, 6] ['never']"
