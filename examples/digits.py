"""Classify scikit-learn's bundled handwritten digits with a small CNN: a real, offline data set.

The digits data (1,797 grey 8x8 images, 10 classes) ship inside scikit-learn, so nothing
is downloaded. An 80/20 split with a fixed seed leaves 1,438 training and 359 validation
images. With the defaults (10 epochs, batch 32 per process, SGD with momentum and a cosine
schedule) the run reaches **validation accuracy >= 0.97** (measured: 0.989 on 1 process,
0.983 on 2 CPU processes, where each rank sees half the data per epoch); 5 epochs already
give >= 0.95. ``val_acc`` and ``val_loss`` are logged every epoch.

Run it (scikit-learn is the ``examples`` extra: ``pip install 'distengine[examples]'``)::

    python examples/digits.py                         # 1 process: breakpoints work here
    python examples/digits.py --devices 2             # 2 CPU ranks: the Trainer re-runs this
                                                      # script once per rank through the launcher
    distengine launch --cpus 2 examples/digits.py     # the same 2-rank job, started explicitly
    python examples/digits.py --accelerator gpu --devices 1 --precision bf16-mixed

``--metrics-json PATH`` makes global rank zero write the final metrics there.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import distengine as de


def load_digits_split(val_fraction: float = 0.2, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """The digits images as ``[N, 1, 8, 8]`` floats in [0, 1] and int64 labels, split 80/20.

    The split depends only on ``seed``, so every rank (and every run) gets the same one.

    Example::

        train, val = load_digits_split()
        len(train), len(val)   # (1438, 359)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("examples/digits.py needs scikit-learn: pip install 'distengine[examples]' "
                         "(or pip install scikit-learn)") from None
    digits = load_digits()
    # pixel values are integers 0..16
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(images) * val_fraction)
    val_idx, train_idx = order[:n_val], order[n_val:]
    return (TensorDataset(images[train_idx], labels[train_idx]),
            TensorDataset(images[val_idx], labels[val_idx]))


class DigitsCNN(de.Module):
    """Two 3x3 convolutions, one pooling, two linear layers (about 38k parameters).

    Example::

        model = DigitsCNN(lr=0.05)
        de.Trainer(max_epochs=10, accelerator="cpu").fit(model, train_loader, val_loader)
    """

    def __init__(self, lr: float = 0.05, momentum: float = 0.9) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr, self.momentum = lr, momentum
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.25),
            nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        # on_epoch logging weights each batch by its size, so the epoch value is the exact
        # accuracy over the validation set, on 1 rank or several
        self.log("val_loss", nn.functional.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)
        # one cosine period over the whole run, stepped once per epoch
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.trainer.max_epochs, 1))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a small CNN on scikit-learn's digits.")
    p.add_argument("--max-epochs", type=int, default=10)
    p.add_argument("--devices", default="auto", help="'auto' or a number of devices (CPU processes on CPU)")
    p.add_argument("--accelerator", default="cpu", help="cpu, gpu/cuda or auto")
    p.add_argument("--precision", default="32-true", help="32-true, 16-mixed, bf16-mixed, ...")
    p.add_argument("--default-root-dir", default=None, help="where logs and checkpoints go")
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress-bar", action="store_true")
    p.add_argument("--metrics-json", default=None, help="rank zero writes the final metrics here")
    args = p.parse_args(argv)
    if args.max_epochs < 1:
        p.error(f"--max-epochs must be at least 1, got {args.max_epochs}")
    if not (str(args.devices) == "auto" or str(args.devices).isdigit()):
        p.error(f"--devices must be 'auto' or a positive integer, got {args.devices!r}")
    return args


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    # each process uses one thread: with several ranks on one machine, more threads per rank
    # only fight over the same cores
    torch.set_num_threads(1)
    de.seed_everything(args.seed)
    train, val = load_digits_split(seed=args.seed)
    model = DigitsCNN(lr=args.lr)
    trainer = de.Trainer(
        max_epochs=args.max_epochs,
        accelerator=args.accelerator,
        devices=int(args.devices) if str(args.devices).isdigit() else args.devices,
        precision=args.precision,
        default_root_dir=args.default_root_dir,
        enable_progress_bar=not args.no_progress_bar,
        log_every_n_steps=10,
    )
    trainer.fit(model,
                DataLoader(train, batch_size=args.batch_size, shuffle=True),
                DataLoader(val, batch_size=128))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        print(f"world_size={trainer.world_size} epochs={trainer.current_epoch} "
              f"val_acc={metrics.get('val_acc', float('nan')):.4f} "
              f"val_loss={metrics.get('val_loss', float('nan')):.4f}", flush=True)
        if args.metrics_json:
            tmp = args.metrics_json + ".tmp"
            with open(tmp, "w") as f:
                json.dump({**metrics, "world_size": trainer.world_size}, f)
            os.replace(tmp, args.metrics_json)
    return metrics


if __name__ == "__main__":
    main()
