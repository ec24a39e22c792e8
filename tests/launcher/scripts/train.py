"""A small distengine Trainer job for the launcher tests (2 CPU ranks, DDP, checkpoints).

Environment knobs (all optional):
  OUT_DIR        where each rank writes start_<rank>_<restart>.json and final_<rank>.pt
  EPOCHS         max_epochs (default 3)
  KILL_AT_STEP   on the first attempt, rank 1 SIGKILLs itself after this global step
  READY_AT_STEP  rank 0 writes OUT_DIR/ready after this global step (then keeps training)
  DEVICES        Trainer(devices=...) (default "auto"; an int makes a plain run re-launch itself)
  STEP_SLEEP     seconds every rank sleeps after each batch (a slow step; default 0)
"""
import json
import os
import signal
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks.base import Callback

torch.set_num_threads(1)
OUT = os.environ.get("OUT_DIR", ".")
RESTART = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


class Net(de.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Probe(Callback):
    def on_train_start(self, trainer, pl_module):
        with open(os.path.join(OUT, f"start_{trainer.global_rank}_{RESTART}.json"), "w") as f:
            json.dump({"global_step": trainer.global_step, "epoch": trainer.current_epoch,
                       "world_size": trainer.world_size, "pid": os.getpid()}, f)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        kill_at = int(os.environ.get("KILL_AT_STEP", "-1"))
        if RESTART == 0 and trainer.global_rank == 1 and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        ready_at = int(os.environ.get("READY_AT_STEP", "-1"))
        if trainer.global_rank == 0 and step == ready_at:
            open(os.path.join(OUT, "ready"), "w").close()
        # in short sleeps, as a real step runs Python often: a signal the kernel hands to another
        # thread is acted on within 0.1 s (one long sleep would hold it, and merge a second one)
        end = time.monotonic() + float(os.environ.get("STEP_SLEEP", "0"))
        while time.monotonic() < end:
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))


def main():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    data = TensorDataset(x, x.sum(dim=1, keepdim=True))
    trainer = de.Trainer(max_epochs=int(os.environ.get("EPOCHS", "3")), accelerator="cpu",
                         devices=os.environ.get("DEVICES", "auto"), logger=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Probe()],
                         default_root_dir=os.path.join(OUT, "root"))
    model = Net()
    trainer.fit(model, DataLoader(data, batch_size=8))
    torch.save({k: v.clone() for k, v in model.state_dict().items()},
               os.path.join(OUT, f"final_{trainer.global_rank}.pt"))
    print(f"done rank {trainer.global_rank} step {trainer.global_step} argv {sys.argv[1:]}", flush=True)


if __name__ == "__main__":
    main()
