"""Blocks in every kind of scope run remotely, bind back, and point tracebacks at their lines.

The scopes whose code flags or frames differ between CPython versions (3.14 marks functions
with docstrings and methods with code flags of their own; 3.13 changed frame locals): module
level, functions with and without docstrings, methods, static and class methods, closures,
generators, class bodies, decorated functions and modules with ``from __future__ import
annotations``. Each is a function of one module file that the test writes and imports.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import textwrap
import traceback

import cloudpickle
import pytest
from _remote_helpers import RESULT_TIMEOUT

SCOPES_MODULE = textwrap.dedent(
    f'''\
    from __future__ import annotations

    import functools

    import afar

    TIMEOUT = {RESULT_TIMEOUT}

    with afar.get(timeout=TIMEOUT), remotely:
        at_module_level = 40 + 2

    def module_level():
        return at_module_level

    def plain(a):
        with afar.get(timeout=TIMEOUT), remotely:
            b = a + 2
        return b

    def documented(a):
        """Adds two, remotely."""
        with afar.get(timeout=TIMEOUT), remotely:
            b = a + 2
        return b

    def annotated(a: int) -> int:
        with afar.get(timeout=TIMEOUT), remotely:
            b: int = a + 2
        return b

    class Holder:
        def __init__(self, a):
            self.a = a

        def method(self):
            """A method with a docstring."""
            a = self.a  # the instance's class lives in this test's module, not on workers
            with afar.get(timeout=TIMEOUT), remotely:
                b = a + 2
            return b

        @staticmethod
        def static(a):
            with afar.get(timeout=TIMEOUT), remotely:
                b = a + 2
            return b

        @classmethod
        def klass(cls, a):
            """A classmethod with a docstring."""
            name = cls.__name__
            with afar.get(timeout=TIMEOUT), remotely:
                b = (name, a + 2)
            return b

    def closure(a):
        outer = 2

        def inner():
            nonlocal outer
            with afar.get(timeout=TIMEOUT), remotely:
                outer = a + outer
            return outer

        inner()
        return outer

    def generator(values):
        for a in values:
            with afar.get(timeout=TIMEOUT), remotely:
                b = a + 2
            yield b

    def class_body(a):
        class Body:
            with afar.get(timeout=TIMEOUT), remotely:
                b = a + 2
        return Body.b

    def traced(function):
        @functools.wraps(function)
        def wrapper(*args):
            return function(*args)
        return wrapper

    @traced
    def decorated(a):
        """Decorated, with a docstring."""
        with afar.get(timeout=TIMEOUT), remotely:
            b = a + 2
        return b

    def run_then_fetch(a):
        """afar.run binds a Future, whatever the scope."""
        with afar.run, remotely:
            b = a + 2
        return b.result(timeout=TIMEOUT)

    def prints(a):
        """Output of a method's block comes back."""
        with afar.get(timeout=TIMEOUT), remotely:
            print("from the worker", a)
            b = a
        return b

    class Failing:
        def method(self):
            """Fails on the worker."""
            with afar.get(timeout=TIMEOUT), remotely:
                b = {{}}["missing"]  # the failing line
            return b
    '''
)

CASES = {
    "module level": ("module_level", ()),
    "function": ("plain", (40,)),
    "function with a docstring": ("documented", (40,)),
    "annotations": ("annotated", (40,)),
    "method with a docstring": ("Holder(40).method", ()),
    "staticmethod": ("Holder.static", (40,)),
    "closure with nonlocal": ("closure", (40,)),
    "class body": ("class_body", (40,)),
    "decorated function": ("decorated", (40,)),
    "afar.run in a function with a docstring": ("run_then_fetch", (40,)),
}


@contextlib.contextmanager
def imported_module(folder, name: str, source: str, *, by_value: bool = False):
    """``source`` written to ``folder`` and imported as module ``name`` for the duration; with
    ``by_value``, its functions and classes travel pickled by value (workers cannot import it)."""
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        if by_value:
            cloudpickle.register_pickle_by_value(module)
        yield module
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def scopes(client, tmp_path_factory):
    with imported_module(tmp_path_factory.mktemp("scopes"), "afar_scopes", SCOPES_MODULE) as module:
        yield module


@pytest.mark.parametrize("case", CASES, ids=CASES.keys())
def test_a_block_binds_back_in_every_scope(scopes, case):
    expression, args = CASES[case]
    function = eval(expression, vars(scopes))
    assert function(*args) == 42


def test_a_classmethod_block(scopes):
    assert scopes.Holder.klass(40) == ("Holder", 42)


def test_a_generator_block_runs_at_each_step(scopes):
    assert list(scopes.generator([1, 40])) == [3, 42]


def test_output_of_a_block_in_a_documented_function(scopes, capfd):
    assert scopes.prints(7) == 7
    # Output arrives as events; afar.get returns once the block's output has been shown.
    assert "from the worker 7" in capfd.readouterr().out


def test_a_traceback_from_a_method_shows_the_users_line(scopes):
    with pytest.raises(KeyError) as raised:
        scopes.Failing().method()
    frames = traceback.extract_tb(raised.value.__traceback__)
    shown = [f for f in frames if f.filename == scopes.__file__]
    assert shown, "".join(traceback.format_exception(raised.value))
    assert shown[-1].line == 'b = {}["missing"]  # the failing line'


# -- what Python compiles differently inside a class ----------------------------------------------
CLASS_MODULE = textwrap.dedent(
    f'''\
    import afar

    TIMEOUT = {RESULT_TIMEOUT}

    class Base:
        def describe(self):
            return "base"

    class Child(Base):
        def __init__(self):
            self.__secret = 40  # stored as _Child__secret

        def describe(self):
            """super() with no arguments, __class__ and a private attribute, remotely."""
            with afar.get(timeout=TIMEOUT), remotely:
                told = (super().describe(), __class__.__name__, self.__secret + 2)
            return told

        def renamed(this):
            """The instance is the first parameter, whatever its name."""
            with afar.get(timeout=TIMEOUT), remotely:
                told = super().describe() + "!"
            return told

        def run_then_fetch(self):
            with afar.run, remotely:
                told = self.__secret
            return told.result(timeout=TIMEOUT)
    '''
)


@pytest.fixture(scope="module")
def classes(client, tmp_path_factory):
    """A module of classes that travel by value (workers cannot import it)."""
    folder = tmp_path_factory.mktemp("classes")
    with imported_module(folder, "afar_classes", CLASS_MODULE, by_value=True) as module:
        yield module


def test_super_class_cell_and_private_names_in_a_method_block(classes):
    assert classes.Child().describe() == ("base", "Child", 42)


def test_super_takes_the_first_parameter_whatever_its_name(classes):
    assert classes.Child().renamed() == "base!"


def test_a_private_attribute_in_an_afar_run_block(classes):
    assert classes.Child().run_then_fetch() == 40
