"""``self.log`` names in evaluation results, as Lightning 2.6 gives them (checked against it by
hand: the same module under pytorch-lightning 2.6.6 returned these dicts): an ``on_step`` +
``on_epoch`` value is ``*_epoch`` in the results, ``add_dataloader_idx=False`` keeps the name and
puts the value in the logging dataloader's results only, a name may not carry the suffix itself,
and a metric object that is not an attribute is refused before any batch trains."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.utilities.exceptions import MisconfigurationException


class Logs(de.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        self.log_dict({"common": 789.0})
        self.log("diff", float(dataloader_idx + 1))
        self.log(f"own_{dataloader_idx}", 321.0 * (dataloader_idx + 1), add_dataloader_idx=False)
        self.log("both", 1.0, on_step=True, on_epoch=True)
        self.log("hidden", 5.0, logger=False)  # in callback_metrics, not in the results (as in Lightning)


def _loaders(n):
    return [DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4) for _ in range(n)]


def _trainer(**kw):
    return de.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False,
                      enable_model_summary=False, **kw)


def test_results_per_dataloader_hold_what_that_dataloader_logged():
    results = _trainer().test(Logs(), _loaders(2), verbose=False)
    assert results == [
        {"common/dataloader_idx_0": 789.0, "diff/dataloader_idx_0": 1.0, "own_0": 321.0,
         "both_epoch/dataloader_idx_0": 1.0},
        {"common/dataloader_idx_1": 789.0, "diff/dataloader_idx_1": 2.0, "own_1": 642.0,
         "both_epoch/dataloader_idx_1": 1.0},
    ]


def test_one_dataloader_results_name_a_step_and_epoch_value_epoch():
    trainer = _trainer()
    assert trainer.test(Logs(), _loaders(1)[0], verbose=False) == [
        {"common": 789.0, "diff": 1.0, "own_0": 321.0, "both_epoch": 1.0}]
    assert set(trainer.callback_metrics) >= {"both", "both_epoch", "hidden"}  # callback_metrics keep both names


def test_a_name_with_the_dataloader_suffix_is_refused():
    class Suffixed(Logs):
        def training_step(self, batch, batch_idx):
            self.log("foo/dataloader_idx_0", 1.0)
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationException, match="dataloader_idx_"):
        _trainer(max_epochs=1, limit_val_batches=0).fit(Suffixed(), _loaders(1)[0])


def test_a_metric_object_that_is_no_attribute_is_refused_with_the_attribute_names():
    torchmetrics = pytest.importorskip("torchmetrics")

    class Loose(Logs):
        def __init__(self, with_attribute):
            super().__init__()
            if with_attribute:
                self.bar = torchmetrics.MeanMetric()

        def training_step(self, batch, batch_idx):
            metric = torchmetrics.MeanMetric()
            metric.update(1.0)
            self.log("foo", metric)
            return super().training_step(batch, batch_idx)

    with pytest.raises(MisconfigurationException, match="set it in __init__"):
        _trainer(max_epochs=1, limit_val_batches=0).fit(Loose(False), _loaders(1)[0])
    with pytest.raises(MisconfigurationException, match=r"metric_attribute=<one of \['bar'\]>"):
        _trainer(max_epochs=1, limit_val_batches=0).fit(Loose(True), _loaders(1)[0])


def test_metric_attribute_names_the_metric():
    torchmetrics = pytest.importorskip("torchmetrics")

    class Named(Logs):
        def __init__(self):
            super().__init__()
            self.mean = torchmetrics.MeanMetric()

        def test_step(self, batch, batch_idx):
            self.mean.update(batch[0].sum(1))
            self.log("mean", self.mean, metric_attribute="mean")

    data = torch.arange(32.0).reshape(8, 4)
    results = _trainer().test(Named(), DataLoader(TensorDataset(data), batch_size=4), verbose=False)
    assert results == [{"mean": pytest.approx(float(data.sum(1).mean()))}]
    with pytest.raises(MisconfigurationException, match="no metric attribute 'nope'"):
        class Wrong(Named):
            def test_step(self, batch, batch_idx):
                self.log("mean", self.mean, metric_attribute="nope")
        _trainer().test(Wrong(), DataLoader(TensorDataset(data), batch_size=4), verbose=False)
