"""The callbacks inside real fits: one process, then 2 gloo ranks where only rank 1 asks to stop."""
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks.base import Callback
from distengine.callbacks.device_stats import DeviceStatsMonitor
from distengine.callbacks.early_stopping import EarlyStopping
from distengine.callbacks.lr_monitor import LearningRateMonitor
from distengine.callbacks.model_summary import ModelSummary
from distengine.callbacks.timer import Timer
from distengine.loggers.base import Logger
from tests.helpers import run_ranks

#: validation loss per epoch: best at epoch 1, then worse for ever
VAL_CURVE = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3]


class Model(de.Module):
    def __init__(self, lr=0.05, with_scheduler=False):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.lr = lr
        self.with_scheduler = with_scheduler
        self.epochs_started = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self.lin(x) - y) ** 2).mean()
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(VAL_CURVE[self.current_epoch]))

    def on_train_epoch_start(self):
        self.epochs_started += 1

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        if not self.with_scheduler:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def loader(n=16, batch_size=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


class Recorder(Logger):
    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step):
        self.calls.append((step, dict(metrics)))


def make_trainer(**kw):
    kw.setdefault("logger", False)
    return de.Trainer(accelerator="cpu", enable_checkpointing=False, enable_progress_bar=False,
                      num_sanity_val_steps=0, **kw)


def test_early_stopping_in_a_real_fit():
    model, stop = Model(), EarlyStopping("val_loss", patience=2)
    trainer = make_trainer(max_epochs=10, callbacks=[stop])
    trainer.fit(model, loader(), loader())
    # epochs 0, 1 improve; 2 and 3 do not -> stop after epoch 3
    assert stop.stopped_epoch == 3 and stop.stopping_reason.name == "PATIENCE_EXHAUSTED"
    assert model.epochs_started == 4
    assert trainer.global_step == 4 * 4
    assert float(stop.best_score) == 0.5
    assert trainer.early_stopping_callback is stop


def test_min_epochs_delays_the_stop():
    model, stop = Model(), EarlyStopping("val_loss", patience=2)
    trainer = make_trainer(max_epochs=10, min_epochs=6, callbacks=[stop])
    trainer.fit(model, loader(), loader())
    assert model.epochs_started == 6  # the stop requested after epoch 3 waited for epoch 5


def test_min_epochs_runs_the_last_required_epoch_to_its_end():
    model, stop = Model(), EarlyStopping("val_loss", patience=2)
    trainer = make_trainer(max_epochs=10, min_epochs=6, callbacks=[stop])
    trainer.fit(model, loader(), loader())
    assert trainer.global_step == 6 * 4  # Lightning: min_epochs=6 means six complete epochs


def test_strict_missing_metric_fails_the_fit_with_the_available_keys():
    trainer = make_trainer(max_epochs=3, callbacks=[EarlyStopping("val_acc")])
    try:
        trainer.fit(Model(), loader(), loader())
    except RuntimeError as exc:
        assert "'val_acc'" in str(exc) and "val_loss" in str(exc)
    else:
        raise AssertionError("a missing monitored metric must fail the fit")


def test_monitors_in_a_real_fit(capsys):
    logger = Recorder()
    timer = Timer()
    callbacks = [LearningRateMonitor(logging_interval="step"), DeviceStatsMonitor(every_n_steps=2),
                 ModelSummary(max_depth=1), timer]
    trainer = make_trainer(max_epochs=2, logger=logger, log_every_n_steps=2, callbacks=callbacks)
    trainer.fit(Model(lr=1.0, with_scheduler=True), loader(), loader())
    lrs = {step: m["lr-SGD"] for step, m in logger.calls if "lr-SGD" in m}
    # StepLR halves every 2 steps; the lr logged under batch index k is the one that batch's step
    # used (Lightning's indices: the loss of step k+1 is logged at k as well)
    assert lrs == {1: 1.0, 3: 0.5, 5: 0.25, 7: 0.125}
    stats = [step for step, m in logger.calls if "device_stats/ram_used_gb" in m]
    assert stats == [1, 3, 5, 7]
    out, err = capsys.readouterr()
    assert "lin  | Linear | 3" in out and "3          Total params" in out
    assert err.count("NVML is not available") <= 1
    assert timer.time_elapsed("train") > 0 and timer.time_elapsed("validate") > 0
    assert timer.end_time("train") is not None


def test_max_time_stops_the_fit():
    model = Model()
    trainer = make_trainer(max_epochs=1000, max_time={"seconds": 0.2})
    trainer.fit(model, loader(n=64), None)
    assert trainer.should_stop and model.epochs_started < 1000


# ---------------------------------------------------------------------------- 2 ranks
class StopOnRankOne(Callback):
    """Asks to stop on rank 1 only, in the middle of epoch 2."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.current_epoch == 2 and batch_idx == 1:
            trainer.should_stop = True


def _rank_stops_from_callback():
    model = Model()
    trainer = make_trainer(max_epochs=10, callbacks=[StopOnRankOne()])
    trainer.fit(model, loader(n=32), None)  # 4 batches of 4 per rank per epoch
    return trainer.current_epoch, trainer.global_step, model.epochs_started, trainer.should_stop


class RankMetric(de.Module):
    """Logs a step metric that never improves on rank 1 and always improves on rank 0."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        value = 1.0 if self.global_rank == 1 else 1.0 / (1 + self.global_step)
        self.log("rank_metric", value)  # step level: each rank keeps its own value
        return ((self.lin(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _rank_early_stopping():
    stop = EarlyStopping("rank_metric", patience=2, check_on_train_epoch_end=True)
    trainer = make_trainer(max_epochs=10, callbacks=[stop])
    trainer.fit(RankMetric(), loader(n=32), None)
    return (trainer.current_epoch, trainer.global_step, stop.stopped_epoch, stop.stopping_reason.name,
            stop.wait_count)


def _rank_lr_find():
    torch.manual_seed(0)  # same initial weights on both ranks, as a user's seed_everything gives
    model = Model(lr=0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finder = de.Tuner(make_trainer()).lr_find(model, loader(n=64), min_lr=1e-3, max_lr=1.0, num_training=12,
                                             early_stop_threshold=None)
    restored = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return finder.results, model.lr, restored


def _rank_main(rank):
    # all scenarios in one pair of processes: starting ranks (importing torch) dominates the cost
    return _rank_stops_from_callback(), _rank_early_stopping(), _rank_lr_find()


def test_two_ranks_stop_together_when_only_rank_one_asks():
    (cb0, es0, lr0), (cb1, es1, lr1) = run_ranks(_rank_main, 2, timeout=120)

    # a plain callback sets should_stop on rank 1 in the middle of epoch 2
    assert cb0 == cb1, (cb0, cb1)
    epoch, step, started, should_stop = cb0
    assert epoch == 3 and started == 3 and should_stop  # the stopped epoch counts as finished (Lightning)
    assert 2 * 4 + 2 <= step <= 2 * 4 + 3  # stopped right after the request, mid-epoch

    # EarlyStopping's criterion fires on rank 1 only, at the end of epoch 2
    # same epoch and same global step on both ranks; the epoch it stopped in counts as finished
    assert es0[:2] == es1[:2] == (3, 3 * 4)
    assert es1[2:] == (2, "PATIENCE_EXHAUSTED", 2)
    assert es0[2:] == (0, "NOT_STOPPED", 0)  # rank 0's own criterion never fired

    # the LR finder on 2 ranks: rank zero's curve is broadcast, so both ranks set the same lr
    assert lr0 == lr1
    results, lr, restored = lr0
    assert len(results["lr"]) == 12 and lr in results["lr"] and restored


class SignalOnLastBatch(Callback):
    """SIGTERM to rank 0 itself in the last batch of epoch 1: the step vote (one step behind)
    cannot see it any more; the ranks must still agree at the epoch end and stop together."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_rank == 0 and trainer.current_epoch == 1 and batch_idx == 3:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)


def _rank_signal_at_epoch_end(rank, root):
    from distengine.callbacks.model_checkpoint import ModelCheckpoint

    trainer = de.Trainer(accelerator="cpu", enable_progress_bar=False, num_sanity_val_steps=0, logger=False,
                         max_epochs=5, callbacks=[SignalOnLastBatch(), ModelCheckpoint(dirpath=root)])
    try:
        trainer.fit(Model(), loader(n=32), None)  # 4 batches of 4 per rank per epoch
    except SystemExit as exc:
        return exc.code, trainer.global_step
    return 0, trainer.global_step


def test_a_signal_in_an_epochs_last_batch_stops_every_rank_with_a_checkpoint(tmp_path):
    import os
    import signal

    results = run_ranks(_rank_signal_at_epoch_end, 2, str(tmp_path), timeout=120)
    assert results == [(128 + signal.SIGTERM, 8)] * 2  # both ranks, after epoch 1's 4 steps
    assert "epoch=1-step=8-signal_15.ckpt" in os.listdir(tmp_path), os.listdir(tmp_path)
