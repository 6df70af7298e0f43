"""The routers in front of sys.stdout/sys.stderr, as the worker plugin installs and removes them."""

from __future__ import annotations

import io
import sys

from afar._worker.routing import active_captures, install_routers, remove_routers


def test_install_and_remove_restore_the_streams() -> None:
    stdout, stderr = sys.stdout, sys.stderr
    install_routers()
    try:
        assert "afar output router" in repr(sys.stdout)
        assert "afar output router" in repr(sys.stderr)
        print("through the router")  # a thread without a block writes straight through
        install_routers()  # a second plugin (another client's) shares the routers
        routers = sys.stdout, sys.stderr
        remove_routers()
        assert (sys.stdout, sys.stderr) == routers
    finally:
        remove_routers()
    assert sys.stdout is stdout
    assert sys.stderr is stderr


def test_remove_unlinks_a_router_below_another_afar_router() -> None:
    stdout = sys.stdout
    install_routers()
    ours = sys.stdout

    class OtherVersion:
        def __init__(self, inner: object) -> None:
            self._afar_inner = inner

    try:
        other = sys.stdout = OtherVersion(ours)  # type: ignore[assignment]
    finally:
        remove_routers()
    try:
        assert sys.stdout is other
        assert other._afar_inner is stdout
    finally:
        sys.stdout = stdout


def test_remove_without_install_does_nothing() -> None:
    stdout = sys.stdout
    remove_routers()
    assert sys.stdout is stdout


def test_captures_exist_only_between_install_and_remove() -> None:
    """No plugin, no redirect: a capture in a process whose plugin never ran records nothing."""
    stdout = sys.stdout
    assert active_captures() is None
    assert sys.stdout is stdout  # asking installs nothing
    install_routers()
    try:
        assert active_captures() == {}
        replaced = sys.stdout = io.StringIO()  # something else took the stream since
        assert active_captures() == {}
        assert sys.stdout.__dict__["_afar_inner"] is replaced  # the router stands in front again
    finally:
        sys.stdout = stdout
        remove_routers()
    assert active_captures() is None
