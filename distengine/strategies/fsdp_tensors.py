"""FSDP's tensors outside the step: gathering the full parameters for evaluation, switching
gradient synchronisation off for accumulation, the gradient norm with one all-reduce, and full
tensors out of DTensors (for state dicts)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Every shard unit all-gathered once on entry (every rank enters together) and kept whole
    until exit, where the units are resharded and their ``reshard_after_forward`` restored.

    Evaluation shards its batches without padding, so ranks may run different numbers of
    forwards; a sharded forward all-gathers, and a rank with one batch more would wait for the
    others for ever. With the parameters already whole, a forward runs no collective. The price:
    the whole model in memory during evaluation (as under DDP)."""
    from torch.distributed.fsdp import FSDPModule

    from distengine.torch_private import restore_reshard_after_forward, save_reshard_after_forward

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    saved = []
    for unit in units:  # FSDP2 has a setter but no getter for this: keep its fields to restore them
        saved.append(save_reshard_after_forward(unit))
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield
    finally:
        for unit, fields in zip(units, saved):
            unit.reshard()
            restore_reshard_after_forward(fields)


@contextlib.contextmanager
def _gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Reduce-scatter gradients in this backward only when ``sync``; otherwise they accumulate
    unsharded on each rank until the last micro-batch's backward reduces the sum. Under HSDP
    (a 2-D mesh) the flag covers the all-reduce across replicas too: one per optimizer step.
    A root that is not sharded itself (``ModelParallelStrategy``: the user sharded submodules)
    sets the flag on every shard unit."""
    from torch.distributed.fsdp import FSDPModule

    if sync:
        yield
        return
    units = [model] if isinstance(model, FSDPModule) else [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        for unit in units:
            unit.set_requires_gradient_sync(True)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """``clip_grad_norm_`` over sharded gradients with the fewest collectives: each rank sums
    ``|g|**p`` over its local shards (``max`` for the inf-norm), grouped by mesh and by the mesh
    dimensions the gradients are sharded over; each group is all-reduced over those dimensions
    only (a replicated dimension already holds the whole value: HSDP's replicas, and a
    ``fully_shard(mesh=dp)`` layer beside tensor-parallel ones, which every tensor-parallel rank
    holds). Every rank then scales its shards by the same coefficient (torch's formula,
    ``max_norm / (norm + 1e-6)`` clamped at 1). Returns the total norm as a plain tensor, equal
    on every rank. One all-reduce per step for FSDP on one mesh dimension and for HSDP; torch's
    ``clip_grad_norm_`` on DTensor gradients leaves the reductions to DTensor's sharding
    propagation (a partial norm reduced again with some torch versions) and refuses gradients
    on different meshes (tensor parallel x FSDP2). Partial gradients take torch's path."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not grads or any(pl.is_partial() for g in grads if isinstance(g, DTensor) for pl in g.placements):
        return full_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type))
    norm_type = float(norm_type)
    groups: dict[tuple[Any, tuple[int, ...]], list[torch.Tensor]] = {}  # in parameter order: same on every rank
    for g in grads:
        if isinstance(g, DTensor):
            dims = tuple(i for i, pl in enumerate(g.placements) if not pl.is_replicate())
            groups.setdefault((g.device_mesh, dims), []).append(g.to_local())
        else:
            groups.setdefault((None, ()), []).append(g)
    inf = norm_type == float("inf")
    device = next(iter(groups.values()))[0].device
    totals = []
    for (mesh, dims), local in groups.items():
        parts = torch.stack([torch.linalg.vector_norm(t, norm_type, dtype=torch.float32).to(device) for t in local])
        total = parts.max() if inf else parts.pow(norm_type).sum()
        for dim in dims:
            torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.MAX if inf else
                                         torch.distributed.ReduceOp.SUM, group=mesh.get_group(dim))
        totals.append(total)
    total = torch.stack(totals).max() if inf else torch.stack(totals).sum().pow(1.0 / norm_type)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for local in groups.values():
        for t in local:
            t.mul_(coef.to(t.dtype))
    return total


def full_tensor(value: Any) -> Any:
    """A DTensor as the plain tensor it stands for (a collective when it is sharded or partial)."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def _has_dtensor(state: Any) -> bool:
    from torch.distributed.tensor import DTensor

    if isinstance(state, DTensor):
        return True
    if isinstance(state, dict):
        return any(_has_dtensor(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return any(_has_dtensor(v) for v in state)
    return False
