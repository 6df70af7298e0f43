"""Source analysis: what a ``with`` block is, read from its source alone.

Finding the running ``with`` statement and its body in the caller's source (``source``), the
names the body reads, assigns and saves (``names``, with ``bindings`` the one answer to what
a node binds), the body as a function's body for analysis and shipping (``wrapping``), and
the caller's scope as Python sees it (``scope``, for ``remotely(...)`` written without
importing it). Nothing here touches Dask or a
cluster, so every rule of what a block is can be tested with the standard library alone; the
interpreter details it rests on are in ``afar._cpython``.
"""
