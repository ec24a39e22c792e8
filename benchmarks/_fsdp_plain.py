"""The hand-written FSDP2 and DDP contenders: what a PyTorch user writes, no distengine import.

- :func:`fsdp_loop`: ``fully_shard`` on every transformer block, then on the root (the
  FSDP2 recipe), AdamW, ``DistributedSampler``; optional bf16 ``MixedPrecisionPolicy`` and
  activation checkpointing on every block.
- :func:`ddp_loop`: the same model and data under ``DistributedDataParallel``.
- :func:`dcp_save` / :func:`dcp_async_save`: ``get_state_dict`` + ``torch.distributed.checkpoint``.
- :func:`state_bytes`: exact bytes of parameters, gradients and optimizer state held by this
  rank (a DTensor counts its local shard's storage; a storage shared by several tensors
  counts once), the figure compared on the CPU, where there is no ``max_memory_allocated``.

Each loop records the same things as the Trainer side (benchmarks/_fsdp_worker.py): the
per-step losses, the steady-state wall and CPU seconds from the start of step ``warm`` to the
end of the last step, and :func:`state_bytes` right after the last ``optimizer.step()``, before
``zero_grad`` (the point where parameters, gradients and optimizer state all exist).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from benchmarks._work import TinyGPT, lm_loss, make_tokens

#: the benchmark models: "full" has 55.1M parameters (>= 50M, as the issue asks)
SIZES: dict[str, dict[str, int]] = {
    "full": {"vocab": 8192, "seq_len": 32, "d_model": 768, "layers": 6, "heads": 12},
    "quick": {"vocab": 256, "seq_len": 16, "d_model": 64, "layers": 2, "heads": 2},
    # the GPU check's: 218M parameters, so that an H200 is busy rather than waiting for the host
    "gpu": {"vocab": 32768, "seq_len": 512, "d_model": 1024, "layers": 12, "heads": 16},
}
LR = 1e-3


@dataclass
class Work:
    """What every contender trains: the model size, per-rank batch, steps and options."""

    size: str = "full"
    batch: int = 2            # per rank
    steps: int = 4
    warm: int = 1             # steps before the clock starts (lazy init, first all-gathers)
    device: str = "cpu"
    bf16: bool = False        # FSDP2 MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)
    act_ckpt: bool = False    # activation checkpointing on every block

    @property
    def lm(self) -> dict[str, int]:
        return SIZES[self.size]

    def data(self, world: int):
        """One epoch is exactly ``steps`` steps on every rank."""
        return make_tokens(self.batch * world * self.steps, self.lm["seq_len"], self.lm["vocab"], seed=0)

    def model(self) -> TinyGPT:
        torch.manual_seed(0)
        return TinyGPT(**self.lm)


@dataclass
class Record:
    """What one contender measured on this rank."""

    losses: list[float] = field(default_factory=list)
    wall: float = float("nan")
    cpu: float = float("nan")
    bytes: dict[str, int] = field(default_factory=dict)
    cuda_peak: int | None = None   # torch.cuda.max_memory_allocated over the run, on CUDA
    _t: tuple[float, float] = (float("nan"), float("nan"))

    def start(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self._t = (time.perf_counter(), time.process_time())

    def stop(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.wall = time.perf_counter() - self._t[0]
        self.cpu = time.process_time() - self._t[1]

    def to_dict(self) -> dict[str, Any]:
        return {"losses": self.losses, "wall": self.wall, "cpu": self.cpu, "bytes": self.bytes,
                "cuda_peak": self.cuda_peak}


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def state_bytes(params: Iterable[torch.Tensor], optimizers: Iterable[torch.optim.Optimizer]) -> dict[str, int]:
    """Bytes of this rank's storage behind ``params``, their ``.grad`` and the optimizers'
    state tensors: ``{"params", "grads", "optimizer", "total"}``. Exact, not sampled: every
    distinct storage counts once, with its full size (FSDP2's padding included)."""
    seen: set[tuple[str, int]] = set()

    def count(tensors: Iterable[torch.Tensor]) -> int:
        total = 0
        for t in tensors:
            storage = _local(t).untyped_storage()
            key = (str(storage.device), storage.data_ptr())
            if storage.nbytes() == 0 or key in seen:
                continue
            seen.add(key)
            total += storage.nbytes()
        return total

    params = list(params)
    optimizers = list(optimizers)
    out = {"params": count(params), "grads": count(p.grad for p in params if p.grad is not None),
           "optimizer": count(v for opt in optimizers for st in opt.state.values()
                              for v in st.values() if isinstance(v, torch.Tensor))}
    out["total"] = out["params"] + out["grads"] + out["optimizer"]
    return out


def act_ckpt_blocks(model: TinyGPT) -> None:
    """Activation checkpointing on every transformer block: each is wrapped in a non-reentrant
    ``checkpoint_wrapper`` (the form that composes with FSDP2; the wrapper is what gets sharded)."""
    from torch.distributed.algorithms._checkpoint import checkpoint_wrapper as cw

    cw.apply_activation_checkpointing(model, checkpoint_wrapper_fn=cw.checkpoint_wrapper,
                                      check_fn=lambda m: isinstance(m, nn.TransformerEncoderLayer))


def mp_policy(work: Work) -> Any:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if work.bf16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(model: nn.Module, blocks: Iterable[nn.Module], work: Work) -> nn.Module:
    """The FSDP2 recipe: each block its own group, then the root (embeddings, norm, head)."""
    from torch.distributed.fsdp import fully_shard

    for block in blocks:
        fully_shard(block, mp_policy=mp_policy(work))
    fully_shard(model, mp_policy=mp_policy(work))
    return model


def _loader(work: Work, world: int) -> DataLoader:
    data = work.data(world)
    sampler = DistributedSampler(data, shuffle=False) if world > 1 else None
    return DataLoader(data, batch_size=work.batch, sampler=sampler, shuffle=False)


AfterStep = Callable[[nn.Module, torch.optim.Optimizer], Any]


def _train(model: nn.Module, work: Work, device: torch.device, rec: Record,
           after_step: AfterStep | None = None) -> torch.optim.Optimizer:
    world = dist.get_world_size() if dist.is_initialized() else 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    for i, (x, y) in enumerate(_loader(work, world)):
        if i == work.warm:
            rec.start(device)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = lm_loss(model(x), y)
        loss.backward()
        optimizer.step()
        if i == work.steps - 1:
            rec.bytes = state_bytes(model.parameters(), [optimizer])
        optimizer.zero_grad(set_to_none=True)
        rec.losses.append(loss.detach())
        if after_step is not None:  # where the Trainer's on_train_batch_end (a checkpoint) runs
            after_step(model, optimizer)
    rec.stop(device)
    rec.losses = [float(v) for v in rec.losses]
    return optimizer


Trained = tuple[Record, nn.Module, torch.optim.Optimizer]


def fsdp_loop(work: Work, device: torch.device, after_step: AfterStep | None = None) -> Trained:
    """Train the sharded model for ``work.steps`` steps; (what it measured, model, optimizer).
    ``after_step(model, optimizer)`` runs after every step (after ``zero_grad``)."""
    rec = Record()
    model = work.model().to(device)
    if work.act_ckpt:
        act_ckpt_blocks(model)
    shard(model, model.blocks.layers, work)
    return rec, model, _train(model, work, device, rec, after_step)


def ddp_loop(work: Work, device: torch.device) -> Trained:
    """The same work under DDP: every rank holds the whole model, gradients and AdamW state.
    (bf16 here means autocast: DDP has no parameter-dtype policy.)"""
    from torch.nn.parallel import DistributedDataParallel

    rec = Record()
    model = work.model().to(device)
    if work.act_ckpt:
        act_ckpt_blocks(model)
    ids = [device.index] if device.type == "cuda" else None
    ddp = DistributedDataParallel(model, device_ids=ids)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=work.bf16):
        optimizer = _train(ddp, work, device, rec)
    return rec, ddp, optimizer


# --------------------------------------------------------------------------- checkpoints
def dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The documented DCP recipe: sharded model and optimizer state dicts."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def dcp_save(model: nn.Module, optimizer: torch.optim.Optimizer, path: str) -> None:
    """Synchronous sharded save."""
    import torch.distributed.checkpoint as dcp

    dcp.save(dcp_state(model, optimizer), checkpoint_id=path)


def dcp_async_save(model: nn.Module, optimizer: torch.optim.Optimizer, path: str, group: Any = None) -> Any:
    """``dcp.async_save`` with DCP's default staging (a host copy of every shard, then the write
    in a background thread); returns its future. ``group``: the CPU process group the
    background save talks on, apart from training's (as DCP's documentation advises)."""
    import torch.distributed.checkpoint as dcp

    return dcp.async_save(dcp_state(model, optimizer), checkpoint_id=path, process_group=group)
