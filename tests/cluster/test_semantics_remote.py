"""A block behaves as if it ran in place: each body of the matrix, plainly and ``remotely``.

The bodies are those of ``tests/bodies.py``, which the unit tests run plainly and ``locally``.
Each one is written into a module file and imported, once plain and once under a ``remotely``
header, inside a function and at module level; the names it saves are compared.
"""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path
from typing import Any

import pytest
from _remote_helpers import RESULT_TIMEOUT

SHARED_BODIES = Path(__file__).parents[1] / "bodies.py"
HEADERS = {
    "get": f"with afar.get({{names}}, timeout={RESULT_TIMEOUT}), remotely:",
    "run": "with afar.run({names}), remotely:",
}


def load_shared_bodies() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("afar_shared_bodies", SHARED_BODIES)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bodies = load_shared_bodies()
BODIES = {body.id: body for body in bodies.BODIES}
MODULE_BODIES = {k: b for k, b in BODIES.items() if k not in bodies.FUNCTION_ONLY}


def block_results(path: Path, source: str) -> dict[str, Any]:
    """Write ``source`` to ``path``, run it as a module of that file, call ``block_results()``."""
    path.write_text(source)
    namespace: dict[str, Any] = {"__name__": path.stem, "__file__": str(path)}
    exec(compile(source, str(path), "exec", dont_inherit=True), namespace)
    return namespace["block_results"]()


def resolved(client, values: dict[str, Any]) -> dict[str, Any]:
    """The values of ``afar.run``'s Futures."""
    return dict(zip(values, client.gather(list(values.values()), direct=False)))


@pytest.mark.parametrize("header", HEADERS, ids=HEADERS.keys())
@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_in_a_function(client, tmp_path, body, header):
    expected = block_results(tmp_path / "plain_body.py", bodies.function_source(body))
    source = bodies.function_source(body, HEADERS[header])
    got = block_results(tmp_path / "remote_body.py", source)
    if header == "run":
        got = resolved(client, got)
    assert got == expected


@pytest.mark.parametrize("body", MODULE_BODIES.values(), ids=MODULE_BODIES.keys())
def test_at_module_level(client, tmp_path, body):
    expected = block_results(tmp_path / "plain_body.py", bodies.module_source(body))
    source = bodies.module_source(body, HEADERS["get"])
    got = block_results(tmp_path / "remote_body.py", source)
    assert got == expected
