"""The Strategy: how one rank holds the model and talks to the others.

A Strategy owns everything that differs between one process, DDP and FSDP2: the device and
the process group, how the module is wrapped or sharded, the collectives, how gradients are
clipped and accumulated without a sync, and how the state of the module and the optimizers is
gathered for a checkpoint and loaded back. The Trainer builds one from its ``strategy`` flag
(``"auto"``, ``"ddp"``, ``"fsdp"``, ``"single_device"``, or an instance) and hands it to the
loop; the loop never asks which strategy it has.

Order of calls in ``fit`` (every rank calls every method; the comments say who does work)::

    strategy.setup_environment(accelerator, env, gpu_ids, timeout_s)  # device, process group
    model = strategy.setup_module(module)       # move, convert precision, wrap/shard
                                                # (FSDP: configure_model() first, then fully_shard)
    optimizers = module.configure_optimizers()  # AFTER setup_module: FSDP2 parameters are DTensors
    per batch:
        with strategy.no_sync(model, last_micro_batch): forward, backward
        strategy.clip_gradients(optimizer, value, algorithm)
    checkpoint:
        state = strategy.module_state_dict(module)            (full: rank 0 holds it; sharded: each rank its shard)
        state = strategy.optimizer_state_dict(module, optimizer)
        strategy.load_module_state_dict(module, state) / load_optimizer_state_dict(module, optimizer, state)
    strategy.teardown()

Subclasses: :class:`SingleDeviceStrategy`, :class:`DDPStrategy` (strategies/ddp.py) and
:class:`FSDPStrategy` (strategies/fsdp.py).
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


class Strategy:
    """Base class; see the module docstring for the order of calls."""

    #: the registered name (``Trainer(strategy=name)``)
    name: str = ""
    #: how checkpoints are written: "full" (one ``.ckpt`` file written by rank 0) or
    #: "sharded" (a torch.distributed.checkpoint directory, each rank writing its shards)
    checkpoint_layout: str = "full"

    def __init__(self) -> None:
        self.root_device: torch.device = torch.device("cpu")
        self.model: nn.Module | None = None    # what the loop calls forward on
        self.module: nn.Module | None = None   # the user's module, unwrapped

    # ------------------------------------------------------------------ environment
    def setup_environment(self, accelerator: str, env: Any, gpu_ids: list[int] | None, timeout_s: float) -> None:
        """Choose the device and start the process group (idempotent)."""
        raise NotImplementedError

    @property
    def is_distributed(self) -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    @property
    def world_size(self) -> int:
        return torch.distributed.get_world_size() if self.is_distributed else 1

    @property
    def global_rank(self) -> int:
        return torch.distributed.get_rank() if self.is_distributed else 0

    # ------------------------------------------------------------------ the model
    def setup_module(self, module: nn.Module) -> nn.Module:
        """Move (or shard) ``module`` onto this rank's device and return the model the loop
        calls ``forward`` on (the module itself, a DDP wrapper, or the FSDP-sharded module)."""
        raise NotImplementedError

    def no_sync(self, model: nn.Module, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward+backward: gradients are synchronised only on
        the last micro-batch of an accumulation window."""
        return contextlib.nullcontext()

    def clip_gradients(self, optimizer: torch.optim.Optimizer, clip_val: float, algorithm: str = "norm") -> Any:
        """Clip the gradients of ``optimizer``'s parameters; for "norm" return the total norm
        (over every shard, on every rank)."""
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, clip_val)
            return None
        return torch.nn.utils.clip_grad_norm_(params, clip_val)

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.is_distributed:
            torch.distributed.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not self.is_distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """All-reduce ``tensor`` ("sum", "mean", "max", "min"); returned unchanged when not distributed."""
        if not self.is_distributed:
            return tensor
        ops = {"sum": torch.distributed.ReduceOp.SUM, "mean": torch.distributed.ReduceOp.SUM,
               "max": torch.distributed.ReduceOp.MAX, "min": torch.distributed.ReduceOp.MIN}
        out = tensor.clone()
        torch.distributed.all_reduce(out, op=ops[op])
        return out / self.world_size if op == "mean" else out

    # ------------------------------------------------------------------ state
    def module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """The module's state for a checkpoint ("full": complete tensors; "sharded": this
        rank's shards, as DTensors)."""
        return module.state_dict()

    def load_module_state_dict(self, module: nn.Module, state: dict[str, Any], strict: bool = True) -> None:
        module.load_state_dict(state, strict=strict)

    def optimizer_state_dict(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, module: nn.Module, optimizer: torch.optim.Optimizer,
                                  state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    def teardown(self) -> None:
        """Release what ``setup_module`` built (the process group stays: another Trainer in
        the same process reuses it)."""
        self.model = None
