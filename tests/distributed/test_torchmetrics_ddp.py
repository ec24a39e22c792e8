"""torchmetrics objects on 2 real gloo ranks: epoch values equal the 1-process values on uneven
validation shards (21 samples: 10 + 11; 1 sample: rank 0 runs no batch), through torchmetrics' own
sync; the training epoch value is the metric over both ranks' batches."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import distengine as de
from tests.helpers import run_ranks

pytest.importorskip("torchmetrics")
from torchmetrics import MeanSquaredError  # noqa: E402
from torchmetrics.classification import MulticlassAccuracy  # noqa: E402

from tests.core.test_torchmetrics import Classify, by_hand, class_data, p0_t0  # noqa: E402


def _trainer(tmp, **kw):
    return de.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      default_root_dir=tmp, **kw)


def _validate(trainer, model, n):
    return trainer.validate(model, DataLoader(class_data(n, seed=1), batch_size=4), verbose=False)[0]


class OnlyRankZeroLogs(Classify):
    def validation_step(self, batch, batch_idx):
        if self.global_rank == 0:
            self.val_mse(*p0_t0(self.net(batch[0]), batch[1]))
            self.log("val_mse", self.val_mse)


def _on_ranks(rank, tmp):
    model = Classify()
    trainer = _trainer(tmp, max_epochs=1)
    trainer.fit(model, DataLoader(class_data(40), batch_size=4), DataLoader(class_data(21, seed=1), batch_size=4))
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    records = [(s, lg, y) for s, _, lg, y in model.records]
    val, one = _validate(trainer, model, 21), _validate(trainer, model, 1)
    try:  # a metric object only one rank logs: an error on every rank, not a hang in its sync
        _validate(trainer, OnlyRankZeroLogs(), 21)
        error = None
    except RuntimeError as exc:
        error = str(exc)
    return fit_metrics, records, val, one, model.net.state_dict(), error


def test_epoch_metrics_on_two_ranks_equal_one_process(tmp_path):
    (fit0, rec0, val0, one0, w0, err0), (fit1, rec1, val1, one1, w1, err1) = run_ranks(_on_ranks, 2, str(tmp_path))
    assert err0 == err1 == ("ranks logged different metric names in validation: rank 0: ['metric:val_mse']; "
                            "rank 1: []. Log the same names on every rank (a torchmetrics Metric is computed on "
                            "every rank: log it on every rank).")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    acc, mse = MulticlassAccuracy(num_classes=3), MeanSquaredError()
    # fit: the epoch value of each metric is torchmetrics over both ranks' batches
    for stage, key, metric in (("train", "train_acc_epoch", acc), ("train", "train_mse_epoch", mse),
                               ("val", "val_acc", acc), ("val", "val_mse_epoch", mse)):
        batches = [(lg, y) for s, lg, y in rec0 + rec1 if s == stage]
        assert fit0[key] == fit1[key] == pytest.approx(by_hand(metric, batches), rel=1e-6), key
    assert sum(len(y) for s, _, y in rec0 + rec1 if s == "val") == 21  # each sample once, no padding

    # validate: the 1-process value of the same weights, on 21 samples and on 1 (rank 0 has none)
    model = Classify()
    model.net.load_state_dict(w0)
    trainer = _trainer(str(tmp_path / "one"))
    for n, two in ((21, (val0, val1)), (1, (one0, one1))):
        single = _validate(trainer, model, n)
        assert set(single) == {"val_acc", "val_f1", "val_mse_epoch"}  # on_step + on_epoch: *_epoch, as Lightning
        for got in two:
            assert got.keys() == single.keys()
            assert got["val_acc"] == single["val_acc"], n  # counts: exact
            assert got["val_f1"] == pytest.approx(single["val_f1"], rel=1e-6)
            assert got["val_mse_epoch"] == pytest.approx(single["val_mse_epoch"], rel=1e-6)
