"""Training job for the FSDP exact-resume test (one process per rank; RANK/WORLD_SIZE from the env).

    python fsdp_train.py --root DIR --out DIR --run NAME [--kill-step K] [--resume | --resume-from CKPT]
                         [--kill-rank R] [--strategy fsdp|mp|hsdp|mp-2x2|hsdp-2x2|auto]

Blocks with dropout (the RNG state matters), AdamW with an LR schedule, gradient accumulation
and clipping, a shuffled 48-sample dataset, validation with 2 batches on rank 0 and 1 on rank 1,
a sharded checkpoint after every optimizer step (asynchronous). ``--kill-step K`` SIGKILLs every
rank at the start of the batch after optimizer step K; with ``--kill-rank R`` only rank R, once
step K's checkpoint is published (``last.json`` names it; the others are left blocked in the
step's collectives for the caller to end); with ``--kill-in-save`` as well, rank R is SIGKILLed
inside the background write of step K's checkpoint instead, once training has gone on to the
next batch (the save in flight, nothing of it published). Rank 0 writes the complete final weights
and optimizer state by parameter name (``<run>-final.pt``), those it resumed from
(``<run>-start.pt``, with the step) and every logged
metric (``<run>-log.jsonl``); every rank the samples of each batch (``<run>-seen-<rank>.jsonl``)
and its own shards of the final weights and optimizer state (``<run>-local-<rank>.pt``).

``--strategy mp`` runs ``ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=WORLD_SIZE)``
(each block's fc1 column-wise, fc2 row-wise, then FSDP2 over the data-parallel dimension; the
dropout between them acts on each rank's slice); ``--strategy hsdp`` runs
``FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=(WORLD_SIZE, 1))`` (every rank a
replica); ``--strategy hsdp-shard`` the mesh ``(1, WORLD_SIZE)``. On 4 ranks, ``--strategy mp-2x2`` is
``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=2)`` and ``--strategy hsdp-2x2``
``device_mesh=(2, 2)`` (2 replicas of 2 shards).
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


def local_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """This rank's own shards of the weights and optimizer state (no collective)."""
    from torch.distributed.tensor import DTensor

    def mine(v):
        return (v.to_local() if isinstance(v, DTensor) else v).detach().clone()

    weights = {k: mine(v) for k, v in model.state_dict().items()}
    optim = {f"optim.{name}.{k}": mine(v)
             for name, p in model.named_parameters() for k, v in optimizer.state[p].items()}
    return {**weights, **optim}


def make_strategy(name: str, world: int):
    from distengine.strategies.fsdp import FSDPStrategy
    from distengine.strategies.model_parallel import ModelParallelStrategy

    if name == "fsdp":
        return FSDPStrategy(auto_wrap_policy={Block})
    if name == "mp":
        return ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=world)
    if name == "mp-2x2":
        return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=2)
    if name == "hsdp-2x2":
        return FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=(2, 2), auto_wrap_policy={Block})
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
    """SIGKILLs this process at the start of the batch after optimizer step ``step``; with
    ``after_publish``, once that step's checkpoint is published (its save may be asynchronous)."""

    def __init__(self, step: int, after_publish: bool = False) -> None:
        self.step, self.after_publish = step, after_publish

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        if self.after_publish:
            import time

            from distengine.checkpoint.io import read_last_pointer

            deadline = time.monotonic() + 120
            name = f"-step={self.step}.ckpt"
            while not (read_last_pointer(trainer.checkpoint_callback.dirpath) or "").endswith(name):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"step {self.step}'s checkpoint was not published within 120 s")
                time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGKILL)


class KillInSave(Callback):
    """SIGKILLs this process in its background (async) write of step ``step``'s checkpoint, after
    the training thread has started the batch that follows that step."""

    def __init__(self, step: int) -> None:
        import threading

        from torch.distributed.checkpoint.filesystem import FileSystemWriter

        self.step, self.training_on = step, threading.Event()
        write, callback = FileSystemWriter.write_data, self

        def killing_write(writer, plan, planner):
            if f"-step={step}.ckpt" in str(writer.path):  # the temporary folder of step K's save
                if not callback.training_on.wait(120):
                    raise RuntimeError(f"training did not go on after step {step}'s save")
                os.kill(os.getpid(), signal.SIGKILL)
            return write(writer, plan, planner)

        FileSystemWriter.write_data = killing_write

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.training_on.set()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--run", required=True)
    ap.add_argument("--kill-step", type=int)
    ap.add_argument("--kill-rank", type=int)
    ap.add_argument("--kill-in-save", action="store_true")
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
    if args.kill_step is not None and args.kill_rank in (None, int(os.environ.get("RANK", "0"))):
        killer = KillInSave(args.kill_step) if args.kill_in_save else \
            Killer(args.kill_step, after_publish=args.kill_rank is not None)
        callbacks.append(killer)
    strategy = make_strategy(args.strategy, int(os.environ.get("WORLD_SIZE", "1")))
    trainer = de.Trainer(max_epochs=2, accelerator="cpu", strategy=strategy, default_root_dir=args.root,
                         callbacks=callbacks, log_every_n_steps=1, accumulate_grad_batches=2,
                         gradient_clip_val=0.5, logger=JsonlLogger(os.path.join(args.out, f"{args.run}-log.jsonl")),
                         enable_progress_bar=False, enable_model_summary=False)
    model = TensorParallelNet() if args.strategy.startswith("mp") else Net()
    trainer.fit(model, train, val, ckpt_path="last" if args.resume else args.resume_from)
    final = complete_state(model, trainer.optimizers[0])
    local = os.path.join(args.out, f"{args.run}-local-{trainer.global_rank}.pt")
    torch.save(local_state(model, trainer.optimizers[0]), local)
    if trainer.global_rank == 0:
        torch.save(final, os.path.join(args.out, f"{args.run}-final.pt"))


if __name__ == "__main__":
    main()
