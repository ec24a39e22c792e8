"""Helpers of :class:`distengine.module.Module` that need no module: copying hyperparameters,
mapping a function over nested batches."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn

__all__ = ["copy_hparams", "map_collection"]


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
