"""A save that runs out of room mid-fit (tests/checkpoint/test_disk_full.py); prints one JSON line.

    python tests/checkpoint/scripts/disk_full.py <folder> fsize    # RLIMIT_FSIZE (1 MB) from epoch 1
    python tests/checkpoint/scripts/disk_full.py <folder> enospc   # <folder>: a small tmpfs (run in unshare)

A 2-epoch fit of a ~2.1 MB model saving a checkpoint every epoch (save_top_k=1): the epoch-0 save
fits, the epoch-1 save does not. Then, in ``enospc`` mode, a sharded (DCP) save in this process
runs out of room too. Reported: the errors, the folder's files, what last.json points at, and
whether that checkpoint loads."""
import json
import os
import resource
import signal
import sys

import torch

torch.set_num_threads(1)
import distengine as de  # noqa: E402
from distengine.callbacks.model_checkpoint import ModelCheckpoint  # noqa: E402
from distengine.checkpoint.io import is_valid_checkpoint, read_last_pointer  # noqa: E402

folder, mode = sys.argv[1], sys.argv[2]
ckpts = os.path.join(folder, "checkpoints")


class Net(de.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(512, 1024)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_train_epoch_start(self):
        if mode == "fsize" and self.current_epoch == 1:  # a file may not grow past 1 MB from now on
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG, no signal
            resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))


def error(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - reported
        return f"{type(exc).__name__}: {exc}"
    return None


data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 512)), batch_size=4)
trainer = de.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=[ModelCheckpoint(dirpath=ckpts, save_top_k=1)])
out = {"fit": error(lambda: trainer.fit(Net(), data))}
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
last = read_last_pointer(ckpts)
out.update(files=sorted(os.listdir(ckpts)), last=last and os.path.basename(last), last_ok=bool(last) and
           is_valid_checkpoint(last, deep=True))
if mode == "enospc":
    from distengine.checkpoint.sharded import ShardedCheckpointer

    with open(os.path.join(folder, "filler"), "wb") as f:  # leave ~0.5 MB of the file system free
        f.write(b"\0" * max(os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize - 500_000, 0))
    path = os.path.join(folder, "sharded.ckpt")
    out["sharded"] = error(lambda: ShardedCheckpointer().save(path, {"state_dict": {"w": torch.zeros(500_000)}}))
    out["sharded_left"] = os.path.exists(path)
print(json.dumps(out))
