"""Functions the deployment tests run on the scheduler (``client.run_on_scheduler``).

The scheduler's process cannot import this module: cloudpickle sends the module's functions
by value (``register_pickle_by_value``), as it does those of a user's script.
"""

from __future__ import annotations

import sys

import cloudpickle
from _blocks import KEY_PREFIX

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def afar_keys(dask_scheduler) -> list[str]:
    """The keys of afar's tasks that the scheduler still knows, sorted.

    ``Scheduler.tasks`` is the scheduler's documented state: no client call lists the tasks
    that are not finished yet (``who_has`` lists only results held in memory).
    """
    return sorted(str(key) for key in dask_scheduler.tasks if str(key).startswith(KEY_PREFIX))
