"""Train a small MLP on synthetic in-memory data: the workload the benchmarks measure.

The data are Gaussian features with labels from a fixed random linear "teacher", so the
task is learnable and the loss falls; nothing is downloaded or read from disk. Everything
the benchmarks need to build the *same* work outside the Trainer (the data, the layers in
the same order, the seed) is a plain function here, so a hand-written loop can reuse it.

Run it::

    python examples/synthetic.py --max-epochs 2                # one process
    python examples/synthetic.py --devices 2                    # 2 CPU ranks via the launcher
    distengine launch --cpus 2 examples/synthetic.py --report-json /tmp/fit.json

By default it runs with the Trainer's defaults: a progress line per epoch, logs and a
checkpoint under ``--default-root-dir`` (default: the current folder). ``--features off`` turns
the logger, checkpoints, progress bar and model summary off (the benchmarks run it so).
``--report-json PATH`` makes global rank zero write the fit time (seconds spent in
``Trainer(...)`` + ``fit``), the number of optimizer steps and samples per second.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import distengine as de


def make_dataset(num_samples: int = 12_800, dim: int = 32, classes: int = 10, seed: int = 0) -> TensorDataset:
    """Gaussian inputs labelled by a fixed random linear teacher (deterministic in ``seed``).

    Example::

        ds = make_dataset(1024, dim=16)
        x, y = ds[0]          # x: float32 [16], y: int64 scalar
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, dim, generator=gen)
    teacher = torch.randn(dim, classes, generator=gen)
    y = (x @ teacher).argmax(dim=1)
    return TensorDataset(x, y)


def build_mlp(dim: int = 32, hidden: int = 128, classes: int = 10) -> nn.Sequential:
    """The MLP shared by the example, the hand-written loops and the Lightning contender.

    Build it right after ``torch.manual_seed(s)`` and two builds hold identical weights.
    """
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, classes),
    )


class SyntheticMLP(de.Module):
    """A classifier over :func:`build_mlp` trained with plain SGD.

    Example::

        torch.manual_seed(0)
        model = SyntheticMLP(dim=32, hidden=128)
        de.Trainer(max_epochs=1, logger=False).fit(model, DataLoader(make_dataset(), batch_size=64))
    """

    def __init__(self, dim: int = 32, hidden: int = 128, classes: int = 10, lr: float = 0.1,
                 log_loss: bool = True) -> None:
        super().__init__()
        self.net = build_mlp(dim, hidden, classes)
        self.lr = lr
        # The benchmarks turn logging off to compare against a loop that logs nothing.
        self.log_loss = log_loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        if self.log_loss:
            self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-epochs", type=int, default=2)
    p.add_argument("--devices", default="auto", help="'auto' or a number of devices/CPU processes")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--default-root-dir", default=None)
    p.add_argument("--num-samples", type=int, default=12_800)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--features", choices=("off", "defaults"), default="defaults",
                   help="'defaults' (default): the Trainer's defaults (progress bar, TensorBoard/CSV logs, "
                        "checkpoints); 'off': no logger, checkpoints or progress bar (what the benchmarks run)")
    p.add_argument("--validate", action="store_true", help="also run a validation split")
    p.add_argument("--report-json", default=None, help="rank zero writes fit time and throughput here")
    args = p.parse_args(argv)
    if args.max_epochs < 1:
        p.error(f"--max-epochs must be at least 1, got {args.max_epochs}")
    if args.batch_size < 1 or args.num_samples < args.batch_size:
        p.error(f"--num-samples ({args.num_samples}) must be at least --batch-size ({args.batch_size}) >= 1")
    if not (str(args.devices) == "auto" or str(args.devices).isdigit()):
        p.error(f"--devices must be 'auto' or a positive integer, got {args.devices!r}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    devices: int | str = int(args.devices) if str(args.devices).isdigit() else args.devices

    train = make_dataset(args.num_samples, args.dim, seed=args.seed)
    val = make_dataset(max(args.num_samples // 10, args.batch_size), args.dim, seed=args.seed + 1)
    torch.manual_seed(args.seed)
    model = SyntheticMLP(args.dim, args.hidden, log_loss=args.features == "defaults")
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)
    val_loader = DataLoader(val, batch_size=256) if args.validate else None

    flags: dict = {"max_epochs": args.max_epochs, "accelerator": args.accelerator, "devices": devices,
                       "precision": args.precision, "default_root_dir": args.default_root_dir}
    if args.features == "off":
        flags.update(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)

    # `de.Trainer` is imported on first use; do that before the clock, which measures
    # training, not imports (the benchmarks measure import time on its own).
    trainer_cls = de.Trainer
    # The clock starts before the Trainer exists: building it, setting up the process
    # group and wrapping the model are part of what a user waits for.
    start = time.perf_counter()
    trainer = trainer_cls(**flags)
    trainer.fit(model, train_loader, val_loader)
    fit_s = time.perf_counter() - start

    report = {
        "fit_s": fit_s,
        "world_size": trainer.world_size,
        "global_step": trainer.global_step,
        # every rank sees num_samples / world_size samples per epoch; the job sees them all
        "samples_per_s": args.num_samples * args.max_epochs / fit_s,
    }
    if args.report_json and trainer.is_global_zero:
        tmp = args.report_json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f)
        os.replace(tmp, args.report_json)
    return report


if __name__ == "__main__":
    main()
