"""Fixtures of the unit tests: module files to import, sources registered in linecache."""

from __future__ import annotations

import itertools
import linecache
import sys
import textwrap
import types
from collections.abc import Callable, Iterator

import pytest
import unit_helpers

_module_numbers = itertools.count()


@pytest.fixture
def load_module(tmp_path, monkeypatch) -> Iterator[Callable[..., types.ModuleType]]:
    """Write a module's source to a file under ``tmp_path`` and import it.

    A real file, as users' modules are: afar reads it through linecache. No bytecode is written,
    so that a test may edit the file and import it again.
    """
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    names: list[str] = []

    def load(source: str, name: str | None = None) -> types.ModuleType:
        name = name or f"afar_unit_module_{next(_module_numbers)}"
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        names.append(name)
        return unit_helpers.import_file(path, name)

    yield load
    for name in names:
        sys.modules.pop(name, None)
    linecache.checkcache()


@pytest.fixture(autouse=True)
def _forget_registered_sources() -> Iterator[None]:
    """Drop the fake files a test put in linecache, so that tests do not see each other's."""
    before = set(linecache.cache)
    yield
    prefix = unit_helpers.FAKE_FILE_TEMPLATE.split("{")[0]
    for filename in set(linecache.cache) - before:
        if filename.startswith(prefix):
            del linecache.cache[filename]


@pytest.fixture
def effects() -> list[object]:
    """A list a block appends to: it stays empty when the body did not run here."""
    return []
