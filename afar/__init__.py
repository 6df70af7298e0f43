"""afar: run the body of a ``with`` block on a Dask worker.

>>> import afar
>>> with afar.run, remotely:  # doctest: +SKIP
...     import os
...     pid = os.getpid()
"""

from __future__ import annotations

from afar import _remote
from afar._debugging import debug
from afar._ipython.magics import load_ipython_extension, new_magic
from afar._locality import modules
from afar._locations import Location, later, locally, remotely
from afar._run import Captured, Get, Run, get, run
from afar.errors import (
    AfarError,
    BlockSyntaxError,
    ClientError,
    DebugError,
    LocalModuleError,
    LocationError,
    LocationNameError,
    NotPicklableError,
    SavedNameError,
    SourceError,
)

__version__ = "0.1.0"

_remote.hide_runtime_frames()

__all__ = [
    "AfarError",
    "BlockSyntaxError",
    "Captured",
    "ClientError",
    "DebugError",
    "Get",
    "LocalModuleError",
    "Location",
    "LocationError",
    "LocationNameError",
    "NotPicklableError",
    "Run",
    "SavedNameError",
    "SourceError",
    "__version__",
    "debug",
    "get",
    "later",
    "load_ipython_extension",
    "locally",
    "modules",
    "new_magic",
    "remotely",
    "run",
]
