"""The Trainer side of the FSDP benchmark, through distengine's public API only.

:func:`fit` trains the same model on the same data as the hand-written loops in
benchmarks/_fsdp_plain.py with ``Trainer(strategy="fsdp")`` or ``Trainer(strategy="ddp")`` and
records the same things at the same points, from callbacks: the clock starts at step ``warm``
and stops at the end of the last step; the bytes of parameters + gradients + optimizer state
are counted in ``on_before_zero_grad`` of the last step (the loops count them right after
``optimizer.step()``, before ``zero_grad``: the same point).
"""
from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmarks import _fsdp_plain as plain
from benchmarks._work import lm_loss


def unavailable() -> str | None:
    """Why the Trainer side cannot run in this tree, or None."""
    try:
        import distengine.strategies.fsdp  # noqa: F401
    except ImportError as exc:
        return f"distengine has no FSDP strategy in this tree ({exc})"
    return None


def _module(work: plain.Work, rec: plain.Record, strategy: str) -> Any:
    import distengine as de

    class LM(de.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gpt = work.model()
            if work.act_ckpt and strategy == "ddp":  # under FSDP the strategy's policy does it
                plain.act_ckpt_blocks(self.gpt)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = lm_loss(self.gpt(x), y)
            rec.losses.append(loss.detach())
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=plain.LR)

    return LM()


def make_strategy(work: plain.Work, strategy: str) -> Any:
    """``"ddp"``, or an ``FSDPStrategy`` that shards as the hand-written loop does: each block
    its own unit (then the root), activation checkpointing on the blocks when asked."""
    if strategy != "fsdp":
        return strategy
    from distengine.strategies.fsdp import FSDPStrategy

    block = {nn.TransformerEncoderLayer}
    return FSDPStrategy(auto_wrap_policy=block, activation_checkpointing_policy=block if work.act_ckpt else None)


def _probe(work: plain.Work, rec: plain.Record, device: torch.device) -> Any:
    from distengine.callbacks import Callback

    class Probe(Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == work.warm:
                rec.start(device)

        def on_before_zero_grad(self, trainer, module, optimizer):
            if len(rec.losses) == work.steps:
                rec.bytes = plain.state_bytes(module.parameters(), trainer.optimizers)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == work.steps - 1:
                rec.stop(device)

    return Probe()


def trainer_flags(work: plain.Work, device: torch.device, strategy: str, **extra: Any) -> dict[str, Any]:
    flags: dict[str, Any] = {
        "accelerator": "gpu" if device.type == "cuda" else "cpu", "strategy": make_strategy(work, strategy),
        "precision": "bf16-mixed" if work.bf16 else "32-true", "max_epochs": 1,
        "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
        "enable_model_summary": False, "num_sanity_val_steps": 0,
    }
    flags.update(extra)
    return flags


def fit(work: plain.Work, device: torch.device, strategy: str) -> tuple[plain.Record, nn.Module, Any]:
    """Train with the Trainer; (what it measured, the trained module, its optimizer)."""
    import distengine as de

    rec = plain.Record()
    module = _module(work, rec, strategy)
    trainer = de.Trainer(**trainer_flags(work, device, strategy), callbacks=[_probe(work, rec, device)])
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    trainer.fit(module, DataLoader(work.data(world), batch_size=work.batch, shuffle=False))
    rec.losses = [float(v) for v in rec.losses]
    return rec, module, trainer.optimizers[0]


def timed_checkpoint(dirpath: str, async_save: bool, blocked: list[float]) -> Any:
    """A ``ModelCheckpoint`` saving every step that records how long each save holds the
    training loop (its ``on_train_batch_end``). The previous save is waited for first, outside
    the clock: each save is measured alone, as in steady training with saves further apart."""
    from distengine.callbacks import ModelCheckpoint

    class Timed(ModelCheckpoint):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.wait()
            torch.distributed.barrier()
            t0 = time.perf_counter()
            super().on_train_batch_end(trainer, module, outputs, batch, batch_idx)
            blocked.append(time.perf_counter() - t0)

    return Timed(dirpath=dirpath, every_n_train_steps=1, save_top_k=-1, async_save=async_save)


def ckpt_fit(work: plain.Work, device: torch.device, root: str, async_save: bool, strategy: str = "fsdp") -> float:
    """Fit 2 steps with a checkpoint after each; the seconds the second save blocked training
    (the first one, which also sets up buffers and process groups, is not counted)."""
    import shutil

    import distengine as de

    short = plain.Work(**{**vars(work), "steps": 2, "warm": 0})
    blocked: list[float] = []
    dirpath = os.path.join(root, f"trainer-{'async' if async_save else 'sync'}")
    trainer = de.Trainer(**trainer_flags(short, device, strategy, enable_checkpointing=True),
                         callbacks=[timed_checkpoint(dirpath, async_save, blocked)])
    world = torch.distributed.get_world_size()
    trainer.fit(_module(short, plain.Record(), strategy),
                DataLoader(short.data(world), batch_size=short.batch, shuffle=False))
    torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        shutil.rmtree(dirpath, ignore_errors=True)
    torch.distributed.barrier()
    return blocked[1]


def ckpt_contenders(work: plain.Work, device: torch.device, root: str, strategy: str = "fsdp") -> dict[str, Any]:
    """The Trainer's sharded save through ``ModelCheckpoint``, synchronous and asynchronous."""
    return {"trainer_save": lambda: ckpt_fit(work, device, root, False, strategy),
            "trainer_async_blocked": lambda: ckpt_fit(work, device, root, True, strategy)}
