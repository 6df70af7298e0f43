"""A large input kept on the cluster: its serialized form, and a private copy for each block.

A large outer value reaches the cluster once per client and content (``afar._inputs`` decides
which and keeps track) as a ``Kept``: its pickle (protocol 5) with the out-of-band buffers
apart, so that the buffers of NumPy, pandas and Arrow travel as they are, without a copy into
one bytes object. Dask keeps it on a worker as the data of a key, and moves it between workers
as it moves any data.

On a worker the buffers live in one anonymous file (``memfd`` on Linux, an unlinked temporary
file elsewhere), and each block gets its own copy of the value by unpickling it over a
copy-on-write mapping of that file (``mmap.ACCESS_COPY``): pages a block only reads are shared
with the kept copy, pages it writes become its own. A block that changes its input in place
changes no other block's input and not the kept copy, and reading costs no copy.

Like the rest of ``afar._worker`` this module travels to workers by value; a ``Kept`` made by
one shipment of it unpickles with any other.
"""

from __future__ import annotations

import mmap
import os
import pickle
import sys
import tempfile
import threading
from collections.abc import Sequence
from typing import Any, SupportsIndex

# Buffers start at multiples of this in the kept file: aligned for every NumPy dtype.
ALIGNMENT = 64
# Buffers of at least this many bytes in all are copied into the file in a thread of their own.
BACKGROUND_COPY_BYTES = 8 * 2**20
# Seconds a block waits for that copy at most.
COPY_TIMEOUT_SECONDS = 300


class Kept:
    """The serialized form of one large value: ``inband`` and its out-of-band buffers.

    On the client it is made by ``Kept.of`` and holds views of the value's own memory (sent
    without a copy); on a worker, by unpickling (``_arrived``), and holds its buffers in a
    file once they are copied there.
    """

    __slots__ = ("__weakref__", "_file", "_ready", "_views", "inband", "layout", "nbytes")

    def __init__(
        self,
        inband: bytes,
        views: Sequence[memoryview],
        layout: tuple[tuple[int, int, bool], ...],
    ) -> None:
        self.inband = inband
        # The buffers: the value's memory (client), the frames as they arrived, then the file.
        self._views = tuple(views)
        # (offset in the file, length, read-only) per buffer.
        self.layout = layout
        self._file: Any = None
        self._ready: threading.Event | None = None  # set once the file holds the buffers
        self.nbytes = len(inband) + sum(length for _, length, _ in layout)

    @classmethod
    def of(cls, inband: bytes, buffers: Sequence[pickle.PickleBuffer]) -> Kept:
        """A value's pickle and the buffers its pickling handed out (``buffer_callback``)."""
        views = [_raw(buffer) for buffer in buffers]
        return cls(inband, views, _layout(views, [view.readonly for view in views]))

    def __sizeof__(self) -> int:
        # What Dask's memory accounting (``dask.sizeof``) counts for the key holding it.
        return self.nbytes

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        # Protocol 5 with a buffer_callback (Dask's) hands the buffers out as frames: no copy.
        self._wait()
        buffers = [pickle.PickleBuffer(view) for view in self._views]
        readonly = tuple(flag for _, _, flag in self.layout)
        return _arrived, (self.inband, buffers, readonly)

    def value(self) -> Any:
        """A private copy of the value: unpickled over a copy-on-write mapping of the file."""
        self._wait()
        if self._file is None:
            # Still on the client (or nothing to copy): the views are the value's own.
            return pickle.loads(self.inband, buffers=self._views)
        size = _file_size(self.layout)
        private = memoryview(mmap.mmap(self._file.fileno(), size, access=mmap.ACCESS_COPY))
        buffers = []
        for offset, length, readonly in self.layout:
            view = private[offset : offset + length]
            buffers.append(view.toreadonly() if readonly else view)
        return pickle.loads(self.inband, buffers=buffers)

    def _copy_to_file(self) -> None:
        """Write the buffers into an anonymous file; read them from a shared mapping then."""
        size = _file_size(self.layout)
        file = _anonymous_file(size)
        for (offset, _, _), view in zip(self.layout, self._views):
            written = 0
            while written < view.nbytes:  # os.pwrite may write less than asked
                written += os.pwrite(file.fileno(), view[written:], offset + written)
        shared = memoryview(mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ))
        self._views = tuple(shared[offset : offset + length] for offset, length, _ in self.layout)
        self._file = file

    def _wait(self) -> None:
        ready = self._ready
        if ready is not None and not ready.wait(COPY_TIMEOUT_SECONDS):
            raise TimeoutError(
                f"afar: a large input was not copied within {COPY_TIMEOUT_SECONDS} s"
            )


def _raw(buffer: pickle.PickleBuffer) -> memoryview:
    """The buffer's bytes, flat; a copy only for a buffer that is not contiguous."""
    try:
        return buffer.raw()
    except BufferError:
        with memoryview(buffer) as view:
            copied = memoryview(view.tobytes())
            return copied if view.readonly else memoryview(bytearray(copied))


def _layout(views: Sequence[memoryview], readonly: Sequence[bool]) -> tuple[Any, ...]:
    layout = []
    offset = 0
    for view, flag in zip(views, readonly):
        layout.append((offset, view.nbytes, flag))
        offset += -(-view.nbytes // ALIGNMENT) * ALIGNMENT
    return tuple(layout)


def _file_size(layout: tuple[tuple[int, int, bool], ...]) -> int:
    if not layout:
        return 0
    offset, length, _ = layout[-1]
    return offset + length


def _arrived(inband: bytes, buffers: Sequence[Any], readonly: Sequence[bool]) -> Kept:
    """Unpickled where it arrives (a worker): the buffers go into an anonymous file.

    A large one is copied in a thread of its own: Dask acknowledges the data at once, and the
    first block waits for the copy only if it comes before the copy is done.
    """
    views = [memoryview(buffer).cast("B") for buffer in buffers]
    kept = Kept(inband, views, _layout(views, readonly))
    size = _file_size(kept.layout)
    if not size:
        return kept
    if size < BACKGROUND_COPY_BYTES:
        kept._copy_to_file()
        return kept
    kept._ready = ready = threading.Event()

    def copy() -> None:
        try:
            kept._copy_to_file()
        finally:
            ready.set()

    threading.Thread(target=copy, name="afar-kept-input-copy", daemon=True).start()
    return kept


def _anonymous_file(size: int) -> Any:
    """A file of ``size`` bytes in memory that nothing names and that goes with its last user."""
    if sys.platform.startswith("linux") and hasattr(os, "memfd_create"):
        file = os.fdopen(os.memfd_create("afar-kept-input", os.MFD_CLOEXEC), "r+b", buffering=0)
        try:
            os.posix_fallocate(file.fileno(), 0, size)  # allocating first is faster (Linux)
            return file
        except OSError:
            pass
    else:
        file = tempfile.TemporaryFile(buffering=0)  # noqa: SIM115 - it lives as long as the value
    os.ftruncate(file.fileno(), size)
    return file
