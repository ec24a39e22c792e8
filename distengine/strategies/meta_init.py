"""Modules built on the meta device (no memory until sharded): ``materialize`` gives each
parameter and buffer real storage on its device after the strategy has sharded the module
(``reset_parameters()`` of each submodule that owns meta tensors), for FSDP and model parallel.
Private torch names are reached through :mod:`distengine.torch_private`."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def has_meta_tensors(module: nn.Module) -> bool:
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


def _owns_meta_tensors(module: nn.Module) -> bool:
    return any(t.is_meta for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)))


def _reset_method(module: nn.Module) -> Callable[[], Any] | None:
    reset = getattr(module, "reset_parameters", None)
    if not callable(reset) and isinstance(module, nn.MultiheadAttention):
        from distengine.torch_private import multihead_attention_reset

        reset = functools.partial(multihead_attention_reset, module)  # torch's own spelling for this class
    return reset if callable(reset) else None


def materialize(module: nn.Module, device: torch.device) -> None:
    """Allocate the meta tensors of ``module`` on ``device`` and fill them with the
    ``reset_parameters()`` of each submodule that owns one of them; tensors that were not on
    meta keep their values. A module owning a meta tensor without ``reset_parameters()`` is
    refused before anything is allocated (its tensors would stay uninitialised memory).

    On CPU (``cpu_offload``, CPU ranks) each module's reset runs on complete (unsharded)
    tensors and each rank keeps its shard: DTensor's RNG tracker offsets the shards only on an
    accelerator's generator, so on CPU every rank drew the same shard. The result is what the
    same reset gives without FSDP."""
    from torch.distributed.tensor import DTensor

    pending = [sub for sub in module.modules() if _owns_meta_tensors(sub)]
    missing = sorted({type(sub).__name__ for sub in pending if _reset_method(sub) is None})
    if missing:
        raise RuntimeError(f"meta-device init: {', '.join(missing)} own parameters or buffers on the meta device "
                           "but have no reset_parameters(), so they would stay uninitialised memory; define "
                           "reset_parameters() filling every parameter and buffer the module owns (e.g. recompute "
                           "a RoPE inv_freq buffer there), or build these modules on a real device")
    # to_empty replaces every tensor (FSDP re-points its shards only through the units' _apply):
    # keep the values of the tensors that were already real and copy them back
    kept = []
    for sub in module.modules():
        for name, t in (*sub.named_parameters(recurse=False), *sub.named_buffers(recurse=False)):
            if not t.is_meta:
                kept.append((sub, name, t.detach()))
    module.to_empty(device=device)
    with torch.no_grad():
        for sub, name, old in kept:
            _local(getattr(sub, name)).copy_(_local(old))
        for sub in pending:
            reset = _reset_method(sub)
            sharded = {n: p for n, p in sub.named_parameters(recurse=False) if isinstance(p, DTensor)}
            if device.type != "cpu" or not sharded:
                reset()
                continue
            for n, p in sharded.items():  # complete tensors for the reset, then each rank's shard
                sub.register_parameter(n, nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device),
                                                       requires_grad=p.requires_grad))
            try:
                reset()
                full = {n: getattr(sub, n) for n in sharded}
            finally:
                for n, p in sharded.items():
                    sub.register_parameter(n, p)
            for n, p in sharded.items():
                p.to_local().copy_(_shard_of(full[n].detach(), p))
    if has_meta_tensors(module):
        raise RuntimeError("the module still has meta tensors after to_empty(); give every module that "
                           "owns parameters or buffers a reset_parameters() method")


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _shard_of(full: torch.Tensor, like: Any) -> torch.Tensor:
    """This rank's part of the complete tensor ``full``, laid out as the DTensor ``like``
    (no collective: every rank holds ``full``)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


# ---------------------------------------------------------------------------- helpers
