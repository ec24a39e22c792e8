"""Training job for the exact-resume tests (one process per rank; RANK/WORLD_SIZE from the env).

    python resume_train.py --root DIR --out DIR --run NAME [--kill-step K | --kill-epoch E]
                           [--ckpt-every steps|epochs] [--resume]

A small MLP with dropout (so the RNG state matters), Adam and an epoch-stepped LR schedule,
trained on a shuffled 40-sample dataset with num_workers=2 and a small validation set. Every
rank logs the sample indices it trained on; rank zero's logger records every logged metric.
``--kill-step K`` SIGKILLs every rank at the start of the batch after optimizer step K (the
checkpoint of step K is on disk, the next batch already fetched); ``--kill-epoch E`` does so
at the start of epoch E. ``--term-steps 2,3`` sends SIGTERM to rank r right after step ``steps[r]`` (a graceful stop:
the ranks agree, save one checkpoint and exit 143). ``--resume`` passes ``ckpt_path="last"``.
``--workers N`` (default 2) sets the training loader's ``num_workers``, ``--generator`` gives it
its own seeded ``generator=``. Rank zero saves the final
weights and four ``torch.rand`` draws made after the fit.
"""
import argparse
import json
import os
import signal
import time

import torch
from torch.utils.data import DataLoader, Dataset

import distengine as de
from distengine.callbacks.base import Callback
from distengine.callbacks.model_checkpoint import ModelCheckpoint
from distengine.loggers.base import Logger

N_TRAIN, N_VAL, BATCH = 40, 8, 4


class Indexed(Dataset):
    def __init__(self, n: int, offset: int) -> None:
        g = torch.Generator().manual_seed(1234 + offset)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x.sum(1, keepdim=True) * 0.5 + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


class Net(de.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                       torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.02)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.7)}


class JsonlLogger(Logger):
    def __init__(self, path: str) -> None:
        self.path = path

    def log_metrics(self, metrics, step):
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "metrics": dict(metrics)}) + "\n")


class Recorder(Callback):
    """Per rank: which samples each optimizer step trained on."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": trainer.current_epoch, "step": trainer.global_step,
                                "idx": batch[2].tolist()}) + "\n")


class Killer(Callback):
    def __init__(self, step: int | None, epoch: int | None) -> None:
        self.step, self.epoch = step, epoch

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.step is not None and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_start(self, trainer, module):
        if self.epoch is not None and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class Terminator(Callback):
    """Deliver a real SIGTERM to this rank after optimizer step ``step`` (noting the time)."""

    def __init__(self, step: int, note: str) -> None:
        self.step, self.note = step, note

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with open(self.note, "w") as f:
                f.write(str(time.time()))
            os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--kill-step", type=int)
    ap.add_argument("--kill-epoch", type=int)
    ap.add_argument("--ckpt-every", choices=["steps", "epochs"], default="steps")
    ap.add_argument("--term-steps")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--generator", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    os.makedirs(args.out, exist_ok=True)
    de.seed_everything(7)
    train = DataLoader(Indexed(N_TRAIN, 0), batch_size=BATCH, shuffle=True,
                       num_workers=args.workers, persistent_workers=False,
                       generator=torch.Generator().manual_seed(3) if args.generator else None)
    val = DataLoader(Indexed(N_VAL, 1), batch_size=BATCH)
    ckpt = ModelCheckpoint(every_n_train_steps=1 if args.ckpt_every == "steps" else None,
                           every_n_epochs=1 if args.ckpt_every == "epochs" else None,
                           save_top_k=1)
    callbacks = [Recorder(os.path.join(args.out, f"{args.run}-idx-rank{rank}.jsonl")), ckpt]
    if args.kill_step is not None or args.kill_epoch is not None:
        callbacks.append(Killer(args.kill_step, args.kill_epoch))
    if args.term_steps:
        step = int(args.term_steps.split(",")[rank])
        callbacks.append(Terminator(step, os.path.join(args.out, f"{args.run}-term-rank{rank}")))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # the GPU check (benchmarks/gpu_check.py) runs this same matrix with accelerator "gpu"
    accelerator = os.environ.get("DISTENGINE_TEST_ACCELERATOR", "cpu")
    trainer = de.Trainer(max_epochs=args.epochs, accelerator=accelerator, devices=world,
                         default_root_dir=args.root, callbacks=callbacks, log_every_n_steps=1,
                         logger=JsonlLogger(os.path.join(args.out, f"{args.run}-log.jsonl")),
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    model = Net()
    trainer.fit(model, train, val, ckpt_path="last" if args.resume else None)
    if rank == 0:
        torch.save(model.state_dict(), os.path.join(args.out, f"{args.run}-final.pt"))
        torch.save(torch.rand(4), os.path.join(args.out, f"{args.run}-draw.pt"))  # the RNG after the fit


if __name__ == "__main__":
    main()
