"""Where a block runs: `remotely` (a Dask worker), `locally` (in-process), `later` (nowhere)."""

from __future__ import annotations

import enum
import functools
import inspect
from typing import Any

from afar.errors import LocationError

# Options of client.submit that afar sets itself for the block's task.
OWNED_SUBMIT_OPTIONS = frozenset({"key", "actor", "actors", "pure"})


@functools.cache
def submit_option_names() -> frozenset[str]:
    """Keyword options of this Dask's ``Client.submit`` (its ``**kwargs`` go to the function)."""
    from distributed import Client

    parameters = inspect.signature(Client.submit).parameters.values()
    return (
        frozenset(
            p.name
            for p in parameters
            if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.name != "self")
        )
        - {"func"}
        - OWNED_SUBMIT_OPTIONS
    )


class Where(enum.Enum):
    REMOTELY = "remotely"
    LOCALLY = "locally"
    LATER = "later"


LOCATION_NAMES = frozenset(where.value for where in Where)


class SkipBody(Exception):
    """Raised by a location's ``__enter__`` so that the body does not run here."""

    def __init__(self, location: Location) -> None:
        super().__init__(location)
        self.location = location


class Location:
    """Where the body of ``with afar.run, <location>:`` runs.

    Use the ready-made ``remotely``, ``locally`` and ``later``; call ``remotely`` to choose a
    client or pass options to ``client.submit`` (``resources``, ``workers``, ``retries``,
    ``priority``, ``allow_other_workers``, ``fifo_timeout``...).

    Examples
    --------
    >>> on_gpus = afar.remotely(resources={"GPU": 1}, retries=2)  # doctest: +SKIP
    >>> with afar.run, on_gpus:  # doctest: +SKIP
    ...     model = train(data)
    """

    def __init__(
        self,
        where: Where,
        client: Any = None,
        quiet: bool = False,
        submit_options: dict[str, Any] | None = None,
        secede: bool | None = None,
        progress: bool = True,
        timeout: float | None = None,
        debug: bool = True,
    ) -> None:
        self.where = where
        self.debug = debug
        self.client = client
        self.quiet = quiet
        self.secede = secede
        self.progress = progress
        self.timeout = timeout
        self.submit_options = dict(submit_options or {})

    def __call__(
        self,
        client: Any = None,
        *,
        quiet: bool = False,
        secede: bool | None = None,
        progress: bool | None = None,
        timeout: float | str | None = None,
        debug: bool | None = None,
        **submit_options: Any,
    ) -> Location:
        """A location like this one with a client and options for ``client.submit``.

        Parameters
        ----------
        client : distributed.Client, optional
            The client to submit with; by default the run's client, then Dask's default client.
        quiet : bool
            Do not capture the block's output (it still reaches the workers' own streams), and
            so send nothing of it through the scheduler.
        secede : bool, optional
            Leave the worker's thread pool while the block runs, so that tasks it waits for
            can run (``distributed.secede``). By default afar secedes for blocks whose source
            computes Dask collections or waits on Futures; pass True for a block that does so
            only through functions it calls.
        progress : bool, optional
            Show how far the Dask work the block submits has come (tasks done / total) while
            it runs: in the block's notebook cell, or on an interactive terminal's stderr.
            On by default; ``progress=False`` turns it off. Nothing is shown when stderr is not
            a terminal (outside Jupyter), nor with ``quiet=True``.
        timeout : float or str, optional
            Time limit of the block on the worker, in seconds or as a Dask time string such as
            ``"5m"``: past it the block is stopped and its result is a ``TimeoutError``. It
            counts from when the block starts on the worker, not the time it waits in the queue.
        debug : bool, optional
            ``debug=False`` makes ``breakpoint()`` in the block do nothing, as
            ``PYTHONBREAKPOINT=0`` does; by default it opens pdb on the block's worker, where the
            caller waits (see "Debugging a block" in the README).
        **submit_options
            Passed to ``client.submit`` for the block's task.
        """
        unknown = set(submit_options) - submit_option_names() - OWNED_SUBMIT_OPTIONS
        if unknown:
            raise TypeError(
                f"{self.where.value}() got unknown option(s) {', '.join(sorted(unknown))}: they "
                "are passed to client.submit, which takes "
                f"{', '.join(sorted(submit_option_names()))}"
            )
        owned = OWNED_SUBMIT_OPTIONS.intersection(submit_options)
        if owned:
            raise LocationError(
                f"{self.where.value}() does not take {', '.join(sorted(owned))}: afar chooses the "
                "key of the block's task itself and always submits it as impure. Pass options "
                "of client.submit such as resources=, workers=, retries= or priority="
            )
        if self.where is not Where.REMOTELY and (
            submit_options or client is not None or timeout is not None
        ):
            raise LocationError(
                f"{self.where.value} takes no client or submit options and no timeout: only "
                "remotely(...) submits to Dask"
            )
        options = {**self.submit_options, **submit_options}
        chosen_client = client if client is not None else self.client
        chosen_secede = secede if secede is not None else self.secede
        chosen_progress = progress if progress is not None else self.progress
        limit = time_limit(timeout) if timeout is not None else self.timeout
        chosen_debug = bool(debug) if debug is not None else self.debug
        return type(self)(
            self.where,
            chosen_client,
            quiet,
            options,
            chosen_secede,
            progress=chosen_progress,
            timeout=limit,
            debug=chosen_debug,
        )

    def __enter__(self) -> None:
        raise SkipBody(self)

    async def __aenter__(self) -> None:
        raise SkipBody(self)

    def __exit__(self, *exc_info: object) -> None:  # never reached: __enter__ always raises
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def __repr__(self) -> str:
        details = [f"client={self.client!r}"] if self.client is not None else []
        details += [f"{k}={v!r}" for k, v in self.submit_options.items()]
        details += ["quiet=True"] if self.quiet else []
        details += [f"secede={self.secede}"] if self.secede is not None else []
        details += [] if self.progress else ["progress=False"]
        details += [f"timeout={self.timeout:g}"] if self.timeout is not None else []
        details += [] if self.debug else ["debug=False"]
        return f"{self.where.value}({', '.join(details)})" if details else self.where.value


def time_limit(timeout: object) -> float:
    """Seconds of ``remotely(timeout=...)``: a positive number or a Dask time string ("5m")."""
    seconds: object = timeout
    if isinstance(timeout, str):
        from dask.utils import parse_timedelta

        try:
            seconds = parse_timedelta(timeout, default="seconds")
        except (ValueError, KeyError, TypeError):
            seconds = None
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not 0 < seconds < float("inf")
    ):
        raise TypeError(
            f"remotely(timeout=...) takes a positive number of seconds or a Dask time string "
            f"such as '90s' or '5m', not {timeout!r}"
        )
    return float(seconds)


remotely = Location(Where.REMOTELY)
locally = Location(Where.LOCALLY)
later = Location(Where.LATER)
DEFAULT_LOCATIONS = {location.where.value: location for location in (remotely, locally, later)}
