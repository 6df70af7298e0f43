"""afar against bare Dask for a client far from its cluster, and for large inputs.

A scheduler and a worker run as processes of their own on 127.0.0.1. In the far cases the
client reaches the scheduler through a TCP proxy of this file's (a process too) that delays every
chunk by half the round trip each way and limits the bandwidth; the worker connects to the
scheduler directly, as in a data centre. Each case runs afar and bare Dask interleaved (A B A B
...) in the same run and prints the ratio of medians; far cases also in round trips (time over
the proxy's round trip); loopback cases also the bytes each process sent (write_chars).

    python benchmarks/far_client.py                 # both parts, default link: 60 ms, 50 MB/s
    python benchmarks/far_client.py --rtt-ms 30 --bandwidth 100
    python benchmarks/far_client.py --quick         # a few repetitions: checks that it runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator

import distributed
import numpy as np
from distributed import Client, get_client, wait

import afar
from afar import _inputs

MB = 1_000_000
# Bare Dask's cases send large values in their graphs, as users do: Dask warns, every time.
warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
# Seconds: how long the scheduler and worker may take to start, and to stop.
START_TIMEOUT = 60
STOP_TIMEOUT = 20
# Options of the scheduler and the worker processes.
LOOPBACK = ("--host", "127.0.0.1", "--no-dashboard")
WORKER = ("--nthreads", "2", "--no-nanny", *LOOPBACK)
# Bytes of data the proxy holds in flight per direction at most (like a TCP window).
PROXY_WINDOW = 4 * 2**20
# Seconds between two measured cases, not measured: Dask's client sends its messages in batches
# at least 10 ms apart, so a case started within 10 ms of the previous case's last message (a
# Future it let go) would wait out the rest of that interval for the previous case.
SETTLE_SECONDS = 0.02


# -- the proxy ------------------------------------------------------------------------------------
async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: float,
    bandwidth: float,
) -> None:
    """Copy one direction: each chunk leaves when the link is free, arrives ``delay`` later."""
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    in_flight = asyncio.Semaphore(PROXY_WINDOW // 65536)
    free_at = 0.0

    async def send() -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            arrival, chunk = item
            pause = arrival - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            writer.write(chunk)
            await writer.drain()
            in_flight.release()
        writer.close()

    sender = asyncio.ensure_future(send())
    loop = asyncio.get_running_loop()
    try:
        while chunk := await reader.read(65536):
            await in_flight.acquire()
            free_at = max(free_at, loop.time()) + len(chunk) / bandwidth
            await queue.put((free_at + delay, chunk))
    except ConnectionError:
        pass
    await queue.put(None)
    with contextlib.suppress(ConnectionError):
        await sender


async def _serve_proxy(port: int, target: tuple[str, int], rtt: float, bandwidth: float) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        upstream_writer.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            _pump(reader, upstream_writer, rtt / 2, bandwidth),
            _pump(upstream_reader, writer, rtt / 2, bandwidth),
        )

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def run_proxy(argv: list[str]) -> None:
    port, host, target_port, rtt, bandwidth = argv
    asyncio.run(_serve_proxy(int(port), (host, int(target_port)), float(rtt), float(bandwidth)))


# -- processes ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {START_TIMEOUT} s")


@contextlib.contextmanager
def cluster(rtt: float | None, bandwidth: float) -> Iterator[tuple[Client, dict[str, int]]]:
    """(a client, the pids of scheduler, worker, proxy); through the proxy when ``rtt``."""
    processes: list[subprocess.Popen[bytes]] = []
    python = sys.executable
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    try:
        port = free_port()
        scheduler = subprocess.Popen(
            [python, "-m", "distributed.cli.dask_scheduler", *LOOPBACK, "--port", str(port)],
            **quiet,
        )
        processes.append(scheduler)
        wait_for_port(port, scheduler)
        worker = subprocess.Popen(
            [python, "-m", "distributed.cli.dask_worker", f"tcp://127.0.0.1:{port}", *WORKER],
            **quiet,
        )
        processes.append(worker)
        pids = {"scheduler": scheduler.pid, "worker": worker.pid}
        address = f"tcp://127.0.0.1:{port}"
        if rtt is not None:
            proxy_port = free_port()
            proxy = subprocess.Popen(
                [
                    python,
                    __file__,
                    "--proxy",
                    *map(str, (proxy_port, "127.0.0.1", port, rtt, bandwidth)),
                ],
                **quiet,
            )
            processes.append(proxy)
            pids["proxy"] = proxy.pid
            wait_for_port(proxy_port, proxy)
            address = f"tcp://127.0.0.1:{proxy_port}"
        with Client(address, direct_to_workers=False, timeout=START_TIMEOUT) as client:
            client.wait_for_workers(1, timeout=START_TIMEOUT)
            yield client, pids
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()


def sent_bytes(pids: dict[str, int]) -> dict[str, int]:
    """Bytes each process has sent on its open TCP connections (``ss -tinp``, Linux)."""
    owners = {pid: name for name, pid in pids.items()}
    owners[os.getpid()] = "client"
    found = dict.fromkeys(["client", *pids], 0)
    try:
        listing = subprocess.run(
            ["ss", "-tinpH"], capture_output=True, text=True, timeout=STOP_TIMEOUT, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return found
    owner = None
    for line in listing.splitlines():
        if "users:((" in line:
            pid = re.search(r"pid=(\d+)", line)
            owner = owners.get(int(pid.group(1))) if pid else None
        sent = re.search(r"bytes_sent:(\d+)", line)
        if sent and owner is not None:
            found[owner] += int(sent.group(1))
    return found


# -- measuring ------------------------------------------------------------------------------------
def interleave(repeats: int, cases: list[Callable[[], object]]) -> list[list[float]]:
    """Each case ``repeats`` times, in turn; the first case is afar's (checked, see below)."""
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(repeats):
        for index, (case, found) in enumerate(zip(cases, times)):
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            if index == 0:
                without_large_graph_warning(case)
            else:
                case()
            found.append(time.perf_counter() - start)
    return times


def without_large_graph_warning(case: Callable[[], object]) -> None:
    """Run afar's case; Dask's "Sending large graph" warning must not fire for a block."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        case()
    for warning in caught:
        if "Sending large graph" in str(warning.message):
            raise AssertionError(f"a block made Dask warn: {warning.message}")


def show(label: str, afar_times: list[float], bare_times: list[float], rtt: float | None) -> None:
    a, b = statistics.median(afar_times), statistics.median(bare_times)
    line = f"{label:<52} afar {a * 1e3:8.1f} ms  bare {b * 1e3:8.1f} ms  ratio {a / b:5.2f}x"
    if rtt:
        line += f"  round trips: afar {a / rtt:5.1f} bare {b / rtt:5.1f}"
    print(line, flush=True)


def show_bytes(label: str, before: dict[str, int], after: dict[str, int]) -> None:
    parts = [f"{name} {(after[name] - before[name]) / MB:7.1f}" for name in after if name in before]
    print(f"    bytes sent (MB) {label:<34} " + "  ".join(parts), flush=True)


def single_use() -> contextlib.AbstractContextManager[object]:
    """Values read by one block each: afar keeps only the last few (``afar.kept-inputs``),
    as bare Dask keeps none, so that both allocate memory that was freed before (on a virtual
    machine, memory never used before costs several times more to allocate)."""
    import dask

    return dask.config.set({_inputs.KEPT_LIMIT_KEY: "300 MB"})


def first(value: object) -> float:
    return float(np.asarray(value).flat[0])


def total(value: np.ndarray) -> float:
    return float(value.sum())


def increment(value: int) -> int:
    return value + 1


def sixty_tasks() -> int:
    client = get_client()
    value = 0
    for _ in range(60):
        value = client.submit(increment, value, pure=False).result()
    return value


def make_array(megabytes: int) -> np.ndarray:
    return np.ones(megabytes * MB // 8)


def random_array(megabytes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(megabytes * MB // 8)


# -- the cases ------------------------------------------------------------------------------------
def small_block(client: Client, repeats: int, rtt: float | None) -> None:
    def with_afar() -> None:
        x = 1
        with afar.get, remotely:  # noqa: F821 - afar recognises the bare name
            y = x + 1
        assert y == 2

    def bare() -> None:
        assert client.submit(increment, 1, pure=False).result() == 2

    with_afar(), bare()
    show("afar.get of a small block", *interleave(repeats, [with_afar, bare]), rtt)


def first_block_of_a_new_client(address: str, repeats: int, rtt: float | None) -> None:
    def with_afar() -> None:
        with Client(address, direct_to_workers=False, set_as_default=False) as fresh:
            start = time.perf_counter()
            with afar.get, remotely(client=fresh):  # noqa: F821
                y = 2
            timings.append(time.perf_counter() - start)
            assert y == 2

    def bare() -> None:
        with Client(address, direct_to_workers=False, set_as_default=False) as fresh:
            start = time.perf_counter()
            assert fresh.submit(increment, 1, pure=False).result() == 2
            timings.append(time.perf_counter() - start)

    afar_times: list[float] = []
    bare_times: list[float] = []
    for _ in range(max(2, repeats // 4)):
        for case, found in ((with_afar, afar_times), (bare, bare_times)):
            timings: list[float] = []
            case()
            found.extend(timings)
    show("the first block of a new client", afar_times, bare_times, rtt)


def blocks_in_flight(client: Client, repeats: int, rtt: float | None, count: int = 20) -> None:
    def with_afar() -> None:
        results = []
        for i in range(count):
            with afar.run, remotely:  # noqa: F821
                y = i + 1
            results.append(y)
        wait(results)

    def bare() -> None:
        wait([client.submit(increment, i, pure=False) for i in range(count)])

    with_afar(), bare()
    show(
        f"{count} afar.run blocks in flight, then wait",
        *interleave(repeats, [with_afar, bare]),
        rtt,
    )


def local_module_block(client: Client, repeats: int, rtt: float | None) -> None:
    folder = tempfile.mkdtemp(prefix="afar-bench-")
    name = f"bench_local_{os.getpid()}"
    with open(os.path.join(folder, f"{name}.py"), "w") as file:
        file.write("def increment(x):\n    return x + 1\n")
    sys.path.insert(0, folder)
    try:
        module = __import__(name)

        def with_afar() -> None:
            with afar.get, remotely:  # noqa: F821
                y = module.increment(1)
            assert y == 2

        def bare() -> None:
            assert client.submit(increment, 1, pure=False).result() == 2

        start = time.perf_counter()
        with_afar()
        first_time = time.perf_counter() - start
        start = time.perf_counter()
        bare()
        show(
            "a block using a local module: its first block",
            [first_time],
            [time.perf_counter() - start],
            rtt,
        )
        show(
            "a block using a local module: later blocks",
            *interleave(repeats, [with_afar, bare]),
            rtt,
        )
    finally:
        sys.path.remove(folder)


def large_input(
    client: Client, pids: dict[str, int], megabytes: int, repeats: int, rtt: float | None
) -> None:
    """One block reading a new array each time: nothing to reuse."""
    seeds = iter(range(10**6))

    def with_afar() -> None:
        value = random_array(megabytes, next(seeds))
        with afar.get, remotely:  # noqa: F821
            y = float(value[0])
        assert y == value[0]

    def bare() -> None:
        value = random_array(megabytes, next(seeds))
        assert client.submit(first, value, pure=False).result() == value[0]

    def making() -> None:
        random_array(megabytes, next(seeds))

    with_afar(), bare()
    before = sent_bytes(pids)
    with single_use():
        afar_times, bare_times, make_times = interleave(repeats, [with_afar, bare, making])
    after = sent_bytes(pids)
    made = statistics.median(make_times)
    show(
        f"one block reading a new {megabytes} MB array",
        [t - made for t in afar_times],
        [t - made for t in bare_times],
        rtt,
    )
    show_bytes(f"(both, {repeats} each)", before, after)


def large_frame(
    client: Client, pids: dict[str, int], repeats: int, rtt: float | None, megabytes: int = 100
) -> None:
    import pandas as pd

    rows = megabytes * MB // 24
    seeds = iter(range(10**6))

    def frame() -> pd.DataFrame:
        rng = np.random.default_rng(next(seeds))
        return pd.DataFrame(
            {"a": rng.random(rows), "b": rng.integers(0, 9, rows), "c": rng.random(rows)}
        )

    def with_afar() -> None:
        value = frame()
        with afar.get, remotely:  # noqa: F821
            y = len(value)
        assert y == rows

    def bare() -> None:
        value = frame()
        assert client.submit(len, value, pure=False).result() == rows

    def making() -> None:
        frame()

    with_afar(), bare()
    with single_use():
        afar_times, bare_times, make_times = interleave(repeats, [with_afar, bare, making])
    made = statistics.median(make_times)
    show(
        f"one block reading a new {megabytes} MB DataFrame",
        [t - made for t in afar_times],
        [t - made for t in bare_times],
        rtt,
    )


def one_input_many_blocks(
    client: Client,
    pids: dict[str, int],
    megabytes: int,
    blocks: int,
    repeats: int,
    rtt: float | None,
) -> None:
    """Blocks reading the same array, each summing it: afar, bare submits, scatter once."""
    seeds = iter(range(10**6))
    arrays: dict[str, np.ndarray] = {}

    def fresh(kind: str) -> np.ndarray:
        arrays[kind] = random_array(megabytes, next(seeds))
        return arrays[kind]

    def with_afar() -> None:
        value = fresh("afar")
        for _ in range(blocks):
            with afar.get, remotely:  # noqa: F821
                s = float(value.sum())
            assert s > 0

    def submits() -> None:
        value = fresh("submits")
        for _ in range(blocks):
            assert client.submit(total, value, pure=False).result() > 0

    def scatter_once() -> None:
        value = fresh("scatter")
        [future] = client.scatter([value], hash=False)
        for _ in range(blocks):
            assert client.submit(total, future, pure=False).result() > 0
        del future

    cases = [with_afar, submits, scatter_once]
    label = f"{blocks} blocks reading one new {megabytes} MB array"
    measured: list[list[float]] = [[], [], []]
    sent: list[float] = [0.0, 0.0, 0.0]
    for case in cases:
        case()  # warm-up
    for _ in range(repeats):
        for index, case in enumerate(cases):
            before = sent_bytes(pids)
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            case()
            measured[index].append(time.perf_counter() - start)
            after = sent_bytes(pids)
            sent[index] += (after["client"] - before["client"]) / repeats
    show(label + " vs submits", measured[0], measured[1], rtt)
    show(label + " vs scatter once", measured[0], measured[2], rtt)
    print(
        f"    bytes the client sent per run (MB): afar {sent[0] / MB:.1f}  submits "
        f"{sent[1] / MB:.1f}  scatter once {sent[2] / MB:.1f}  (afar / scatter once "
        f"{sent[0] / max(sent[2], 1):.2f}x)",
        flush=True,
    )


def changed_between_blocks(client: Client) -> None:
    value = np.zeros(2 * MB // 8)
    seen = []
    for step in range(3):
        value[0] = step  # in place, between blocks
        with afar.get, remotely:  # noqa: F821
            s = float(value[0])
        seen.append(s)
    assert seen == [0.0, 1.0, 2.0], seen
    print("    a change in place between blocks is seen by each block: yes", flush=True)


def large_result(client: Client, repeats: int, rtt: float | None, megabytes: int = 40) -> None:
    def with_afar() -> None:
        with afar.get, remotely:  # noqa: F821
            import numpy as np

            y = np.ones(megabytes * 1_000_000 // 8)
        assert y.nbytes == megabytes * MB

    def bare() -> None:
        assert client.submit(make_array, megabytes, pure=False).result().nbytes == megabytes * MB

    with_afar(), bare()
    show(f"afar.get of a {megabytes} MB result", *interleave(repeats, [with_afar, bare]), rtt)


def nested_tasks(client: Client, repeats: int, rtt: float | None) -> None:
    def with_afar() -> None:
        with afar.get, remotely:  # noqa: F821
            from distributed import get_client

            worker_client = get_client()
            value = 0
            for _ in range(60):
                value = worker_client.submit(increment, value, pure=False).result()
        assert value == 60

    def bare() -> None:
        assert client.submit(sixty_tasks, pure=False).result() == 60

    with_afar(), bare()
    show(
        "60 dependent tiny tasks submitted from a block",
        *interleave(repeats, [with_afar, bare]),
        rtt,
    )


# -- main -----------------------------------------------------------------------------------------
def far(args: argparse.Namespace, repeats: int) -> None:
    rtt = args.rtt_ms / 1000
    big = 4 if args.quick else 40  # MB of the large input and result
    print(f"\n== far client: {args.rtt_ms:g} ms round trip, {args.bandwidth:g} MB/s ==", flush=True)
    with cluster(rtt, args.bandwidth * MB) as (client, pids):
        address = client.scheduler.address
        small_block(client, repeats, rtt)
        first_block_of_a_new_client(address, repeats, rtt)
        blocks_in_flight(client, repeats, rtt)
        local_module_block(client, repeats, rtt)
        large_input(client, pids, big, max(2, repeats // 4), rtt)
        one_input_many_blocks(client, pids, big, 4, max(1, repeats // 8), rtt)
        large_result(client, max(2, repeats // 4), rtt, big)
        nested_tasks(client, max(2, repeats // 4), rtt)


def loopback(args: argparse.Namespace, repeats: int) -> None:
    print("\n== loopback: scheduler and one worker process on 127.0.0.1 ==", flush=True)
    big = 10 if args.quick else 100  # MB
    with cluster(None, 0) as (client, pids):
        for megabytes in (1, 10, big) if not args.quick else (1, big):
            large_input(
                client, pids, megabytes, repeats if megabytes < 100 else max(3, repeats // 2), None
            )
        large_frame(client, pids, max(2, repeats // 3), None, big)
        one_input_many_blocks(client, pids, big, 10, max(1, repeats // 3), None)
        changed_between_blocks(client)
        large_result(client, repeats, None)
        nested_tasks(client, max(3, repeats // 3), None)
        print(f"    kept on the cluster at the end: {_inputs.kept_bytes(client) / MB:.0f} MB")


def main() -> None:
    if sys.argv[1:2] == ["--proxy"]:
        run_proxy(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few repetitions only")
    parser.add_argument("--rtt-ms", type=float, default=60.0, help="round trip of the far link")
    parser.add_argument("--bandwidth", type=float, default=50.0, help="MB/s of the far link")
    parser.add_argument("--only", choices=["far", "loopback"], help="one part only")
    args = parser.parse_args()
    repeats = 2 if args.quick else 12
    threshold = _inputs.large_input_threshold() / MB
    digest = type(_inputs._new_digest()).__name__
    print(
        f"Python {sys.version.split()[0]}, distributed {distributed.__version__}, "
        f"digest {digest}, large inputs from {threshold:g} MB"
    )
    if args.only in (None, "far"):
        far(args, repeats)
    if args.only in (None, "loopback"):
        loopback(args, repeats)


if __name__ == "__main__":
    main()
