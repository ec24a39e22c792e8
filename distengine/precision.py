"""Precision: autocast and gradient scaling behind one object with its own ``state_dict``.

Supported values (Lightning's names; the 1.x integers too):

=================  ===========================================================
``"32-true"``/32   float32 everywhere (the default)
``"16-mixed"``/16  float16 autocast + ``torch.amp.GradScaler``: the loss is scaled,
                   gradients are unscaled before clipping, and a step whose gradients
                   hold inf/nan is skipped and counted (``skipped_steps``). On a GPU,
                   ``GradScaler.step`` reads its ``found_inf`` back to the host (one
                   sync per optimizer step) unless the optimizer is fused: create it
                   with ``fused=True`` (Adam, AdamW, SGD) to keep the decision on the GPU
``"bf16-mixed"``   bfloat16 autocast (no scaler needed)
``"bf16-true"``    the module's parameters and floating inputs cast to bfloat16
``"64-true"``      float64 parameters and floating inputs
=================  ===========================================================

Autocast works on CPU and CUDA, so mixed precision is testable without a GPU.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from distengine import torch_private

_ALIASES = {
    "32": "32-true", "32-true": "32-true", 32: "32-true",
    "16": "16-mixed", "16-mixed": "16-mixed", 16: "16-mixed",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
    "bf16-true": "bf16-true",
    "64": "64-true", "64-true": "64-true", 64: "64-true",
}


def normalize_precision(value: Any) -> str:
    if value is None:  # Lightning 2.x's default (a config it wrote says `precision: null`)
        return "32-true"
    key = value if isinstance(value, int) else str(value)
    if key not in _ALIASES:
        raise ValueError(
            f"precision={value!r} is not supported; use one of "
            "'32-true', '16-mixed', 'bf16-mixed', 'bf16-true', '64-true' (or 32, 16, 64)")
    return _ALIASES[key]


def _cast_floats(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast_floats(o, dtype) for o in obj) if not hasattr(obj, "_fields") \
            else type(obj)(*(_cast_floats(o, dtype) for o in obj))
    if isinstance(obj, dict):
        return {k: _cast_floats(v, dtype) for k, v in obj.items()}
    return obj


class Precision:
    """Owns autocast, the GradScaler and the counters of skipped steps."""

    def __init__(self, precision: Any, device: torch.device) -> None:
        self.precision = normalize_precision(precision)
        self.device = device
        self.scaler: torch.amp.GradScaler | None = None
        self._skipped = 0
        self._skipped_t: torch.Tensor | None = None  # device-side count (no per-step sync)
        self._true_dtype = {"bf16-true": torch.bfloat16, "64-true": torch.float64}.get(self.precision)
        if self.precision == "16-mixed":
            self.scaler = torch.amp.GradScaler(device.type)
            self._autocast_dtype = torch.float16
        elif self.precision == "bf16-mixed":
            self._autocast_dtype = torch.bfloat16
        else:
            self._autocast_dtype = None

    @property
    def is_mixed(self) -> bool:
        return self._autocast_dtype is not None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        if self._true_dtype is not None:
            module.to(self._true_dtype)
        return module

    def convert_input(self, batch: Any) -> Any:
        return _cast_floats(batch, self._true_dtype) if self._true_dtype is not None else batch

    def backward(self, loss: torch.Tensor, *args: Any, module: Any = None, **kwargs: Any) -> None:
        """``loss.backward()``, the loss scaled first with a grad scaler; through ``module.backward``
        (the LightningModule's hook, which a user may override) when a module is given."""
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        if module is not None:
            module.backward(loss, *args, **kwargs)
        else:
            loss.backward(*args, **kwargs)

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale (needed before clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def unscale_once(self, optimizer: torch.optim.Optimizer) -> None:
        """:meth:`unscale` unless this step's gradients of ``optimizer`` already are (GradScaler
        refuses a second unscale before ``update``)."""
        if self.scaler is None:
            return
        from torch.amp.grad_scaler import OptState

        if torch_private.grad_scaler_stage(self.scaler, optimizer) is OptState.READY:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        # GradScaler lowers its scale exactly when it skipped the step for inf/nan gradients.
        # Compare the scale tensors on the device, so counting adds no sync of its own
        # (get_scale() would add one). GradScaler.step itself still syncs once per step to
        # decide whether to call optimizer.step(), except for a fused optimizer, whose kernel
        # takes found_inf on the device: that is why fused=True is the fast choice here.
        scale = torch_private.grad_scaler_scale_tensor(self.scaler)
        if scale is not None:
            before = scale.clone()
            self.scaler.step(optimizer)
            self.scaler.update()
            lowered = (torch_private.grad_scaler_scale_tensor(self.scaler) < before).to(torch.long)
            self._skipped_t = lowered if self._skipped_t is None else self._skipped_t + lowered
            return
        scale_before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        if self.scaler.get_scale() < scale_before:
            self._skipped += 1

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped because the scaled gradients held inf or nan."""
        return self._skipped + (int(self._skipped_t) if self._skipped_t is not None else 0)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"precision": self.precision, "skipped_steps": self.skipped_steps}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._skipped, self._skipped_t = int(state.get("skipped_steps", 0)), None
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
