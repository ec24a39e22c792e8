"""Every Trainer flag of issue 2, each checked by what a real (tiny) CPU fit does with it.

The data is ``regression_data()``: 96 samples in batches of 16, so 6 training batches per
epoch; validation uses the same data set unless a test says otherwise.
"""
from __future__ import annotations

import copy
import datetime
import logging
import os
import time

import pytest
import torch
from torch.utils.data import DataLoader, Sampler

import distengine as de
from distengine.callbacks.base import Callback
from distengine.loggers.base import Logger
from tests.core.models import Regressor, loader, make_net, quiet_trainer, regression_data
from tests.helpers import run_ranks

N_BATCHES = 6


class Counting(Regressor):
    """Records every training and validation step it runs."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.train_calls: list[tuple[int, int]] = []          # (epoch, batch_idx)
        self.val_calls: list[tuple[bool, int, int]] = []      # (sanity, epoch, global_step)

    def training_step(self, batch, batch_idx):
        self.train_calls.append((self.current_epoch, batch_idx))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.val_calls.append((self.trainer.sanity_checking, self.current_epoch, self.global_step))
        super().validation_step(batch, batch_idx)

    def real_val_calls(self):
        return [c for c in self.val_calls if not c[0]]


class RecordingLogger(Logger):
    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))

    def steps_with(self, key):
        return [s for s, m in self.rows if key in m]


class StopAlways(Callback):
    """Asks to stop after every batch; min_epochs/min_steps must hold the request back."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        trainer.should_stop = True


def _fit(tmp_path, module=None, val=True, **kw):
    module = module or Counting()
    ds = regression_data()
    trainer = quiet_trainer(tmp_path, **kw)
    trainer.fit(module, loader(ds), loader(ds) if val else None)
    return trainer, module


# ------------------------------------------------------------------ how long it runs
def test_max_epochs(tmp_path):
    trainer, module = _fit(tmp_path, max_epochs=2, num_sanity_val_steps=0)
    assert trainer.global_step == 2 * N_BATCHES
    assert sorted({e for e, _ in module.train_calls}) == [0, 1]


def test_max_steps_stops_mid_epoch_and_wins_over_max_epochs(tmp_path):
    trainer, module = _fit(tmp_path, max_steps=8, max_epochs=5, num_sanity_val_steps=0)
    assert trainer.global_step == 8
    assert module.train_calls[-1] == (1, 1)  # the 2nd batch of epoch 1


def test_max_steps_alone_runs_across_epochs(tmp_path):
    trainer, module = _fit(tmp_path, max_steps=15, val=False)
    assert trainer.global_step == 15 and len(module.train_calls) == 15


def test_min_epochs_holds_back_a_stop_request(tmp_path):
    trainer, module = _fit(tmp_path, max_epochs=10, min_epochs=3, callbacks=[StopAlways()], val=False)
    assert sorted({e for e, _ in module.train_calls}) == [0, 1, 2]
    assert trainer.global_step == 3 * N_BATCHES and trainer.should_stop


def test_a_stop_held_back_by_min_epochs_is_told_once_at_info(tmp_path, caplog):
    # Lightning logs one INFO line when a requested stop waits for min_epochs/min_steps
    with caplog.at_level(logging.INFO, logger="distengine"):
        _fit(tmp_path, max_epochs=10, min_epochs=3, callbacks=[StopAlways()], val=False)
    told = [r for r in caplog.records if "min_epochs=3" in r.getMessage()]
    assert len(told) == 1 and told[0].levelno == logging.INFO and "min_steps=0" in told[0].getMessage()


def test_min_steps_holds_back_a_stop_request(tmp_path):
    trainer, _ = _fit(tmp_path, max_epochs=10, min_steps=9, callbacks=[StopAlways()], val=False)
    assert trainer.global_step == 9


def test_max_time_stops_the_fit(tmp_path):
    class Slow(Counting):
        def training_step(self, batch, batch_idx):
            time.sleep(0.02)  # burns time for the budget; not a synchronisation
            return super().training_step(batch, batch_idx)

    t0 = time.monotonic()
    trainer, module = _fit(tmp_path, Slow(), max_epochs=1000, val=False,
                           max_time=datetime.timedelta(seconds=0.3))
    assert trainer.should_stop
    assert 0 < trainer.global_step < 100
    assert time.monotonic() - t0 < 20


# ------------------------------------------------------------------ how much data
@pytest.mark.parametrize("limit,expected", [(2, 2), (0.5, 3), (1.0, N_BATCHES), (0.25, 1)])
def test_limit_train_batches(tmp_path, limit, expected):
    trainer, module = _fit(tmp_path, max_epochs=2, limit_train_batches=limit, val=False)
    assert trainer.num_training_batches == expected
    assert [b for e, b in module.train_calls if e == 1] == list(range(expected))
    assert trainer.global_step == 2 * expected


@pytest.mark.parametrize("limit,expected", [(2, 2), (0.5, 3), (0, 0)])
def test_limit_val_batches(tmp_path, limit, expected):
    trainer, module = _fit(tmp_path, max_epochs=1, limit_val_batches=limit, num_sanity_val_steps=0)
    assert len(module.real_val_calls()) == expected
    assert trainer.num_val_batches == [expected]


@pytest.mark.parametrize("limit,expected", [(3, 3), (0.5, 3), (0.2, 1)])
def test_limit_test_batches(tmp_path, limit, expected):
    class Tested(Counting):
        def test_step(self, batch, batch_idx):
            self.log("test_loss", torch.nn.functional.mse_loss(self(batch[0]), batch[1]))
            self.test_calls = getattr(self, "test_calls", 0) + 1

    module = Tested()
    trainer = quiet_trainer(tmp_path, limit_test_batches=limit)
    (result,) = trainer.test(module, loader(regression_data()))
    assert module.test_calls == expected and "test_loss" in result


def test_overfit_batches_repeats_the_same_first_batches(tmp_path):
    seen: list[list[float]] = []

    class Recording(Counting):
        def training_step(self, batch, batch_idx):
            seen.append(batch[0][:, 0].tolist())
            return super().training_step(batch, batch_idx)

    ds = regression_data()
    module = Recording()
    trainer = quiet_trainer(tmp_path, max_epochs=3, overfit_batches=2, num_sanity_val_steps=0)
    trainer.fit(module, loader(ds, shuffle=True), loader(ds))
    assert trainer.num_training_batches == 2 and trainer.global_step == 6
    first_two = [ds.tensors[0][i * 16:(i + 1) * 16, 0].tolist() for i in range(2)]
    assert seen == first_two * 3  # no shuffling, the same two batches every epoch
    assert len(module.real_val_calls()) == 3 * 2


@pytest.mark.parametrize("fast_dev_run,batches", [(True, 1), (3, 3)])
def test_fast_dev_run_runs_n_batches_and_writes_no_files(tmp_path, fast_dev_run, batches):
    module = Counting()
    ds = regression_data()
    # logger and checkpointing left at their defaults (on): fast_dev_run must turn them off
    trainer = de.Trainer(accelerator="cpu", default_root_dir=str(tmp_path), enable_progress_bar=False,
                         fast_dev_run=fast_dev_run, max_epochs=5)
    trainer.fit(module, loader(ds), loader(ds))
    assert trainer.global_step == batches and len(module.train_calls) == batches
    assert len(module.val_calls) == batches and not any(s for s, _, _ in module.val_calls)  # no sanity
    # as in Lightning: the logger is replaced by one that writes nothing
    assert [type(lg).__name__ for lg in trainer.loggers] == ["DummyLogger"] and trainer.checkpoint_callback is None
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ when it validates
@pytest.mark.parametrize("interval,per_epoch,at_steps", [
    (0.5, 2, [3, 6]),                # a fraction of the epoch: every 3 batches
    (0.25, 6, [1, 2, 3, 4, 5, 6]),   # int(6 * 0.25) = every batch
    (2, 3, [2, 4, 6]),               # an int: every 2 training batches
    (3, 2, [3, 6]),
    (1, 6, [1, 2, 3, 4, 5, 6]),      # the int 1 (unlike the float 1.0): after every batch, as in Lightning
    (1.0, 1, [6]),                   # the whole epoch
    (0.0, 6, [1, 2, 3, 4, 5, 6]),    # Lightning: int(6 * 0.0) -> at least every batch
])
def test_val_check_interval(tmp_path, interval, per_epoch, at_steps):
    trainer, module = _fit(tmp_path, max_epochs=2, val_check_interval=interval, num_sanity_val_steps=0,
                           limit_val_batches=1)
    steps = [s for _, _, s in module.real_val_calls()]
    assert steps == at_steps + [s + N_BATCHES for s in at_steps]
    assert len(steps) == 2 * per_epoch


def test_check_val_every_n_epoch(tmp_path):
    _, module = _fit(tmp_path, max_epochs=5, check_val_every_n_epoch=2, num_sanity_val_steps=0,
                     limit_val_batches=1)
    assert [e for _, e, _ in module.real_val_calls()] == [1, 3]


@pytest.mark.parametrize("sanity,expected", [(0, 0), (2, 2), (-1, N_BATCHES), (None, 2)])
def test_num_sanity_val_steps(tmp_path, sanity, expected):
    kw = {} if sanity is None else {"num_sanity_val_steps": sanity}
    trainer, module = _fit(tmp_path, max_epochs=1, **kw)
    sanity_calls = [c for c in module.val_calls if c[0]]
    assert len(sanity_calls) == expected
    assert all(step == 0 for _, _, step in sanity_calls)          # before any training step
    assert module.val_calls[:expected] == sanity_calls            # and before the real ones
    assert len(module.real_val_calls()) == N_BATCHES
    # sanity-check metrics never reach the loggers or the callback metrics of the real run
    assert trainer.sanity_checking is False


def test_sanity_check_metrics_are_not_logged(tmp_path):
    logger = RecordingLogger()
    _fit(tmp_path, max_epochs=1, num_sanity_val_steps=2, logger=logger, limit_train_batches=1)
    assert logger.steps_with("val_loss") == [0]  # after step 1, at Lightning's index 0


# ------------------------------------------------------------------ logging cadence
# Lightning's indices (global_step - 1); 50: each epoch's last step is written at its end until
# the first regular write (Lightning writes nothing there); 0: no step metrics, as in Lightning
@pytest.mark.parametrize("every,expected", [(1, list(range(12))), (4, [3, 7, 11]), (5, [4, 9]),
                                            (50, [5, 11]), (0, [])])
def test_log_every_n_steps(tmp_path, every, expected):
    logger = RecordingLogger()
    _fit(tmp_path, max_epochs=2, logger=logger, log_every_n_steps=every, val=False)
    assert logger.steps_with("train_loss") == expected


# ------------------------------------------------------------------ optimization
@pytest.mark.parametrize("accum,steps", [(1, 12), (2, 6), (4, 4), (6, 2), (10, 2)])
def test_accumulate_grad_batches_global_step(tmp_path, accum, steps):
    trainer, _ = _fit(tmp_path, max_epochs=2, accumulate_grad_batches=accum, val=False)
    assert trainer.global_step == steps  # a partial window at the epoch end still steps


class NormRecordingSGD(torch.optim.SGD):
    """Records the total gradient norm the step actually applies."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.norms: list[float] = []

    def step(self, closure=None):
        grads = [p.grad.detach().flatten() for g in self.param_groups for p in g["params"] if p.grad is not None]
        self.norms.append(float(torch.cat(grads).norm()))
        return super().step(closure)


class BigGradients(Regressor):
    def training_step(self, batch, batch_idx):
        return 1000.0 * super().training_step(batch, batch_idx)  # pre-clip norm far above 0.5

    def configure_optimizers(self):
        return NormRecordingSGD(self.parameters(), lr=1e-4)


def test_gradient_clip_with_16_mixed_unscales_before_clipping(tmp_path):
    class Plain(Regressor):
        def configure_optimizers(self):
            return NormRecordingSGD(self.parameters(), lr=1e-3)

    seen_scaled = []

    class Watch(Callback):
        def on_after_backward(self, trainer, module):
            seen_scaled.append(float(torch.cat([p.grad.flatten() for p in module.parameters()]).norm()))

    trainer = quiet_trainer(tmp_path, max_epochs=2, precision="16-mixed", gradient_clip_val=0.01,
                            callbacks=[Watch()])
    trainer.fit(Plain(), loader(regression_data()))
    norms = trainer.optimizers[0].norms
    assert len(norms) >= 6, "the scaler skipped most steps"
    # clipped to the value itself: clipping the SCALED gradients and unscaling afterwards
    # would give 0.01 / loss_scale, far below 0.01
    for n in norms:
        assert n == pytest.approx(0.01, rel=1e-3)
    assert min(seen_scaled) > 100 * 0.01  # backward really produced scaled gradients


@pytest.mark.parametrize("algo", ["norm", "value"])
def test_gradient_clip_32_bit(tmp_path, algo):
    module = BigGradients()
    max_abs = []

    class Record(NormRecordingSGD):
        def step(self, closure=None):
            max_abs.append(max(float(p.grad.abs().max()) for p in module.parameters()))
            return super().step(closure)

    module.configure_optimizers = lambda: Record(module.parameters(), lr=1e-4)
    trainer = quiet_trainer(tmp_path, max_epochs=1, gradient_clip_val=0.5, gradient_clip_algorithm=algo)
    trainer.fit(module, loader(regression_data()))
    if algo == "norm":
        assert all(n == pytest.approx(0.5, rel=1e-4) for n in trainer.optimizers[0].norms)
    else:
        assert all(m <= 0.5 + 1e-6 for m in max_abs) and max(max_abs) == pytest.approx(0.5)


# ------------------------------------------------------------------ torch switches
@pytest.fixture
def restore_torch_flags():
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    bench = torch.backends.cudnn.benchmark
    anomaly = torch.is_anomaly_enabled()
    yield
    torch.use_deterministic_algorithms(det, warn_only=det_warn)
    torch.backends.cudnn.benchmark = bench
    torch.autograd.set_detect_anomaly(anomaly)


class FlagProbe(Callback):
    def __init__(self):
        self.seen: dict[str, object] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen = {"deterministic": torch.are_deterministic_algorithms_enabled(),
                     "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
                     "benchmark": torch.backends.cudnn.benchmark,
                     "anomaly": torch.is_anomaly_enabled()}


@pytest.mark.parametrize("value,warn_only", [(True, False), ("warn", True)])
def test_deterministic(tmp_path, restore_torch_flags, value, warn_only):
    torch.use_deterministic_algorithms(False)
    probe = FlagProbe()
    _fit(tmp_path, max_epochs=1, deterministic=value, callbacks=[probe], limit_train_batches=1, val=False)
    assert probe.seen["deterministic"] is True and probe.seen["warn_only"] is warn_only
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG")


@pytest.mark.parametrize("value", [True, False])
def test_benchmark(tmp_path, restore_torch_flags, value):
    torch.backends.cudnn.benchmark = not value
    probe = FlagProbe()
    _fit(tmp_path, max_epochs=1, benchmark=value, callbacks=[probe], limit_train_batches=1, val=False)
    assert probe.seen["benchmark"] is value


def test_detect_anomaly_is_on_during_fit_and_off_after(tmp_path, restore_torch_flags):
    torch.autograd.set_detect_anomaly(False)
    probe = FlagProbe()
    _fit(tmp_path, max_epochs=1, detect_anomaly=True, callbacks=[probe], limit_train_batches=1, val=False)
    assert probe.seen["anomaly"] is True
    assert torch.is_anomaly_enabled() is False  # scoped to the run, as in Lightning


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@pytest.mark.filterwarnings("ignore:Error detected in _NaNGradBackward")
def test_detect_anomaly_names_the_backward_that_made_nan(tmp_path, restore_torch_flags):
    class NaNGrad(Regressor):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(_NaNGrad.apply(self.net(x)), y)

    trainer = quiet_trainer(tmp_path, max_epochs=1, detect_anomaly=True, limit_train_batches=1)
    with pytest.raises(RuntimeError, match="Function '_NaNGradBackward' returned nan values"):
        trainer.fit(NaNGrad(), loader(regression_data()))
    # without the flag the nan gradient goes unnoticed by autograd
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=1).fit(NaNGrad(), loader(regression_data()))


# ------------------------------------------------------------------ precision and compile
@pytest.mark.parametrize("precision,dtype", [("bf16-true", torch.bfloat16), ("64-true", torch.float64),
                                             ("32-true", torch.float32), (64, torch.float64)])
def test_true_precision_param_and_input_dtypes(tmp_path, precision, dtype):
    seen = []

    class Probe(Counting):
        def training_step(self, batch, batch_idx):
            seen.append((batch[0].dtype, batch[1].dtype))
            return super().training_step(batch, batch_idx)

    module = Probe()
    trainer, _ = _fit(tmp_path, module, max_epochs=1, precision=precision, num_sanity_val_steps=1)
    assert {p.dtype for p in module.parameters()} == {dtype}
    assert set(seen) == {(dtype, dtype)}
    assert trainer.global_step == N_BATCHES
    assert all(torch.isfinite(p).all() for p in module.parameters())


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # inside torch.compile
def test_compile_trains_through_the_compiled_forward(tmp_path):
    pytest.importorskip("torch._dynamo")

    class ViaForward(Regressor):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

    module = ViaForward(make_net())
    reference = copy.deepcopy(module)
    t0 = time.monotonic()
    trainer = quiet_trainer(tmp_path, max_epochs=1, compile=True, limit_train_batches=3)
    try:
        trainer.fit(module, loader(regression_data()))
    except Exception as exc:  # noqa: BLE001 - only a missing toolchain is a reason to skip
        if "compiler" in str(exc).lower() or "gcc" in str(exc).lower():
            pytest.skip(f"torch.compile needs a C compiler here: {exc}")
        raise
    elapsed = time.monotonic() - t0
    assert module._compiled_call_impl is not None  # nn.Module.compile() was applied
    assert trainer.global_step == 3
    assert not torch.equal(module.net[0].weight, reference.net[0].weight)
    assert elapsed < 120, f"torch.compile of a tiny MLP took {elapsed:.0f}s"


# ------------------------------------------------------------------ samplers
class EvenFirst(Sampler[int]):
    """A custom order: even indices, then odd ones."""

    def __init__(self, n):
        self.n = n
        self.iterations = 0

    def __len__(self):
        return self.n

    def __iter__(self):
        self.iterations += 1
        return iter([*range(0, self.n, 2), *range(1, self.n, 2)])


@pytest.mark.parametrize("flag", ["use_distributed_sampler", "replace_sampler_ddp"])
def test_distributed_sampler_off_leaves_the_loader_untouched(tmp_path, flag):
    ds = regression_data()
    train = DataLoader(ds, batch_size=16, shuffle=True)
    trainer = quiet_trainer(tmp_path, max_epochs=1, **{flag: False})
    trainer.fit(Regressor(), train)
    assert trainer._parts.data.fit.train_loader is train and trainer._parts.data.fit.train_sampler is None


def test_distributed_sampler_on_replaces_only_standard_samplers(tmp_path):
    ds = regression_data()
    sampler = EvenFirst(len(ds))
    custom = DataLoader(ds, batch_size=16, sampler=sampler)
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(Regressor(), custom)
    assert trainer._parts.data.fit.train_loader is custom and sampler.iterations == 2
    standard = DataLoader(ds, batch_size=16, shuffle=True)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(Regressor(), standard)
    assert trainer._parts.data.fit.train_loader is not standard and trainer._parts.data.fit.train_sampler is not None


# ------------------------------------------------------------------ where files go
def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_default_root_dir_holds_logs_and_checkpoints(tmp_path):
    trainer = de.Trainer(accelerator="cpu", default_root_dir=str(tmp_path), max_epochs=1,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=2)
    trainer.fit(Counting(), loader(regression_data()))
    files = _files(tmp_path)
    # as in Lightning 2.6.6, the checkpoints go to the logger's run folder
    assert any(f.startswith("lightning_logs/version_0/checkpoints/") and f.endswith(".ckpt") for f in files), files
    assert any("events.out.tfevents" in f or f.endswith(".csv") for f in files), files
    assert trainer.default_root_dir == str(tmp_path)
    assert os.path.commonpath([trainer.log_dir, str(tmp_path)]) == str(tmp_path)


def test_enable_checkpointing_false_writes_no_checkpoint(tmp_path):
    trainer = de.Trainer(accelerator="cpu", default_root_dir=str(tmp_path), max_epochs=1, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(Counting(), loader(regression_data()))
    assert trainer.checkpoint_callback is None and _files(tmp_path) == []


def test_weights_save_path_receives_the_checkpoints(tmp_path):
    weights = tmp_path / "weights"
    root = tmp_path / "root"
    trainer = de.Trainer(accelerator="cpu", default_root_dir=str(root), weights_save_path=str(weights),
                         max_epochs=1, logger=False, enable_progress_bar=False)
    trainer.fit(Counting(), loader(regression_data()))
    assert any(f.endswith(".ckpt") for f in _files(weights)), _files(tmp_path)
    assert not any(f.endswith(".ckpt") for f in _files(root)) if root.exists() else True
    path = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    assert path and str(weights) in path


# ------------------------------------------------------------------ callbacks and loggers
def test_callbacks_and_logger_lists(tmp_path):
    calls = []

    class A(Callback):
        def on_train_epoch_end(self, trainer, module):
            calls.append(("A", trainer.current_epoch))

    class B(Callback):
        def on_train_epoch_end(self, trainer, module):
            calls.append(("B", trainer.current_epoch))

    first, second = RecordingLogger(), RecordingLogger()
    trainer, _ = _fit(tmp_path, max_epochs=2, callbacks=[A(), B()], logger=[first, second],
                      log_every_n_steps=3, val=False)
    assert calls == [("A", 0), ("B", 0), ("A", 1), ("B", 1)]  # in the order given
    assert trainer.loggers == [first, second] and trainer.logger is first
    assert first.rows == second.rows and first.steps_with("train_loss") == [2, 5, 8, 11]


def test_single_callback_and_single_logger_objects(tmp_path):
    class A(Callback):
        epochs = 0

        def on_train_epoch_end(self, trainer, module):
            A.epochs += 1

    logger = RecordingLogger()
    trainer, _ = _fit(tmp_path, max_epochs=1, callbacks=A(), logger=logger, log_every_n_steps=1, val=False)
    assert A.epochs == 1 and trainer.loggers == [logger] and logger.steps_with("train_loss")


# ------------------------------------------------------------------ the 1.x names
def test_gpus_zero_means_cpu(tmp_path):
    trainer = quiet_trainer(tmp_path, gpus=0, max_epochs=1, accelerator="auto")
    trainer.fit(Regressor(), loader(regression_data()))
    assert trainer.accelerator == "cpu" and trainer.root_device.type == "cpu"


def test_checkpoint_callback_false_and_progress_bar_refresh_rate_zero(tmp_path, capsys):
    trainer = de.Trainer(accelerator="cpu", default_root_dir=str(tmp_path), max_epochs=1, logger=False,
                         checkpoint_callback=False, progress_bar_refresh_rate=0, enable_model_summary=False)
    trainer.fit(Regressor(), loader(regression_data()))
    from distengine.callbacks.progress import TQDMProgressBar

    assert trainer.checkpoint_callback is None and _files(tmp_path) == []
    assert not any(isinstance(c, TQDMProgressBar) for c in trainer.callbacks)
    out, err = capsys.readouterr()
    assert "Epoch" not in out + err


def test_resume_from_checkpoint_continues_the_run(tmp_path):
    ds = regression_data()
    first = quiet_trainer(tmp_path, max_epochs=1)
    module = Regressor()
    first.fit(module, loader(ds))
    path = str(tmp_path / "epoch1.ckpt")
    first.save_checkpoint(path)
    resumed_module = Regressor()
    second = quiet_trainer(tmp_path, max_epochs=2, resume_from_checkpoint=path)
    second.fit(resumed_module, loader(ds))
    assert second.global_step == 2 * N_BATCHES  # the first epoch was not repeated
    straight = Regressor()
    quiet_trainer(tmp_path, max_epochs=2).fit(straight, loader(ds))
    for a, b in zip(resumed_module.parameters(), straight.parameters()):
        assert torch.equal(a, b)


class NaNAtStep2(Regressor):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if batch_idx == 2 else loss


def test_terminate_on_nan(tmp_path):
    with pytest.raises(FloatingPointError, match="global step 2"):
        quiet_trainer(tmp_path, max_epochs=1, terminate_on_nan=True).fit(NaNAtStep2(), loader(regression_data()))
    trainer = quiet_trainer(tmp_path, max_epochs=1, terminate_on_nan=False)
    trainer.fit(NaNAtStep2(), loader(regression_data()))  # the 1.x default: carry on
    assert trainer.global_step == N_BATCHES


# ------------------------------------------------------------------ LR schedulers
class Scheduled(Regressor):
    """Records the learning rate each optimizer step used."""

    def __init__(self, make):
        super().__init__(optimizer="sgd", lr=1.0)
        self.make = make
        self.lrs: list[float] = []
        self.epoch_lrs: list[float] = []

    def training_step(self, batch, batch_idx):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return super().training_step(batch, batch_idx)

    def on_train_epoch_start(self):
        self.epoch_lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=1e-3)
        return self.make(opt)


def _sched_fit(tmp_path, make, epochs=3, **kw):
    module = Scheduled(make)
    kw.setdefault("num_sanity_val_steps", 0)
    trainer, _ = _fit(tmp_path, module, max_epochs=epochs, **kw)
    return trainer, module


def test_plain_scheduler_steps_once_per_epoch(tmp_path):
    trainer, module = _sched_fit(tmp_path, lambda o: ([o], [torch.optim.lr_scheduler.StepLR(o, 1, 0.5)]))
    assert module.epoch_lrs == [1e-3, 5e-4, 2.5e-4]
    assert module.lrs == [1e-3] * 6 + [5e-4] * 6 + [2.5e-4] * 6
    assert trainer.lr_scheduler_configs[0].interval == "epoch"


def test_scheduler_in_a_dict_without_config(tmp_path):
    _, module = _sched_fit(tmp_path, lambda o: {"optimizer": o,
                                                "lr_scheduler": torch.optim.lr_scheduler.StepLR(o, 1, 0.1)})
    assert module.epoch_lrs == pytest.approx([1e-3, 1e-4, 1e-5])


def test_step_interval_with_frequency(tmp_path):
    def make(o):
        sched = torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)
        return {"optimizer": o, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 4}}

    trainer, module = _sched_fit(tmp_path, make, epochs=2)
    # stepped after optimizer steps 4 and 8 and 12: steps 1-4 use lr, 5-8 lr/2, 9-12 lr/4
    assert module.lrs == [1e-3] * 4 + [5e-4] * 4 + [2.5e-4] * 4
    cfg = trainer.lr_scheduler_configs[0]
    assert (cfg.interval, cfg.frequency) == ("step", 4)


def test_step_interval_counts_optimizer_steps_under_accumulation(tmp_path):
    def make(o):
        sched = torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)
        return {"optimizer": o, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    _, module = _sched_fit(tmp_path, make, epochs=1, accumulate_grad_batches=2)
    assert module.lrs == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4]


def test_epoch_interval_with_frequency(tmp_path):
    def make(o):
        sched = torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5)
        return [o], [{"scheduler": sched, "interval": "epoch", "frequency": 2}]

    _, module = _sched_fit(tmp_path, make, epochs=5)
    assert module.epoch_lrs == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]


class PlateauModel(Scheduled):
    """val_loss is 1.0 every epoch: a plateau from the start."""

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(1.0))


def test_reduce_on_plateau_with_monitor(tmp_path):
    def make(o):
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.1, patience=1)
        return {"optimizer": o, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}

    module = PlateauModel(make)
    _fit(tmp_path, module, max_epochs=5, num_sanity_val_steps=0, limit_val_batches=1)
    # epoch 0 sets the best; epochs 1 and 2 do not improve -> reduced after epoch 2 (patience 1
    # exceeded), then the cooldown-free count restarts: reduced again after epoch 4
    assert module.epoch_lrs == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4, 1e-4])


def test_reduce_on_plateau_monitor_at_top_level_of_the_dict(tmp_path):
    def make(o):
        return {"optimizer": o, "monitor": "val_loss",
                "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=0)}

    module = PlateauModel(make)
    _fit(tmp_path, module, max_epochs=4, num_sanity_val_steps=0, limit_val_batches=1)
    # epoch 0 sets the best; each later epoch fails to improve and halves the lr (patience 0)
    assert module.epoch_lrs == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])


def test_reduce_on_plateau_with_step_interval_steps(tmp_path):
    class TrainPlateau(Scheduled):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("flat", 1.0)
            return loss

    def make(o):
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(o, factor=0.5, patience=0)
        return {"optimizer": o, "lr_scheduler": {"scheduler": sched, "monitor": "flat", "interval": "step"}}

    module = TrainPlateau(make)
    _fit(tmp_path, module, max_epochs=1, val=False)
    # the first step sets the best; every later step fails to improve and halves the lr
    assert module.lrs == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4, 1.25e-4, 6.25e-5])


def test_reduce_on_plateau_without_monitor_is_a_clear_error(tmp_path):
    def make(o):
        return {"optimizer": o, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(o)}

    with pytest.raises(ValueError, match="ReduceLROnPlateau needs a metric"):
        _sched_fit(tmp_path, make)


def test_tuple_form_with_two_schedulers_on_one_optimizer(tmp_path):
    def make(o):
        return [o], [torch.optim.lr_scheduler.StepLR(o, 1, 0.5),
                     {"scheduler": torch.optim.lr_scheduler.MultiplicativeLR(o, lambda e: 0.1),
                      "interval": "step", "frequency": 3}]

    trainer, module = _sched_fit(tmp_path, make, epochs=2)
    assert [c.interval for c in trainer.lr_scheduler_configs] == ["epoch", "step"]
    assert module.lrs == pytest.approx([1e-3] * 3 + [1e-4] * 3 + [5e-6] * 3 + [5e-7] * 3)


class ManualTwo(Regressor):
    """Two optimizers, each with a scheduler the user steps (Lightning's manual-optimization rule)."""

    def __init__(self, step_schedulers=True):
        super().__init__()
        self.automatic_optimization = False
        self.step_schedulers = step_schedulers

    def training_step(self, batch, batch_idx):
        a, b = self.optimizers()
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        a.zero_grad()
        b.zero_grad()
        self.manual_backward(loss)
        a.step()
        b.step()

    def on_train_epoch_end(self):
        if self.step_schedulers:
            for sched in self.lr_schedulers():
                sched.step()

    def configure_optimizers(self):
        a = torch.optim.SGD(self.net[0].parameters(), lr=1.0)
        b = torch.optim.SGD(self.net[2].parameters(), lr=1.0)
        return [a, b], [torch.optim.lr_scheduler.StepLR(a, 1, 0.5),
                        {"scheduler": torch.optim.lr_scheduler.StepLR(b, 1, 0.1), "interval": "epoch"}]


@pytest.mark.parametrize("user_steps", [True, False])
def test_manual_optimization_leaves_scheduler_steps_to_the_user(tmp_path, user_steps):
    trainer = quiet_trainer(tmp_path, max_epochs=2)
    module = ManualTwo(user_steps)
    trainer.fit(module, loader(regression_data()))
    a, b = trainer.optimizers
    expected = (0.25, 0.01) if user_steps else (1.0, 1.0)  # never stepped twice, never behind the user
    assert (a.param_groups[0]["lr"], b.param_groups[0]["lr"]) == pytest.approx(expected)
    assert [type(s) for s in module.lr_schedulers()] == [torch.optim.lr_scheduler.StepLR] * 2


# ------------------------------------------------------------------ sync_batchnorm (2 gloo ranks)
class BNModel(Regressor):
    def __init__(self):
        super().__init__(torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1)),
                         optimizer="sgd")


class IndexRecorder(Regressor):
    def __init__(self):
        super().__init__(optimizer="sgd")
        self.seen: list[float] = []

    def training_step(self, batch, batch_idx):
        self.seen += batch[1][:, 0].tolist()
        return super().training_step(batch, batch_idx)


def _two_rank_flags(rank, tmp):
    def trainer(**kw):
        return de.Trainer(accelerator="cpu", default_root_dir=tmp, max_epochs=1, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          num_sanity_val_steps=0, **kw)

    ds = regression_data()
    out = {}
    try:
        trainer(sync_batchnorm=True).fit(BNModel(), loader(ds))
    except ValueError as exc:
        out["bn_error"] = str(exc)
    plain = trainer(sync_batchnorm=True)  # no BatchNorm layer: the flag changes nothing
    plain.fit(Regressor(), loader(ds))
    out["plain_steps"] = plain.global_step
    recorder = IndexRecorder()
    unsharded = trainer(use_distributed_sampler=False)
    unsharded.fit(recorder, loader(ds))
    out["unsharded"] = sorted(recorder.seen)
    recorder = IndexRecorder()
    trainer().fit(recorder, loader(ds))
    out["sharded"] = sorted(recorder.seen)
    return out


def test_two_ranks_sync_batchnorm_on_cpu_and_unsharded_sampler(tmp_path):
    r0, r1 = run_ranks(_two_rank_flags, 2, str(tmp_path), timeout=120)
    for r in (r0, r1):
        assert "sync_batchnorm=True needs GPUs" in r["bn_error"]  # before any batch, on every rank
        assert r["plain_steps"] == 3  # 96 samples / 2 ranks / 16 per batch
    everything = sorted(regression_data().tensors[1][:, 0].tolist())
    # use_distributed_sampler=False: each rank iterates the whole data set itself
    assert r0["unsharded"] == r1["unsharded"] == everything
    # the default shards: the two ranks together see every sample exactly once
    assert sorted(r0["sharded"] + r1["sharded"]) == everything and len(r0["sharded"]) == 48


def _two_gpu_sync_bn(rank, tmp):
    torch.manual_seed(0)
    module = BNModel()
    g = torch.Generator().manual_seed(rank)  # different data per rank: only syncing equalises the stats
    data = torch.utils.data.TensorDataset(torch.randn(64, 6, generator=g) * (rank + 1), torch.randn(64, 1, generator=g))
    trainer = de.Trainer(accelerator="gpu", default_root_dir=tmp, max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, sync_batchnorm=True,
                         use_distributed_sampler=False, num_sanity_val_steps=0)
    trainer.fit(module, loader(data))
    bn = module.net[1]
    return type(bn).__name__, bn.running_mean.cpu(), bn.running_var.cpu()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm runs only on GPUs; needs 2")
def test_two_gpus_sync_batchnorm_equal_stats(tmp_path):
    (n0, m0, v0), (n1, m1, v1) = run_ranks(_two_gpu_sync_bn, 2, str(tmp_path), timeout=180)
    assert n0 == n1 == "SyncBatchNorm"
    assert torch.allclose(m0, m1) and torch.allclose(v0, v1)
