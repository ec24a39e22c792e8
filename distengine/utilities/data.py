"""DataLoader helpers of ``pytorch_lightning.utilities.data`` (and ``lightning_fabric``'s):
``suggested_max_num_workers``, ``sized_len``, ``has_iterable_dataset`` and ``has_len_all_ranks``."""
from __future__ import annotations

from typing import Any

import torch

from distengine.distributed.env import usable_cpu_count

__all__ = ["has_iterable_dataset", "has_len_all_ranks", "sized_len", "suggested_max_num_workers",
           "warn_iterable_with_len"]


def suggested_max_num_workers(local_world_size: int) -> int:
    """The cores this process may run on, shared among ``local_world_size`` processes, less one
    each for the main process; at least 1.

    Example: ``DataLoader(ds, num_workers=suggested_max_num_workers(trainer.num_devices))``
    """
    if local_world_size < 1:
        raise ValueError(f"`local_world_size` should be >= 1, got {local_world_size}.")
    return max(1, usable_cpu_count() // local_world_size - 1)


def sized_len(dataloader: Any) -> int | None:
    """``len(dataloader)``, or None when it has no length (``__len__`` missing, or raising
    ``TypeError`` / ``NotImplementedError``, as a loader over an ``IterableDataset`` does)."""
    try:
        return len(dataloader)
    except (TypeError, NotImplementedError):
        return None


def has_iterable_dataset(dataloader: Any) -> bool:
    """Whether ``dataloader`` reads a ``torch.utils.data.IterableDataset``."""
    return isinstance(getattr(dataloader, "dataset", None), torch.utils.data.IterableDataset)


def has_len_all_ranks(dataloader: Any, strategy: Any,
                      allow_zero_length_dataloader_with_multiple_devices: bool = False) -> bool:
    """Whether ``dataloader`` has a length (on this rank; the lengths are summed over the ranks
    through ``strategy.reduce``, so every rank must call it).

    A total of 0 gives a UserWarning; a rank with 0 batches while others have some raises
    ``RuntimeError`` unless ``allow_zero_length_dataloader_with_multiple_devices`` (a warning
    then). An ``IterableDataset`` that defines ``__len__`` gives a UserWarning: with several
    workers each one iterates the whole dataset unless it shards it itself, so the length may
    not match what the loader yields."""
    from distengine.distributed.rank_zero import rank_zero_warn

    local = sized_len(dataloader)
    if local is None:
        return False
    name = type(dataloader).__name__
    total = int(strategy.reduce(torch.tensor(local, device=strategy.root_device), reduce_op="sum"))
    if total == 0:
        rank_zero_warn(f"the {name} has length 0 on every rank: no batches will run from it", category=UserWarning)
    elif local == 0:
        if not allow_zero_length_dataloader_with_multiple_devices:
            raise RuntimeError(f"the {name} has length 0 on this rank while other ranks have batches; give every "
                               "rank at least one batch")
        rank_zero_warn(f"the {name} has length 0 on this rank while other ranks have batches: the ranks run "
                       "uneven numbers of batches", category=UserWarning)
    warn_iterable_with_len(dataloader)
    return True


def warn_iterable_with_len(dataloader: Any) -> None:
    """A UserWarning (rank zero) when ``dataloader`` reads an ``IterableDataset`` that defines
    ``__len__`` (the Trainer gives it for every such loader of a run, as Lightning does)."""
    from distengine.distributed.rank_zero import rank_zero_warn

    if has_iterable_dataset(dataloader) and sized_len(dataloader) is not None:
        rank_zero_warn(f"the IterableDataset of this {type(dataloader).__name__} defines __len__; with "
                       "num_workers > 1 each worker yields the whole dataset unless it shards it itself, so the "
                       "length may be wrong", category=UserWarning)
