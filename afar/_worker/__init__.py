"""What travels to the workers: the code that runs a block there.

Workers need no afar installed: every module of this package is pickled by value (see
``afar._shipping``) and may import only the standard library and ``distributed``, and each other
through ``from afar._worker.<module> import <name>`` at module level (cloudpickle then carries the
names by value too).

- ``runtime``: the worker plugin, and the task that runs a block and returns its names;
- ``compiling``: rebuilds the block's function from its source, once per process;
- ``stopping``: stops a running block (its thread's stop window, the table of running blocks);
- ``display``: the rich representations of a block's last expression;
- ``output``: redirects the block's prints into Dask events, batched by the pure
  ``batching.Batcher`` in the layout of ``protocol`` (which the client side reads too);
- ``progress``: reports the Dask work a block starts;
- ``importer``: imports the user's own modules sent from the client, from memory;
- ``kept``: a large input's copy on the worker, and each block's own lease of it;
- ``plots``: the workers' pyplot backend, which sends a block's figures;
- ``debugging``: a block's stdin and ``breakpoint()`` read from its client, kept failures.

This file stays empty of code: it is shipped by value with the rest.
"""
