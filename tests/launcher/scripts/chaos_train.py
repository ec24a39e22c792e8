"""A 2-rank job for the chaos test: checkpoints every step, resumes from "last", and injects
at most one fault when told to.

    distengine launch --cpus 2 chaos_train.py OUT_DIR [FAULT RANK STEP]

FAULT (injected on the given rank when its global step reaches STEP, on the first attempt):
  kill      the rank SIGKILLs itself
  exit0     the rank calls os._exit(0) (a rank that quits early without an error)
  hang      the rank sleeps (its peer fails at the collective timeout)
  pause     the rank writes OUT_DIR/at_step and waits up to 30 s for OUT_DIR/go or for a
            SIGTERM of its own (the launcher's, forwarded), so the test can signal or kill the
            launcher at a known step
Rank 0 writes OUT_DIR/final.pt (the weights) when training completes.
"""
import os
import signal
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks.base import Callback
from distengine.callbacks.model_checkpoint import ModelCheckpoint

torch.set_num_threads(1)


class Net(de.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                       torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class Fault(Callback):
    def __init__(self, out: str, kind: str, rank: int, step: int):
        self.out, self.kind, self.rank, self.step = out, kind, rank, step
        self.fired = False

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        # at the first step at or after `step`: a run resumed from a graceful stop's checkpoint may
        # start past it (a stop after a launcher SIGTERM at step 16 saved at step 18, and a fault
        # scheduled at 17 never came: the job finished instead)
        if self.fired or trainer.global_rank != self.rank or trainer.global_step < self.step:
            return
        self.fired = True
        with open(os.path.join(self.out, "fault_at"), "w") as f:  # when, for the test's table
            f.write(repr(time.time()))
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.kind == "exit0":
            os._exit(0)
        elif self.kind == "hang":
            time.sleep(3600)
        elif self.kind == "pause":
            got = []
            previous = signal.getsignal(signal.SIGTERM)

            def on_sigterm(signum, frame):  # note it, then do what was to be done
                got.append(signum)
                if callable(previous):
                    previous(signum, frame)
                else:
                    signal.signal(signal.SIGTERM, previous)
                    os.kill(os.getpid(), signum)

            signal.signal(signal.SIGTERM, on_sigterm)
            print(f"paused at step {self.step}", flush=True)
            open(os.path.join(self.out, "at_step"), "w").close()
            deadline = time.monotonic() + 30
            while not got and not os.path.exists(os.path.join(self.out, "go")) and time.monotonic() < deadline:
                time.sleep(0.02)


def main():
    out = sys.argv[1]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(96, 6, generator=g)
    data = TensorDataset(x, x.sum(1, keepdim=True) + 0.1 * torch.randn(96, 1, generator=g))
    callbacks = [ModelCheckpoint(every_n_train_steps=1, save_top_k=2, save_last=True)]
    if len(sys.argv) == 5:
        callbacks.append(Fault(out, sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    trainer = de.Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks,
                         default_root_dir=os.path.join(out, "root"))
    model = Net()
    trainer.fit(model, DataLoader(data, batch_size=8, shuffle=True), ckpt_path="last")
    if trainer.global_rank == 0:
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, os.path.join(out, "final.pt"))


if __name__ == "__main__":
    main()
