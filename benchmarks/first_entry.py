"""What the first entry of a block costs, and whether it grows with the rest of its file.

The benchmark writes scripts to a temporary folder and runs each in a fresh subprocess, twice:
with ``afar.get, remotely`` against one LocalCluster it starts (2 workers x 1 thread), what a
user waits for (the client's capture and analysis of the block, its round trip, the worker's
compilation); and with ``afar.get, locally``, the client's own cost without the round trip (the
same capture and analysis, the block compiled and run in the process). Each script first runs a
block from another file (a warm-up: imports, afar's worker plugin), then times every block of
its own, each entered once (a first entry).

- File size: the same trivial blocks after 20 lines and after 5,000 and 20,000 lines of other
  code, at module level and each in a function of its own; ratio to the 20-line file.
- Many blocks: one script of 400 trivial blocks (800 lines) against a script of one such block;
  ratio of the time per block.
- Memory: the client's memory per cached block of a 1,000-line and a 10,000-line file (no
  cluster: ``later``, which captures and analyses the block and runs nothing).
- Workers' ``linecache``: entries a worker gains from blocks of 500 files (notebook cells).

Ratios are of medians over ``--repeats`` subprocesses (each a fresh interpreter), in one run,
the file sizes interleaved; the first block of a file apart from the others is shown too.

    python benchmarks/first_entry.py           # full run
    python benchmarks/first_entry.py --quick   # smaller files, fewer blocks: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import linecache
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from distributed import Client, LocalCluster

import afar

SCRIPT_TIMEOUT = 1800  # seconds: the code before this change took minutes per large script
CELL_FILES = 500  # files of one block each, as notebook cells are, for the workers' linecache

WARM_MODULE = """\
import afar


def warm_remotely():
    with afar.get, remotely:
        warmed = 1
    return warmed


def warm_locally():
    with afar.get, locally:
        warmed = 1
    return warmed
"""

# argv: the scheduler's address (or "locally": no cluster), the folder of the warm-up module.
HEADER = """\
import json
import sys
import time

import afar

sys.path.insert(0, sys.argv[2])
import afar_bench_warm

if sys.argv[1] != "locally":
    from distributed import Client

    client = Client(sys.argv[1])
    afar_bench_warm.warm_remotely()
afar_bench_warm.warm_locally()
times = []
"""

FOOTER = """\
print(json.dumps(times))
if "client" in globals():
    client.close()
"""


def filler(count: int) -> str:
    """``count`` lines of ordinary code: functions, a class, comments, a with statement."""
    unit = textwrap.dedent(
        '''\
        def helper_{i}(values, scale=2):
            """Scale the values, skipping the negative ones."""
            total = 0
            for value in values:  # a comment
                if value < 0:
                    continue
                total += value * scale + {i}
            with open(__file__) as file:
                first = file.readline()
            return total, first


        class Holder_{i}:
            limit = {i}

            def method(self, x):
                return [y for y in range(x) if y < self.limit]


        '''
    )
    size = len(unit.splitlines())
    units = "".join(unit.format(i=i) for i in range(count // size))
    return units + "# more of it\n" * (count % size)


def module_blocks(count: int, location: str) -> str:
    return "".join(
        f"start = time.perf_counter()\n"
        f"with afar.get, {location}:\n"
        f"    y_{j} = {j} + 1\n"
        f"times.append(time.perf_counter() - start)\n"
        f"assert y_{j} == {j + 1}\n"
        for j in range(count)
    )


def function_blocks(count: int, location: str) -> str:
    functions = "".join(
        f"def block_{j}():\n"
        f"    start = time.perf_counter()\n"
        f"    with afar.get, {location}:\n"
        f"        y = {j} + 1\n"
        f"    times.append(time.perf_counter() - start)\n"
        f"    assert y == {j + 1}\n"
        f"\n\n"
        for j in range(count)
    )
    return functions + "".join(f"block_{j}()\n" for j in range(count))


def many_blocks(count: int, location: str) -> str:
    """``count`` blocks of two lines each, back to back, timed together."""
    blocks = "".join(f"with afar.get, {location}:\n    y_{j} = {j} + 1\n" for j in range(count))
    return f"start = time.perf_counter()\n{blocks}times.append(time.perf_counter() - start)\n"


def memory_script(lines: int, blocks: int) -> str:
    """Client memory per cached block: ``blocks`` blocks after ``lines`` lines, with ``later``."""

    def block(j: int) -> str:
        return f"with afar.run, later:\n    y_{j} = {j} + 1\n"

    return (
        "import gc, json, tracemalloc\nimport afar\n"
        + filler(lines)
        + block(0)  # reads the file into linecache (and indexes it): not counted
        + "gc.collect()\ntracemalloc.start()\nbefore = tracemalloc.get_traced_memory()[0]\n"
        + "".join(block(j) for j in range(1, blocks + 1))
        + "gc.collect()\ngrown = tracemalloc.get_traced_memory()[0] - before\n"
        + f"print(json.dumps(grown / {blocks}))\n"
    )


def run_script(folder: Path, name: str, text: str, target: str) -> list[float]:
    """Run a script in a fresh interpreter; ``target``: the scheduler's address, or "locally"."""
    path = folder / name
    path.write_text(text)
    done = subprocess.run(
        [sys.executable, str(path), target, str(folder)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        env=os.environ,
    )
    if done.returncode:
        raise RuntimeError(f"{name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_of(runs: list[list[float]]) -> float:
    """The median over runs of each run's mean time per block."""
    return statistics.median(statistics.mean(times) for times in runs)


def linecache_size() -> int:
    return len(linecache.cache)


def worker_linecache(client: Client) -> int:
    """Entries one worker's linecache gains from blocks of ``CELL_FILES`` files."""
    worker = sorted(client.scheduler_info()["workers"])[0]
    location = afar.remotely(workers=[worker])
    before = client.run(linecache_size, workers=[worker])[worker]
    for number in range(CELL_FILES):
        filename = f"<afar-bench-cell-{number}>"
        text = f"with afar.get, location:\n    y = {number}\n"
        linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
        scope = {"afar": afar, "location": location}
        exec(compile(text, filename, "exec"), scope)
        if scope["y"] != number:
            raise RuntimeError(f"block {number} returned {scope['y']!r}")
    return client.run(linecache_size, workers=[worker])[worker] - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller files, fewer blocks")
    parser.add_argument("--repeats", type=int, help="subprocesses per script (median)")
    args = parser.parse_args()
    if args.quick:
        sizes, blocks, many, repeats, memory_sizes = (20, 5000), 5, 100, 1, (1000,)
    else:
        sizes, blocks, many, repeats, memory_sizes = (20, 5000, 20000), 10, 400, 3, (1000, 10000)
    repeats = args.repeats or repeats
    with (
        tempfile.TemporaryDirectory(prefix="afar-first-entry-") as temporary,
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        folder = Path(temporary)
        (folder / "afar_bench_warm.py").write_text(WARM_MODULE)
        address = cluster.scheduler_address
        print(f"Python {sys.version.split()[0]}; {repeats} run(s) per script, median")
        for location, target in (("remotely", address), ("locally", "locally")):
            print(f"afar.get, {location}: first entry of {blocks} trivial blocks (ms per block)")
            for where, make in (("module level", module_blocks), ("in functions", function_blocks)):
                texts = {
                    size: HEADER + filler(size) + make(blocks, location) + FOOTER for size in sizes
                }
                runs: dict[int, list[list[float]]] = {size: [] for size in sizes}
                for _ in range(repeats):  # sizes interleaved: drift of a shared machine hits all
                    for size in sizes:
                        runs[size].append(
                            run_script(folder, f"file_{size}.py", texts[size], target)
                        )
                base = median_of(runs[sizes[0]])
                for size in sizes:
                    per_block = median_of(runs[size])
                    first = statistics.median(times[0] for times in runs[size])
                    rest = statistics.median(t for times in runs[size] for t in times[1:])
                    print(
                        f"  {where:<13} after {size:>6} lines: {per_block * 1e3:8.2f} ms"
                        f"   ratio to {sizes[0]} lines {per_block / base:5.2f}x"
                        f"   (first block {first * 1e3:.2f} ms, others {rest * 1e3:.2f} ms)"
                    )
            one_text = HEADER + many_blocks(1, location) + FOOTER
            many_text = HEADER + many_blocks(many, location) + FOOTER
            one_runs, many_runs = [], []
            for index in range(max(repeats, 3)):  # interleaved; one block alone at least 3 times
                one_runs.append(run_script(folder, "one.py", one_text, target))
                if index < repeats:
                    many_runs.append(run_script(folder, "many.py", many_text, target))
            one, total = median_of(one_runs), median_of(many_runs)
            print(
                f"  {many} blocks in one {2 * many}-line script: {total:.2f} s, "
                f"{total / many * 1e3:.2f} ms per block; one block alone {one * 1e3:.2f} ms; "
                f"ratio {total / many / one:.2f}x"
            )
        for size in memory_sizes:
            per_block = run_script(folder, f"memory_{size}.py", memory_script(size, 50), address)
            print(f"Client memory per cached block, {size}-line file: {per_block / 1e3:.1f} KB")
        grown = worker_linecache(client)
        print(f"One worker's linecache entries added by blocks of {CELL_FILES} files: {grown}")


if __name__ == "__main__":
    main()
