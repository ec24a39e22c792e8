"""Utilities whose answer depends on the ranks, on 2 real gloo ranks: is_shared_filesystem
(one folder for both: True; a different folder per rank: False) and OnExceptionCheckpoint
(both ranks fail at the same step: rank 0 writes one checkpoint that resumes)."""
from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

import distengine as de
from distengine.callbacks import OnExceptionCheckpoint
from distengine.utilities import is_shared_filesystem
from tests.core.models import Regressor, regression_data
from tests.helpers import run_ranks


class FailsAtStep(Regressor):
    def training_step(self, batch, batch_idx):
        if self.global_step == 2:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def _rank(rank, tmp):
    cb = OnExceptionCheckpoint(os.path.join(tmp, "ck"))
    trainer = de.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, max_epochs=1, default_root_dir=tmp, callbacks=[cb])
    try:
        trainer.fit(FailsAtStep(), DataLoader(regression_data(32), batch_size=4))
        failed = False
    except RuntimeError:
        failed = True
    trainer.strategy.barrier()
    step = torch.load(cb.ckpt_path, weights_only=True)["global_step"]
    own = os.path.join(tmp, f"rank{rank}")
    os.makedirs(own, exist_ok=True)
    return {"failed": failed, "step": step, "world": trainer.strategy.world_size,
            "same": is_shared_filesystem(trainer.strategy, tmp),
            "per_rank": is_shared_filesystem(trainer.strategy, own),
            "leftover": os.path.exists(os.path.join(tmp, ".lightning_shared_fs_check"))}


def test_shared_filesystem_and_on_exception_checkpoint_on_two_ranks(tmp_path):
    for r in run_ranks(_rank, 2, str(tmp_path), timeout=90):
        assert r == {"failed": True, "step": 2, "world": 2, "same": True, "per_rank": False, "leftover": False}
