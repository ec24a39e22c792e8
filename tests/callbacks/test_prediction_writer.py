"""BasePredictionWriter: each rank writes its own predictions with the real dataset indices."""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import DataLoader

from distengine.callbacks import BasePredictionWriter
from tests.distributed.test_ddp import IndexDataset, Recorder, _trainer
from tests.helpers import run_ranks


class IdPredictor(Recorder):
    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        x, _, idx = batch
        return {"idx": idx.long(), "y": self.net(x).squeeze(1)}


class FileWriter(BasePredictionWriter):
    def __init__(self, out, interval):
        super().__init__(interval)
        self.out = out

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        torch.save({"pred": prediction, "idx": list(batch_indices), "dl": dataloader_idx},
                   os.path.join(self.out, f"b_{trainer.global_rank}_{dataloader_idx}_{batch_idx}.pt"))

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        torch.save({"pred": predictions, "idx": batch_indices},
                   os.path.join(self.out, f"e_{trainer.global_rank}.pt"))


def _predict(rank, tmp, interval, n, shuffle):
    torch.manual_seed(0)
    module = IdPredictor()
    trainer = _trainer(tmp, callbacks=[FileWriter(tmp, interval)])
    out = trainer.predict(module, DataLoader(IndexDataset(n), batch_size=2, shuffle=shuffle),
                          return_predictions=False)
    return out, trainer.predict_loop.predictions


def _check_epoch_files(tmp, world, n):
    seen = []
    for r in range(world):
        d = torch.load(os.path.join(tmp, f"e_{r}.pt"))
        assert len(d["idx"]) == 1, "one list of batches per dataloader"
        for pred, idx in zip(d["pred"], d["idx"][0]):
            assert pred["idx"].tolist() == idx, "the indices are those of the predicted samples"
            assert pred["y"].device.type == "cpu"
            seen += idx
    assert sorted(seen) == list(range(n)), "every sample written exactly once over the ranks"


def _predict_both(rank, tmp):
    """9 samples (uneven: 4 and 5 per rank) and 1 sample (rank 0 gets none), in one launch."""
    return [_predict(rank, os.path.join(tmp, str(n)), "batch_and_epoch", n, False) for n in (9, 1)]


def test_two_ranks_write_each_sample_once(tmp_path):
    for n in (9, 1):
        (tmp_path / str(n)).mkdir()
    for per_rank in run_ranks(_predict_both, 2, str(tmp_path)):
        for out, kept in per_rank:
            assert out is None and kept == [], "return_predictions=False: nothing gathered or kept"
    for n in (9, 1):
        folder = tmp_path / str(n)
        _check_epoch_files(str(folder), 2, n)
        seen = []
        for name in os.listdir(folder):
            if name.startswith("b_"):
                d = torch.load(folder / name)
                assert d["pred"]["idx"].tolist() == d["idx"] and d["dl"] == 0
                seen += d["idx"]
        assert sorted(seen) == list(range(n))


def test_one_process_shuffled_loader_reports_the_drawn_indices(tmp_path):
    out, _ = _predict(0, str(tmp_path), "epoch", 7, True)
    assert out is None
    d = torch.load(tmp_path / "e_0.pt")
    flat = [i for b in d["idx"][0] for i in b]
    assert sorted(flat) == list(range(7)) and flat != list(range(7)), "shuffled order, as drawn"
    _check_epoch_files(str(tmp_path), 1, 7)
    assert not any(name.startswith("b_") for name in os.listdir(tmp_path)), "epoch only"


def test_two_dataloaders_and_workers(tmp_path):
    module = IdPredictor()
    trainer = _trainer(str(tmp_path), callbacks=[FileWriter(str(tmp_path), "epoch")])
    loaders = [DataLoader(IndexDataset(5), batch_size=2, num_workers=1), DataLoader(IndexDataset(3), batch_size=2)]
    preds = trainer.predict(module, loaders)
    assert [len(p) for p in preds] == [3, 2], "return_predictions=True still returns them"
    d = torch.load(tmp_path / "e_0.pt")
    assert d["idx"] == [[[0, 1], [2, 3], [4]], [[0, 1], [2]]]
    assert [[p["idx"].tolist() for p in dl] for dl in d["pred"]] == d["idx"]


def test_bad_interval_and_missing_override(tmp_path):
    with pytest.raises(ValueError, match="write_interval"):
        BasePredictionWriter("step")
    trainer = _trainer(str(tmp_path), callbacks=[BasePredictionWriter("batch")])
    with pytest.raises(NotImplementedError):
        trainer.predict(IdPredictor(), DataLoader(IndexDataset(2), batch_size=2))
