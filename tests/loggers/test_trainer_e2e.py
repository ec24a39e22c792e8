"""Loggers and the progress bar inside real ``Trainer.fit`` runs (1 process and 2 gloo ranks)."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks.progress import TQDMProgressBar
from distengine.loggers import CSVLogger, TensorBoardLogger
from tests.helpers import run_ranks
from tests.loggers.test_tensorboard import _scalars, _session_hparams


class LinReg(de.Module):
    """Records every loss it computes so the tests know the exact values logged."""

    def __init__(self, lr: float = 0.1, width: int = 2):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(width, 1)
        self.train_losses: list[float] = []
        self.val_batches: list[tuple[float, int]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.train_losses.append(loss.item())
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        if not self.trainer.sanity_checking:
            self.val_batches.append((loss.item(), len(x)))
        self.log("val_loss", loss, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _loaders(n_train: int = 8, n_val: int = 4, batch_size: int = 2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_train + n_val, 2, generator=g)
    y = x.sum(1, keepdim=True)
    return (DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=batch_size),
            DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=batch_size))


def _fit(tmp, logger, **kw):
    kw.setdefault("max_epochs", 2)
    kw.setdefault("enable_progress_bar", False)
    kw.setdefault("enable_model_summary", False)  # its table would mix with the bar's lines
    trainer = de.Trainer(accelerator="cpu", devices=1, default_root_dir=str(tmp), logger=logger,
                         log_every_n_steps=2, enable_checkpointing=False, **kw)
    module = LinReg()
    trainer.fit(module, *_loaders())
    return trainer, module


def _val_means(module: LinReg, per_epoch: int) -> list[float]:
    b = module.val_batches
    chunks = [b[i:i + per_epoch] for i in range(0, len(b), per_epoch)]
    return [sum(v * n for v, n in c) / sum(n for _, n in c) for c in chunks]


def test_fit_with_tensorboard_and_csv_exact_values(tmp_path):
    tb, csv = TensorBoardLogger(tmp_path / "tb"), CSVLogger(tmp_path / "csv")
    trainer, module = _fit(tmp_path, [tb, csv])
    # 4 batches x 2 epochs; logged after steps 2, 4, 6, 8 at Lightning's indices 1, 3, 5, 7
    losses = module.train_losses
    v0, v1 = _val_means(module, per_epoch=2)
    assert len(losses) == 8 and trainer.global_step == 8

    rows = (tmp_path / "csv" / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,train_loss,epoch,val_loss"
    assert rows[1:3] == [f"1,{losses[1]!r},0.0,", f"3,{losses[3]!r},0.0,"]
    assert rows[4:6] == [f"5,{losses[5]!r},1.0,", f"7,{losses[7]!r},1.0,"]
    for row, step, epoch, want in ((rows[3], 3, 0.0, v0), (rows[6], 7, 1.0, v1)):
        s, train, ep, val = row.split(",")  # epoch metrics: a row of their own
        assert (s, train, float(ep)) == (str(step), "", epoch)
        assert float(val) == pytest.approx(want, rel=1e-6)
    assert len(rows) == 7
    assert (tmp_path / "csv" / "lightning_logs" / "version_0" / "hparams.yaml").read_text() == \
        "lr: 0.1\nwidth: 2\n"

    scalars = _scalars(tb.log_dir)
    f32 = lambda v: float(np.float32(v))  # noqa: E731 - event files hold float32
    assert scalars["train_loss"] == [(1, f32(losses[1])), (3, f32(losses[3])),
                                     (5, f32(losses[5])), (7, f32(losses[7]))]
    assert [s for s, _ in scalars["val_loss"]] == [3, 7]
    assert [v for _, v in scalars["val_loss"]] == pytest.approx([v0, v1], rel=1e-6)
    assert scalars["epoch"] == [(1, 0.0), (3, 0.0), (3, 0.0), (5, 1.0), (7, 1.0), (7, 1.0)]
    assert scalars["hp_metric"] == [(0, -1.0)]
    assert _session_hparams(tb.log_dir) == {"lr": 0.1, "width": 2.0}
    assert trainer.log_dir == tb.log_dir  # the first logger decides the log dir


def test_default_logger_versions_per_run(tmp_path):
    dirs = []
    for _ in range(2):
        trainer, _ = _fit(tmp_path, True, max_epochs=1)
        assert isinstance(trainer.logger, TensorBoardLogger)
        dirs.append(trainer.log_dir)
    assert dirs == [str(tmp_path / "lightning_logs" / f"version_{i}") for i in range(2)]
    assert "train_loss" in _scalars(dirs[1])


@pytest.mark.parametrize("logger_kind", ["tensorboard", "csv"])
def test_single_logger(tmp_path, logger_kind):
    logger = TensorBoardLogger(tmp_path) if logger_kind == "tensorboard" else CSVLogger(tmp_path)
    trainer, module = _fit(tmp_path, logger, max_epochs=1)
    files = sorted(os.listdir(logger.log_dir))
    if logger_kind == "tensorboard":
        assert files[0].startswith("events.out.tfevents.") and files[1:] == ["hparams.yaml"]
        assert _scalars(logger.log_dir)["train_loss"][-1][0] == 3  # step 4, at Lightning's index 3
    else:
        assert files == ["hparams.yaml", "metrics.csv"]


def test_progress_bar_plain_lines_in_a_real_fit(tmp_path, capsys):
    _, module = _fit(tmp_path, False, enable_progress_bar=True, num_sanity_val_steps=2)
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert len(lines) == 4, out  # sanity checking prints nothing; validation + epoch per epoch
    v = _val_means(module, per_epoch=2)
    for epoch in range(2):
        loss = f"{module.train_losses[4 * epoch + 3]:.4g}"
        val_line, epoch_line = lines[2 * epoch], lines[2 * epoch + 1]
        assert re.match(r"Validation done: 2/2 \[", val_line), val_line
        assert f"val_loss={v[epoch]:.4g}" in val_line
        # train_loss (prog_bar=True) is the step's loss: no implicit `loss=` beside it
        assert re.match(rf"Epoch {epoch} done: 4/4 \[\d+\.\ds, \d+\.\d\d it/s\] [a-z_]+=", epoch_line)
        assert " loss=" not in epoch_line, epoch_line
        assert f"val_loss={v[epoch]:.4g}" in epoch_line and f"train_loss={loss}" in epoch_line


def test_progress_bar_line_when_stopped_mid_epoch(tmp_path, capsys):
    _fit(tmp_path, False, max_steps=3, callbacks=[TQDMProgressBar()], num_sanity_val_steps=0,
         enable_progress_bar=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Epoch 0 stopped: 3/4 (75%) ["), lines


def _two_ranks(rank: int, tmp: str):
    # Both ranks share the TensorBoard folder (as in a real job); every other path is
    # per rank, so anything under a rank-1 path was written by rank 1.
    tb = TensorBoardLogger(os.path.join(tmp, "shared"))
    csv = CSVLogger(os.path.join(tmp, f"csv{rank}"))
    trainer = de.Trainer(accelerator="cpu", max_epochs=2, default_root_dir=os.path.join(tmp, f"root{rank}"),
                         logger=[tb, csv], log_every_n_steps=1, enable_progress_bar=True,
                         callbacks=[TQDMProgressBar(plain=True)], num_sanity_val_steps=2)
    trainer.fit(LinReg(), *_loaders(n_train=8, n_val=4, batch_size=2))
    return trainer.log_dir, tb.version, csv.version, trainer.global_step


def test_two_ranks_rank_one_writes_no_files(tmp_path):
    (dir0, tbv0, csvv0, steps0), (dir1, tbv1, csvv1, steps1) = run_ranks(_two_ranks, 2, str(tmp_path),
                                                                         timeout=120)
    assert steps0 == steps1 == 4  # 8 samples over 2 ranks, batch 2 -> 2 steps per epoch
    assert (tbv0, csvv0) == (tbv1, csvv1) == (0, 0) and dir0 == dir1  # same version everywhere
    written = sorted(os.path.relpath(os.path.join(d, f), tmp_path)
                     for d, _, fs in os.walk(tmp_path) for f in fs)
    assert not [p for p in written if p.startswith(("csv1", "root1"))], written
    assert not (tmp_path / "csv1").exists() and not (tmp_path / "root1").exists()
    # the first logger's run folder holds the checkpoints too (Lightning 2.6.6's layout)
    ckpts = [p for p in written if p.startswith(os.path.join("shared", "lightning_logs", "version_0", "checkpoints"))]
    assert any(p.endswith("epoch=1-step=4.ckpt") for p in ckpts), written
    shared = [p for p in written if p.startswith("shared") and p not in ckpts]
    assert len(shared) == 2 and shared[1] == os.path.join("shared", "lightning_logs", "version_0",
                                                           "hparams.yaml"), shared
    assert "events.out.tfevents" in shared[0]
    steps = [s for s, _ in _scalars(dir0)["train_loss"]]
    assert steps == [0, 1, 2, 3]  # Lightning's indices: global_step - 1
    rows = (tmp_path / "csv0" / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,train_loss,epoch,val_loss" and len(rows) == 1 + 4 + 2
