"""torchmetrics objects in self.log / self.log_dict, one process: the values written to the loggers and
put in callback_metrics equal torchmetrics computed by hand over the same predictions; bad input;
checkpoints of a module with metric attributes. The 2-rank test is tests/distributed/test_torchmetrics_ddp.py."""
from __future__ import annotations

import csv
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks import ModelCheckpoint
from distengine.loggers import CSVLogger

tm = pytest.importorskip("torchmetrics")
from torchmetrics import MeanSquaredError, MetricCollection, SumMetric  # noqa: E402
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score  # noqa: E402


def class_data(n: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, (x[:, :3] * torch.tensor([1.0, 2.0, 3.0])).argmax(1))


def p0_t0(logits, y):
    """A regression view of the batch for MeanSquaredError: P(class 0) against (y == 0)."""
    return logits.softmax(1)[:, 0], (y == 0).float()


class Classify(de.Module):
    """Logs torchmetrics objects the ways Lightning users do, and records every prediction
    (stage, epoch, logits, targets) so a test can compute the metrics by hand."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(6, 3)
        self.train_acc = MulticlassAccuracy(num_classes=3)
        self.train_mse = MeanSquaredError()
        self.val_metrics = MetricCollection({"acc": MulticlassAccuracy(num_classes=3),
                                             "f1": MulticlassF1Score(num_classes=3)}, prefix="val_")
        self.val_mse = MeanSquaredError()
        self.records: list[tuple[str, int, torch.Tensor, torch.Tensor]] = []

    def _record(self, stage, logits, y):
        if not self.trainer.sanity_checking:
            self.records.append((stage, self.current_epoch, logits.detach().clone(), y.clone()))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self._record("train", logits, y)
        self.train_acc(logits, y)  # forward: this batch's value is the step value
        self.log("train_acc", self.train_acc, on_step=True, on_epoch=True, prog_bar=True)
        self.train_mse.update(*p0_t0(logits, y))  # update only: no step value (as in Lightning)
        self.log("train_mse", self.train_mse, on_step=True, on_epoch=True)
        return torch.nn.functional.cross_entropy(logits, y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self._record("val", logits, y)
        self.val_metrics.update(logits, y)
        self.log_dict(self.val_metrics)
        self.val_mse(*p0_t0(logits, y))
        self.log("val_mse", self.val_mse, on_step=True, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def by_hand(metric, records):
    """torchmetrics over recorded batches, in a fresh metric object."""
    m = metric.clone()
    m.reset()
    for logits, y in records:
        if isinstance(m, MeanSquaredError):
            m.update(*p0_t0(logits, y))
        else:
            m.update(logits, y)
    return float(m.compute())


def read_csv(path):
    """metrics.csv as {column: [(step, value), ...]} for the non-empty cells."""
    out: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = int(row.pop("step"))
            for k, v in row.items():
                if v:
                    out.setdefault(k, []).append((step, float(v)))
    return out


def same_series(got, expected):
    """Written (step, value) pairs: the same steps, values equal up to float32 summation order."""
    return [st for st, _ in got] == [st for st, _ in expected] and \
        [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)


def test_fit_writes_torchmetrics_values_computed_by_hand(tmp_path):
    model = Classify()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_acc", mode="max", save_top_k=1,
                           filename="{epoch}-{val_acc:.4f}")
    logger = CSVLogger(tmp_path, name="csv")
    trainer = de.Trainer(max_epochs=2, log_every_n_steps=2, accelerator="cpu", logger=logger, callbacks=[ckpt],
                         enable_progress_bar=False, default_root_dir=str(tmp_path))
    # 40 training samples in batches of 8 (5 steps an epoch); 21 validation samples: 8 + 8 + 5
    trainer.fit(model, DataLoader(class_data(40), batch_size=8), DataLoader(class_data(21, seed=1), batch_size=8))
    logged = read_csv(f"{logger.log_dir}/metrics.csv")
    acc, mse, f1 = MulticlassAccuracy(num_classes=3), MeanSquaredError(), MulticlassF1Score(num_classes=3)
    train = [(lg, y) for s, _, lg, y in model.records if s == "train"]
    val = {e: [(lg, y) for s, ep, lg, y in model.records if s == "val" and ep == e] for e in (0, 1)}

    # step values: the metric's forward value on that batch, written every 2 steps at index step - 1
    assert same_series(logged["train_acc_step"], [(s, by_hand(acc, [train[s]])) for s in (1, 3, 5, 7, 9)])
    assert "train_mse_step" not in logged  # fed with update() only: no forward value to write
    # epoch values: compute() over the epoch's batches (then reset: epoch 1 does not include epoch 0)
    assert same_series(logged["train_acc_epoch"], [(4, by_hand(acc, train[:5])), (9, by_hand(acc, train[5:]))])
    assert same_series(logged["train_mse_epoch"], [(4, by_hand(mse, train[:5])), (9, by_hand(mse, train[5:]))])
    # validation: the collection under its prefixed keys over all 21 samples (the sanity batches excluded)
    for key, metric in (("val_acc", acc), ("val_f1", f1), ("val_mse_epoch", mse)):
        assert same_series(logged[key], [(4, by_hand(metric, val[0])), (9, by_hand(metric, val[1]))]), key
    assert same_series(logged["val_mse_step"], [(i, by_hand(mse, [b])) for i, b in enumerate(val[0] + val[1])])

    cb = trainer.callback_metrics
    assert float(cb["train_acc"]) == float(cb["train_acc_epoch"]) == pytest.approx(by_hand(acc, train[5:]))
    assert float(cb["val_acc"]) == pytest.approx(by_hand(acc, val[1]))
    assert float(cb["val_mse"]) == float(cb["val_mse_epoch"]) == pytest.approx(by_hand(mse, val[1]))
    assert trainer.progress_bar_metrics["train_acc_epoch"] == pytest.approx(by_hand(acc, train[5:]))
    # ModelCheckpoint monitored the metric object's epoch value
    best = max(by_hand(acc, val[0]), by_hand(acc, val[1]))
    assert float(ckpt.best_model_score) == pytest.approx(best)
    assert ckpt.best_model_path.endswith(f"val_acc={best:.4f}.ckpt")
    # every logged metric was reset after its epoch
    for m in (model.train_acc, model.train_mse, model.val_mse, *model.val_metrics.values()):
        assert m.update_count == 0


class Misuse(de.Module):
    """One validation step that logs a metric object in the way ``mode`` says."""

    def __init__(self, mode: str):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(6, 3)
        self.mode = mode
        self.acc = MulticlassAccuracy(num_classes=3)
        self.never = SumMetric()
        self.coll = MetricCollection({"acc": MulticlassAccuracy(num_classes=3)})
        self.per_class = MulticlassAccuracy(num_classes=3, average=None)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        mode = self.mode
        if mode == "options":  # reduce_fx warns and is ignored; sync_dist, batch_size: no effect
            self.acc.update(logits, y)
            self.log("acc", self.acc, reduce_fx="max", sync_dist=True, batch_size=3)
        elif mode == "never_updated":
            self.acc.update(logits, y)
            self.log("acc", self.acc)
            self.log("never", self.never)
        elif mode == "tensor_style":
            self.acc.update(logits, y)
        elif mode == "collection_in_log":
            self.log("coll", self.coll)
        elif mode == "not_an_attribute":
            self.log("acc", MulticlassAccuracy(num_classes=3))
        elif mode == "not_scalar":
            self.per_class.update(logits, y)
            self.log("per_class", self.per_class)
        elif mode == "metric_then_number":
            self.log("acc", self.acc if batch_idx == 0 else 0.5)

    def on_validation_epoch_end(self):
        if self.mode == "tensor_style":  # computed and reset by the user: as before
            self.log("acc", self.acc.compute())
            self.acc.reset()


def _validate(tmp_path, mode):
    model = Misuse(mode)
    trainer = de.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path))
    data = class_data(10, seed=2)
    out = trainer.validate(model, DataLoader(data, batch_size=4), verbose=False)[0]
    return out, by_hand(MulticlassAccuracy(num_classes=3), [(model.net(data.tensors[0]), data.tensors[1])])


def test_options_without_effect_on_a_metric_object(tmp_path):
    with pytest.warns(UserWarning, match=r"reduce_fx='max'\): reduce_fx has no effect on a torchmetrics Metric"):
        out, expected = _validate(tmp_path, "options")
    assert out["acc"] == pytest.approx(expected)


def test_metric_never_updated_and_tensor_style(tmp_path):
    with pytest.warns(UserWarning, match="compute.*called before the ``update``"):
        out, expected = _validate(tmp_path, "never_updated")
    assert out == pytest.approx({"acc": expected, "never": 0.0})  # SumMetric's empty state
    out, expected = _validate(tmp_path, "tensor_style")
    assert out == pytest.approx({"acc": expected})


@pytest.mark.parametrize("mode, message", [
    ("collection_in_log", r"self.log\('coll', <MetricCollection>\) logs one value; log a MetricCollection "
                          r"with self.log_dict\(collection\)"),
    ("not_an_attribute", r"this metric object is not an attribute of the module; log an attribute or pass "
                         r"metric_attribute=<one of \['acc', "),
    ("not_scalar", r"compute\(\) returned a tensor of shape \(3,\); only metrics with a scalar value"),
    ("metric_then_number", r"self.log\('acc', ...\) got float where earlier calls logged the metric 'acc'"),
])
def test_bad_metric_logging_is_a_one_line_error(tmp_path, mode, message):
    with pytest.raises(ValueError, match=message) as info:
        _validate(tmp_path, mode)
    assert "\n" not in str(info.value)


class Persisted(Classify):
    def __init__(self):
        super().__init__()
        self.train_acc.persistent(True)


@pytest.mark.filterwarnings("ignore:ModelCheckpoint. the checkpoint folder changed")
def test_checkpoints_of_a_module_with_metric_attributes(tmp_path):
    """Metric states are non-persistent by default: not in the checkpoint (as in torchmetrics and
    Lightning), and resuming gives the values of the uninterrupted run. A persistent metric is saved
    as it is when the checkpoint is written (at the epoch end, before its reset) and restored."""
    def run(model, epochs, folder, **fit_kw):
        ckpt = ModelCheckpoint(dirpath=tmp_path / folder, monitor="val_acc", mode="max", save_top_k=-1,
                               filename="{epoch}")
        trainer = de.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, callbacks=[ckpt],
                             enable_progress_bar=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
        trainer.fit(model, DataLoader(class_data(40), batch_size=8), DataLoader(class_data(21, seed=1), batch_size=8),
                    **fit_kw)
        return {k: float(v) for k, v in trainer.callback_metrics.items()}

    straight = run(Classify(), 2, "a")
    first = tmp_path / "a" / "epoch=0.ckpt"
    state = torch.load(first, weights_only=False)["state_dict"]
    assert sorted(state) == ["net.bias", "net.weight"]
    restored = Classify.load_from_checkpoint(first)
    assert torch.equal(restored.net.weight, state["net.weight"]) and restored.train_acc.update_count == 0
    resumed = run(Classify(), 2, "b", ckpt_path=first)
    assert resumed.keys() == straight.keys()
    assert all(math.isclose(resumed[k], straight[k], rel_tol=1e-6) for k in straight), (resumed, straight)

    model = Persisted()
    run(model, 1, "c")
    acc = MulticlassAccuracy(num_classes=3)
    train0 = [(lg, y) for s, _, lg, y in model.records if s == "train"]
    state = torch.load(tmp_path / "c" / "epoch=0.ckpt", weights_only=False)["state_dict"]
    assert int(state["train_acc.tp"].sum() + state["train_acc.fn"].sum()) == 40
    restored = Persisted.load_from_checkpoint(tmp_path / "c" / "epoch=0.ckpt")
    with pytest.warns(UserWarning, match="before the ``update``"):  # torchmetrics keeps no update count
        assert float(restored.train_acc.compute()) == pytest.approx(by_hand(acc, train0))
    # as in Lightning: resuming restores that state, so the next epoch's value continues from it
    model = Persisted()
    out = run(model, 2, "d", ckpt_path=tmp_path / "c" / "epoch=0.ckpt")
    train1 = [(lg, y) for s, _, lg, y in model.records if s == "train"]
    assert out["train_acc_epoch"] == pytest.approx(by_hand(acc, train0 + train1))
