"""The user's own modules travel with the blocks that use them (issue 13).

Each case is a user's project written to a fresh folder: ``script.py`` beside ``helpers.py``,
a package ``pkg/`` and what else the case needs, run as ``python script.py <scheduler>`` from
that folder, with ``PYTHONPATH`` unset. The workers of the shared deployment run in another
folder and cannot import any of it. The script prints one JSON line that the test reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Seconds for a script: it starts an interpreter, imports distributed and connects.
SCRIPT_TIMEOUT = 90.0
RESULT_MARK = "RESULT "

PRELUDE = """\
import importlib, json, os, sys, time
import afar
from afar import remotely
from distributed import Client

client = Client(sys.argv[1], timeout=10)
NO_AFAR = sys.argv[2]


def report(**values):
    print("RESULT " + json.dumps(values), flush=True)


def afar_plugins():
    return client.run_on_scheduler(
        lambda dask_scheduler: sorted(
            name for name in dask_scheduler.worker_plugins if name.startswith("afar-modules-")
        )
    )


def block_tasks():
    return client.run_on_scheduler(
        lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks if "script.py" in str(k)]
    )
"""

HELPERS = """\
import uuid

import util

VERSION = 1
TOKEN = uuid.uuid4().hex  # new each time the module is executed


def double(x):
    return 2 * x


def triple(x):
    return util.times(3, x)


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def norm1(self):
        return abs(self.x) + abs(self.y)
"""

PROJECT = {
    "helpers.py": HELPERS,
    "util.py": "def times(k, x):\n    return k * x\n",
    "pkg/__init__.py": "from .stats import mean\n\nNAME = 'pkg'\n",
    "pkg/stats.py": "from . import _impl\n\ndef mean(xs):\n    return _impl.total(xs) / len(xs)\n",
    "pkg/_impl.py": "def total(xs):\n    return sum(xs)\n",
    "ns/tool.py": "def shout(s):\n    return s.upper() + '!'\n",  # a namespace package
}


def write_project(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run_script(folder: Path, body: str, shared_cluster, extra: dict[str, str] | None = None):
    """Write ``script.py`` (PRELUDE + body) beside the project and run it; its RESULT line."""
    write_project(folder, {**PROJECT, **(extra or {})})
    (folder / "script.py").write_text(PRELUDE + textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the folder then shows what anything else wrote
    before = snapshot(folder)
    completed = subprocess.run(
        [
            sys.executable,
            "script.py",
            shared_cluster.scheduler.address,
            shared_cluster.no_afar.address,
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert completed.returncode == 0 and lines, (
        f"script failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
    )
    assert snapshot(folder) - before == set(), "files were written into the project folder"
    return json.loads(lines[-1][len(RESULT_MARK) :]), completed.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


def test_a_block_imports_a_module_beside_the_script(project, shared_cluster):
    result, _ = run_script(
        project,
        """
        import helpers

        with afar.get("doubled", "tripled", "where", "loader", "cwd"), remotely:
            import helpers
            doubled = helpers.double(21)
            tripled = helpers.triple(2)  # helpers imports util, beside it too
            where = helpers.__file__
            loader = type(helpers.__spec__.loader).__name__
            cwd = os.getcwd()
        report(doubled=doubled, tripled=tripled, where=where, loader=loader, cwd=cwd,
               here=os.getcwd())
        """,
        shared_cluster,
    )
    assert result["doubled"] == 42 and result["tripled"] == 6
    assert result["where"] == str(project / "helpers.py")  # tracebacks show the user's file
    assert result["loader"] == "ModuleFinder"  # imported from memory, not from a file
    assert result["cwd"] != result["here"]


def test_a_package_and_a_namespace_package_beside_the_script(project, shared_cluster):
    result, _ = run_script(
        project,
        """
        with afar.get, remotely:
            from pkg.stats import mean
            import pkg
            from ns.tool import shout
            values = (mean([1, 2, 3, 6]), pkg.NAME, pkg.mean([2, 4]), shout("hi"))
        report(values=values)
        """,
        shared_cluster,
    )
    assert result["values"] == [3.0, "pkg", 3.0, "HI!"]


def test_modules_named_by_a_literal_import_module_call(project, shared_cluster):
    result, _ = run_script(
        project,
        """
        with afar.get, remotely:
            helpers = importlib.import_module("helpers")
            stats = importlib.import_module(".stats", "pkg")
            tool = __import__("ns.tool", fromlist=["shout"])
            computed = "".join(["lone", "ly"])
            if computed == "never":
                import lonely  # never runs, yet names the module: it travels
            lonely_module = importlib.import_module(computed)
            values = (
                helpers.triple(2),
                stats.mean([1, 3]),
                tool.shout("hi"),
                lonely_module.VALUE,
            )
        report(values=values)
        """,
        shared_cluster,
        extra={"lonely.py": "VALUE = 7\n"},  # imported by no other module
    )
    assert result["values"] == [6, 2.0, "HI!", 7]


def test_values_read_from_outside_and_names_imported_at_the_top(project, shared_cluster):
    result, _ = run_script(
        project,
        """
        import helpers
        from helpers import Point, triple
        from pkg.stats import mean

        fn = helpers.double
        point = Point(3, -4)

        def uses_helpers(x):  # a function of the script (by value) using a local module
            return helpers.double(x) + 1

        with afar.get("values", "same_class", "back"), remotely:
            values = (fn(5), triple(3), mean([1, 3]), point.norm1(), uses_helpers(1))
            import helpers
            same_class = isinstance(point, helpers.Point)
            back = Point(1, 2)
        report(values=values, same_class=same_class, back=isinstance(back, Point))
        """,
        shared_cluster,
    )
    assert result == {"values": [10, 9, 2.0, 7, 3], "same_class": True, "back": True}


def test_a_worker_without_afar_imports_them_too(project, shared_cluster):
    result, _ = run_script(
        project,
        """
        from helpers import double
        on_no_afar = remotely(workers=[NO_AFAR])
        with afar.get, on_no_afar:
            import pkg
            result = (double(4), pkg.mean([1, 2]))
        report(result=result)
        """,
        shared_cluster,
    )
    assert result["result"] == [8, 1.5]


def test_each_version_reaches_a_worker_once(project, shared_cluster):
    result, _ = run_script(
        project,
        """
        import helpers
        before = afar_plugins()
        tokens = set()
        workers = client.scheduler_info()["workers"]
        on_cpu = remotely(workers=[a for a, w in workers.items() if w["name"] == "cpu"])
        for i in range(20):
            with afar.get, on_cpu:
                import helpers
                token = helpers.TOKEN
            tokens.add(token)
        report(new_plugins=len(set(afar_plugins()) - set(before)), tokens=len(tokens))
        """,
        shared_cluster,
    )
    # One plugin holds helpers and util; the module ran once on the worker for 20 blocks.
    assert result == {"new_plugins": 1, "tokens": 1}


def test_an_edited_and_reloaded_module_runs_in_its_new_version(project, shared_cluster):
    result, _ = run_script(
        project,
        """
        import helpers

        def version():
            with afar.get, remotely:
                import helpers
                seen = (helpers.VERSION, helpers.double(1))
            return seen

        first = version()
        path = helpers.__file__
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(text.replace("VERSION = 1", "VERSION = 2").replace("2 * x", "20 * x"))
        saved_only = version()  # what travels is the file as it is now
        importlib.reload(helpers)
        after = version()
        fn = helpers.double
        with afar.get, remotely:
            read = fn(2)
        report(first=first, saved_only=saved_only, after=after, read=read)
        """,
        shared_cluster,
    )
    assert result == {"first": [1, 2], "saved_only": [2, 20], "after": [2, 20], "read": 40}


def _refused(project, shared_cluster, body: str, extra: dict[str, str]) -> dict:
    """Run ``body`` in a try; report the LocalModuleError and what reached the scheduler."""
    script = (
        "before = afar_plugins()\ntry:\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
        + textwrap.dedent(
            """\
            except afar.LocalModuleError as error:
                report(
                    error=str(error),
                    is_import_error=isinstance(error, ImportError),
                    new_plugins=sorted(set(afar_plugins()) - set(before)),
                    tasks=block_tasks(),
                )
            else:
                report(error=None)
            """
        )
    )
    result, _ = run_script(project, script, shared_cluster, extra)
    return result


def test_a_compiled_extension_of_the_user_is_refused_before_sending(project, shared_cluster):
    import importlib.machinery

    extension = "fast" + importlib.machinery.EXTENSION_SUFFIXES[0]
    result = _refused(
        project,
        shared_cluster,
        """
        with afar.get, remotely:
            import helpers
            import fast
            x = fast.go()
        """,
        {extension: ""},  # found as a compiled extension; never loaded
    )
    assert result["error"] is not None and result["is_import_error"]
    assert result["new_plugins"] == [] and result["tasks"] == []
    assert result["error"].startswith("the block at script.py:")
    assert (
        "imports the module 'fast', one of your own that is a compiled extension"
        in (result["error"])
    )
    assert "install it in the workers' environment" in result["error"]
    assert "afar.modules.exclude('fast')" in result["error"]


def test_a_module_over_the_size_limit_is_refused_before_sending(project, shared_cluster):
    big = "DATA = " + repr("x" * 1_000_001) + "\n"
    result = _refused(
        project,
        shared_cluster,
        """
        import big
        value = big.DATA
        with afar.get, remotely:
            n = len(big.DATA)
        """,
        {"big.py": big},
    )
    assert result["new_plugins"] == [] and result["tasks"] == []
    assert (
        "reads a value of the module 'big', one of your own that is 1,000,011 bytes"
        in (result["error"])
    )
    assert "more than the 1,000,000 bytes afar sends with blocks" in result["error"]


def test_excluded_and_included_modules(project, shared_cluster):
    result, _ = run_script(
        project,
        """
        sys.path.insert(0, os.path.join(os.getcwd(), "vendor", "site-packages"))
        import vendored
        afar.modules.exclude("mine")
        try:
            with afar.get, remotely:
                import mine
        except ModuleNotFoundError as error:
            excluded = error.name
        try:
            with afar.get, remotely:
                v = vendored.VALUE
        except ModuleNotFoundError as error:
            installed = error.name
        afar.modules.include("vendored")
        with afar.get, remotely:
            v = vendored.VALUE
        names = ("mine", "vendored", "helpers", "numpy", "json")
        report(excluded=excluded, installed=installed, included=v,
               local=[afar.modules.is_local(n) for n in names])
        """,
        shared_cluster,
        {"vendor/site-packages/vendored.py": "VALUE = 'vendored'\n", "mine.py": "A = 1\n"},
    )
    assert result == {
        "excluded": "mine",
        "installed": "vendored",
        "included": "vendored",
        "local": [False, True, True, False, False],
    }


def test_a_block_using_no_local_module_sends_none(project, shared_cluster):
    result, _ = run_script(
        project,
        """
        import helpers  # loaded, but the block does not use it
        import numpy
        before = afar_plugins()
        with afar.get, remotely:
            import json
            import numpy as np
            total = int(np.arange(4).sum())
        report(total=total, new_plugins=sorted(set(afar_plugins()) - set(before)))
        """,
        shared_cluster,
    )
    assert result == {"total": 6, "new_plugins": []}


def test_an_asynchronous_client(project, shared_cluster):
    result, _ = run_script(
        project,
        """
        import asyncio
        import helpers

        async def main():
            async with Client(sys.argv[1], asynchronous=True, timeout=10) as aclient:
                async with afar.get(client=aclient), remotely:
                    import pkg
                    value = (helpers.double(3), pkg.mean([4, 6]))
                return value

        report(value=asyncio.run(main()))
        """,
        shared_cluster,
    )
    assert result == {"value": [6, 5.0]}


KERNEL_NAME = "afar-local-modules-python"
CELL_TIMEOUT = 60
KERNEL_START_TIMEOUT = 60
NOTEBOOK_CELLS = [
    """\
import os, time
import afar
from distributed import Client
import helpers
client = Client(ADDRESS, timeout=10)
%load_ext afar
%load_ext autoreload
%autoreload 2""",
    """\
with afar.get, remotely:
    import helpers
    first = helpers.double(2)
first""",
    """\
%%afar -g mean
from pkg.stats import mean
mean = mean([1, 2, 6])""",
    "mean",
    """\
text = open("helpers.py").read().replace("2 * x", "200 * x")
with open("helpers.py", "w") as f:
    f.write(text)
later = time.time() + 10
os.utime("helpers.py", (later, later))  # a newer mtime for %autoreload, at once""",
    """\
with afar.get, remotely:
    second = helpers.double(2)  # helpers read from the notebook, reloaded by %autoreload
(helpers.double(2), second)""",  # the same on both sides
]


def test_a_notebook_with_helpers_beside_it(project, shared_cluster, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    kernelspec = pytest.importorskip("ipykernel.kernelspec")
    write_project(project, PROJECT)
    home = tmp_path / "jupyter"
    kernelspec.write_kernel_spec(
        str(home / "kernels" / KERNEL_NAME),
        overrides={
            "display_name": "afar local modules",
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        },
    )
    address = shared_cluster.scheduler.address
    cells = [NOTEBOOK_CELLS[0].replace("ADDRESS", repr(address)), *NOTEBOOK_CELLS[1:]]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    (project / "notebook.ipynb").write_text(nbformat.writes(notebook))
    runner = nbclient.NotebookClient(
        notebook,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT,
        startup_timeout=KERNEL_START_TIMEOUT,
        resources={"metadata": {"path": str(project)}},  # the kernel's working directory
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(home))
        patch.setenv("JUPYTER_RUNTIME_DIR", str(home / "runtime"))
        patch.setenv("IPYTHONDIR", str(home / "ipython"))
        patch.setenv("PYTHONDONTWRITEBYTECODE", "1")
        patch.delenv("PYTHONPATH", raising=False)
        runner.execute()

    def result(index: int) -> str:
        (shown,) = [o for o in notebook.cells[index].outputs if o.output_type == "execute_result"]
        return shown.data["text/plain"]

    assert result(1) == "4"
    assert result(3) == "3.0"
    assert result(5) == "(400, 400)"


def test_a_compiled_extension_imported_by_a_local_module_is_refused(project, shared_cluster):
    import importlib.machinery

    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    result = _refused(
        project,
        shared_cluster,
        """
        with afar.get, remotely:
            import uses_fast
            x = uses_fast.X
        """,
        {
            "uses_fast.py": "try:\n    import optional_fast\nexcept ImportError:\n    pass\n"
            "import fast\nX = 1\n",
            "fast" + suffix: "",
            "optional_fast" + suffix: "",  # inside try: optional, not refused
        },
    )
    assert result["new_plugins"] == [] and result["tasks"] == []
    assert (
        "needs, through 'uses_fast' which imports it, the module 'fast', one of your own that "
        "is a compiled extension"
    ) in result["error"]


def test_a_result_of_a_local_class_moves_between_workers(project, shared_cluster):
    """Dask unpickles the result on the other worker before the block runs: the module must
    already be importable there (the latest version each worker received)."""
    result, _ = run_script(
        project,
        """
        import helpers
        workers = client.scheduler_info()["workers"]
        cpu = remotely(workers=[a for a, w in workers.items() if w["name"] == "cpu"])
        gpu = remotely(workers=[a for a, w in workers.items() if w["name"] == "gpu"])
        with afar.run, cpu:
            point = helpers.Point(1, -2)
        with afar.get, gpu:
            norm = point.norm1()
        report(norm=norm, here=isinstance(point.result(), helpers.Point))
        """,
        shared_cluster,
    )
    assert result == {"norm": 3, "here": True}
