"""The Lightning 1.x idioms the engine still accepts, translated in one place.

* ``training_step`` / ``*_epoch_end`` returning ``{"log": {...}, "progress_bar": {...}}``.
* ``Trainer(checkpoint_callback=ModelCheckpoint(...))`` (Lightning 1.0-1.2; a bool later).
"""
from __future__ import annotations

from typing import Any

import torch


def _detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detach(v) for v in obj)
    return obj


def _log_returned(t, out: Any, epoch_level: bool) -> None:
    """Route the 1.x-style ``'log'``/``'progress_bar'`` dicts of a returned dict to the results.

    A key under both is ONE metric shown on the bar and written to the loggers (logged twice,
    its first flags would stick and the bar would never show it); the value under ``'log'``
    is the one kept."""
    if not isinstance(out, dict):
        return
    res = t._results
    on_step, on_epoch = (False, True) if epoch_level else (True, False)
    routed: dict[str, list] = {}  # name -> [value, prog_bar, logger]
    for key, prog in (("progress_bar", True), ("log", False)):
        for name, value in (out.get(key) or {}).items():
            entry = routed.setdefault(name, [value, False, False])
            entry[0] = value
            entry[1 if prog else 2] = True
    for name, (value, prog, lg) in routed.items():
        res.log(name, value, prog, lg, on_step, on_epoch, "mean", False, 1 if epoch_level else None)
    if epoch_level:  # 1.x: other top-level scalars (e.g. 'val_loss') feed callback_metrics
        for name, value in out.items():
            if name not in ("log", "progress_bar") and name not in routed \
                    and isinstance(value, (torch.Tensor, float, int)) \
                    and (not isinstance(value, torch.Tensor) or value.numel() == 1):
                res.log(name, value, False, False, False, True, "mean", False, 1)


def legacy_checkpoint_callback(value: Any, callbacks: Any, enable_checkpointing: bool | None) -> tuple[Any, Any]:
    """``Trainer(checkpoint_callback=...)`` -> ``(callbacks, enable_checkpointing)``.

    A bool is ``enable_checkpointing`` (Lightning 1.3-1.6). A ``ModelCheckpoint`` is added to
    the callbacks, as Lightning 1.0-1.2 did, so its ``dirpath``, ``monitor`` and top-k hold
    (1.7 and later have no such flag: a TypeError).
    """
    from distengine.callbacks.model_checkpoint import ModelCheckpoint

    if value is None or isinstance(value, bool):
        return callbacks, enable_checkpointing if value is None or enable_checkpointing is not None else value
    if not isinstance(value, ModelCheckpoint):
        raise TypeError(f"checkpoint_callback must be a bool or a ModelCheckpoint, got {type(value).__name__}")
    if enable_checkpointing is False:
        raise ValueError("Trainer(checkpoint_callback=ModelCheckpoint(...)) contradicts enable_checkpointing=False; "
                         "drop one of them")
    cbs = list(callbacks) if isinstance(callbacks, (list, tuple)) else ([callbacks] if callbacks else [])
    return (cbs if any(c is value for c in cbs) else cbs + [value]), True
