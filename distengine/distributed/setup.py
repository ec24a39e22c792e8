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

from distengine import torch_private
from distengine.distributed import forksafe
from distengine.distributed.env import ClusterEnv, gloo_ifname_from_nccl

DEFAULT_TIMEOUT_S = 1800.0
_timeout_s: float | None = None  # the timeout the last Trainer set up its process group with


def timeout_seconds(value: float | timedelta | None) -> float:
    """The process-group timeout: the Trainer flag, else ``DISTENGINE_TIMEOUT``, else 30 min."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if value is not None:
        return float(value)
    return float(os.environ.get("DISTENGINE_TIMEOUT", DEFAULT_TIMEOUT_S))


def side_group_timeout() -> timedelta:
    """The timeout of the side groups (gloo groups for checkpoints and votes): the Trainer's
    ``dist_timeout`` as given to :func:`init_process_group` (also when the process group was
    already there), else ``DISTENGINE_TIMEOUT``, else 30 min. ``new_group`` alone would take
    torch's default (30 min), whatever the Trainer was told."""
    return timedelta(seconds=_timeout_s if _timeout_s is not None else timeout_seconds(None))


def new_gloo_group() -> Any:
    """A CPU side group over all ranks with :func:`side_group_timeout` (every rank calls it)."""
    return dist.new_group(backend="gloo", timeout=side_group_timeout())


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


def process_group_backend(device: torch.device, cpu_offload: bool = False) -> str:
    """The default group's backend for ranks on ``device``: gloo on CPU, NCCL on CUDA, and
    ``"cpu:gloo,cuda:nccl"`` on CUDA when parameters, gradients and optimizer state are
    offloaded to the host (FSDP's ``cpu_offload``): then clipping's norm, ``full_tensor`` of
    a gradient and the fp16 inf check reduce CPU tensors, which NCCL cannot."""
    if device.type != "cuda":
        return "gloo"
    return "cpu:gloo,cuda:nccl" if cpu_offload else "nccl"


def init_process_group(env: ClusterEnv, device: torch.device, timeout_s: float, backend: str | None = None) -> None:
    """Start the default process group of a launched job (``env.distributed``); nothing in
    one process or when a group runs already. ``backend`` defaults to
    :func:`process_group_backend` for ``device``."""
    global _timeout_s
    _timeout_s = timeout_s
    if not env.distributed:
        return
    forksafe.install()  # DataLoader workers fork from this rank while the group's threads run
    if dist.is_initialized():
        return
    # env:// reads MASTER_ADDR/MASTER_PORT; a SLURM task may only have SLURM_* variables.
    # An environment plugin (Trainer(plugins=[env])) names the main address itself: it wins.
    put = os.environ.__setitem__ if env.source == "plugin" else os.environ.setdefault
    put("MASTER_ADDR", env.master_addr)
    put("MASTER_PORT", str(env.master_port))
    gloo_if = gloo_ifname_from_nccl(os.environ)
    if gloo_if is not None:
        # the stop vote runs on a gloo side group even under NCCL: same network as NCCL
        os.environ["GLOO_SOCKET_IFNAME"] = gloo_if
    backend = backend or process_group_backend(device)
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        kwargs["device_id"] = device  # lets NCCL bind eagerly and avoids a guessed device
    dist.init_process_group(backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                            timeout=timedelta(seconds=timeout_s), **kwargs)


def init_single_process_group(device: torch.device, timeout_s: float, backend: str | None = None) -> bool:
    """A process group of one rank for a process that was not launched (FSDP in one process,
    as Lightning and torchtitan allow): its store listens on a free loopback port, chosen by
    the OS when it binds (no race with another job). True when this call created it (the
    caller then destroys it, :func:`destroy_single_process_group`); False when a group runs
    already."""
    global _timeout_s
    _timeout_s = timeout_s
    forksafe.install()
    if dist.is_initialized():
        return False
    store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=timedelta(seconds=timeout_s))
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(backend or process_group_backend(device), store=store, rank=0, world_size=1,
                            timeout=timedelta(seconds=timeout_s), **kwargs)
    return True


def destroy_single_process_group() -> None:
    """Destroy the default group made by :func:`init_single_process_group` (nothing if gone)."""
    if dist.is_initialized():
        dist.destroy_process_group()


class StepModule(nn.Module):
    """Routes ``forward`` to ``training_step`` so DDP sees the step as its forward pass
    (DDP's gradient hooks and unused-parameter tracking hang off ``forward``)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.after_step: Any = None  # set by ManualDDPStep while it runs a step

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.module.training_step(*args, **kwargs)
        if self.after_step is not None:
            self.after_step()
        return out


def _find_tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _find_tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _find_tensors(o)]
    return []


class ManualDDPStep:
    """Runs ``training_step`` under manual optimization through DDP's forward, as Lightning does.

    DDP prepares its reducer for one backward per forward, at the END of the forward
    (``prepare_for_backward`` on the returned tensors). Under manual optimization the step
    runs its backward(s) itself, inside that forward, before DDP gets there: the reducer then
    meets gradients it was not prepared for (``initialize_buckets must NOT be called during
    autograd execution``, or ``gradient which is undefined, but still allreduced``). So, like
    Lightning's ``_DDPForwardRedirection`` and ``prepare_for_backward``: DDP's pre-forward
    runs as usual, each ``manual_backward`` prepares the reducer for its own loss (and only
    the parameters that loss reaches when ``find_unused_parameters=True``), and DDP's
    post-forward preparation is switched off for that call, since every backward of the
    step has already been reduced.
    """

    def __init__(self, ddp: Any) -> None:
        self.ddp = ddp

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ddp, step = self.ddp, self.ddp.module
        sync = ddp.require_backward_grad_sync  # False under no_sync()

        def skip_post_forward() -> None:
            ddp.require_backward_grad_sync = False

        step.after_step = skip_post_forward
        try:
            return ddp(*args, **kwargs)
        finally:
            step.after_step = None
            ddp.require_backward_grad_sync = sync

    def prepare_for_backward(self, loss: Any) -> None:
        """Called by ``Module.manual_backward`` before each backward of the step."""
        ddp = self.ddp
        if torch.is_grad_enabled() and ddp.require_backward_grad_sync:
            ddp.require_forward_param_sync = True
            tensors = _find_tensors(loss) if ddp.find_unused_parameters and not ddp.static_graph else []
            torch_private.ddp_rebuild_buckets(ddp)  # a no-op after the first iteration, as in DDP's own forward
            ddp.reducer.prepare_for_backward(tensors)
        else:
            ddp.require_forward_param_sync = False


def wrap_ddp(module: nn.Module, device: torch.device, **ddp_kwargs: Any) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(StepModule(module), device_ids=ids, output_device=ids[0] if ids else None,
                                   **ddp_kwargs)
