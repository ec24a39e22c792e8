"""The older (Lightning 1.x) module style, which many tutorials still use, running unchanged.

``training_step`` returns ``{'loss': ..., 'log': {...}, 'progress_bar': {...}}``,
``validation_step`` returns a dict, and ``validation_epoch_end(outputs)`` receives this
rank's list of those dicts and returns its own ``'log'``. It trains on the digits data of
``examples/digits.py`` (needs scikit-learn) and ends with validation accuracy >= 0.95
after the default 10 epochs (measured: 0.975). The 1.x names ``gpus=`` and ``weights_save_path=`` work as well.

Run it::

    python examples/lightning_1x_style.py
    distengine launch --cpus 2 examples/lightning_1x_style.py
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader

import distengine as pl  # the Lightning spelling works: pl.LightningModule, pl.Trainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits import load_digits_split  # noqa: E402  (the example next to this file)


class LitDigits(pl.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.layer_1 = nn.Linear(64, 128)
        self.layer_2 = nn.Linear(128, 10)

    def forward(self, x):
        return self.layer_2(torch.relu(self.layer_1(x.flatten(1))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        return {"loss": loss, "log": {"train_loss": loss}, "progress_bar": {"loss": loss}}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        return {"val_loss": nn.functional.cross_entropy(logits, y, reduction="sum"),
                "correct": (logits.argmax(dim=1) == y).sum(), "n": torch.tensor(len(y))}

    def validation_epoch_end(self, outputs):
        # 1.x style: aggregate this rank's step outputs by hand
        n = torch.stack([o["n"] for o in outputs]).sum().float()
        val_loss = torch.stack([o["val_loss"] for o in outputs]).sum() / n
        val_acc = torch.stack([o["correct"] for o in outputs]).sum().float() / n
        return {"val_loss": val_loss, "log": {"val_loss": val_loss, "val_acc": val_acc},
                "progress_bar": {"val_acc": val_acc}}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description="1.x-style module on the digits data")
    p.add_argument("--max-epochs", type=int, default=10)
    p.add_argument("--default-root-dir", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    pl.seed_everything(0)
    train, val = load_digits_split()
    trainer = pl.Trainer(max_epochs=args.max_epochs, accelerator="cpu",
                         default_root_dir=args.default_root_dir, enable_progress_bar=False)
    trainer.fit(LitDigits(), DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=128))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        print({k: round(v, 4) for k, v in metrics.items()}, flush=True)
    return metrics


if __name__ == "__main__":
    main()
