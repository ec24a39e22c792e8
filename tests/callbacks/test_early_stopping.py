"""EarlyStopping as a pure unit: a fake trainer, metric values fed by hand."""
import math

import pytest
import torch

from distengine.callbacks.early_stopping import EarlyStopping, EarlyStoppingReason
from tests.callbacks.fakes import FakeTrainer


def feed(cb, values, key="val_loss", **trainer_kw):
    """Run one validation check per value; return the epoch at which a stop was requested."""
    trainer = FakeTrainer(num_val_batches=2, **trainer_kw)
    cb.on_fit_start(trainer, None)
    for epoch, value in enumerate(values):
        trainer.current_epoch = epoch
        trainer.callback_metrics = {key: torch.tensor(value)}
        cb.on_validation_end(trainer, None)
        cb.on_train_epoch_end(trainer, None)
        if trainer.should_stop:
            return epoch
    return None


def test_patience_counts_checks_without_improvement():
    cb = EarlyStopping("val_loss", patience=2)
    assert feed(cb, [1.0, 0.9, 0.95, 0.91, 0.5]) == 3
    assert cb.stopped_epoch == 3
    assert cb.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert "did not improve in the last 2" in cb.stopping_reason_message
    assert float(cb.best_score) == pytest.approx(0.9)
    assert cb.wait_count == 2


def test_improvement_resets_wait_count():
    cb = EarlyStopping("val_loss", patience=2)
    assert feed(cb, [1.0, 1.1, 0.8, 0.85, 0.7, 0.75]) is None
    assert cb.wait_count == 1


def test_min_delta_ignores_small_improvements():
    cb = EarlyStopping("val_loss", patience=2, min_delta=0.1)
    # 0.95 and 0.91 are better than 1.0 but by less than 0.1: they do not count
    assert feed(cb, [1.0, 0.95, 0.91]) == 2
    assert float(cb.best_score) == pytest.approx(1.0)
    cb = EarlyStopping("val_loss", patience=2, min_delta=0.1)
    assert feed(cb, [1.0, 0.85, 0.7, 0.55]) is None


def test_mode_max():
    cb = EarlyStopping("acc", patience=1, mode="max")
    assert feed(cb, [0.5, 0.6, 0.55], key="acc") == 2
    assert float(cb.best_score) == pytest.approx(0.6)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_stops_at_once(bad):
    cb = EarlyStopping("val_loss", patience=10)
    assert feed(cb, [1.0, bad]) == 1
    assert cb.stopping_reason == EarlyStoppingReason.NON_FINITE_METRIC
    assert "not finite" in cb.stopping_reason_message


def test_non_finite_ignored_without_check_finite():
    cb = EarlyStopping("val_loss", patience=3, check_finite=False)
    assert feed(cb, [1.0, math.nan, 0.5]) is None
    assert float(cb.best_score) == pytest.approx(0.5)


def test_stopping_threshold():
    cb = EarlyStopping("val_loss", patience=10, stopping_threshold=0.1)
    assert feed(cb, [1.0, 0.5, 0.09, 0.01]) == 2
    assert cb.stopping_reason == EarlyStoppingReason.STOPPING_THRESHOLD


def test_divergence_threshold():
    cb = EarlyStopping("val_loss", patience=10, divergence_threshold=5.0)
    assert feed(cb, [1.0, 2.0, 6.0]) == 2
    assert cb.stopping_reason == EarlyStoppingReason.DIVERGENCE_THRESHOLD
    cb = EarlyStopping("acc", mode="max", patience=10, divergence_threshold=0.2)
    assert feed(cb, [0.5, 0.1], key="acc") == 1


def test_strict_missing_metric_names_available_keys():
    cb = EarlyStopping("val_los", patience=1)
    with pytest.raises(RuntimeError, match=r"'val_los'.*available: train_loss, val_loss"):
        trainer = FakeTrainer(num_val_batches=1,
                              callback_metrics={"val_loss": torch.tensor(1.0), "train_loss": torch.tensor(2.0)})
        cb.on_fit_start(trainer, None)
        cb.on_validation_end(trainer, None)


def test_not_strict_missing_metric_warns_once_and_skips(capsys):
    cb = EarlyStopping("nope", patience=0, strict=False)
    assert feed(cb, [1.0, 2.0, 3.0]) is None
    err = capsys.readouterr().err
    assert err.count("could not find the monitored metric 'nope'") == 1


def test_default_checks_after_validation_not_at_train_epoch_end():
    cb = EarlyStopping("val_loss", patience=0)
    trainer = FakeTrainer(num_val_batches=3, callback_metrics={"val_loss": torch.tensor(1.0)})
    cb.on_fit_start(trainer, None)
    cb.on_train_epoch_end(trainer, None)  # validation exists: the train-epoch-end check is skipped
    assert cb.wait_count == 0 and float(cb.best_score) == math.inf
    cb.on_validation_end(trainer, None)
    assert float(cb.best_score) == 1.0


def test_default_checks_at_train_epoch_end_without_validation():
    cb = EarlyStopping("train_loss", patience=1)
    trainer = FakeTrainer(num_val_batches=0, callback_metrics={"train_loss": torch.tensor(1.0)})
    cb.on_fit_start(trainer, None)
    cb.on_train_epoch_end(trainer, None)
    cb.on_train_epoch_end(trainer, None)
    assert trainer.should_stop


def test_check_on_train_epoch_end_true_skips_validation_end():
    cb = EarlyStopping("val_loss", patience=0, check_on_train_epoch_end=True)
    trainer = FakeTrainer(num_val_batches=3, callback_metrics={"val_loss": torch.tensor(1.0)})
    cb.on_fit_start(trainer, None)
    cb.on_validation_end(trainer, None)
    assert float(cb.best_score) == math.inf
    cb.on_train_epoch_end(trainer, None)
    assert float(cb.best_score) == 1.0


def test_sanity_check_and_standalone_validate_do_not_count():
    cb = EarlyStopping("val_loss", patience=0)
    trainer = FakeTrainer(num_val_batches=3, callback_metrics={"val_loss": torch.tensor(1.0)})
    cb.on_validation_end(trainer, None)  # trainer.validate() outside fit
    assert float(cb.best_score) == math.inf
    cb.on_fit_start(trainer, None)
    trainer.sanity_checking = True
    cb.on_validation_end(trainer, None)
    assert float(cb.best_score) == math.inf and not trainer.should_stop


def test_state_dict_round_trip_continues_counting():
    cb = EarlyStopping("val_loss", patience=3)
    feed(cb, [1.0, 0.5, 0.6, 0.7])
    state = cb.state_dict()
    assert state["wait_count"] == 2 and float(state["best_score"]) == 0.5
    fresh = EarlyStopping("val_loss", patience=3)
    fresh.load_state_dict(state)
    assert fresh.wait_count == 2 and float(fresh.best_score) == 0.5
    assert feed(fresh, [0.8]) == 0  # the third check without improvement
    assert cb.state_key != EarlyStopping("val_acc", mode="max").state_key


def test_sets_only_own_flag_and_never_clears_it():
    cb = EarlyStopping("val_loss", patience=5)
    trainer = FakeTrainer(num_val_batches=1, should_stop=True, callback_metrics={"val_loss": torch.tensor(1.0)})
    cb.on_fit_start(trainer, None)
    cb.on_validation_end(trainer, None)
    assert trainer.should_stop  # a stop requested elsewhere is not undone


def test_verbose_prints_rank_prefix(capsys):
    cb = EarlyStopping("val_loss", patience=0, verbose=True)
    feed(cb, [1.0, 2.0], world_size=2, global_rank=1, is_global_zero=False)
    err = capsys.readouterr().err
    assert "[rank: 1] Monitored metric val_loss did not improve" in err
    cb = EarlyStopping("val_loss", patience=0, verbose=True, log_rank_zero_only=True)
    feed(cb, [1.0, 2.0], world_size=2, global_rank=1, is_global_zero=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("kw, match", [
    ({"mode": "avg"}, "mode must be 'min' or 'max'"),
    ({"patience": -1}, "patience must be"),
    ({"min_delta": -0.1}, "min_delta must be >= 0"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        EarlyStopping("val_loss", **kw)


def test_non_scalar_metric_is_an_error():
    cb = EarlyStopping("val_loss")
    trainer = FakeTrainer(num_val_batches=1, callback_metrics={"val_loss": torch.ones(3)})
    cb.on_fit_start(trainer, None)
    with pytest.raises(ValueError, match="single number"):
        cb.on_validation_end(trainer, None)


def test_stopping_reason_state_old_and_new_forms():
    cb = EarlyStopping("val_loss", patience=3)
    assert cb.stopping_reason is EarlyStoppingReason.NOT_STOPPED and cb.stopping_reason_message is None
    cb.stopping_reason, cb.stopping_reason_message = EarlyStoppingReason.PATIENCE_EXHAUSTED, "Test message"
    state = cb.state_dict()
    assert state["stopping_reason"] == 3  # Lightning 2.6.6 saves the enum's value
    new = EarlyStopping("val_loss", patience=3)
    new.load_state_dict(state)
    assert (new.stopping_reason, new.stopping_reason_message) == (EarlyStoppingReason.PATIENCE_EXHAUSTED,
                                                                  "Test message")
    base = {"wait_count": 2, "stopped_epoch": 5, "best_score": torch.tensor(0.5), "patience": 3}
    new.load_state_dict(dict(base))  # a state without a reason (Lightning before 2.6)
    assert new.stopping_reason is EarlyStoppingReason.NOT_STOPPED and new.stopping_reason_message is None
    new.load_state_dict({**base, "stopping_reason": "not_finite"})  # an earlier distengine's code
    assert new.stopping_reason is EarlyStoppingReason.NON_FINITE_METRIC
    new.load_state_dict({**base, "stopping_reason": None})
    assert new.stopping_reason is EarlyStoppingReason.NOT_STOPPED
