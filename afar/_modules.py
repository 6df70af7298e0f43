"""The user's own modules a block needs, their sources, and sending each version once.

A block needs a local module (see ``_locality``) when it imports it, when a variable it reads
is pickled with a reference to it (cloudpickle pickles functions and classes of importable
modules by reference, and modules by name), and when a module it needs imports it. Sources
travel rather than pickled functions: the worker then imports the module itself, so that a
class read from outside and the same class imported in the block are one class, and the
module's own state and imports work as on the client.

What travels is the module's file as it is when the block is sent: it is read again only when
the file's modification time or size changes (IPython's ``%autoreload`` may patch functions in
place, without a new module spec, so the file is what tells that a module changed). Each
version reaches the workers once per client, in a ``Sources`` worker plugin; tasks name it by
digest.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import io
import os
import sys
import threading
import types
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

import cloudpickle

from afar import _cpython, _locality
from afar._worker.importer import MODULE, NAMESPACE, PACKAGE, Sources
from afar.errors import LocalModuleError

# Source larger than this is refused: such a file is rarely the user's own helpers, and every
# worker (and the scheduler, which keeps plugins for workers that join later) holds each version.
MAX_SOURCE_BYTES = 1_000_000
_PLUGIN_PREFIX = "afar-modules-"
_INSTALL_HINT = (
    "install it in the workers' environment (for example with pip, or "
    "distributed.diagnostics.plugin.PipInstall), then tell afar the workers have it: "
    "afar.modules.exclude({name!r})"
)
NO_MODULES: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Version:
    """One version of one local module, as it travels."""

    name: str
    digest: str
    text: bytes
    kind: str
    filename: str
    imports: tuple[str, ...]  # modules its source may import (absolute names)

    def shipped(self) -> tuple[Any, ...]:
        return (self.name, self.digest, self.text, self.kind, self.filename)


# -- which modules a source imports -----------------------------------------------------------
def imported_names(nodes: Iterable[ast.AST], package: str = "") -> tuple[str, ...]:
    """Absolute names of modules that these statements may import, also in nested functions.

    ``from pkg import a`` gives 'pkg' and 'pkg.a' (a may be a submodule). A call of
    ``importlib.import_module`` or ``__import__`` with a literal name counts as an import of
    it; a name computed at run time cannot be seen. Imports inside ``try`` are optional: left
    out. Relative imports resolve against ``package``.
    """
    found: dict[str, None] = {}
    optional: set[int] = set()
    for root in nodes:
        for node in ast.walk(root):
            if isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
                for statement in node.body:  # type: ignore[attr-defined]
                    optional.update(id(n) for n in ast.walk(statement))
    for root in nodes:
        for node in ast.walk(root):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.update(dict.fromkeys(_locality._chain(alias.name)))
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node.module, node.level, package)
                if base is None:
                    continue
                found.update(dict.fromkeys(_locality._chain(base)))
                found.update(dict.fromkeys(f"{base}.{a.name}" for a in node.names if a.name != "*"))
            elif isinstance(node, ast.Call):
                called = _called_import(node, package)
                if called is not None:
                    found.update(dict.fromkeys(_locality._chain(called)))
    return tuple(found)


# Functions that import the module named by their first argument.
_IMPORT_FUNCTIONS = frozenset({"import_module", "__import__"})


def _called_import(call: ast.Call, package: str) -> str | None:
    """The absolute module name of ``importlib.import_module("x")`` or ``__import__("x")``
    with literal arguments; None for any other call."""
    function = call.func
    if isinstance(function, ast.Attribute):
        called = function.attr
    elif isinstance(function, ast.Name):
        called = function.id
    else:
        return None
    if called not in _IMPORT_FUNCTIONS or not call.args:
        return None
    name = _literal(call.args[0])
    if name is None:
        return None
    level = len(name) - len(name.lstrip("."))
    if called == "__import__":
        given = [k.value for k in call.keywords if k.arg == "level"] + call.args[4:5]
        if level or any(_literal(g, int) not in (None, 0) for g in given):
            return None  # a relative __import__: its package comes from the globals passed
        return name if _is_dotted(name) else None
    if level:
        anchors = [k.value for k in call.keywords if k.arg == "package"] + call.args[1:2]
        anchor = _literal(anchors[0]) if anchors else None
        if anchor is None:
            return None
        return _absolute(name[level:] or None, level, anchor) if _is_dotted(anchor) else None
    return name if _is_dotted(name) else None


def _literal(node: ast.AST, kind: type = str) -> Any:
    return node.value if isinstance(node, ast.Constant) and type(node.value) is kind else None


def _is_dotted(name: str) -> bool:
    return all(part.isidentifier() for part in name.split("."))


def _absolute(module: str | None, level: int, package: str) -> str | None:
    if level == 0:
        return module
    parts = package.split(".") if package else []
    if level > len(parts):
        return None  # beyond the top: Python raises ImportError on the worker as here
    base = ".".join(parts[: len(parts) - level + 1])
    return f"{base}.{module}" if module else base


# -- versions ---------------------------------------------------------------------------------
_lock = threading.Lock()
# path -> ((mtime, size, spec), version); spec: of the loaded module (a reload makes a new one)
_by_file: dict[str, tuple[tuple[int, int, int], Version]] = {}


def version_of(name: str, why: str, label: str) -> Version:
    """The version of the local module ``name`` the block at ``label`` needs (``why``): its
    file as it is now, read again only when the file's modification time or size changed, or
    when the client reloaded the module."""
    spec = _locality.find_spec(name)
    where = _locality.location(spec) if spec is not None else None
    if where is None:
        raise _refusal(name, why, label, "has no file (it was made in memory)")
    loaded = id(spec) if name in sys.modules else 0
    try:
        stat = os.stat(where)
        key = (stat.st_mtime_ns, stat.st_size, loaded)
    except OSError:
        key = (0, 0, loaded)
    cached = _by_file.get(where)
    if cached is not None and cached[0] == key and cached[1].name == name:
        return cached[1]
    version = _read(name, spec, why, label)
    with _lock:
        _by_file[where] = (key, version)
    return version


def _read(name: str, spec: Any, why: str, label: str) -> Version:
    if spec is None:
        raise _refusal(name, why, label, "has no file (it was made in memory)")
    origin = spec.origin if spec.origin and os.path.isabs(spec.origin) else None
    locations = spec.submodule_search_locations
    if origin is None and locations is not None:
        folder = next(iter(locations), "")
        return _version(name, b"", NAMESPACE, folder)
    if origin is None:
        raise _refusal(name, why, label, "has no file (it was made in memory)")
    if origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        raise _refusal(name, why, label, f"is a compiled extension ({origin})")
    if not origin.endswith(tuple(importlib.machinery.SOURCE_SUFFIXES)):
        raise _refusal(name, why, label, f"has no Python source ({origin})")
    try:
        size = os.path.getsize(origin)
        if size > MAX_SOURCE_BYTES:
            raise _refusal(
                name,
                why,
                label,
                f"is {size:,} bytes of source ({origin}), more than the {MAX_SOURCE_BYTES:,} "
                "bytes afar sends with blocks",
            )
        with open(origin, "rb") as file:
            text = file.read()
    except OSError as error:
        raise _refusal(name, why, label, f"cannot be read ({error})") from None
    kind = PACKAGE if locations is not None else MODULE
    return _version(name, text, kind, origin)


def _version(name: str, text: bytes, kind: str, filename: str) -> Version:
    digest = hashlib.sha256(
        b"\0".join([name.encode(), kind.encode(), os.fsencode(filename), text])
    ).hexdigest()
    package = name if kind != MODULE else name.rpartition(".")[0]
    try:
        tree = _cpython.parse(text, filename) if text else None
    except (SyntaxError, ValueError):
        tree = None  # the worker reports the SyntaxError when it imports the module
    imports = imported_names([tree], package) if tree is not None else ()
    return Version(name, digest, text, kind, filename, imports)


def _refusal(name: str, why: str, label: str, what: str) -> LocalModuleError:
    return LocalModuleError(
        f"the block at {label} {why} the module {name!r}, one of your own that {what}, so "
        f"afar cannot send it to the workers: {_INSTALL_HINT.format(name=name)}",
        name=name,
    )


# -- what a block needs -----------------------------------------------------------------------
def needed(
    imports: tuple[str, ...], referenced: Iterable[object], label: str
) -> tuple[tuple[tuple[str, str], ...], list[Version]]:
    """The ``(name, digest)`` pairs a block's task names, and the versions to have sent.

    ``imports``: modules the block's own source imports; ``referenced``: modules its pickled
    variables refer to. Raises ``LocalModuleError`` for what cannot travel, before sending.
    """
    queue: list[tuple[str, str]] = [(n, "imports") for n in imports if _locality.is_local(n)]
    queue += [(str(n), "reads a value of") for n in referenced if _locality.is_local(n)]
    if not queue:
        return NO_MODULES, []
    versions: dict[str, Version] = {}
    while queue:
        name, why = queue.pop()
        if name in versions:
            continue
        version = versions[name] = version_of(name, why, label)
        parents = _locality._chain(name)[:-1]
        queue += [(p, why) for p in parents if p not in versions and _locality.is_local(p)]
        queue += [
            (n, f"needs, through {name!r} which imports it,")
            for n in version.imports
            if n not in versions and _locality.is_local(n)
        ]
    manifest = tuple(sorted((v.name, v.digest) for v in versions.values()))
    return manifest, list(versions.values())


_BASE_OVERRIDE = cloudpickle.Pickler.reducer_override


class RecordingPickler(cloudpickle.Pickler):
    """cloudpickle's pickler, noting the modules of what it pickles by reference."""

    def __init__(self, file: io.BytesIO, buffer_callback: Any = None) -> None:
        super().__init__(file, protocol=5, buffer_callback=buffer_callback)
        self.modules: set[object] = set()

    def reducer_override(self, obj: Any) -> Any:
        # Python calls this for everything but a few builtin types (int, str, list, dict...):
        # kept to two type checks, as it runs for every other object a block reads.
        kind = type(obj)
        if kind is types.FunctionType or isinstance(obj, type):
            self.modules.add(getattr(obj, "__module__", None))
        elif isinstance(obj, types.ModuleType):
            self.modules.add(obj.__name__)
        return _BASE_OVERRIDE(self, obj)


def dumps(value: Any, buffer_callback: Any = None) -> tuple[bytes, set[object]]:
    """``cloudpickle.dumps(value, protocol=5)`` and the modules it refers to.

    With ``buffer_callback``, buffers that can travel out of band (NumPy's, pandas', Arrow's)
    are handed to it instead of being copied into the pickle.
    """
    with io.BytesIO() as file:
        pickler = RecordingPickler(file, buffer_callback)
        pickler.dump(value)
        return file.getvalue(), pickler.modules


# -- sending each version once ----------------------------------------------------------------
_sent: dict[tuple[str, str], set[str]] = {}


def ensure_sent(client: Any, versions: list[Version]) -> Awaitable[Any] | None:
    """Give the workers of ``client``'s cluster the versions they lack (one round trip).

    Returns an awaitable for an asynchronous client, which the caller must await.
    """
    if not versions:
        return None  # a block that uses none of the user's modules: nothing to look up
    identity = (client.id, str(getattr(client.scheduler, "address", "")))
    with _lock:
        sent = _sent.setdefault(identity, set())
        new = [v for v in versions if v.digest not in sent]
    if not new:
        return None
    digests = sorted(v.digest for v in new)
    name = _PLUGIN_PREFIX + hashlib.sha256("".join(digests).encode()).hexdigest()[:16]
    plugin = Sources(tuple(v.shipped() for v in new))
    outcome = client.register_plugin(plugin, name=name)
    if client.asynchronous:
        return _mark_when_done(outcome, sent, digests)
    with _lock:
        sent.update(digests)
    return None


async def _mark_when_done(outcome: Awaitable[Any], sent: set[str], digests: list[str]) -> None:
    await outcome
    with _lock:
        sent.update(digests)
