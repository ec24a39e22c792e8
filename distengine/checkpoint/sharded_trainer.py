"""The Trainer's checkpoint as a sharded directory (``strategy.checkpoint_layout == "sharded"``).

Saving: every rank builds the Trainer's checkpoint dictionary (the RNG states of all ranks are
gathered, as for a file); the module's weights (``state_dict``) and the optimizers' states
(``optimizer_states``) go to DCP, each rank writing its shards; everything else is rank 0's
``meta.pt``. Loading: ``meta.pt`` plus the shards read into this rank's own layout (FSDP shards,
or complete tensors for DDP and one process), assembled into the same dictionary a file gives,
which the Trainer's Checkpointer then restores as usual.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from distengine.checkpoint.io import CheckpointError
from distengine.checkpoint.sharded import (
    OPTIMIZER_GROUPS,
    ShardedCheckpointer,
    check_model_keys,
    load_sharded,
    name_keyed_to_indexed,
    read_meta,
)

#: the entries stored as DCP tensors; the rest of the checkpoint dictionary is meta.pt
_TENSOR_ENTRIES = ("state_dict", "optimizer_states")


def checkpointer_of(strategy: Any) -> ShardedCheckpointer:
    """The strategy's sharded checkpointer (one per strategy: its async save and process group
    live until ``strategy.teardown()``)."""
    ckpt = getattr(strategy, "sharded_checkpointer", None)
    if ckpt is None:
        ckpt = strategy.sharded_checkpointer = ShardedCheckpointer()
    return ckpt


def save_trainer_checkpoint(trainer: Any, path: str, weights_only: bool = False, async_save: bool = False,
                            on_done: Callable[[str], Any] | None = None) -> ShardedCheckpointer:
    """Write the Trainer's checkpoint to directory ``path``; return the checkpointer that writes it.
    A collective: every rank calls it."""
    # every rank: it holds its own shards (the Trainer checks for a NaN step first, and runs
    # the on_save_checkpoint hooks where they run for a file: on rank 0)
    ckpt = trainer.dump_checkpoint(weights_only, every_rank=True)
    tensors = {"state_dict": ckpt.pop("state_dict")}
    if "optimizer_states" in ckpt:
        states = ckpt.pop("optimizer_states")
        tensors["optimizer_states"] = {str(i): s for i, s in enumerate(states)}
        ckpt[OPTIMIZER_GROUPS] = [_groups_without_tensors(s) for s in states]
    meta = ckpt if trainer.is_global_zero else None
    writer = checkpointer_of(trainer.strategy)
    writer.save(path, tensors, meta, async_save=async_save, on_done=on_done)
    return writer


def _groups_without_tensors(state: dict[str, Any]) -> list[dict[str, Any]]:
    import torch

    return [{k: v for k, v in g.items() if not isinstance(v, torch.Tensor)} for g in state.get("param_groups", [])]


def load_trainer_checkpoint(trainer: Any, path: str, weights_only: bool = False) -> dict[str, Any]:
    """The checkpoint dictionary of sharded checkpoint ``path``, with ``state_dict`` and
    ``optimizer_states`` read into this rank's layout. A collective under a process group."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    from distengine.checkpoint.apply import check_optimizer_states

    strategy, module, optimizers = trainer.strategy, trainer.lightning_module, trainer.optimizers
    meta = read_meta(path)
    # a copy of the module's own layout (DTensor shards under FSDP, complete tensors otherwise):
    # the module itself stays untouched until the Checkpointer's checks have passed
    tensors: dict[str, Any] = {"state_dict": {k: v.detach().clone() for k, v in get_model_state_dict(module).items()}}
    try:  # the weights' names first: a model that does not fit is the likeliest mistake
        check_model_keys(path, tensors)
    except CheckpointError as exc:
        raise CheckpointError(f"cannot load {path} into {type(module).__name__}: {exc}") from None
    with_optim = not weights_only and OPTIMIZER_GROUPS in meta
    if with_optim:
        saved = [{"param_groups": g} for g in meta[OPTIMIZER_GROUPS]]
        check_optimizer_states(optimizers, {"optimizer_states": saved,
                                            "optimizer_classes": meta.get("optimizer_classes")}, source=path)
        # parameter names as keys, the state initialised (DCP fills tensors that exist)
        tensors["optimizer_states"] = {str(i): get_optimizer_state_dict(module, o) for i, o in enumerate(optimizers)}
    load_sharded(path, tensors)
    ckpt = {k: v for k, v in meta.items() if k != OPTIMIZER_GROUPS}
    ckpt["state_dict"] = tensors["state_dict"]
    if with_optim:
        by_name = getattr(strategy, "optimizer_state_keyed_by_name", False)
        states = [tensors["optimizer_states"][str(i)] for i in range(len(optimizers))]
        ckpt["optimizer_states"] = states if by_name else [name_keyed_to_indexed(s) for s in states]
    return ckpt


def is_sharded_path(path: Any) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.path.isdir(path)
