"""A one-process job writing sharded checkpoints (the strategy's ``checkpoint_layout`` set to
"sharded") with ``ModelCheckpoint(filename="model", save_top_k=1, save_last=True)``: every save
reuses the name ``model.ckpt``.

    python sharded_crash.py --root DIR --steps N [--resume] [--layout sharded|full] [--out FILE]

``DISTENGINE_TEST_CRASH=<point>:<n>`` (read by distengine.checkpoint.sharded) kills the process
at crash point ``<point>`` of the n-th publish. ``--out`` receives the step the run resumed
from (-1 for a fresh start) and the final weights.
"""
import argparse

import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks.base import Callback
from distengine.callbacks.model_checkpoint import ModelCheckpoint
from distengine.loggers.csv_logger import CSVLogger


class Net(de.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.fc(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--layout", default="sharded")
    ap.add_argument("--out")
    ap.add_argument("--logger", action="store_true", help="a CSV logger: version_N run folders")
    ap.add_argument("--version", type=int, help="the CSV logger's version (default: the next free one)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    de.seed_everything(3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    ckpt = ModelCheckpoint(filename="model", save_top_k=1, save_last=True, every_n_train_steps=1)
    trainer = de.Trainer(max_steps=args.steps, accelerator="cpu", default_root_dir=args.root, callbacks=[ckpt],
                         logger=CSVLogger(args.root, version=args.version) if args.logger else False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.checkpoint_layout = args.layout
    model = Net()
    started = {}

    class Record(Callback):
        def on_train_start(self, trainer, module):
            started["step"] = trainer.global_step

    trainer.callbacks.append(Record())
    trainer.fit(model, data, ckpt_path="last" if args.resume else None)
    if args.out:
        torch.save({"start": started.get("step", -1), "state_dict": model.state_dict()}, args.out)


if __name__ == "__main__":
    main()
