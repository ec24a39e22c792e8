"""Two real gloo ranks: a loader over an IterableDataset is not given a sampler (as in
Lightning 2.6.6); the dataset shards itself by rank. The checkpoint folder, which follows the
logger's version, is the same on both ranks."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset

import distengine as de
from tests.helpers import run_ranks


class RankShardedStream(IterableDataset):
    """Samples ``rank, rank + world, ...`` of ``range(n)``, as a user shards a stream."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        rank = dist.get_rank() if dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        for i in range(rank, self.n, world):
            yield torch.full((4,), float(i)), torch.tensor(float(i))


class Seen(de.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.train_ids: list[int] = []
        self.val_ids: list[int] = []
        self.epoch_ends = 0

    def training_step(self, batch, batch_idx):
        x, idx = batch
        self.train_ids += idx.long().tolist()
        return self.lin(x / 16).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        x, idx = batch
        self.val_ids += idx.long().tolist()
        self.log("val_loss", self.lin(x / 16).pow(2).mean())

    def on_train_epoch_end(self):
        self.epoch_ends += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit_stream(rank, tmp):
    model = Seen()
    trainer = de.Trainer(max_epochs=2, accelerator="cpu", default_root_dir=tmp, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, DataLoader(RankShardedStream(16), batch_size=2),
                DataLoader(RankShardedStream(8), batch_size=2))
    return dict(step=trainer.global_step, epoch=trainer.current_epoch, ends=model.epoch_ends,
                train=model.train_ids, val=model.val_ids, dirpath=trainer.checkpoint_callback.dirpath,
                files=sorted(os.listdir(trainer.checkpoint_callback.dirpath)))


def test_iterable_dataset_shards_itself_under_ddp(tmp_path):
    r0, r1 = run_ranks(_fit_stream, 2, str(tmp_path))
    for r in (r0, r1):
        assert (r["step"], r["epoch"], r["ends"]) == (8, 2, 2)  # 4 batches per rank and epoch
    assert sorted(set(r0["train"]) | set(r1["train"])) == list(range(16))
    assert not set(r0["train"]) & set(r1["train"])
    assert sorted(r0["val"] + r1["val"]) == sorted(list(range(8)) * 2)  # 2 validations
    # the folder follows rank zero's logger version, agreed by both ranks
    assert r0["dirpath"] == r1["dirpath"] == str(tmp_path / "lightning_logs" / "version_0" / "checkpoints")
    assert "epoch=1-step=8.ckpt" in r0["files"]
