"""Training job for the FSDP exact-resume test (one process per rank; RANK/WORLD_SIZE from the env).

    python fsdp_train.py --root DIR --out DIR --run NAME [--kill-step K] [--resume | --resume-from CKPT]
                         [--strategy fsdp|auto]

Blocks with dropout (the RNG state matters), AdamW with an LR schedule, gradient accumulation
and clipping, a shuffled 48-sample dataset, validation with 2 batches on rank 0 and 1 on rank 1,
a sharded checkpoint after every optimizer step (asynchronous). ``--kill-step K`` SIGKILLs every
rank at the start of the batch after optimizer step K. Rank 0 writes the complete final weights
(``<run>-final.pt``), those it resumed from (``<run>-start.pt``, with the step) and every logged
metric (``<run>-log.jsonl``); every rank the samples of each batch (``<run>-seen-<rank>.jsonl``).
"""
import argparse
import json
import os
import signal

import torch
from torch.utils.data import DataLoader, Dataset

import distengine as de
from distengine.callbacks.base import Callback
from distengine.callbacks.model_checkpoint import ModelCheckpoint
from distengine.loggers.base import Logger

N_TRAIN, BATCH, D = 48, 4, 8


class Indexed(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, D, generator=g)
        self.y = self.x.sum(1, keepdim=True).sin()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.drop = torch.nn.Linear(D, 2 * D), torch.nn.Linear(2 * D, D), torch.nn.Dropout(0.2)

    def forward(self, x):
        return x + self.fc2(self.drop(torch.tanh(self.fc1(x))))


class Net(de.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.Sequential(Block(), Block())
        self.head = torch.nn.Linear(D, 1)

    def forward(self, x):
        return self.head(self.blocks(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=0.02)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.7)}


class JsonlLogger(Logger):
    def __init__(self, path: str) -> None:
        self.path = path

    def log_metrics(self, metrics, step):
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "metrics": dict(metrics)}) + "\n")


class StartDump(Callback):
    """Rank 0 saves the complete weights and the step the fit starts from (after a restore)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, module):
        from distengine.strategies.fsdp import full_tensor

        weights = {k: full_tensor(v) for k, v in module.state_dict().items()}  # every rank gathers
        if trainer.global_rank == 0:
            torch.save({"global_step": trainer.global_step, "state_dict": weights}, self.path)


class SeenSamples(Callback):
    """Each rank appends the dataset indices of every training batch (with the epoch and the
    step the batch starts at) to ``<run>-seen-<rank>.jsonl``: the test checks data coverage."""

    def __init__(self, path: str, data: Dataset) -> None:
        self.path, self.rows = path, data.x

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        index = (batch[0][:, None, :] == self.rows[None]).all(-1).nonzero()[:, 1].tolist()
        with open(f"{self.path}-{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"epoch": trainer.current_epoch, "step": trainer.global_step, "index": index}) + "\n")


class Killer(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--kill-step", type=int)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--resume-from")
    ap.add_argument("--strategy", default="fsdp")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    de.seed_everything(7)
    data = Indexed(N_TRAIN)
    train = DataLoader(data, batch_size=BATCH, shuffle=True)
    val = DataLoader(Indexed(9), batch_size=BATCH)  # ranks get 5 and 4 samples: 2 batches and 1
    callbacks = [ModelCheckpoint(every_n_train_steps=1, save_top_k=1, save_last=True, async_save=True),
                 StartDump(os.path.join(args.out, f"{args.run}-start.pt")),
                 SeenSamples(os.path.join(args.out, f"{args.run}-seen"), data)]
    if args.kill_step is not None:
        callbacks.append(Killer(args.kill_step))
    strategy = args.strategy
    if strategy == "fsdp":
        from distengine.strategies.fsdp import FSDPStrategy

        strategy = FSDPStrategy(auto_wrap_policy={Block})
    trainer = de.Trainer(max_epochs=2, accelerator="cpu", strategy=strategy, default_root_dir=args.root,
                         callbacks=callbacks, log_every_n_steps=1, accumulate_grad_batches=2,
                         gradient_clip_val=0.5, logger=JsonlLogger(os.path.join(args.out, f"{args.run}-log.jsonl")),
                         enable_progress_bar=False, enable_model_summary=False)
    model = Net()
    trainer.fit(model, train, val, ckpt_path="last" if args.resume else args.resume_from)
    from distengine.strategies.fsdp import full_tensor

    final = {k: full_tensor(v) for k, v in model.state_dict().items()}  # every rank gathers
    if trainer.global_rank == 0:
        torch.save(final, os.path.join(args.out, f"{args.run}-final.pt"))


if __name__ == "__main__":
    main()
