"""How FSDP (and model parallel) wrap a module: the shard units, SyncBatchNorm conversion,
activation checkpointing, and the step methods (``training_step``...) registered as forwards
of the FSDP root so its unshard/reshard hooks run around them. The strategy's docstring says
what each choice is and why."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


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


#: methods the loop calls instead of ``forward``: FSDP's unshard/reshard hooks must run around them
STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")


def register_step_methods(module: nn.Module) -> None:
    """Each step method the module defines runs as a forward of its FSDP root
    (:func:`register_uncast_step_method`): FSDPStrategy and ModelParallelStrategy both call this."""
    for name in STEP_METHODS:
        if callable(getattr(module, name, None)):
            register_uncast_step_method(module, name)
