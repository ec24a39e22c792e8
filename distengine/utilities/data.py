"""``suggested_max_num_workers`` (``pytorch_lightning.utilities``): how many DataLoader workers
each process on this machine can use without oversubscribing its cores."""
from __future__ import annotations

from distengine.distributed.env import usable_cpu_count

__all__ = ["suggested_max_num_workers"]


def suggested_max_num_workers(local_world_size: int) -> int:
    """The cores this process may run on, shared among ``local_world_size`` processes, less one
    each for the main process; at least 1.

    Example: ``DataLoader(ds, num_workers=suggested_max_num_workers(trainer.num_devices))``
    """
    if local_world_size < 1:
        raise ValueError(f"`local_world_size` should be >= 1, got {local_world_size}.")
    return max(1, usable_cpu_count() // local_world_size - 1)
