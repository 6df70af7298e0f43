"""A large input as a worker keeps it (``afar._worker.kept``), without Dask: each block's copy.

A ``Kept`` is pickled as Dask pickles data (protocol 5, buffers out of band) and unpickled as a
worker does; every lease of it is a private copy: the first a copy of the buffers, the later ones
over a copy-on-write mapping of a file, and a mapping a block gave back unwritten and unused
serves the next block.
"""

from __future__ import annotations

import pickle
import sys

import cloudpickle
import numpy as np
import pandas as pd
import pytest

from afar import _inputs
from afar._worker.kept import Kept


def arrived(value: object) -> Kept:
    """``value`` serialized on the client, then as a worker receives it (Dask pickles it with
    cloudpickle: plain pickle cannot, on purpose, see ``UNIMPORTABLE_MODULE``)."""
    sent = _inputs.serialize(value).kept
    frames: list[pickle.PickleBuffer] = []
    data = cloudpickle.dumps(sent, protocol=5, buffer_callback=frames.append)
    return pickle.loads(data, buffers=[bytearray(frame.raw()) for frame in frames])


def test_each_lease_is_a_private_copy() -> None:
    kept = arrived(np.zeros(1_000_000))
    first, second = kept.lease(), kept.lease()  # a copy, then a mapping of the file
    first.value[0] = 1.0
    second.value[1] = 2.0
    assert second.value[0] == 0.0 and first.value[1] == 0.0
    third = kept.lease().value
    assert third[0] == 0.0 and third[1] == 0.0  # nor the kept copy


def test_only_a_second_lease_makes_the_file() -> None:
    """A value read by one block costs one copy; one read by many, one copy into the file."""
    kept = arrived(np.ones(1_000_000))
    first = kept.lease()
    assert kept._file is None and first._private is None
    second = kept.lease()
    assert kept._file is not None and second._private is not None
    assert first.value.sum() == second.value.sum() == 1_000_000


def test_read_only_buffers_are_shared_not_copied() -> None:
    kept = arrived(np.frombuffer(bytes(2_000_000), dtype=np.uint8))
    copy = kept.lease().value
    assert not copy.flags.writeable
    with pytest.raises(ValueError):
        copy.flags.writeable = True  # nothing can write the kept copy through it
    assert np.shares_memory(copy, np.frombuffer(kept._views[0], dtype=np.uint8))


def test_the_client_s_changes_after_sending_do_not_reach_the_kept_copy() -> None:
    value = np.zeros(1_000_000)
    kept = arrived(value)
    value[0] = 5.0
    assert kept.lease().value[0] == 0.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pages are looked at on Linux")
def test_a_clean_mapping_serves_the_next_block() -> None:
    kept = arrived(np.arange(1_000_000, dtype=np.float64))
    kept.lease().give_back()  # the first: a copy, nothing to take back
    assert kept._clean == []
    lease = kept.lease()
    assert float(lease.value.sum()) == float(np.arange(1_000_000).sum())
    lease.give_back()
    assert len(kept._clean) == 1
    again = kept.lease()
    assert len(kept._clean) == 0 and again.value[10] == 10.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pages are looked at on Linux")
def test_a_written_mapping_is_not_taken_back() -> None:
    kept = arrived(np.zeros(1_000_000))
    kept.lease()
    lease = kept.lease()
    lease.value[123_456] = 1.0
    lease.give_back()
    assert kept._clean == []
    assert kept.lease().value[123_456] == 0.0


def test_a_mapping_still_in_use_is_not_taken_back() -> None:
    kept = arrived(np.zeros(1_000_000))
    kept.lease()
    lease = kept.lease()
    view = lease.value[:10]  # the block saved a view of its input
    lease.give_back()
    assert kept._clean == []
    assert view.sum() == 0.0


def test_plain_pickle_does_not_look_afar_up_by_name() -> None:
    """Where afar is installed it would import it, where it is not it would fail: Dask must go
    to cloudpickle at once, as for anything of the client's script."""
    with pytest.raises(pickle.PicklingError, match="<afar kept input>"):
        pickle.dumps(arrived(np.ones(10)))


def test_types_flags_and_layout_survive() -> None:
    readonly = np.frombuffer(bytes(2_000_000), dtype=np.uint8)
    fortran = np.asfortranarray(np.ones((1000, 300)))
    frame = pd.DataFrame(
        {"s": pd.array(["x", None] * 100_000, dtype="string"), "n": range(200_000)}
    )
    for value in (readonly, fortran, np.ma.masked_array(np.ones(300_000), mask=False)):
        kept = arrived(value)
        for copy in (kept.lease().value, kept.lease().value):  # copied, then mapped
            assert type(copy) is type(value)
            assert copy.flags.writeable == value.flags.writeable
            assert copy.flags.f_contiguous == value.flags.f_contiguous
            assert np.array_equal(np.asarray(copy), np.asarray(value))
    kept = arrived(frame)
    for copied in (kept.lease().value, kept.lease().value):
        assert copied.equals(frame) and copied.dtypes.to_dict() == frame.dtypes.to_dict()


def test_a_snapshot_no_longer_shares_the_value_s_memory() -> None:
    value = np.zeros(1_000_000)
    snapshot = _inputs.serialize(value).kept.snapshot()
    value[0] = 5.0
    assert snapshot.lease().value[0] == 0.0


def test_a_kept_value_is_sent_on_without_copying_its_buffers() -> None:
    kept = arrived(np.ones(1_000_000))
    frames: list[pickle.PickleBuffer] = []
    data = cloudpickle.dumps(kept, protocol=5, buffer_callback=frames.append)
    assert len(data) < 20_000 and sum(frame.raw().nbytes for frame in frames) == 8_000_000
    again = pickle.loads(data, buffers=frames)
    assert again.lease().value.sum() == 1_000_000
    kept.lease(), kept.lease()  # now in its file: sent from there
    frames.clear()
    cloudpickle.dumps(kept, protocol=5, buffer_callback=frames.append)
    assert sum(frame.raw().nbytes for frame in frames) == 8_000_000
