"""Exact resume of a combined training loader (a dict of two loaders), at 1 and 2 ranks.

Each job trains once uninterrupted and, on the way, writes mid-epoch checkpoints with
``trainer.save_checkpoint`` at chosen steps (the run goes on, so it is also the baseline). A
fresh Trainer then resumes from each checkpoint: it must end with ``torch.equal`` weights and
the same global step, and read the same batches of both loaders after the checkpoint as the
uninterrupted run did. Shuffled data and dropout, so the data order and the RNG both matter.
Steps are chosen where the short loader is part-way through a later pass (max_size_cycle:
it restarted its own order) and where it ran out exactly at the checkpoint.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distengine import Callback, Module, Trainer, seed_everything
from distengine.utilities import CombinedLoader
from tests.helpers import run_ranks


class Net(Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))
        self.seen: list[tuple[int, list, list]] = []

    def training_step(self, batch, batch_idx):
        loss = 0.0
        ids = {}
        for key in ("a", "b"):
            if batch[key] is None:  # max_size: an exhausted loader gives None
                ids[key] = None
                continue
            x, y, idx = batch[key]
            ids[key] = idx.tolist()
            loss = loss + nn.functional.mse_loss(self.layer(x), y)
        self.seen.append((self.trainer.global_step, ids["a"], ids["b"]))
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class SaveAt(Callback):
    def __init__(self, folder: str, steps: tuple[int, ...]) -> None:
        self.folder, self.steps = folder, steps

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step in self.steps and trainer.current_epoch == 1:
            trainer.save_checkpoint(os.path.join(self.folder, f"step{trainer.global_step}.ckpt"))


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, x.sum(1, keepdim=True), torch.arange(n))


def _loaders(mode: str):
    a = DataLoader(_data(40, 0), batch_size=4, shuffle=True)
    b = DataLoader(_data(12, 1), batch_size=4, shuffle=True)
    return {"a": a, "b": b} if mode == "max_size_cycle" else CombinedLoader({"a": a, "b": b}, mode)


def _fit(mode: str, callbacks=(), ckpt_path=None) -> tuple[Net, Trainer]:
    seed_everything(5)
    model = Net()
    trainer = Trainer(max_epochs=2, enable_checkpointing=False, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=list(callbacks), num_sanity_val_steps=0)
    trainer.fit(model, _loaders(mode), ckpt_path=ckpt_path)
    return model, trainer


def _job(rank: int, folder: str, cases: dict[str, tuple[int, ...]]) -> list:
    """Per mode: the baseline (saving at the steps), then a resume from each step."""
    problems = []
    for mode, steps in cases.items():
        ckpts = os.path.join(folder, mode)
        os.makedirs(ckpts, exist_ok=True)
        base, base_trainer = _fit(mode, [SaveAt(ckpts, steps)])
        for step in steps:
            resumed, trainer = _fit(mode, ckpt_path=os.path.join(ckpts, f"step{step}.ckpt"))
            same = all(torch.equal(p, q) for p, q in zip(base.state_dict().values(),
                                                         resumed.state_dict().values(), strict=True))
            after = [s for s in base.seen if s[0] >= resumed.seen[0][0]] if resumed.seen else []
            if not same or trainer.global_step != base_trainer.global_step or after != resumed.seen:
                problems.append(f"{mode} at step {step}: weights equal {same}, steps "
                                f"{trainer.global_step}/{base_trainer.global_step}, batches after resume "
                                f"{resumed.seen[:3]} vs {after[:3]}")
    return problems


@pytest.mark.parametrize("world, cases", [
    # 1 rank: a has 10 batches, b 3 -> b ran out exactly at step 13 (epoch 1, k=3), mid-pass at 15 (k=5)
    (1, {"max_size_cycle": (13, 15), "min_size": (4,), "max_size": (15,)}),
    # 2 ranks: a has 5 batches per rank, b 2 -> b ran out at step 7 (k=2), mid-pass at 8 (k=3)
    (2, {"max_size_cycle": (7, 8), "min_size": (3,)}),
])
def test_combined_loader_resumes_exactly(tmp_path, world, cases):
    results = run_ranks(_job, world, str(tmp_path), cases, timeout=180)
    assert results == [[]] * world, results
