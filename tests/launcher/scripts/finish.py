"""Issue 12's job: train 50 steps with step checkpoints, resume from "last", then exit normally.

``python finish.py ROOT`` under ``distengine launch --cpus 2``. The job ends with a stop vote
in flight and with gloo worker threads that still free tensors after their collectives were
waited for; either used to abort a rank during interpreter shutdown (exit 134) in a few runs
in a hundred. STEPS (default 50) sets max_steps.
"""
import os
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks import ModelCheckpoint

torch.set_num_threads(1)


class Net(de.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def main():
    root = sys.argv[1]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 8, generator=g)
    data = TensorDataset(x, x.sum(dim=1, keepdim=True))
    ckpt = ModelCheckpoint(every_n_train_steps=20, save_top_k=-1, save_last=True)
    trainer = de.Trainer(max_steps=int(os.environ.get("STEPS", "50")), accelerator="cpu", devices="auto",
                         default_root_dir=root, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[ckpt])
    trainer.fit(Net(), DataLoader(data, batch_size=4), ckpt_path="last")
    print(f"done rank {trainer.global_rank} step {trainer.global_step}", flush=True)


if __name__ == "__main__":
    main()
