"""Training job for the FSDP exact-resume test (one process per rank; RANK/WORLD_SIZE from the env).

    python fsdp_train.py --root DIR --out DIR --run NAME [--kill-step K] [--resume | --resume-from CKPT]
                         [--strategy fsdp|mp|hsdp|auto]

Blocks with dropout (the RNG state matters), AdamW with an LR schedule, gradient accumulation
and clipping, a shuffled 48-sample dataset, validation with 2 batches on rank 0 and 1 on rank 1,
a sharded checkpoint after every optimizer step (asynchronous). ``--kill-step K`` SIGKILLs every
rank at the start of the batch after optimizer step K. Rank 0 writes the complete final weights
and optimizer state by parameter name (``<run>-final.pt``), those it resumed from
(``<run>-start.pt``, with the step) and every logged
metric (``<run>-log.jsonl``); every rank the samples of each batch (``<run>-seen-<rank>.jsonl``).

``--strategy mp`` runs ``ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=WORLD_SIZE)``
(each block's fc1 column-wise, fc2 row-wise, then FSDP2 over the data-parallel dimension; the
dropout between them acts on each rank's slice); ``--strategy hsdp`` runs
``FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=(WORLD_SIZE, 1))`` (every rank a
replica); ``--strategy hsdp-shard`` the mesh ``(1, WORLD_SIZE)``.
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


class TensorParallelNet(Net):
    """``Net`` parallelizing itself on ``ModelParallelStrategy``'s mesh."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        tp, dp = self.device_mesh["tensor_parallel"], self.device_mesh["data_parallel"]
        for block in self.blocks:
            parallelize_module(block, tp, {"fc1": ColwiseParallel(), "fc2": RowwiseParallel()})
            fully_shard(block, mesh=dp)
        fully_shard(self, mesh=dp)


def complete_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Complete weights and optimizer state (by parameter name): a collective, every rank calls it."""
    from distengine.strategies.fsdp import full_tensor

    weights = {k: full_tensor(v).detach().clone() for k, v in model.state_dict().items()}
    optim = {f"optim.{name}.{k}": full_tensor(v).detach().clone()
             for name, p in model.named_parameters() for k, v in optimizer.state[p].items()}
    return {**weights, **optim}


def make_strategy(name: str, world: int):
    from distengine.strategies.fsdp import FSDPStrategy
    from distengine.strategies.model_parallel import ModelParallelStrategy

    if name == "fsdp":
        return FSDPStrategy(auto_wrap_policy={Block})
    if name == "mp":
        return ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=world)
    if name in ("hsdp", "hsdp-shard"):
        mesh = (world, 1) if name == "hsdp" else (1, world)
        return FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=mesh, auto_wrap_policy={Block})
    return name


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
    strategy = make_strategy(args.strategy, int(os.environ.get("WORLD_SIZE", "1")))
    trainer = de.Trainer(max_epochs=2, accelerator="cpu", strategy=strategy, default_root_dir=args.root,
                         callbacks=callbacks, log_every_n_steps=1, accumulate_grad_batches=2,
                         gradient_clip_val=0.5, logger=JsonlLogger(os.path.join(args.out, f"{args.run}-log.jsonl")),
                         enable_progress_bar=False, enable_model_summary=False)
    model = TensorParallelNet() if args.strategy == "mp" else Net()
    trainer.fit(model, train, val, ckpt_path="last" if args.resume else args.resume_from)
    final = complete_state(model, trainer.optimizers[0])
    if trainer.global_rank == 0:
        torch.save(final, os.path.join(args.out, f"{args.run}-final.pt"))


if __name__ == "__main__":
    main()
