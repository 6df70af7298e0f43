"""afar in five blocks: start a local Dask cluster, run code on its workers, bind the results."""

from __future__ import annotations

import os

from dask.distributed import Client, LocalCluster

import afar

CLIENT_PID = os.getpid()


def main() -> None:
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        print(f"Client pid {CLIENT_PID}, dashboard at {client.dashboard_link}")

        with afar.run, remotely:  # noqa: F821 - `remotely` needs no import
            import os

            pid = os.getpid()  # runs on a worker; never on the client
        print(f"1. afar.run bound a Future: {pid!r}\n   the block ran in process {pid.result()}")

        with afar.run("one", "two"), remotely:  # noqa: F821
            one = 1
            two = one + 1  # one and two are both Futures now
        print(f"2. two names saved: one={one.result()}, two={two.result()}")

        with afar.run as data, remotely:  # noqa: F821
            three = one + two  # Futures in scope feed the block as task dependencies
        assert three.result() == 3 and data["three"].result() == 3
        print(f"3. Futures fed the next block on the cluster: three={three.result()}")

        with afar.get, remotely:  # noqa: F821
            five = two + three  # afar.get binds plain values
        assert five == 5
        print(f"4. afar.get bound a plain value: five={five}")

        on_workers = afar.remotely(retries=2, priority=10)  # keyword arguments go to submit
        with afar.get, on_workers:
            six = five + 1
            print(f"   printed on a worker, shown here: six={six}")
        print(f"5. a location with submit options: six={six}")

        with afar.run, afar.locally:
            seven = six + 1  # runs in this process, for debugging
        print(f"6. afar.locally ran in-process: seven={seven}")


if __name__ == "__main__":
    main()
