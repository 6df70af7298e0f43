"""Which modules are the user's own and travel with blocks (issue 13): the rule, no cluster.

Modules are written to temporary folders put on ``sys.path``; each test uses names of its own,
since afar decides once per module name.
"""

from __future__ import annotations

import ast
import importlib
import sys
import uuid
from pathlib import Path

import pytest

import afar


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    afar.modules.reset()


def fresh(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("name", ["json", "os.path", "sys", "numpy", "distributed", "afar"])
def test_the_standard_library_installed_packages_and_afar_are_not_local(name):
    assert not afar.modules.is_local(name)


def test_a_module_beside_the_script_is_local_imported_or_not(folder):
    imported, not_imported = fresh("helpers"), fresh("other")
    (folder / f"{imported}.py").write_text("X = 1\n")
    (folder / f"{not_imported}.py").write_text("X = 2\n")
    importlib.import_module(imported)
    try:
        assert afar.modules.is_local(imported)
        assert afar.modules.is_local(not_imported)
        assert not_imported not in sys.modules  # deciding imports nothing
    finally:
        sys.modules.pop(imported, None)


def test_packages_namespace_packages_and_their_modules_are_local(folder):
    package, namespace = fresh("pkg"), fresh("ns")
    (folder / package).mkdir()
    (folder / package / "__init__.py").write_text("raise RuntimeError('never run here')\n")
    (folder / package / "stats.py").write_text("")
    (folder / namespace).mkdir()
    (folder / namespace / "tool.py").write_text("")
    for name in (package, f"{package}.stats", namespace, f"{namespace}.tool"):
        assert afar.modules.is_local(name), name
    assert not afar.modules.is_local(f"{package}.missing")  # an attribute, or nothing


def test_a_module_in_a_site_packages_folder_counts_as_installed(folder):
    name = fresh("vendored")
    site = folder / "site-packages"
    site.mkdir()
    (site / f"{name}.py").write_text("")
    sys.path.insert(0, str(site))
    try:
        assert not afar.modules.is_local(name)
    finally:
        sys.path.remove(str(site))


def test_include_and_exclude_by_name_with_submodules(folder):
    package = fresh("pkg")
    (folder / package).mkdir()
    (folder / package / "__init__.py").write_text("")
    (folder / package / "sub.py").write_text("")
    afar.modules.exclude(package)
    assert not afar.modules.is_local(package)
    assert not afar.modules.is_local(f"{package}.sub")
    afar.modules.include(package)
    assert afar.modules.is_local(f"{package}.sub")
    afar.modules.include("numpy")
    assert afar.modules.is_local("numpy")
    afar.modules.reset()
    assert not afar.modules.is_local("numpy")


def test_a_module_written_after_a_first_look_is_local_once_imported(folder):
    name = fresh("later")
    assert not afar.modules.is_local(name)
    (folder / f"{name}.py").write_text("")
    importlib.invalidate_caches()
    importlib.import_module(name)
    try:
        assert afar.modules.is_local(name)
    finally:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("bad", ["", "1abc", "a-b", "a..b", 3, None])
def test_names_that_are_not_module_names_are_refused(bad):
    with pytest.raises(TypeError, match=r"a module name such as 'helpers' or 'pkg\.stats'"):
        afar.modules.include(bad)


@pytest.mark.parametrize(
    ("call", "imported"),
    [
        ('importlib.import_module("helpers")', ["helpers"]),
        ('import_module("pkg.stats")', ["pkg", "pkg.stats"]),
        ('importlib.import_module(".stats", "pkg")', ["pkg", "pkg.stats"]),
        ('importlib.import_module("..tool", package="pkg.sub")', ["pkg", "pkg.tool"]),
        ('__import__("pkg.stats")', ["pkg", "pkg.stats"]),
        # Names only known at run time, and relative __import__ calls, cannot be seen.
        ("importlib.import_module(name)", []),
        ('importlib.import_module(".stats", package)', []),
        ('__import__("stats", globals(), None, [], 1)', []),
        ('importlib.import_module("not a module name")', []),
    ],
)
def test_a_literal_import_module_call_counts_as_an_import(call: str, imported: list[str]) -> None:
    from afar._modules import imported_names

    tree = ast.parse(f"import importlib\nvalue = {call}\n")
    assert [n for n in imported_names([tree]) if n != "importlib"] == imported


def test_an_import_module_call_inside_try_is_optional() -> None:
    from afar._modules import imported_names

    tree = ast.parse(
        "try:\n    fast = importlib.import_module('speedups')\nexcept ImportError:\n    pass\n"
    )
    assert imported_names([tree]) == ()
