"""What a block costs compared with hand-written ``client.submit`` on the same LocalCluster.

Each case runs after a warm-up, afar and bare Dask interleaved (A B A B ...) so that drift on a
shared machine hits both alike, and prints the ratio of medians with min/median/max of each side.

    python benchmarks/overhead.py           # full run
    python benchmarks/overhead.py --quick   # a few repetitions: checks that it still runs
"""

from __future__ import annotations

import argparse
import gc
import importlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import psutil
from distributed import Client, LocalCluster, wait

import afar

MEGABYTE = 1_000_000
# Seconds between two measured cases, not measured: Dask's client sends its messages in batches
# at least 10 ms apart, so a case started within 10 ms of the previous case's last message (a
# Future it let go) would wait out the rest of that interval for the previous case.
SETTLE_SECONDS = 0.02


def increment(x: int) -> int:
    return x + 1


def summary(label: str, afar_times: list[float], bare_times: list[float], unit: str) -> str:
    scale = 1e6 if unit == "us" else 1e3
    a, b = statistics.median(afar_times), statistics.median(bare_times)

    def spread(times: list[float]) -> str:
        low, mid, high = min(times), statistics.median(times), max(times)
        return f"{low * scale:.1f}/{mid * scale:.1f}/{high * scale:.1f} {unit}"

    return (
        f"{label:<46} ratio {a / b:5.2f}x   afar {spread(afar_times)}   "
        f"bare {spread(bare_times)} (min/median/max)"
    )


def interleave(
    repeats: int, afar_case: Callable[[], None], bare_case: Callable[[], None], clock=None
) -> tuple[list[float], list[float]]:
    clock = clock or time.perf_counter
    afar_times, bare_times = [], []
    for _ in range(repeats):
        for case, times in ((afar_case, afar_times), (bare_case, bare_times)):
            time.sleep(SETTLE_SECONDS)  # each case from an idle client (see SETTLE_SECONDS)
            start = clock()
            case()
            times.append(clock() - start)
    return afar_times, bare_times


def get_one(client: Client) -> None:
    x = 1
    with afar.get, remotely:  # noqa: F821 - afar recognises the bare name
        y = x + 1
    assert y == 2


def run_one(client: Client) -> None:
    x = 1
    with afar.run, remotely:  # noqa: F821
        y = x + 1
    assert y.result() == 2


def get_one_local(client: Client) -> None:
    """A block reading a function of a module of the user's own, which travels with it."""
    x = 1
    with afar.get, remotely:  # noqa: F821
        y = LOCAL.increment(x)
    assert y == 2


def import_one_local(client: Client) -> None:
    """A block importing a module of the user's own."""
    x = 1
    with afar.get, remotely:  # noqa: F821
        import afar_bench_helpers

        y = afar_bench_helpers.increment(x)
    assert y == 2


def local_module() -> object:
    """A module beside no script: written to a temporary folder put first on sys.path."""
    folder = tempfile.mkdtemp(prefix="afar-bench-")
    with open(f"{folder}/afar_bench_helpers.py", "w") as file:
        file.write("def increment(x):\n    return x + 1\n")
    sys.path.insert(0, folder)
    return importlib.import_module("afar_bench_helpers")


LOCAL = None


def bare_one(client: Client) -> None:
    assert client.submit(increment, 1, pure=False).result() == 2


def run_many(client: Client, count: int) -> None:
    futures = []
    for i in range(count):
        with afar.run, remotely:  # noqa: F821
            y = i + 1
        futures.append(y)
    wait(futures)


def bare_many(client: Client, count: int) -> None:
    wait([client.submit(increment, i, pure=False) for i in range(count)])


def client_cpu(client: Client, count: int, local: bool = False) -> tuple[list[float], list[float]]:
    """CPU time of the calling thread per block: afar's own work plus what Dask does there.

    With ``local``, the block calls a function of a local module (which travels with it).
    """
    afar_times, bare_times = [], []
    for _ in range(3):
        for case, times in ((run_many, afar_times), (bare_many, bare_times)):
            gc.collect()
            start = time.thread_time()
            if case is run_many and local:
                futures = []
                for i in range(count):
                    with afar.run, remotely:  # noqa: F821
                        y = LOCAL.increment(i)
                    futures.append(y)
            elif case is run_many:
                futures = []
                for i in range(count):
                    with afar.run, remotely:  # noqa: F821
                        y = i + 1
                    futures.append(y)
            else:
                futures = [client.submit(increment, i, pure=False) for i in range(count)]
            times.append((time.thread_time() - start) / count)
            wait(futures)
            del futures
    return afar_times, bare_times


def big_result_stays(client: Client, megabytes: int) -> str:
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    with afar.run, remotely:  # noqa: F821
        import numpy

        big = numpy.ones(megabytes * MEGABYTE // 8)
    with afar.get, remotely:  # noqa: F821
        total = float(big.sum())
    assert total == megabytes * MEGABYTE // 8
    grown = (process.memory_info().rss - before) / MEGABYTE
    nbytes = client.nbytes(summary=False)
    held = nbytes.get(big.key, 0) / MEGABYTE
    return (
        f"{'afar.run of a ' + str(megabytes) + ' MB array':<46} held on the cluster {held:.0f} MB,"
        f" client memory grew {grown:.1f} MB"
    )


class Counted:
    """An array that counts how often the client pickles it (once per time it is sent)."""

    pickled = 0

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __reduce__(self):
        Counted.pickled += 1
        return (np.asarray, (self.array,))


def data_sent_once(client: Client, megabytes: int, blocks: int) -> str:
    Counted.pickled = 0
    data = {"table": Counted(np.ones(megabytes * MEGABYTE // 8))}
    runner = afar.run(data=data)
    sums = []
    for _ in range(blocks):
        with runner, remotely:  # noqa: F821
            total = float(table.sum())  # noqa: F821 - read from data=
        sums.append(total)
    assert all(s.result() == megabytes * MEGABYTE // 8 for s in sums)
    return (
        f"{f'data= value of {megabytes} MB read by {blocks} blocks':<46} sent from the client "
        f"{Counted.pickled} time(s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few repetitions only")
    args = parser.parse_args()
    repeats, many, megabytes = (5, 20, 8) if args.quick else (200, 200, 200)
    global LOCAL
    LOCAL = local_module()
    with (
        LocalCluster(n_workers=2, threads_per_worker=2, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        for _ in range(20 if not args.quick else 2):  # warm-up: imports, code caches, plugin
            get_one(client)
            run_one(client)
            get_one_local(client)
            import_one_local(client)
            bare_one(client)
        print(f"Python bare round trip vs afar, {repeats} interleaved repetitions each")
        a, b = interleave(repeats, lambda: get_one(client), lambda: bare_one(client))
        print(summary("afar.get, one small assignment", a, b, "ms"))
        a, b = interleave(repeats, lambda: run_one(client), lambda: bare_one(client))
        print(summary("afar.run then .result()", a, b, "ms"))
        a, b = interleave(repeats, lambda: get_one_local(client), lambda: bare_one(client))
        print(summary("afar.get, reads a local module's function", a, b, "ms"))
        a, b = interleave(repeats, lambda: import_one_local(client), lambda: bare_one(client))
        print(summary("afar.get, imports a local module", a, b, "ms"))
        a, b = interleave(
            max(3, repeats // 20), lambda: run_many(client, many), lambda: bare_many(client, many)
        )
        print(summary(f"{many} afar.run blocks, then wait on all", a, b, "ms"))
        a, b = client_cpu(client, many)
        extra = [x - y for x, y in zip(a, b)]
        print(
            summary("client CPU per block (calling thread)", a, b, "us")
            + f"   afar's own: {statistics.median(extra) * 1e6:.0f} us"
        )
        a, b = client_cpu(client, many, local=True)
        extra = [x - y for x, y in zip(a, b)]
        print(
            summary("client CPU per block, local module", a, b, "us")
            + f"   afar's own: {statistics.median(extra) * 1e6:.0f} us"
        )
        print(big_result_stays(client, megabytes))
        print(data_sent_once(client, megabytes, 10))
        plots(client, max(3, repeats // 10))


def plot_one(client: Client) -> None:
    """A block drawing one 640x480 figure, which comes back here (a script's pyplot)."""
    import matplotlib.pyplot as plt

    with afar.get, remotely:  # noqa: F821
        plt.plot([1, 2, 3])
        y = 2
    assert y == 2 and plt.get_fignums()
    plt.close("all")


def plot_ten(client: Client) -> None:
    """Ten figures, each shown in a loop (each sent at its show)."""
    import matplotlib.pyplot as plt

    with afar.get, remotely:  # noqa: F821
        for step in range(10):
            plt.plot([0, step])
            plt.show()
        y = 2
    assert y == 2 and len(plt.get_fignums()) == 10
    plt.close("all")


def plots(client: Client, repeats: int) -> None:
    """What a figure costs: a block that draws one against the same block drawing none; and
    rendering one inline (a notebook's PNG), on the worker, against pickling it."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    warnings.filterwarnings("ignore", "FigureCanvasAgg is non-interactive")
    for _ in range(2):
        plot_one(client)
        get_one(client)
    a, b = interleave(repeats, lambda: plot_one(client), lambda: get_one(client))
    print(summary("afar.get drawing a 640x480 figure vs none", a, b, "ms"))
    a, b = interleave(max(2, repeats // 2), lambda: plot_ten(client), lambda: get_one(client))
    print(summary("afar.get showing 10 figures in a loop vs none", a, b, "ms"))

    def worker_costs() -> dict[str, float]:
        import pickle as plain
        import time as clock

        import matplotlib.pyplot as plt

        from afar._worker.plots import PlotMode, rendered

        figure = plt.figure()
        plt.plot([1, 2, 3])
        started = clock.perf_counter()
        bundle = rendered(figure, PlotMode("inline"))
        png = clock.perf_counter() - started
        started = clock.perf_counter()
        data = plain.dumps(figure)
        pickled = clock.perf_counter() - started
        plt.close(figure)
        return {
            "png": png,
            "png bytes": len(bundle["image/png"]),
            "pickle": pickled,
            "pickle bytes": len(data),
        }

    costs = worker_costs()
    print(
        f"{'one 640x480 figure, made here':<46} PNG {costs['png'] * 1e3:.1f} ms "
        f"({costs['png bytes'] / 1e3:.0f} kB base64), pickle {costs['pickle'] * 1e3:.1f} ms "
        f"({costs['pickle bytes'] / 1e3:.0f} kB)"
    )


if __name__ == "__main__":
    main()
