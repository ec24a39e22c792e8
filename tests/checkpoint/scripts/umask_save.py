"""Save every kind of checkpoint file under a given umask (tests/checkpoint/test_file_modes.py).

    python tests/checkpoint/scripts/umask_save.py 0o022 <folder>

A 1-epoch fit with a CSVLogger (hparams.yaml) and a ModelCheckpoint (checkpoint files,
last.ckpt, last.json, the version and checkpoints folders), then a sharded (DCP) checkpoint
directory in this one process (its shards, .metadata, meta.pt, checksums.json) with its own
last.json and last.ckpt link."""
import os
import sys

import torch

os.umask(int(sys.argv[1], 8))
root = sys.argv[2]
torch.set_num_threads(1)

import distengine as de  # noqa: E402
from distengine.callbacks.model_checkpoint import ModelCheckpoint  # noqa: E402
from distengine.checkpoint.io import link_atomic, write_last_pointer  # noqa: E402
from distengine.checkpoint.sharded import ShardedCheckpointer  # noqa: E402
from distengine.loggers import CSVLogger  # noqa: E402


class Net(de.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(width, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
trainer = de.Trainer(max_epochs=1, accelerator="cpu", logger=CSVLogger(os.path.join(root, "logs")),
                     callbacks=[ModelCheckpoint(every_n_train_steps=1, save_top_k=-1, save_last=True)],
                     enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
trainer.fit(Net(), data)
folder = os.path.join(root, "sharded")
path = os.path.join(folder, "epoch=0-step=1.ckpt")
ShardedCheckpointer().save(path, {"state_dict": {"w": torch.arange(4.0)}}, meta={"global_step": 1})
write_last_pointer(folder, path)
link_atomic(path, os.path.join(folder, "last.ckpt"))
print("saved")
