"""Helpers of :class:`distengine.module.Module` that need no module: copying hyperparameters,
mapping a function over nested batches."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from distengine.utilities.exceptions import ConfigError

__all__ = ["clip_gradients", "clip_parameters", "clip_settings", "copy_hparams", "manual_backward", "map_collection"]


def copy_hparams(params: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``params`` in which nn.Module values stay the objects given (as in
    Lightning, which warns that they are saved with the weights anyway)."""
    from distengine.distributed.rank_zero import rank_zero_warn

    modules = {k: v for k, v in params.items() if isinstance(v, nn.Module)}
    for k in modules:
        rank_zero_warn(f"Attribute {k!r} is an instance of `nn.Module` and is already saved during checkpointing."
                       f" It is recommended to ignore them using `self.save_hyperparameters(ignore=[{k!r}])`.")
    return copy.deepcopy(params, memo={id(m): m for m in modules.values()})


def map_collection(data: Any, fn: Any) -> Any:
    if isinstance(data, Mapping):
        return type(data)({k: map_collection(v, fn) for k, v in data.items()})
    if isinstance(data, (list, tuple)) and not hasattr(data, "_fields"):
        return type(data)(map_collection(v, fn) for v in data)
    return fn(data)


def manual_backward(module: Any, loss: Any, *args: Any, **kwargs: Any) -> None:
    """``Module.manual_backward``: as in Lightning, DDP's reducer prepared for ``loss``,
    ``on_before_backward``, the precision's backward (the loss scaled, then ``module.backward``),
    ``on_after_backward``."""
    trainer = module._trainer
    trainer.strategy.prepare_for_backward(loss)  # DDP: ready its reducer for this loss
    run = getattr(trainer, "_run", None)  # the Trainer's current call (stage_run.py): its hook tables
    hooks = run.hooks if run is not None else {}
    for fn in hooks.get("on_before_backward", ()):
        fn(loss)
    trainer.precision_plugin.backward(loss, *args, module=module, **kwargs)  # scaled, then module.backward
    for fn in hooks.get("on_after_backward", ()):
        fn()


def clip_gradients(trainer: Any, optimizer: Any, gradient_clip_val: float | None,
                   gradient_clip_algorithm: str | None) -> None:
    """``Module.clip_gradients``: the settings agreed with the Trainer's, mixed-precision gradients
    unscaled, then the strategy clips (DTensors of every mesh dimension under FSDP/TP)."""
    algorithm = gradient_clip_algorithm.lower() if isinstance(gradient_clip_algorithm, str) else None
    if trainer is not None:
        gradient_clip_val, algorithm = clip_settings(trainer, gradient_clip_val, algorithm)
    algorithm = algorithm or "norm"
    if algorithm not in ("norm", "value"):
        raise ValueError(f"gradient_clip_algorithm must be 'norm' or 'value', got {algorithm!r}")
    if not gradient_clip_val:
        return
    from distengine.optim import LightningOptimizer

    if isinstance(optimizer, LightningOptimizer):  # the mixed-precision scaler knows the torch optimizer
        optimizer = optimizer.optimizer
    if trainer is not None and trainer.precision_plugin is not None:
        trainer.precision_plugin.unscale_once(optimizer)
    if trainer is not None:
        trainer.strategy.clip_gradients(optimizer, gradient_clip_val, algorithm)
    else:
        clip_parameters(optimizer, gradient_clip_val, algorithm)


def clip_settings(trainer: Any, clip_val: float | None, algorithm: str | None) -> tuple[Any, Any]:
    """``clip_gradients``' value and algorithm: the Trainer's where none is given; a given one that
    differs from one set on the Trainer is an error (as in Lightning: two sources, no silent winner)."""
    set_val = trainer.gradient_clip_val
    set_algorithm = getattr(getattr(trainer, "config", None), "gradient_clip_algorithm", None)
    if clip_val is None:
        clip_val = set_val
    elif set_val is not None and set_val != clip_val:
        raise ConfigError(f"clip_gradients(gradient_clip_val={clip_val}) differs from Trainer(gradient_clip_val="
                          f"{set_val}); set the value in one place only")
    if algorithm is None:
        algorithm = set_algorithm
    elif set_algorithm is not None and set_algorithm != algorithm:
        raise ConfigError(f"clip_gradients(gradient_clip_algorithm={algorithm!r}) differs from Trainer("
                          f"gradient_clip_algorithm={set_algorithm!r}); set the algorithm in one place only")
    return clip_val, algorithm


def clip_parameters(optimizer: torch.optim.Optimizer, clip_val: float, algorithm: str) -> None:
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, clip_val)
    else:
        torch.nn.utils.clip_grad_norm_(params, clip_val)
