"""A code location's block, analysed once: its names, and the ``BlockCode`` that travels."""

from __future__ import annotations

import pickle
import threading
import types
from collections import OrderedDict
from dataclasses import dataclass, field

from afar._capture import Site, site_for
from afar._names import Analysis, analyse, wrapped_text
from afar._worker import BlockCode

# Code locations analysed and kept; a notebook makes a new code object per cell run.
BLOCK_CACHE_SIZE = 512
KEY_PREFIX = "afar"


@dataclass
class Block:
    """One ``with afar...`` statement: its site, its names, and its packed code per variant."""

    site: Site
    analysis: Analysis
    text: str
    wrapped: bool = True
    _packed: dict[tuple[object, ...], bytes] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return self.site.label

    @property
    def key_prefix(self) -> str:
        return f"{KEY_PREFIX}-{self.label}"

    @property
    def source(self) -> str:
        """The body's source, as written."""
        first, last = self.site.body_first_line, self.site.body_last_line
        return "".join(self.site.lines[first - 1 : last])

    def packed(self, seeds: tuple[str, ...], saved: tuple[str, ...], single: bool, display: bool):
        """The pickled ``BlockCode`` for this variant; the same bytes every time it is asked."""
        variant = (seeds, saved, single, display)
        found = self._packed.get(variant)
        if found is None:
            site = self.site
            first = site.node.lineno
            code = BlockCode(
                filename=site.filename,
                text=self.text,
                wrapped=self.wrapped,
                shown_lines=site.lines[first - 1 : site.body_last_line],
                first_shown_line=first,
                seeds=seeds,
                saved=saved,
                single=single,
                display=display,
                label=self.label,
                future_flags=site.future_flags,
            )
            found = self._packed[variant] = pickle.dumps(tuple(code), protocol=5)
        return found


_blocks: OrderedDict[tuple[types.CodeType, int], Block] = OrderedDict()
_blocks_lock = threading.Lock()


def block_for(frame: types.FrameType) -> Block:
    """The block the caller is entering, analysed on first use of its code location."""
    location = (frame.f_code, frame.f_lasti)
    with _blocks_lock:
        block = _blocks.get(location)
        if block is not None:
            _blocks.move_to_end(location)
            return block
    site = site_for(frame)
    text = wrapped_text(site)
    block = Block(site=site, analysis=analyse(site, text), text=text)
    with _blocks_lock:
        _blocks[location] = block
        while len(_blocks) > BLOCK_CACHE_SIZE:
            _blocks.popitem(last=False)
    return block
