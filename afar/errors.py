"""Public exceptions: everything afar itself refuses is an ``AfarError``."""

from __future__ import annotations

__all__ = [
    "AfarError",
    "BlockSyntaxError",
    "ClientError",
    "LocalModuleError",
    "LocationError",
    "LocationNameError",
    "NotPicklableError",
    "SavedNameError",
    "SourceError",
]


class AfarError(Exception):
    """Base class of the errors afar raises itself (not those of the user's block)."""


class LocationError(AfarError, TypeError):
    """The ``with`` statement does not name where to run: ``remotely``, ``locally`` or ``later``."""


class LocationNameError(LocationError, NameError):
    """The location of the ``with`` statement is a name that is not defined (a misspelling)."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name  # as NameError's, for tools that read it


class SourceError(AfarError, RuntimeError):
    """The source of the block is not available, or it is not the code that is running."""


class BlockSyntaxError(AfarError, SyntaxError):
    """The body of the block cannot run as a block (``return`` at its top level, ...)."""

    def __init__(self, message: str, filename: str | None = None, lineno: int | None = None):
        # Keep SyntaxError's attributes so tools that display file and line still do. A
        # traceback shows them above the message (``msg``), as for any SyntaxError; str() names
        # them after it, as SyntaxError's does.
        where = f"{filename}, line {lineno}" if filename and lineno else filename
        text = f"{message} ({where})" if where else message
        super().__init__(text)
        self.msg = message
        self.filename = filename
        self.lineno = lineno

    def __str__(self) -> str:
        return str(self.args[0])


class SavedNameError(AfarError, NameError):
    """A name given to ``afar.run(...)``/``afar.get(...)`` that the block never assigns."""


class NotPicklableError(AfarError, TypeError):
    """A variable the block reads (or a result it saves) cannot be pickled."""


class ClientError(AfarError, ValueError):
    """No usable Dask client: none exists, it is closed, or it does not fit the ``with``."""


class LocalModuleError(AfarError, ImportError):
    """A module of the user's own that a block needs cannot travel to the workers with it
    (a compiled extension, a source over the size limit): it must be installed there."""


class DebugError(AfarError, RuntimeError):
    """``afar.debug`` found nothing it can open: no block waits at a breakpoint, or the failed
    block's traceback is not kept on its worker any more."""
