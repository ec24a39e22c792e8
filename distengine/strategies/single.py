"""One process, one device: no process group, no wrapper."""
from __future__ import annotations

from typing import Any

from torch import nn

from distengine.strategies.base import Strategy


class SingleDeviceStrategy(Strategy):
    """Trains in this process on one device (the CPU or the GPU the ``devices`` flag picked).

    Example: ``Trainer(strategy="single_device", accelerator="cpu")``.
    """

    name = "single_device"

    def setup_environment(self, accelerator: str, env: Any, gpu_ids: list[int] | None, timeout_s: float) -> None:
        from distengine.distributed import setup

        if env.distributed:
            raise ValueError(f"strategy='single_device' runs one process, but this job has "
                             f"WORLD_SIZE={env.world_size}; use strategy='ddp' (or 'auto')")
        self.root_device = setup.select_device(accelerator, env, gpu_ids)

    def setup_module(self, module: nn.Module) -> nn.Module:
        self.module = module
        self.module_to_device(module)
        self.model = module
        self.step_fn = module.training_step
        return module
