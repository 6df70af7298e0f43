"""afar blocks on a TLS-secured cluster; a client without the certificates runs nothing (issue 6).

`tls_deployment` accepts only TLS connections from holders of a certificate signed by its CA;
`tls_client` has one (distributed.Security with the files the test generated).
"""

from __future__ import annotations

import gc
import os

import pytest
from _blocks import RESULT_TIMEOUT
from _on_scheduler import afar_keys
from _processes import LOOPBACK, connection_failure
from _tls import make_tls_files
from distributed import Client, Future, Security, default_client, get_worker
from distributed.comm import CommClosedError

import afar
from afar import remotely

# Bounds a connection that the scheduler refuses (which it does at once).
REFUSED_CONNECT_TIMEOUT = 3.0


def _client_ids(dask_scheduler) -> set[str]:
    return set(dask_scheduler.clients)


def _default_client_failure(address: str) -> Exception:
    """``Client(address)`` as a user writes it (it would become the default client), failing.

    Like `connection_failure`, which passes set_as_default=False: the half-built client is
    collected here, at once (see there why).
    """
    try:
        Client(address, timeout=REFUSED_CONNECT_TIMEOUT).close()
    except Exception as error:
        failure = error
    else:
        raise AssertionError(f"A client without certificates connected to {address}.")
    cause: BaseException | None = failure
    while cause is not None:
        cause.__traceback__ = None
        cause = cause.__cause__ or cause.__context__
    gc.collect()
    return failure


def test_blocks_run_over_tls(tls_deployment, tls_client):
    worker = tls_deployment.workers["tls"]
    assert tls_client.scheduler.address.startswith(f"tls://{LOOPBACK}:")
    with afar.run, remotely:
        pid = os.getpid()
    assert isinstance(pid, Future)
    with afar.get, remotely:
        where = (get_worker().address, pid * 1)  # a Future read by the next block
    assert where == (worker.address, worker.pid)
    assert pid.result(timeout=RESULT_TIMEOUT) == worker.pid


def test_a_client_without_certificates_cannot_connect_and_runs_no_block(
    tls_deployment, tls_files, tmp_path
):
    address = tls_deployment.scheduler.address
    with pytest.raises(ValueError):
        default_client()  # no client of an earlier test is still open
    with Client(address, security=tls_deployment.security, set_as_default=False) as admin:
        clients_before = admin.run_on_scheduler(_client_ids)

        # No certificates at all: distributed refuses to open a tls:// connection without them.
        failure = _default_client_failure(address)
        assert isinstance(failure, TypeError)
        assert "TLS expects a `ssl_context` argument" in str(failure)
        # A certificate of another CA: the scheduler refuses the handshake.
        impostor = make_tls_files(tmp_path)
        security = Security(
            tls_ca_file=str(tls_files.ca_file),
            tls_client_cert=str(impostor.cert),
            tls_client_key=str(impostor.key),
            require_encryption=True,
        )
        failure = connection_failure(address, security=security, timeout=REFUSED_CONNECT_TIMEOUT)
        assert isinstance(failure, CommClosedError)

        # Neither failed client is left behind for afar to use: the block is refused here.
        with pytest.raises(afar.ClientError, match="found no Dask client"):  # noqa: SIM117
            with afar.run, remotely:
                never = 1  # noqa: F841
        # The scheduler saw no new client and holds no block.
        assert admin.run_on_scheduler(_client_ids) == clients_before
        assert admin.run_on_scheduler(afar_keys) == []
