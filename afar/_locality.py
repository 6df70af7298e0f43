"""Which modules are the user's own (they travel with blocks) and which are installed (never).

The rule: a module is local when its file (a namespace package: its folder) lies outside

- the standard library, and modules built into the interpreter;
- the site directories (``site-packages``, Debian's ``dist-packages``), also those of other
  environments on ``sys.path``: any folder of that name;
- folders that ``.pth`` files of the site directories put on ``sys.path``, and packages that
  setuptools' editable finders map: that is how editable installs (``pip install -e``) work;

and afar itself and ``__main__`` (whose functions cloudpickle sends by value) never travel.
``afar.modules.include("name")`` makes a module (and its submodules) travel although it looks
installed; ``afar.modules.exclude("name")`` keeps it, say because the workers have it.

Decisions are cached per module name; changing the names clears the cache.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import importlib.machinery
import os
import site
import sys
import sysconfig
import threading
from typing import Any

from afar import _cpython

# Never sent: afar's own worker code travels in its plugin; ``__main__``'s objects by value.
_NEVER = frozenset({"afar", "__main__", "__mp_main__", "builtins"})
_SITE_FOLDER_NAMES = frozenset({"site-packages", "dist-packages"})
_EDITABLE_FINDERS = "__editable___*_finder.py"  # setuptools >= 64
# What a name of afar.modules.include/exclude must look like.
_DOTTED = "a module name such as 'helpers' or 'pkg.stats'"

_lock = threading.Lock()
_decisions: dict[str, bool] = {}
_missing: set[str] = set()  # names decided non-local because no module was found
_included: set[str] = set()
_excluded: set[str] = set()
_roots: tuple[str, ...] | None = None


def is_local(name: object) -> bool:
    """Whether the module ``name`` is the user's own (cached per name)."""
    if not isinstance(name, str):
        return False  # no __module__, or an object whose __module__ is not a name
    decided = _decisions.get(name)
    if decided is not None and not (name in _missing and name in sys.modules):
        return decided
    decided = _decide(name)
    with _lock:
        _decisions[name] = decided
        if not decided and find_spec(name) is None:
            _missing.add(name)  # decided again once imported: the file may be written later
        else:
            _missing.discard(name)
    return decided


def _decide(name: str) -> bool:
    chain = _chain(name)
    if any(n in _excluded for n in chain):
        return False
    top = chain[0]
    if top in _NEVER:
        return False
    if any(n in _included for n in chain):
        return find_spec(name) is not None
    if top in sys.builtin_module_names or top in _stdlib_names():
        return False
    spec = find_spec(name)
    if spec is None:
        return False
    where = location(spec)
    return where is not None and not _installed(where)


def _chain(name: str) -> list[str]:
    """'a.b.c' -> ['a', 'a.b', 'a.b.c']."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _stdlib_names() -> frozenset[str]:
    return frozenset(getattr(sys, "stdlib_module_names", ()))


def find_spec(name: str) -> Any:
    """The spec of a loaded module, else where it would be found, without importing anything
    (a parent package's ``__init__`` does not run). None if not found."""
    module = sys.modules.get(name)
    if module is not None:
        return getattr(module, "__spec__", None)
    parent = name.rpartition(".")[0]
    path = None
    if parent:
        parent_spec = find_spec(parent)
        if parent_spec is None or parent_spec.submodule_search_locations is None:
            return None
        path = list(parent_spec.submodule_search_locations)
    try:
        return importlib.machinery.PathFinder.find_spec(name, path)
    except (ImportError, ValueError, OSError):
        return None


def location(spec: Any) -> str | None:
    """The module's file, or a namespace package's first folder; None: built-in, frozen."""
    origin = spec.origin
    if origin and os.path.isabs(origin):
        return origin
    locations = spec.submodule_search_locations
    if locations:
        return next(iter(locations), None)
    return None


def _installed(path: str) -> bool:
    for variant in {_normal(path), _normal(os.path.realpath(path))}:
        folders = variant.split(os.sep)
        if _SITE_FOLDER_NAMES.intersection(folders):
            return True
        if any(variant == root or variant.startswith(root + os.sep) for root in installed_roots()):
            return True
    return False


def _normal(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def installed_roots() -> tuple[str, ...]:
    """Folders whose modules count as installed: the standard library, the site directories,
    what their ``.pth`` files add to ``sys.path``, and packages of editable finders."""
    global _roots
    if _roots is None:
        roots: set[str] = set()
        paths = sysconfig.get_paths()
        for key in ("stdlib", "platstdlib", "purelib", "platlib"):
            if paths.get(key):
                roots.add(paths[key])
        site_folders = [*site.getsitepackages(), site.getusersitepackages()]
        site_folders += [p for p in sys.path if os.path.basename(p) in _SITE_FOLDER_NAMES]
        for folder in site_folders:
            roots.add(folder)
            roots.update(_pth_folders(folder))
            roots.update(_editable_packages(folder))
        normal = {_normal(r) for r in roots} | {_normal(os.path.realpath(r)) for r in roots}
        _roots = tuple(sorted(normal))
    return _roots


def _pth_folders(folder: str) -> list[str]:
    """Folders named by the ``.pth`` files of a site folder (as ``site.addpackage`` reads them)."""
    found = []
    for pth in glob.glob(os.path.join(glob.escape(folder), "*.pth")):
        with contextlib.suppress(OSError, UnicodeDecodeError), open(pth, encoding="utf-8") as file:
            for line in file:
                line = line.strip()
                if not line or line.startswith(("#", "import ", "import\t")):
                    continue
                candidate = os.path.join(folder, line)
                if os.path.isdir(candidate):
                    found.append(candidate)
    return found


def _editable_packages(folder: str) -> list[str]:
    """Package folders that setuptools' editable finders (``MAPPING = {...}``) import."""
    found: list[str] = []
    for finder in glob.glob(os.path.join(glob.escape(folder), _EDITABLE_FINDERS)):
        with contextlib.suppress(OSError, SyntaxError, ValueError, UnicodeDecodeError):
            with open(finder, encoding="utf-8") as file:
                tree = _cpython.parse(file.read())
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else []
                if isinstance(node, ast.AnnAssign):
                    targets = [node.target]
                if any(isinstance(t, ast.Name) and t.id == "MAPPING" for t in targets):
                    mapping = ast.literal_eval(node.value)
                    found.extend(str(p) for p in mapping.values())
    return found


class Modules:
    """Which of your modules travel with blocks: see ``include`` and ``exclude``.

    Examples
    --------
    >>> afar.modules.include("mylib")  # doctest: +SKIP
    >>> afar.modules.exclude("helpers")  # doctest: +SKIP
    """

    def include(self, *names: str) -> None:
        """Send these modules (and their submodules) with the blocks that use them, although
        they look installed (an editable install the workers lack)."""
        _check(names, "include")
        with _lock:
            _included.update(names)
            _excluded.difference_update(names)
            _forget()

    def exclude(self, *names: str) -> None:
        """Never send these modules (and their submodules): the workers have them."""
        _check(names, "exclude")
        with _lock:
            _excluded.update(names)
            _included.difference_update(names)
            _forget()

    def reset(self) -> None:
        """Forget the names given to ``include`` and ``exclude``, and every cached decision."""
        global _roots
        with _lock:
            _included.clear()
            _excluded.clear()
            _forget()
            _roots = None

    def is_local(self, name: str) -> bool:
        """Whether the module ``name`` travels with the blocks that use it."""
        _check((name,), "is_local")
        return is_local(name)

    def __repr__(self) -> str:
        return f"afar.modules(included={sorted(_included)}, excluded={sorted(_excluded)})"


def _forget() -> None:
    _decisions.clear()
    _missing.clear()


def _check(names: tuple[object, ...], what: str) -> None:
    for name in names:
        if not isinstance(name, str) or not all(p.isidentifier() for p in name.split(".")):
            raise TypeError(f"afar.modules.{what}() takes {_DOTTED}, not {name!r}")


modules = Modules()
