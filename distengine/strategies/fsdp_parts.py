"""The pieces of :mod:`distengine.strategies.fsdp` that work on modules and tensors, not on the
strategy: meta-device initialisation, shard units, SyncBatchNorm conversion, activation
checkpointing, FSDP's hooks around the step methods, gathering for evaluation, gradient-sync
control, the one-all-reduce gradient norm, and small helpers. The strategy's docstring says what
each choice is and why; every private torch name they need is reached through
:mod:`distengine.torch_private`."""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from distengine.checkpoint.key_mismatch import describe_key_mismatch  # noqa: F401 - re-exported


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
def shard_units(root: nn.Module, predicate: Callable[[nn.Module], bool]) -> list[nn.Module]:
    """The submodules of ``root`` that ``predicate`` picks, in pre-order. A module wrapped for
    activation checkpointing is represented by its wrapper: the wrapper is what gets sharded, so
    the recomputation in backward runs inside FSDP's unshard/reshard hooks."""
    from distengine.torch_private import checkpoint_wrapped_module

    units: list[nn.Module] = []
    inner: set[int] = set()
    for sub in root.modules():
        if sub is root or id(sub) in inner:
            continue
        wrapped = checkpoint_wrapped_module(sub)
        if wrapped is not None:
            inner.add(id(wrapped))
            if predicate(wrapped):
                units.append(sub)
        elif predicate(sub):
            units.append(sub)
    return units


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> None:
    """``sync_batchnorm=True``: every BatchNorm layer of ``module`` becomes a ``SyncBatchNorm``
    (in place) before it is sharded, as DDP does. Refused on CPU as under DDP (torch's
    SyncBatchNorm has no CPU kernels), and for layers ``configure_model()`` already sharded (a
    shard unit keeps the layer it was built on)."""
    from torch.distributed.tensor import DTensor

    from distengine.torch_private import is_batchnorm

    layers = [m for m in module.modules()
              if is_batchnorm(m) and not isinstance(m, nn.SyncBatchNorm)]
    if not layers:
        return
    if device.type == "cpu":
        raise ValueError("sync_batchnorm=True needs GPUs (torch's SyncBatchNorm has no CPU kernels); "
                         "run on GPUs or drop the flag so each CPU rank keeps its own BatchNorm statistics")
    sharded = sorted({type(m).__name__ for m in layers
                      if any(isinstance(t, DTensor) for t in m.parameters(recurse=False))})
    if sharded:
        raise ValueError(f"sync_batchnorm=True: configure_model() sharded {', '.join(sharded)} layers before they "
                         "could become SyncBatchNorm; call torch.nn.SyncBatchNorm.convert_sync_batchnorm(module) "
                         "there before fully_shard")
    nn.SyncBatchNorm.convert_sync_batchnorm(module)  # converts the children in place


def apply_activation_checkpointing(module: nn.Module, predicate: Callable[[nn.Module], bool]) -> None:
    """Recompute the activations of each module matching ``predicate`` in backward instead of
    keeping them (``checkpoint_wrapper``, non-reentrant: the form that composes with FSDP2)."""
    from distengine.torch_private import apply_checkpoint_wrapper

    if not any(predicate(m) for m in module.modules() if m is not module):
        raise ValueError("activation_checkpointing_policy matches no submodule of "
                         f"{type(module).__name__}; name the layer classes to recompute")
    apply_checkpoint_wrapper(module, predicate)


def register_step_method(module: nn.Module, name: str) -> None:
    """Run FSDP's pre/post-forward hooks of the root around ``module.<name>`` (``training_step``
    may use the root's own parameters outside ``forward``), as ``register_fsdp_forward_method``
    does, but correct for a step that calls ``self(x)`` inside: that nested forward leaves the
    root's parameter group IDLE, and a post-forward in the IDLE state reshards even where
    ``reshard_after_forward`` is False (the root by default, and every unit inside
    :func:`gathered`). The group is put back into the FORWARD state before the outer post-forward."""
    from distengine import torch_private as tp

    method = getattr(module, name)
    state = tp.fsdp_state(module)

    @functools.wraps(method)
    def step(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = tp.run_pre_forward(state, module, args, kwargs)
        out = method(*args, **kwargs)
        tp.mark_idle_groups_forward(state)
        return tp.run_post_forward(state, module, args, out)

    setattr(module, name, step)


def register_uncast_step_method(module: nn.Module, name: str) -> None:
    """:func:`register_step_method`, but the step receives its arguments as the caller passed
    them: ``MixedPrecisionPolicy.cast_forward_inputs`` is for the forward inputs, and the root's
    pre-forward run around the step would cast every floating tensor of the batch (float
    targets to bf16/fp16: 70000.0 became inf). The policy is switched off for that outer
    pre-forward only; the forwards inside the step (``self(x)``, each shard unit) cast their
    own inputs as usual."""
    import dataclasses

    from distengine import torch_private as tp

    state = tp.fsdp_state(module)
    policy = tp.fsdp_mp_policy(state)
    if not (policy.cast_forward_inputs and policy.param_dtype is not None):
        register_step_method(module, name)
        return
    uncast = dataclasses.replace(policy, cast_forward_inputs=False)
    method = getattr(module, name)

    @functools.wraps(method)
    def inner(*args: Any, **kwargs: Any) -> Any:
        tp.set_fsdp_mp_policy(state, policy)  # past the outer pre-forward: nested forwards cast again
        return method(*args, **kwargs)

    setattr(module, name, inner)
    register_step_method(module, name)
    hooked = getattr(module, name)

    @functools.wraps(method)
    def step(*args: Any, **kwargs: Any) -> Any:
        tp.set_fsdp_mp_policy(state, uncast)
        try:
            return hooked(*args, **kwargs)
        finally:
            tp.set_fsdp_mp_policy(state, policy)

    setattr(module, name, step)


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


#: methods the loop calls instead of ``forward``: FSDP's unshard/reshard hooks must run around them
STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")


def register_step_methods(module: nn.Module) -> None:
    """Each step method the module defines runs as a forward of its FSDP root
    (:func:`register_uncast_step_method`): FSDPStrategy and ModelParallelStrategy both call this."""
    for name in STEP_METHODS:
        if callable(getattr(module, name, None)):
            register_uncast_step_method(module, name)
