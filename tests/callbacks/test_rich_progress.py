"""RichProgressBar: the same plain lines as TQDMProgressBar off a terminal, rich bars on one."""
from __future__ import annotations

import copy
import io
import re
import types

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks import RichProgressBar, RichProgressBarTheme, TQDMProgressBar

pytest.importorskip("rich")

RATE = re.compile(r"\[\d+\.\ds, \d+\.\d\d it/s\]")


class Reg(de.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(bar, **kw):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 2, generator=g)
    y = x.sum(1, keepdim=True)
    trainer = de.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, callbacks=[bar], **kw)
    model = Reg()
    trainer.fit(model, DataLoader(TensorDataset(x[:8], y[:8]), batch_size=2),
                DataLoader(TensorDataset(x[8:], y[8:]), batch_size=2))
    trainer.validate(model, DataLoader(TensorDataset(x[8:], y[8:]), batch_size=2), verbose=False)
    return trainer


def test_plain_lines_off_a_terminal_are_the_tqdm_bars_lines():
    rich_out, tqdm_out = io.StringIO(), io.StringIO()
    _fit(RichProgressBar(console_kwargs={"file": rich_out}))  # a StringIO is no terminal
    trainer = _fit(TQDMProgressBar(file=tqdm_out))
    lines = [RATE.sub("[RATE]", line) for line in rich_out.getvalue().splitlines()]
    assert lines == [RATE.sub("[RATE]", line) for line in tqdm_out.getvalue().splitlines()]
    assert len(lines) == 5 and "\x1b" not in rich_out.getvalue()
    val = trainer.callback_metrics["val_loss"].item()
    # train_loss (prog_bar=True) is the step's loss, shown once: no implicit `loss=` beside it
    assert lines[3].startswith("Epoch 1 done: 4/4 [RATE] val_loss=") and f"val_loss={val:.4g}" in lines[3]
    assert "train_loss=" in lines[3] and " loss=" not in lines[3]
    assert lines[4] == f"Validation done: 2/2 [RATE] val_loss={val:.4g}"


def test_terminal_mode_draws_bars_with_the_metrics():
    theme = RichProgressBarTheme(metrics_format=".5f", metrics_text_delimiter=" | ")
    bar = RichProgressBar(theme=theme, console_kwargs={
        "file": io.StringIO(), "force_terminal": True, "record": True, "width": 200})
    trainer = _fit(bar)
    assert bar.progress is None  # stopped and dropped at the end of each run
    raw = bar.console.file.getvalue()
    assert "\x1b[" in raw  # drawn as a live display, not as plain lines
    assert "done:" not in raw and "it/s]" not in raw
    text = bar.console.export_text()
    val = trainer.callback_metrics["val_loss"].item()
    assert "train_loss: " in text and f"val_loss: {val:.5f}" in text and " | " in text
    assert "Epoch 0" in text and "Epoch 1" in text and "Sanity Checking" in text and "Validation" in text


@pytest.mark.parametrize("leave", [False, True])
def test_leave_keeps_a_bar_per_epoch(leave):
    bar = RichProgressBar(leave=leave, console_kwargs={"file": io.StringIO(), "force_terminal": True})
    trainer = types.SimpleNamespace(is_global_zero=True, current_epoch=0, num_training_batches=3,
                                    num_val_batches=[2], progress_bar_metrics={}, sanity_checking=False)
    bar.on_train_start(trainer, None)
    for epoch in range(3):
        trainer.current_epoch = epoch
        bar.on_train_epoch_start(trainer, None)
        for i in range(3):
            bar.on_train_batch_end(trainer, None, torch.tensor(0.5), None, i)
        bar.on_validation_start(trainer, None)
        bar.on_validation_batch_end(trainer, None, None, None, 0, 0)
        trainer.progress_bar_metrics = {"val_acc": 0.25 * epoch}
        bar.on_validation_end(trainer, None)
        bar.on_train_epoch_end(trainer, None)
    tasks = [(t.description, t.completed, t.total, t.fields.get("metrics")) for t in bar.progress.tasks]
    last = [("Epoch 2", 3, 3, "loss: 0.500 val_acc: 0.500")]  # the validation bar is gone
    assert tasks == ([("Epoch 0", 3, 3, "loss: 0.500 val_acc: 0.000"),
                      ("Epoch 1", 3, 3, "loss: 0.500 val_acc: 0.250")] + last if leave else last)
    bar.on_train_end(trainer, None)
    assert bar.progress is None


def test_only_rank_zero_draws_and_misconfigurations_raise():
    out = io.StringIO()
    trainer = types.SimpleNamespace(is_global_zero=False, current_epoch=0, num_training_batches=2,
                                    progress_bar_metrics={}, sanity_checking=False)
    bar = RichProgressBar(console_kwargs={"file": out, "force_terminal": True})
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    bar.on_train_batch_end(trainer, None, torch.tensor(1.0), None, 0)
    bar.on_train_epoch_end(trainer, None)
    assert out.getvalue() == "" and bar.console is None and bar.progress is None
    with pytest.raises(ValueError, match=r"enable_progress_bar=False\) but callbacks holds a RichProgressBar"):
        de.Trainer(enable_progress_bar=False, callbacks=[RichProgressBar()])
    with pytest.raises(ValueError, match="2 progress bars"):
        de.Trainer(callbacks=[RichProgressBar(), TQDMProgressBar()])
    with pytest.raises(TypeError, match="RichProgressBarTheme"):
        RichProgressBar(theme={"metrics": "red"})
    with pytest.raises(ValueError, match="refresh_rate must be an int >= 0"):
        RichProgressBar(refresh_rate=-1)
    assert RichProgressBar(refresh_rate=0).is_disabled


def test_copy_mid_run():
    bar = RichProgressBar(console_kwargs={"file": io.StringIO(), "force_terminal": True})
    trainer = types.SimpleNamespace(is_global_zero=True, current_epoch=0, num_training_batches=2,
                                    progress_bar_metrics={}, sanity_checking=False)
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    clone = copy.deepcopy(bar)
    assert bar.progress is not None and clone.progress is None and clone.console is None
    bar.on_train_end(trainer, None)
    assert bar.progress is None
