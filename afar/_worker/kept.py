"""A large input kept on the cluster: its serialized form, and a private copy for each block.

A large outer value reaches the cluster once per client and content (``afar._inputs`` decides
which and keeps track) as a ``Kept``: its pickle (protocol 5) with the out-of-band buffers
apart, so that the buffers of NumPy, pandas and Arrow travel as they are, without a copy into
one bytes object. Dask keeps it on a worker as the data of a key, and moves it between workers
as it moves any data.

On a worker the buffers stay as they arrived, and nothing ever writes them. Each block gets its
own copy of the value: the first block that reads it a plain copy of the buffers (the cheapest
copy there is, about 10 ms per 100 MB: NumPy allocates large buffers in huge pages); from the
second block on, the buffers are copied once into an anonymous file (``memfd`` on Linux, an
unlinked temporary file elsewhere) and each block unpickles the value over a copy-on-write
mapping of that file (``mmap.ACCESS_COPY``): pages a block only reads are shared with the kept
copy, pages it writes become its own. Either way a block that changes its input in place
changes no other block's input and not the kept copy. A value read by one block only costs one
copy, and one read by many costs one copy into the file, not one per block. Read-only buffers
are shared as they are: nothing can write them.

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
# Clean copy-on-write mappings kept per value for the next blocks (see Lease).
CLEAN_MAPPINGS = 2


class Kept:
    """The serialized form of one large value: ``inband`` and its out-of-band buffers.

    On the client it is made by ``Kept.of`` and holds views of the value's own memory (sent
    without a copy); on a worker, by unpickling (``_arrived``), and holds its buffers as they
    arrived, then in a file once a second block leases it.
    """

    __slots__ = (
        "__weakref__",
        "_clean",
        "_file",
        "_leased",
        "_lock",
        "_views",
        "inband",
        "layout",
        "nbytes",
    )

    def __init__(
        self,
        inband: bytes,
        views: Sequence[memoryview],
        layout: tuple[tuple[int, int, bool], ...],
    ) -> None:
        self.inband = inband
        # The buffers: the value's memory (client), the frames as they arrived, then the file.
        # Never written, and never handed out writable.
        self._views = tuple(views)
        # (offset in the file, length, read-only) per buffer.
        self.layout = layout
        self._file: Any = None
        self._leased = False  # whether a block had its copy yet
        # Private mappings that blocks gave back unwritten and unreferenced (see Lease).
        self._clean: list[Any] = []
        self._lock = threading.Lock()
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
        buffers = [pickle.PickleBuffer(view) for view in self._views]
        readonly = tuple(flag for _, _, flag in self.layout)
        return _arrived, (self.inband, buffers, readonly)

    def value(self) -> Any:
        """A private copy of the value (see ``lease``), for a caller that gives nothing back."""
        return self.lease().value

    def lease(self) -> Lease:
        """A private copy of the value, to give back after the block (``Lease.give_back``).

        The first lease copies the buffers. Later ones unpickle over a copy-on-write mapping of
        the file (made by the second lease): one a block gave back clean if there is one, whose
        pages are mapped already, so that reading costs no page fault.
        """
        with self._lock:
            first, self._leased = not self._leased, True
            if not first and self._file is None and self.layout:
                self._copy_to_file()
            private = self._clean.pop() if self._clean and not first else None
            views = self._views
        if first or self._file is None:
            copies = [
                _private(view, readonly) for view, (_, _, readonly) in zip(views, self.layout)
            ]
            return Lease(pickle.loads(self.inband, buffers=copies), None, None)
        if private is None:
            size = _file_size(self.layout)
            private = mmap.mmap(self._file.fileno(), size, access=mmap.ACCESS_COPY)
        whole = memoryview(private)
        buffers = []
        for offset, length, readonly in self.layout:
            view = whole[offset : offset + length]
            buffers.append(view.toreadonly() if readonly else view)
        whole.release()  # the slices hold the mapping for as long as the value uses them
        return Lease(pickle.loads(self.inband, buffers=buffers), self, private)

    def snapshot(self) -> Kept:
        """A copy that no longer shares the value's memory (for a worker in this process, to
        which Dask hands the object itself: a change here after the block's ``with`` must not
        reach it)."""
        copies = [_private(view, False) for view in self._views]
        return Kept(self.inband, copies, self.layout)

    def _take_back(self, private: Any) -> None:
        with self._lock:
            if len(self._clean) < CLEAN_MAPPINGS:
                self._clean.append(private)

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


class Lease:
    """A block's copy of a kept value, and the mapping under it, to give back after the block.

    A mapping is taken back for the next block only if nothing refers to it any more (the
    block kept no view of the value) and the block wrote none of its pages: then it holds
    exactly the kept bytes, already mapped. Where that cannot be told (not Linux), it is not.
    """

    __slots__ = ("_kept", "_private", "value")

    def __init__(self, value: Any, kept: Kept | None, private: Any) -> None:
        self.value = value
        self._kept = kept
        self._private = private

    def give_back(self) -> None:
        """After the block, once the caller dropped every reference of its own to ``value``."""
        kept, private = self._kept, self._private
        self.value = self._kept = self._private = None
        if kept is None or private is None or _exported(private) or _written(private):
            return
        kept._take_back(private)


def _exported(private: Any) -> bool:
    """Whether anything still uses the mapping's memory (a view, an array made on it)."""
    try:
        # Refused with BufferError while buffers are exported, with TypeError otherwise
        # (a copy-on-write mapping cannot be resized): a look that changes nothing.
        private.resize(len(private))
    except BufferError:
        return True
    except (TypeError, ValueError, OSError):
        return False
    return True  # resized: not a copy-on-write mapping, so not one of ours to take back


# Linux's /proc/self/pagemap: 8 bytes per page; in the last byte, bit 7 says "present" and bit 5
# "a page of the file" (not a private copy). Present and not of the file: written by the process.
_PAGEMAP = "/proc/self/pagemap"
_WRITTEN_PAGE = bytes.maketrans(
    bytes(range(256)), bytes(1 if b & 0xA0 == 0x80 else 0 for b in range(256))
)


def _written(private: Any) -> bool:
    """Whether any page of the copy-on-write mapping was written (it then holds a private copy)."""
    if not os.path.exists(_PAGEMAP):
        return True  # cannot tell: not taken back
    import ctypes

    size = len(private)
    pages = -(-size // mmap.PAGESIZE)
    try:
        # The address of the mapping: a ctypes view of it, given up at once.
        anchor = ctypes.c_char.from_buffer(private)
        address = ctypes.addressof(anchor)
        del anchor
        descriptor = os.open(_PAGEMAP, os.O_RDONLY)
        try:
            entries = os.pread(descriptor, pages * 8, (address // mmap.PAGESIZE) * 8)
        finally:
            os.close(descriptor)
    except (OSError, TypeError, ValueError, BufferError):
        return True
    if len(entries) != pages * 8:
        return True
    return 1 in entries[7::8].translate(_WRITTEN_PAGE)


def _private(view: memoryview, readonly: bool) -> memoryview:
    """A block's own copy of one buffer: a read-only one as it is (nothing can write it), else
    a copy, in NumPy's memory where NumPy is installed (huge pages: about 4x faster than a
    bytearray's for 100 MB)."""
    if readonly:
        return view.toreadonly()
    if not view.nbytes:
        return memoryview(bytearray())
    try:
        import numpy
    except ImportError:
        return memoryview(bytearray(view))
    copy = numpy.empty(view.nbytes, dtype=numpy.uint8)
    copy[:] = numpy.frombuffer(view, dtype=numpy.uint8)
    return copy.data


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
    """Unpickled where it arrives (a worker): the buffers are kept as they are, until a block
    leases the value (see ``Kept.lease``)."""
    views = [memoryview(buffer).cast("B") for buffer in buffers]
    return Kept(inband, views, _layout(views, readonly))


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


# On a worker, Kept and _arrived are copies that cloudpickle made (this module travels by
# value). Dask tries plain pickle first when it sends a kept value on to another worker, and
# plain pickle looks a class or function up by its module's name: that would import afar where
# it is installed, and fail only after trying where it is not. A module name that nothing can
# import sends Dask to cloudpickle, by value, at once, on the client and on every worker.
UNIMPORTABLE_MODULE = "<afar kept input>"
Kept.__module__ = _arrived.__module__ = UNIMPORTABLE_MODULE
