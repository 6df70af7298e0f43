"""Real code runs in a block as it does without afar (issue 19): the differential test.

``differential.py`` (beside this file) makes snippets of the ``>>>`` examples of the standard
library's, NumPy's and pandas' docstrings, and runs each as plain Python and as blocks in four
ways. Here a fixed part of them runs in every test run; ``python tests/cluster/differential.py``
runs all of them and prints the counts the README gives.
"""

from __future__ import annotations

import differential
import pytest
from distributed import Client

# Snippets run here: every one of the standard library's, and the first ones of each package.
PER_PACKAGE = 15
# Differences that are Dask's, not afar's, each with why. A memoryview of a non-native format
# (NumPy's str_ exports one) cannot be rebuilt by Dask's memoryview serializer on the client.
KNOWN = {"numpy.str_": "Dask's memoryview serializer"}


@pytest.fixture(scope="module")
def chosen() -> tuple[list[differential.Snippet], object]:
    found, skipped = differential.snippets()
    counts: dict[str, int] = {}
    picked = []
    for snippet in found:
        package = snippet.source if snippet.source in ("numpy", "pandas") else "stdlib"
        counts[package] = counts.get(package, 0) + 1
        if package == "stdlib" or counts[package] <= PER_PACKAGE:
            picked.append(snippet)
    return picked, skipped


def test_snippets_run_in_blocks_as_without_afar(chosen, client: Client) -> None:
    snippets, skipped = chosen
    counts = differential.run(snippets, skipped)
    print(counts.report())  # shown with -s
    unexpected = [d for d in counts.different if d.split(":", 1)[0] not in KNOWN]
    assert counts.compared >= len(snippets) // 2, counts.report()
    assert unexpected == [], counts.report()
