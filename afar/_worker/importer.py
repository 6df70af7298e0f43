"""Worker side of local modules: import the user's own modules from sources sent by the client.

This module travels to the workers pickled by value (see ``_shipping.py``), like ``_worker``:
it imports only the standard library and ``distributed``. The client sends each version of a
module once, in a ``Sources`` worker plugin (Dask gives plugins to workers that join later too);
a block's task names the versions it needs as ``(module name, digest)`` pairs. One finder per
worker process, first on ``sys.meta_path`` and kept on the ``sys`` module (this module's globals
are a fresh copy per shipment), imports those modules from memory: nothing is written to disk.

A worker process has one ``sys.modules``: when a block needs another version of a module than
the one imported there (the file was edited and reloaded on the client), the old one and its
submodules are dropped, and the block's imports load the new one.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import linecache
import sys
import threading
import types
from typing import Any, NamedTuple

from distributed.diagnostics.plugin import WorkerPlugin

# The process-wide finder, shared by every shipment of this module in the process.
FINDER_ATTRIBUTE = "_afar_module_finder_v1"


class Source(NamedTuple):
    """One version of one module: plain data only."""

    name: str
    digest: str
    text: bytes  # the file's bytes (compile() honours its encoding declaration)
    kind: str  # MODULE, PACKAGE or NAMESPACE
    filename: str  # the client's path: tracebacks on the worker show it


MODULE = "module"
PACKAGE = "package"  # a folder with __init__.py
NAMESPACE = "namespace"  # a folder without: an empty package


class ModuleFinder:
    """Finds and loads the modules named by the client, from the sources it sent (in memory)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.sources: dict[str, Source] = {}  # digest -> source
        self.active: dict[str, str] = {}  # module name -> digest of the version to import

    def add(self, sources: tuple[tuple[Any, ...], ...]) -> None:
        """Keep these versions; each becomes the one to import (the latest sent wins), so that
        results of blocks unpickled on another worker find their classes' modules."""
        with self.lock:
            for fields in sources:
                source = Source(*fields)
                self.sources[source.digest] = source
                self.active[source.name] = source.digest

    def use(self, manifest: tuple[tuple[str, str], ...], label: str) -> None:
        """Make the versions a block needs the ones imported, dropping other versions."""
        with self.lock:
            for name, digest in manifest:
                if digest not in self.sources:
                    raise ModuleNotFoundError(
                        f"the block at {label} needs the version {digest[:12]} of the module "
                        f"{name!r} of the client, which this worker did not receive: a scheduler "
                        "that restarted forgets what the client sent; connect a new Client",
                        name=name,
                    )
                self.active[name] = digest
            for name, digest in manifest:
                loaded = sys.modules.get(name)
                if loaded is not None and self._stale(loaded, digest):
                    self._drop(name)

    def _stale(self, module: types.ModuleType, digest: str) -> bool:
        # Only modules this finder loaded: a module imported otherwise (a worker running in the
        # client's process) is the client's own, and stays.
        spec = getattr(module, "__spec__", None)
        return spec is not None and spec.loader is self and spec.loader_state != digest

    def _drop(self, name: str) -> None:
        prefix = name + "."
        for other in [n for n in sys.modules if n == name or n.startswith(prefix)]:
            module = sys.modules.get(other)
            spec = getattr(module, "__spec__", None)
            if spec is not None and spec.loader is self:
                sys.modules.pop(other, None)

    # -- importlib's finder and loader protocol ---------------------------------------------
    # find_spec and get_source run on the block's thread, where a stop may be raised at any
    # bytecode: they take no lock (CPython 3.14 can leave a lock taken by ``with`` when one
    # lands right after it was taken, cpython#148874). Each reads one dict entry, atomically;
    # ``add`` puts a source in before the name that points to it.
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        digest = self.active.get(name)
        source = self.sources.get(digest) if digest is not None else None
        if source is None:
            return None
        loader: Any = self  # the finder loads what it finds
        spec = importlib.machinery.ModuleSpec(
            name, loader, origin=source.filename, is_package=source.kind != MODULE
        )
        spec.loader_state = source.digest
        spec.has_location = source.kind != NAMESPACE  # sets __file__ to the client's path
        return spec

    def create_module(self, spec: Any) -> None:
        return None  # the default module

    def exec_module(self, module: types.ModuleType) -> None:
        digest: str = getattr(module.__spec__, "loader_state", "")
        source = self.sources[digest]
        if source.kind == NAMESPACE:
            return
        code = compile(source.text, source.filename, "exec", dont_inherit=True)
        lines = importlib.util.decode_source(source.text).splitlines(keepends=True)
        # mtime None: linecache keeps the entry although the file does not exist here.
        linecache.cache[source.filename] = (len(source.text), None, lines, source.filename)
        exec(code, module.__dict__)

    def get_source(self, name: str) -> str | None:
        source = self.sources.get(self.active.get(name, ""))
        if source is None or source.kind == NAMESPACE:
            return None
        return importlib.util.decode_source(source.text)


def finder() -> ModuleFinder:
    """This process's finder, first on ``sys.meta_path`` (created once)."""
    found = getattr(sys, FINDER_ATTRIBUTE, None)
    if found is None:
        with _install_lock():
            found = getattr(sys, FINDER_ATTRIBUTE, None)
            if found is None:
                found = ModuleFinder()
                sys.meta_path.insert(0, found)
                setattr(sys, FINDER_ATTRIBUTE, found)
    return found


def _install_lock() -> Any:
    # One lock for the process, whichever shipment of this module asks first.
    return sys.__dict__.setdefault(FINDER_ATTRIBUTE + "_lock", threading.Lock())


class Sources(WorkerPlugin):
    """Versions of the client's modules, given to every worker (also to those joining later)."""

    idempotent = True

    def __init__(self, sources: tuple[tuple[Any, ...], ...]) -> None:
        self.sources = sources

    def setup(self, worker: Any) -> None:
        finder().add(self.sources)


def use_modules(manifest: tuple[tuple[str, str], ...], label: str) -> None:
    """Before a block's inputs are unpickled: its modules' versions are the ones imported."""
    found = getattr(sys, FINDER_ATTRIBUTE, None)
    if found is None:
        name = manifest[0][0]
        raise ModuleNotFoundError(
            f"the block at {label} needs the module {name!r} of the client, which this worker "
            "did not receive: a scheduler that restarted forgets what the client sent; "
            "connect a new Client",
            name=name,
        )
    found.use(manifest, label)
