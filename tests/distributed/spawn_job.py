"""One training job run every way the notebook tests compare (tests/distributed/test_notebook_strategies.py).

    distengine launch --cpus 2 spawn_job.py ddp OUT        the launcher path (the reference)
    python spawn_job.py ddp_spawn OUT                      spawn from a script
    python -c "import spawn_job; spawn_job.run(...)"       fork/spawn with no script to re-run
    a notebook cell calling run(...)                       the same from a Jupyter kernel

``run`` writes OUT/report.pt from the caller (the launcher path: from rank 0): the module's
weights and what the Trainer says after ``fit`` (and after ``validate``/``predict`` when
asked), so two ways of running can be compared with ``torch.equal``.
"""
from __future__ import annotations

import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import distengine as de


class SpawnRegressor(de.Module):
    """A small MLP with dropout (the ranks' RNG matters) that can fail on one rank."""

    def __init__(self, fail_rank: int = -1, fail_step: int = -1, sleep_rank: int = -1, pid_dir: str = "",
                 step_sleep: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        hp = self.hparams
        if hp.pid_dir:
            with open(os.path.join(hp.pid_dir, f"rank{self.global_rank}.pid"), "w") as f:
                f.write(str(os.getpid()))
        if self.global_step == hp.fail_step and self.global_rank == hp.fail_rank:
            raise ValueError(f"bad batch {batch_idx} on purpose")
        if self.global_step == hp.fail_step and self.global_rank == hp.sleep_rank:
            time.sleep(120)  # a rank busy in a long step: the launcher must not wait for it
        for _ in range(int(hp.step_sleep / 0.05)):  # a slow step, in short sleeps as real work is
            time.sleep(0.05)
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return self.net(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x.sum(dim=1, keepdim=True) * 0.3)


def run(strategy: str, out: str, module_cls: type = SpawnRegressor, stages: tuple = ("fit",),
        **module_args) -> dict:
    torch.set_num_threads(1)
    de.seed_everything(7)
    model = module_cls(**module_args)
    checkpoint = de.callbacks.ModelCheckpoint(monitor="val_loss")
    trainer = de.Trainer(strategy=strategy, accelerator="cpu", devices=2, max_epochs=2, log_every_n_steps=2,
                         default_root_dir=out, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[checkpoint], dist_timeout=60)
    trainer.fit(model, DataLoader(data(48, 0), batch_size=8, shuffle=True), DataLoader(data(16, 1), batch_size=8))
    report = {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "global_step": trainer.global_step, "current_epoch": trainer.current_epoch,
        "callback_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "logged_metrics": {k: float(v) for k, v in trainer.logged_metrics.items()},
        "best_model_path": os.path.relpath(checkpoint.best_model_path, out),
        "best_model_score": float(checkpoint.best_model_score), "strategy": trainer.strategy.name,
    }
    if "validate" in stages:
        report["validate"] = trainer.validate(model, DataLoader(data(16, 1), batch_size=8), ckpt_path="best",
                                              verbose=False)
    if "predict" in stages:
        report["predict"] = torch.cat(trainer.predict(model, DataLoader(data(20, 2), batch_size=8)))
    if trainer.global_rank == 0:
        torch.save(report, os.path.join(out, "report.pt"))
    return report


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], stages=tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else ("fit",))
