"""An in-process IPython shell with a temporary IPython directory, and a display recorder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("IPython")

from IPython.core.interactiveshell import InteractiveShell
from ipython_helpers import RecordingPublisher, ok
from traitlets.config import Config


@pytest.fixture(scope="module")
def shell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteractiveShell]:
    """A fresh shell for the module, with history in memory and afar's magics loaded."""
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    config.InteractiveShell.colors = "nocolor"
    config.InteractiveShell.autocall = 0
    ipython_dir = tmp_path_factory.mktemp("ipython")
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance(config=config, ipython_dir=str(ipython_dir))
    ok(shell, "%load_ext afar\nimport afar")
    try:
        yield shell
    finally:
        InteractiveShell.clear_instance()


@pytest.fixture
def recorder(shell: InteractiveShell) -> Iterator[RecordingPublisher]:
    """Record the shell's displays for one test."""
    previous = shell.display_pub
    publisher = RecordingPublisher(shell=shell)
    shell.display_pub = publisher
    try:
        yield publisher
    finally:
        shell.display_pub = previous
