"""Values come back from a block as the block bound them (issue 19, point 3).

Same type, attributes, dtype and memory layout, through ``afar.get`` and through the Futures of
``afar.run``, alone and inside containers: Dask's NumPy serializer would rebuild a subclass of
``ndarray`` as a plain one. The values are made inside the blocks, on the workers.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from _remote_helpers import RESULT_TIMEOUT
from distributed import Client

import afar
from afar import remotely

# Made inside each block: a masked array, a record array, a matrix, a Fortran-ordered array, a
# read-only one, pandas with extension dtypes, an Arrow table, and a subclass with an attribute.
MAKERS = {
    "masked": "np.ma.masked_array(np.arange(6.0), mask=[0, 1, 0, 1, 0, 0])",
    "record": "np.rec.fromarrays([np.arange(3), np.ones(3)], names='a,b')",
    "matrix": "np.asmatrix(np.ones((2, 3)))",
    "fortran": "np.asfortranarray(np.arange(12.0).reshape(3, 4))",
    "read-only": "np.frombuffer(b'abcdef', dtype=np.uint8)",
    "pandas": (
        "pd.DataFrame({'s': pd.array(['x', None], dtype='string'), "
        "'n': pd.array([1, None], dtype='Int64'), 'c': pd.Categorical(['u', 'v'])})"
    ),
    "arrow": "pa.table({'x': [1, 2], 'y': ['a', 'b']})",
}


def describe(value: object) -> tuple[object, ...]:
    """What must survive: the exact type, and the layout and dtypes where there are.

    Not the read-only flag of a plain ndarray: Dask's NumPy serializer, which afar leaves to
    plain arrays, makes them writable (see the README's Limits).
    """
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if isinstance(value, np.ndarray):
        flags = value.flags
        mask = value.mask.tolist() if isinstance(value, np.ma.MaskedArray) else None
        layout = (flags.c_contiguous, flags.f_contiguous)
        return kind, str(value.dtype), value.shape, layout, mask, getattr(value, "tag", None)
    if hasattr(value, "dtypes"):
        return kind, repr(value.dtypes.to_dict())
    if hasattr(value, "schema"):
        return kind, str(value.schema)
    return (kind,)


def made(kind: str) -> object:
    import pandas as pd
    import pyarrow as pa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # np.matrix's own advice
        return eval(MAKERS[kind], {"np": np, "pd": pd, "pa": pa})


# Unpickling a matrix warns, as making one does (NumPy's advice), here as without afar.
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
@pytest.mark.parametrize("kind", list(MAKERS))
def test_afar_get_brings_back_the_exact_value(client: Client, kind: str) -> None:
    source = MAKERS[kind]
    with afar.get("value", "inside"), remotely:
        import warnings

        import numpy as np
        import pandas as pd
        import pyarrow as pa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            value = eval(source, {"np": np, "pd": pd, "pa": pa})
        inside = {"first": 1, "list": [value], "tuple": (2, value)}
    expected = describe(made(kind))
    assert describe(value) == expected
    assert describe(inside["list"][0]) == expected
    assert describe(inside["tuple"][1]) == expected


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
@pytest.mark.parametrize("kind", list(MAKERS))
def test_afar_run_futures_hold_the_exact_value(client: Client, kind: str) -> None:
    source = MAKERS[kind]
    with afar.run("value", "first"), remotely:
        import warnings

        import numpy as np
        import pandas as pd
        import pyarrow as pa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            value = eval(source, {"np": np, "pd": pd, "pa": pa})
        first = [value]
    expected = describe(made(kind))
    assert describe(value.result(timeout=RESULT_TIMEOUT)) == expected
    assert describe(first.result(timeout=RESULT_TIMEOUT)[0]) == expected
    with afar.run, remotely:
        alone = value
    assert describe(alone.result(timeout=RESULT_TIMEOUT)) == expected


def test_a_subclass_defined_in_the_block_keeps_its_attributes(client: Client) -> None:
    with afar.get, remotely:
        import numpy as np

        class Tagged(np.ndarray):
            def __array_finalize__(self, obj):
                self.tag = getattr(obj, "tag", None)

            def __reduce__(self):
                rebuild, arguments, state = super().__reduce__()
                return rebuild, arguments, (state, self.tag)

            def __setstate__(self, state):
                array_state, self.tag = state
                super().__setstate__(array_state)

        tagged = np.arange(4).view(Tagged)
        tagged.tag = "mine"
    assert type(tagged).__name__ == "Tagged" and tagged.tag == "mine"
    assert tagged.tolist() == [0, 1, 2, 3]
