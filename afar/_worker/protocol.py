"""The output protocol shared by worker and client: event layout version, item kinds, batch sizes.

Both sides import these names: the worker (``afar._worker.output``, ``afar._worker.progress``,
``afar._worker.batching``) to make events, the client (``afar._stream``, ``afar._ipython.cells``)
to read them. They live apart from either side so that neither imports the other's machinery
for a constant. Like the rest of ``afar._worker`` this module travels to workers by value.

Every event is one msgpack-friendly dict::

    {
        "afar": PROTOCOL,         # layout version; clients ignore versions they do not know
        "block": "afar-x.py:3-…", # task key of the block
        "label": "x.py:3",        # human label, for notices
        "attempt": "9f…",         # random token per run of the block: a new one means a restart
        "worker": "tcp://…",      # address of the worker running this attempt
        "seq": 0,                 # 0, 1, 2, … per attempt
        "items": [[kind, data], …],
    }

Item kinds (``KINDS``): ``STDOUT`` and ``STDERR`` with a str (consecutive writes to one stream
merged; at most ``BATCH_MAX_CHARS`` characters of text per event); ``DISPLAY`` with whatever the
runner sends (e.g. a mimebundle dict); ``LIMIT`` with ``{"chars": limit}`` when the block's output
reaches its limit; ``DROPPED`` with ``{"chars": n, "lines": n}`` when the block ends after output
was dropped; ``PROGRESS`` with the counts of the block's Dask work (``afar._worker.progress``);
``NOTICE`` with a line of afar's own for the client's stderr (a block being stopped), shown even
for a block whose output the client no longer shows; ``FIGURE`` with ``{"pickle": bytes, "show":
bool}``, a pyplot figure of the block for the client's own pyplot (``afar._worker.plots``);
``INPUT`` with ``{"request": n, "prompt": str, "where": "x.py:3"}`` when the block's thread reads
a line of input (``input()``, pdb), which the client answers (``afar._worker.debugging``);
``KEPT_FAILURE`` with ``{"seconds": s}`` when the block failed and its worker keeps its traceback
that long for a post-mortem.
``Emitter.send`` may add other kinds; clients ignore kinds they do not know.
"""

from __future__ import annotations

PROTOCOL = 1

# Item kinds: the only place they are spelled out.
STDOUT = "stdout"
STDERR = "stderr"
DISPLAY = "display"
LIMIT = "limit"
DROPPED = "dropped"
PROGRESS = "progress"
NOTICE = "notice"
FIGURE = "figure"
INPUT = "input"
KEPT_FAILURE = "kept-failure"
KINDS = (STDOUT, STDERR, DISPLAY, LIMIT, DROPPED, PROGRESS, NOTICE, FIGURE, INPUT, KEPT_FAILURE)
TEXT_KINDS = (STDOUT, STDERR)

# Latency of live output: a line reaches the client within about this long.
BATCH_SECONDS = 0.05
# Upper bound on the text in one event, so that a flood becomes a few large events, and the
# scheduler's per-topic event log (a bounded number of events) stays bounded in bytes.
BATCH_MAX_CHARS = 32_768
# Text one attempt of a block may send in total (about 4 MB of ASCII).
MAX_BLOCK_CHARS = 4_000_000
