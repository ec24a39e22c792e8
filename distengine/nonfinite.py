"""Non-finite losses and gradients: the checks behind ``Trainer(on_nonfinite_loss=...)``.

``NonFiniteWatch`` remembers on the device the first step whose loss was not finite;
``step_unless_nonfinite`` skips an optimizer step whose gradients hold inf/nan.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from distengine import torch_private


def _nonfinite_error(t, value: float, step: int) -> FloatingPointError:
    return FloatingPointError(
        f"the training loss is {value} at global step {step} (epoch {t.progress.epoch}) on rank "
        f"{t.global_rank}; lower the learning rate, check the data, or pass "
        "Trainer(on_nonfinite_loss='skip') to skip such steps")


def _check_nonfinite(t, loss: torch.Tensor) -> None:
    value = loss.item()  # on CPU this costs about a microsecond and syncs nothing
    if not math.isfinite(value):
        raise _nonfinite_error(t, value, t.progress.global_step)


class NonFiniteWatch:
    """On an accelerator, remember ON THE DEVICE the first step whose loss was not finite, so
    the check adds no GPU->CPU sync per step. It is read (one sync) where the Trainer writes
    metrics, at epoch ends and before every checkpoint, so a non-finite run stops within
    ``log_every_n_steps`` steps and never reaches a checkpoint."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss.detach())
        self.first = torch.where(bad & (self.first < 0), step, self.first)

    def check(self, t) -> None:
        step = int(self.first)
        if step >= 0:
            raise _nonfinite_error(t, float("nan"), step)


def nonfinite_grads(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """A one-element float tensor, 1.0 when any gradient of ``optimizer`` holds inf or nan,
    computed on the gradients' device without reading it back (``None`` without gradients).
    It uses the kernel GradScaler uses for ``found_inf`` (with a scale of one)."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            if p.grad is not None:
                groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    found: torch.Tensor | None = None
    for (device, _), grads in groups.items():
        f = torch.zeros(1, dtype=torch.float32, device=device)
        torch_private.amp_non_finite_check_and_unscale_(grads, f, torch.ones(1, device=device))
        found = f if found is None else torch.maximum(found, f.to(found.device))
    return found


def step_unless_nonfinite(optimizer: torch.optim.Optimizer, step: Any) -> torch.Tensor | int:
    """Run ``step()`` unless a gradient is inf/nan; return how many steps were skipped (0/1).

    A fused optimizer (``fused=True``: Adam, AdamW, SGD, Adagrad) decides on the device: it
    takes the flag as ``found_inf``, exactly as under GradScaler, and leaves weights and state
    untouched when it is set, so the count stays a device tensor and nothing waits for the
    GPU. Any other optimizer needs the answer on the host: one GPU sync per optimizer step.
    Under DDP the gradients are equal on every rank, so every rank skips the same steps.
    """
    found = nonfinite_grads(optimizer)
    if found is None:
        step()
        return 0
    if torch_private.optimizer_takes_found_inf(optimizer):
        optimizer.found_inf = found.reshape(())  # type: ignore[attr-defined]  # shaped like the steps
        optimizer.grad_scale = None  # type: ignore[attr-defined]
        try:
            step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale  # type: ignore[attr-defined]
        return found.to(torch.long)
    if found.item():  # the host sync named above
        return 1
    step()
    return 0
