"""A small distengine training script that the SLURM tests submit (2 CPU ranks, gloo).

It is an ordinary user script: nothing in it knows about SLURM. Rank 0 prints one line per
optimizer step (the tests watch for it to signal the job mid-epoch) and, when fit completes,
saves the final weights to ``--out`` so runs can be compared exactly.

    python train_job.py --root DIR --out weights.pt [--epochs 2 --batches 8 --step-sleep 0.2]
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks.base import Callback
from distengine.distributed import collectives

parser = argparse.ArgumentParser()
parser.add_argument("--root", required=True, help="Trainer default_root_dir (checkpoints go here)")
parser.add_argument("--out", required=True, help="where rank 0 saves the final state_dict")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--batches", type=int, default=8, help="batches per rank per epoch")
parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds per step, standing in for compute")
parser.add_argument("--fail-at", type=int, default=-1, help="raise in training_step at this global step")
args = parser.parse_args()
torch.set_num_threads(1)


class Regression(de.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == args.fail_at:
            raise RuntimeError(f"deliberate failure at step {args.fail_at} on rank {self.trainer.global_rank}")
        if args.step_sleep:
            time.sleep(args.step_sleep)  # simulated compute, so the tests can signal mid-epoch
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class Progress(Callback):
    def on_fit_start(self, trainer, pl_module):
        # every rank takes part; rank 0's log then shows who joined the process group
        joined = collectives.all_gather_object((trainer.global_rank, trainer.world_size))
        if trainer.is_global_zero:
            began = os.environ.get("DISTENGINE_SLURM_JOB_START", "")
            since = f" ({time.time() - float(began):.1f}s after the job started)" if began.isdigit() else ""
            print(f"ranks joined: {sorted(r for r, _ in joined)} world_size={trainer.world_size} "
                  f"start step={trainer.global_step}{since}", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.is_global_zero:
            print(f"step {trainer.global_step} epoch {trainer.current_epoch} batch {batch_idx}", flush=True)


def main() -> None:
    de.seed_everything(1234)
    world = 2
    n = args.batches * 4 * world  # batch size 4 per rank
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=gen)
    y = x.sum(dim=1, keepdim=True).sin()
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True)
    model = Regression()
    trainer = de.Trainer(max_epochs=args.epochs, default_root_dir=args.root, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Progress()],
                         num_sanity_val_steps=0)
    trainer.fit(model, loader)
    if trainer.is_global_zero:
        torch.save(model.state_dict(), args.out)
        print(f"finished at step {trainer.global_step}; weights saved to {args.out}", flush=True)


if __name__ == "__main__":
    main()
