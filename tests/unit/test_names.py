"""Names: what a body reads from outside, what it assigns, what it saves by default."""

from __future__ import annotations

import builtins
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unit_helpers import analysis_of, blocks_of, bound_by, captured, exec_registered

import afar
from afar import _variables

# (body, names read from outside, names the block assigns)
READS_AND_ASSIGNED = {
    "read-one": ("y = x + 1", {"x"}, {"y"}),
    "builtins-are-read-too": ("y = len(items)", {"len", "items"}, {"y"}),
    "rebind-outer": ("x = x + 1", set(), {"x"}),
    "augmented": ("x += 1", set(), {"x"}),
    "attribute-and-subscript-stores-read-the-base": (
        "obj.attr = 1\nseq[0] = value",
        {"obj", "seq", "value"},
        set(),
    ),
    "nested-function-reads": (
        "def f():\n    return a + b\nb = 1",
        {"a"},
        {"f", "b"},
    ),
    "nested-function-locals-stay-inside": (
        "def f(arg):\n    inner = arg\n    return inner\nout = f(1)",
        set(),
        {"f", "out"},
    ),
    "nested-function-defaults-and-decorators": (
        "@decorate\ndef f(a=default, *, k=keyword):\n    return a",
        {"decorate", "default", "keyword"},
        {"f"},
    ),
    "nested-function-global": (
        "def f():\n    global counter\n    counter = 1\nf()",
        {"counter"},
        {"f"},
    ),
    "nested-nonlocal-of-block-variable": (
        "total = 0\ndef add(n):\n    nonlocal total\n    total += n\nadd(2)",
        set(),
        {"total", "add"},
    ),
    "recursion": (
        "def fact(n):\n    return 1 if n <= 1 else n * fact(n - 1)\nr = fact(5)",
        set(),
        {"fact", "r"},
    ),
    "lambda": ("g = lambda v: v + w", {"w"}, {"g"}),
    "lambda-default": ("g = lambda v=d: v", {"d"}, {"g"}),
    "lambda-in-lambda": ("g = lambda a: lambda b: a + b + c", {"c"}, {"g"}),
    "list-comprehension": ("squares = [i * i for i in data]", {"data"}, {"squares"}),
    "comprehension-variable-shadows-outer-read": ("r = [x for x in x]", {"x"}, {"r"}),
    "comprehension-variable-read-after": (
        "r = [i for i in range(3)]\nlast = i",
        {"range", "i"},
        {"r", "last"},
    ),
    "comprehension-variable-in-a-closure": (
        "fs = [lambda: j for j in range(2)]",
        {"range"},
        {"fs"},
    ),
    "comprehension-variable-read-by-a-nested-function": (
        "r = [i for i in range(3)]\ndef g():\n    return i",
        {"range", "i"},
        {"r", "g"},
    ),
    "comprehension-variable-also-assigned": (
        "r = [i for i in range(3)]\ni = 5",
        {"range"},
        {"r", "i"},
    ),
    "comprehension-walrus": (
        "found = [last := i for i in data]",
        {"data"},
        {"found", "last"},
    ),
    "comprehension-walrus-with-filter": (
        "evens = [h for v in data if (h := v // 2) * 2 == v]",
        {"data"},
        {"evens", "h"},
    ),
    "nested-comprehension": (
        "m = [[i * j for j in cols] for i in rows]",
        {"cols", "rows"},
        {"m"},
    ),
    "dict-and-set-comprehension": (
        "d = {k: v for k, v in pairs}\ns = {e for e in d}",
        {"pairs"},
        {"d", "s"},
    ),
    "generator-expression": ("total = sum(v for v in values)", {"sum", "values"}, {"total"}),
    "class-body": (
        "class C(Base):\n    attr = outer\n    def m(self):\n        return other",
        {"Base", "outer", "other"},
        {"C"},
    ),
    "class-body-own-names": (
        "class C:\n    a = 1\n    b = a + 1",
        set(),
        {"C"},
    ),
    "super": (
        "class C(B):\n    def m(self):\n        return super().m()",
        {"B", "super"},
        {"C"},
    ),
    "import-dotted": ("import os.path", set(), {"os"}),
    "import-as": (
        "import collections.abc as cabc\nfrom a.b import c as d, e",
        set(),
        {"cabc", "d", "e"},
    ),
    "for-targets": ("for i, (j, k) in pairs:\n    pass", {"pairs"}, {"i", "j", "k"}),
    "with-as": ("with opener(p) as fh:\n    text = fh.read()", {"opener", "p"}, {"fh", "text"}),
    "except-as": (
        "try:\n    pass\nexcept Problem as e:\n    pass",
        {"Problem"},
        {"e"},
    ),
    "match-captures": (
        "match v:\n"
        "    case [a, *rest]:\n"
        "        pass\n"
        "    case {'k': b, **others}:\n"
        "        pass\n"
        "    case Point(x=c) as whole:\n"
        "        pass",
        {"v", "Point"},
        {"a", "rest", "b", "others", "c", "whole"},
    ),
    "del": ("del x", set(), {"x"}),
    "walrus-top-level": ("print(n := 10)", {"print"}, {"n"}),
    "async-def": (
        "async def main():\n    return await other()\nr = asyncio.run(main())",
        {"other", "asyncio"},
        {"main", "r"},
    ),
    "try-import-fallback": (
        "try:\n    import numpy as np\nexcept ImportError:\n    np = None",
        {"ImportError"},
        {"np"},
    ),
}


@pytest.mark.parametrize(
    ("body", "reads", "assigned"), READS_AND_ASSIGNED.values(), ids=READS_AND_ASSIGNED.keys()
)
def test_reads_and_assigned(body, reads, assigned):
    analysis = analysis_of(body)
    assert set(analysis.reads) == reads
    assert analysis.assigned == assigned


@pytest.mark.parametrize(
    ("body", "reads", "assigned"), READS_AND_ASSIGNED.values(), ids=READS_AND_ASSIGNED.keys()
)
def test_captured_names_match_the_analysis(body, reads, assigned):
    got = captured(body)
    assert set(got.names_read) == reads
    assert got.names_assigned == assigned


# (body, names read before the block may have assigned them: seeded with the outer value)
SEEDS = {
    "rebind": ("x = x + 1", {"x"}),
    "augmented": ("x += 1", {"x"}),
    "assigned-first": ("x = 1\ny = x", set()),
    "assigned-on-a-branch": ("if flag:\n    x = 1\ny = x", {"x"}),
    "loop-accumulator": ("for i in range(3):\n    acc = acc + [i]", {"acc"}),
    "loop-after-assignment": ("acc = []\nfor i in range(3):\n    acc = acc + [i]", set()),
    "read-in-a-nested-function-only": ("def f():\n    return late\nlate = 1", set()),
    "read-in-a-comprehension": ("x = [x for _ in range(2)]", {"x"}),
    "del-of-an-outer-name": ("del x", {"x"}),
    "del-after-assignment": ("x = 1\ndel x", set()),
    "read-after-del": ("x = 1\ndel x\ny = x", {"x"}),
    "import-then-read": ("import os\nsep = os.sep", set()),
    "decorator-reads-a-later-name": ("@deco\ndef f():\n    pass\ndeco = 1", {"deco"}),
    "default-reads-itself": ("def f(a=f):\n    return a", {"f"}),
    "only-assigned": ("x = 1", set()),
    "assigned-earlier-in-the-same-branch": ("if c:\n    t = 1\n    u = t", set()),
    "assigned-in-both-branches": ("if c:\n    t = 1\nelse:\n    t = 2\nu = t", set()),
    "loop-target-read-in-the-body": ("for df in frames:\n    total = df", set()),
    "assigned-in-the-loop-body-first": ("for p in paths:\n    df = p\n    out = df", set()),
    "read-in-the-loop-before-assigned": ("for i in r:\n    print(prev)\n    prev = i", {"prev"}),
    "loop-target-after-the-loop": ("for i in r:\n    pass\nu = i", {"i"}),
    "loop-target-in-for-else": ("for i in r:\n    pass\nelse:\n    u = i", {"i"}),
    "while-body-order": ("while c:\n    u = t\n    t = 1", {"t"}),
    "with-as-read-in-the-body": ("with ctx as fh:\n    t = fh", set()),
    "with-body-uncertain-after": ("with ctx:\n    t = 1\nu = t", {"t"}),
    "except-as-read-in-the-handler": ("try:\n    pass\nexcept E as e:\n    m = e", set()),
    "try-else-after-the-body": ("try:\n    t = 1\nexcept E:\n    pass\nelse:\n    u = t", set()),
    "after-try-uncertain": ("try:\n    t = 1\nexcept E:\n    pass\nu = t", {"t"}),
    "finally-assigns": ("try:\n    pass\nfinally:\n    t = 1\nu = t", set()),
    "match-capture-read-in-the-case": ("match v:\n    case [a]:\n        b = a", set()),
    "match-guard-reads-the-capture": ("match v:\n    case [a] if a > 1:\n        pass", set()),
    "match-capture-after-the-match": ("match v:\n    case [a]:\n        pass\nb = a", {"a"}),
    "annotation-without-value": ("x: int\ny = x", {"x"}),
}


@pytest.mark.parametrize(("body", "seeds"), SEEDS.values(), ids=SEEDS.keys())
def test_seeds(body, seeds):
    assert set(analysis_of(body).seeds) == seeds


# (body, the name saved when none is given)
LAST_BOUND = {
    "assignment": ("x = 1", "x"),
    "chained-assignment": ("x = y = 1", "y"),
    "tuple-unpacking": ("a, b = 1, 2", "b"),
    "nested-unpacking": ("(a, b), c = (1, 2), 3", "c"),
    "starred": ("first, *rest = [1, 2, 3]", "rest"),
    "augmented": ("x = 1\ny += 1", "y"),
    "annotated": ("y: int = 1", "y"),
    "bare-annotation-binds-nothing": ("x = 1\ny: int", "x"),
    "walrus": ("print(n := 5)", "n"),
    "walrus-in-if": ("if (m := 5):\n    pass", "m"),
    "same-line": ("x = 1; y = 2", "y"),
    "source-order-not-line-count": ("x = (\n    1\n)\ny = 2", "y"),
    "multi-line-last": ("y = 2\nx = (\n    1\n)", "x"),
    "for-target": ("for i in range(3):\n    pass", "i"),
    "for-body": ("for i in range(3):\n    total = i", "total"),
    "for-else": ("for i in range(3):\n    pass\nelse:\n    done = 1", "done"),
    "while": ("while cond:\n    a = 1", "a"),
    # Imports are not saved by default: the caller's module must stay a module.
    "import": ("import os", None),
    "import-dotted": ("x = 1\nimport os.path", "x"),
    "import-several": ("import os, sys", None),
    "from-import": ("from os import path as p, sep", None),
    "import-after-the-result": ("import json\nresult = json.dumps(1)\nimport os", "result"),
    "def": ("x = 1\ndef f():\n    inside = 1", "f"),
    "async-def": ("x = 1\nasync def f():\n    inside = 1", "f"),
    "decorated-def": ("@d\ndef f():\n    pass", "f"),
    "class": ("x = 1\nclass C:\n    attr = 1", "C"),
    "if-else": ("if c:\n    a = 1\nelse:\n    b = 2", "b"),
    "if-then-more": ("if c:\n    a = 1\nb = 2", "b"),
    "try-else": ("try:\n    a = 1\nexcept E:\n    b = 2\nelse:\n    c = 3", "c"),
    "except-as-not-saved": ("try:\n    a = 1\nexcept E as e:\n    pass", "a"),
    "except-body-counts": ("try:\n    a = 1\nexcept E as e:\n    b = 2", "b"),
    "finally": ("try:\n    a = 1\nfinally:\n    b = 2", "b"),
    "with-as": ("with ctx as c:\n    pass", "c"),
    "with-several-as": ("with one as a, two as b:\n    pass", "b"),
    "with-body": ("with ctx as c:\n    inner = 1", "inner"),
    "nested-function-locals-not-saved": ("x = 1\ndef f():\n    y = 2\n    return y", "f"),
    "lambda-walrus-not-saved": ("x = 1\nf = lambda: (z := 1)", "f"),
    "comprehension-not-saved": ("r = [i for i in s]", "r"),
    # PEP 572: `:=` in a comprehension binds in the block's scope (issue 10), in source order.
    "comprehension-walrus-saved": ("[y := i for i in s]", "y"),
    "comprehension-walrus-then-its-target": ("r = [y := i for i in s]", "r"),
    # A statement's targets are bound after the value they get, walruses in it included.
    "walrus-in-assigned-value": ("total = (count := 3) * 2", "total"),
    "walrus-in-f-string": ('s = f"{(n := 1)}"', "s"),
    "walrus-in-augmented-value": ("x = 0\nx += (y := 1)", "x"),
    "walrus-in-annotated-value": ("x: int = (y := 1)", "x"),
    "walrus-in-for-iterable": ("for i in (j := [1]):\n    pass", "i"),
    "walrus-in-with-item": ("with (c := ctx) as d:\n    pass", "d"),
    "walrus-after-the-target-in-the-next-statement": ("total = 1\nprint(n := 2)", "n"),
    "comprehension-walrus-last-statement": (
        "values = [1, 2]\nany((hit := v) > 1 for v in values)",
        "hit",
    ),
    "nested-comprehension-walrus": ("r = 0\n[[(w := j) for j in i] for i in s]", "w"),
    "lambda-in-comprehension-walrus-not-saved": ("r = [lambda: (z := i) for i in s]", "r"),
    "class-body-not-saved": ("class C:\n    attr = 1", "C"),
    "match-star": ("match v:\n    case [a, *rest]:\n        pass", "rest"),
    "match-mapping-rest": ("match v:\n    case {'k': a, **rest}:\n        pass", "rest"),
    "match-as": ("match v:\n    case [a] as whole:\n        pass", "whole"),
    "match-body": ("match v:\n    case [a]:\n        b = a", "b"),
    "attribute-store-not-a-name": ("a = 1\nobj.attr = 2\nseq[0] = 3", "a"),
    "final-expression": ("a = 1\nprint(a)", "a"),
    "nothing-bound": ("print(1)", None),
    "del-binds-nothing": ("del x", None),
}


@pytest.mark.parametrize(("body", "name"), LAST_BOUND.values(), ids=LAST_BOUND.keys())
def test_last_bound_name(body, name):
    assert analysis_of(body).last_bound == name


@pytest.mark.parametrize(("body", "name"), LAST_BOUND.values(), ids=LAST_BOUND.keys())
def test_default_saved_name(body, name):
    assert captured(body).names_saved == ((name,) if name else ())


# One statement per binding form; the oracle is the last name each one binds.
_NAMES = st.sampled_from(["a", "b", "c", "d"])
_STATEMENTS = st.one_of(
    st.builds(lambda n: (f"{n} = 1", n), _NAMES),
    st.builds(lambda n, m: (f"{n} = {m} = 1", m), _NAMES, _NAMES),
    st.builds(lambda n, m: (f"{n}, {m} = 1, 2", m), _NAMES, _NAMES),
    st.builds(lambda n: (f"{n} += 1", n), _NAMES),
    st.builds(lambda n: (f"{n}: int = 1", n), _NAMES),
    st.builds(lambda n: (f"print({n} := 1)", n), _NAMES),
    st.builds(lambda n: (f"for {n} in range(2):\n    pass", n), _NAMES),
    st.builds(lambda n, m: (f"for {n} in range(2):\n    {m} = 1", m), _NAMES, _NAMES),
    st.builds(lambda n: (f"import os as {n}", None), _NAMES),  # not saved by default
    st.builds(lambda n: (f"def {n}():\n    inside = 1", n), _NAMES),
    st.builds(lambda n: (f"class {n}:\n    inside = 1", n), _NAMES),
    st.builds(lambda n: (f"if cond:\n    {n} = 1", n), _NAMES),
    st.builds(lambda n: (f"with ctx as {n}:\n    pass", n), _NAMES),
    st.builds(lambda n: (f"r{n} = [x for x in {n}]", f"r{n}"), _NAMES),
)


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(_STATEMENTS, min_size=1, max_size=6))
def test_last_bound_name_of_random_bodies(statements):
    body = "\n".join(text for text, _ in statements)
    expected = next((name for _, name in reversed(statements) if name is not None), None)
    assert analysis_of(body).last_bound == expected


_BODIES = {
    **{f"reads-{k}": v[0] for k, v in READS_AND_ASSIGNED.items()},
    **{f"seeds-{k}": v[0] for k, v in SEEDS.items()},
    **{f"last-{k}": v[0] for k, v in LAST_BOUND.items()},
}


@pytest.mark.parametrize("body", _BODIES.values(), ids=_BODIES.keys())
def test_the_binding_walker_agrees_with_symtable(body):
    # One walker answers "what does this bind" for every analysis; symtable is the reference
    # for the block's own scope (comprehension variables are the comprehension's own).
    assert bound_by(body) == analysis_of(body).assigned


# -- outer names: where afar finds them -----------------------------------------------------------
def test_globals_locals_and_closure_cells_are_found(load_module):
    module = load_module(
        """\
        import afar

        glob = "g"

        def outer():
            cell = "c"

            def inner():
                local = "l"
                with afar.run, locally:
                    y = glob + cell + local
                return y

            return inner()
        """
    )
    assert module.outer() == "gcl"


def test_locals_shadow_globals(load_module):
    module = load_module(
        """\
        import afar

        name = "global"

        def result():
            name = "local"
            with afar.run, locally:
                y = name
            return y
        """
    )
    assert module.result() == "local"


def test_module_global_shadowing_a_builtin_is_used(load_module):
    module = load_module(
        """\
        import afar

        def len(value):
            return "shadowed"

        with afar.run, locally:
            y = len([])
        """
    )
    assert module.y == "shadowed"


def test_builtins_are_not_shipped():
    frame_holder: list[types.FrameType] = []
    scope = exec_registered(
        """\
        import sys
        shown = "shown"
        def result():
            local = 1
            frame_holder.append(sys._getframe())
            with afar.run, later:
                y = len([local]) + print.__name__ + shown + missing
        """,
        {"frame_holder": frame_holder},
    )
    scope["result"]()
    (frame,) = frame_holder
    (block,) = blocks_of(frame.f_code)
    assert set(block.analysis.reads) == {"len", "local", "print", "shown", "missing"}
    entry = types.SimpleNamespace(block=block, frame=frame)
    values = _variables.read_variables(entry, None)
    assert values == {"local": 1, "shown": "shown"}
    assert not set(values) & set(vars(builtins))


def test_a_name_defined_nowhere_is_a_name_error_when_read(load_module):
    module = load_module(
        """\
        import afar

        def result(read):
            with afar.run, locally:
                y = undefined_anywhere if read else "not read"
            return y
        """
    )
    assert module.result(False) == "not read"
    with pytest.raises(NameError, match="undefined_anywhere"):
        module.result(True)


def test_data_is_looked_up_before_the_callers_variables(load_module):
    module = load_module(
        """\
        import afar

        def result(store):
            a = "local"
            with afar.run(data=store), locally:
                y = a + b
            return y
        """
    )
    store = {"a": "data", "b": "!"}
    assert module.result(store) == "data!"
    assert store["y"] == "data!"


def test_class_body_reads_a_cell_of_the_enclosing_function(load_module):
    module = load_module(
        """\
        import afar

        def result():
            outer = 5

            class Holder:
                with afar.run, locally:
                    y = outer + 1

            return Holder.y
        """
    )
    assert module.result() == 6


def test_seeded_name_takes_the_outer_value(load_module):
    module = load_module(
        """\
        import afar

        x = 41

        def result():
            x = 1
            with afar.run, locally:
                x = x + 1
            return x

        with afar.run, locally:
            x = x + 1
        """
    )
    assert module.x == 42
    assert module.result() == 2


def test_del_of_an_outer_name_inside_the_block(load_module):
    module = load_module(
        """\
        import afar

        def result():
            x = 1
            with afar.run("gone"), locally:
                del x
                try:
                    x
                except NameError:
                    gone = True
            return gone, x
        """
    )
    # The block deleted its own copy; the caller's x is untouched (only saved names come back).
    assert module.result() == (True, 1)


def test_saving_a_bare_annotation_by_default_is_not_chosen(load_module):
    module = load_module(
        """\
        import afar

        def result():
            with afar.run, locally:
                x = 1
                later_typed: int
            return x
        """
    )
    assert module.result() == 1


def test_comprehension_variable_cannot_be_requested(load_module):
    """From 3.12 symtable shows ``i`` as a local of the function (PEP 709); afar does not."""
    module = load_module(
        """\
        import afar

        def result():
            with afar.run("i"), locally:
                r = [i for i in range(3)]
        """
    )
    with pytest.raises(afar.AfarError, match="never assigns 'i'"):
        module.result()


def test_comprehension_variable_cannot_be_requested_on_any_python():
    with pytest.raises(afar.AfarError, match="never assigns 'i'"):
        captured("r = [i for i in range(3)]", "i")


def test_names_saved_on_request_keep_their_order_without_duplicates():
    assert captured("a = 1\nb = 2\nc = 3", "c", "a", "c").names_saved == ("c", "a")


def test_the_public_run_object_exposes_captured(load_module):
    module = load_module(
        """\
        import afar

        with afar.run, later:
            value = 1
        """
    )
    assert afar.run.captured is not None
    assert afar.run.captured.label == f"{module.__name__}.py:3"
    assert afar.run.captured.names_saved == ("value",)
