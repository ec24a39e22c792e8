"""Process-group setup, device choice and DDP wrapping for one rank.

The Trainer calls :func:`setup_rank` once; it is idempotent (a second Trainer in the same
process reuses the process group).
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from distengine.dist.env import ClusterEnv, gloo_ifname_from_nccl

DEFAULT_TIMEOUT_S = 1800.0


def timeout_seconds(value: float | timedelta | None) -> float:
    """The process-group timeout: the Trainer flag, else ``DISTENGINE_TIMEOUT``, else 30 min."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if value is not None:
        return float(value)
    return float(os.environ.get("DISTENGINE_TIMEOUT", DEFAULT_TIMEOUT_S))


def select_device(accelerator: str, env: ClusterEnv, gpu_ids: list[int] | None) -> torch.device:
    if accelerator == "cpu":
        return torch.device("cpu")
    index = env.local_rank
    if gpu_ids and not env.distributed:
        index = gpu_ids[0]
    if torch.cuda.device_count() == 1:
        # Sites that bind one GPU per task (SLURM --gpus-per-task, --gpu-bind) show each rank
        # only its own device, as cuda:0, whatever its local rank.
        index = 0
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    return device


def init_process_group(env: ClusterEnv, device: torch.device, timeout_s: float) -> None:
    if not env.distributed or dist.is_initialized():
        return
    # env:// reads MASTER_ADDR/MASTER_PORT; a SLURM task may only have SLURM_* variables.
    os.environ.setdefault("MASTER_ADDR", env.master_addr)
    os.environ.setdefault("MASTER_PORT", str(env.master_port))
    gloo_if = gloo_ifname_from_nccl(os.environ)
    if gloo_if is not None:
        # the stop vote runs on a gloo side group even under NCCL: same network as NCCL
        os.environ["GLOO_SOCKET_IFNAME"] = gloo_if
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        kwargs["device_id"] = device  # lets NCCL bind eagerly and avoids a guessed device
    dist.init_process_group(backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                            timeout=timedelta(seconds=timeout_s), **kwargs)


class StepModule(nn.Module):
    """Routes ``forward`` to ``training_step`` so DDP sees the step as its forward pass
    (DDP's gradient hooks and unused-parameter tracking hang off ``forward``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module.training_step(*args, **kwargs)


def wrap_ddp(module: nn.Module, device: torch.device, **ddp_kwargs: Any) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(StepModule(module), device_ids=ids, output_device=ids[0] if ids else None,
                                   **ddp_kwargs)
