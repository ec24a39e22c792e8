"""``Trainer.init_module()``: build a module's tensors where and as the Trainer will train them.

Example::

    trainer = distengine.Trainer(accelerator="gpu", precision="bf16-true")
    with trainer.init_module(empty_init=True):   # on the GPU, in bfloat16, not initialised
        model = MyModel()
    trainer.fit(model, ckpt_path="pretrained.ckpt")   # the checkpoint fills the weights

As Lightning's: inside the block, new tensors are created on the device this rank trains on
(``cuda:<local rank>`` with a GPU accelerator, the CPU otherwise) and, with a ``"*-true"``
precision, in its dtype (``bf16-true``: bfloat16; ``64-true``: float64). ``empty_init=True``
skips the ``torch.nn.init`` calls of the layers' ``reset_parameters`` (the values are then
whatever the memory held): only for weights a checkpoint will overwrite.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# torch.nn.init fills tensors in place with these; empty_init makes them return the tensor unchanged
_INIT_FILLS = frozenset(getattr(torch.nn.init, n) for n in (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_") if hasattr(torch.nn.init, n))
_TENSOR_FILLS = frozenset({torch.Tensor.uniform_, torch.Tensor.normal_, torch.Tensor.fill_, torch.Tensor.zero_})


class _SkipInit(TorchFunctionMode):
    """Leaves tensors uninitialised: the in-place fills of ``reset_parameters`` do nothing."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        if func in _INIT_FILLS or func in _TENSOR_FILLS:
            return args[0] if args else (kwargs or {}).get("tensor", (kwargs or {}).get("self"))
        return func(*args, **(kwargs or {}))


def training_device(trainer: Any) -> torch.device:
    """The device this rank trains on, known before ``fit`` sets the strategy up."""
    root = trainer.strategy.root_device
    if root.type != "cpu":
        return root
    if trainer.settings.accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return root


@contextlib.contextmanager
def init_module(trainer: Any, empty_init: bool | None = None) -> Iterator[None]:
    """``with trainer.init_module(): model = MyModel()`` (see the module docstring)."""
    from distengine.precision import normalize_precision

    dtype = {"bf16-true": torch.bfloat16, "64-true": torch.float64}.get(normalize_precision(trainer.precision))
    previous = torch.get_default_dtype()
    with contextlib.ExitStack() as stack:
        stack.enter_context(training_device(trainer))
        if dtype is not None:
            torch.set_default_dtype(dtype)
            stack.callback(torch.set_default_dtype, previous)
        if empty_init:
            stack.enter_context(_SkipInit())
        yield
