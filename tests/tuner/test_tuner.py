"""Tuner: LR range test on a problem with a known good range; batch-size search with an injected OOM."""
import builtins
import random

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.tuner import LRFinder, Tuner, is_oom_error, tune


def regression_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return TensorDataset(x, x @ w + 0.1 * torch.randn(n, 1, generator=g))


class Regression(de.Module):
    """Mean squared error of a linear model on unit-variance inputs: the curvature is about 2,
    so plain SGD converges for lr up to about 1 and diverges above."""

    def __init__(self, lr=1e-3, batch_size=32):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.register_buffer("calls", torch.zeros(()))
        self.lr = lr
        self.batch_size = batch_size
        self.data = regression_data()

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.calls += 1
        return ((self.lin(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.5)

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)


def fast_trainer(**kw):
    return de.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, **kw)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(before, model):
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


# ---------------------------------------------------------------------------- lr_find
def test_lr_find_suggests_a_converging_lr_and_restores_everything(tmp_path):
    model = Regression()
    trainer = fast_trainer()
    before = snapshot(model)
    torch.manual_seed(123)
    random.seed(7)
    expected_torch, expected_py = torch.rand(3), random.random()
    torch.manual_seed(123)
    random.seed(7)

    finder = Tuner(trainer).lr_find(model, min_lr=1e-5, max_lr=100.0, num_training=100)

    lr = finder.suggestion()
    assert 1e-2 <= lr <= 1.0, lr
    assert model.lr == lr
    lrs, losses = finder.results["lr"], finder.results["loss"]
    assert len(lrs) == len(losses) and 20 < len(lrs) < 100  # stopped early on divergence
    assert lrs[0] == pytest.approx(1e-5) and all(a < b for a, b in zip(lrs, lrs[1:]))
    assert losses[-1] > 4 * min(losses)  # the early stop threshold is what ended it
    assert_same(before, model)  # weights and buffers (the step counter) exactly back
    assert model._trainer is None  # not left pointing at the internal trainer
    assert torch.equal(torch.rand(3), expected_torch) and random.random() == expected_py
    assert trainer.global_step == 0 and trainer.optimizers == []  # the user's trainer is untouched

    path = tmp_path / "lr.png"
    fig = finder.plot(path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "suggested lr" in fig.axes[0].get_title()


def test_lr_find_with_dataloader_argument_hparams_and_no_early_stop():
    class HP(Regression):
        def __init__(self):
            super().__init__()
            del self.lr
            self.save_hyperparameters({"lr": 0.5})

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    model = HP()
    loader = DataLoader(regression_data(64), batch_size=16)
    finder = Tuner(fast_trainer()).lr_find(model, loader, min_lr=1e-4, max_lr=1e-2, num_training=12,
                                           early_stop_threshold=None, mode="linear")
    assert len(finder.results["lr"]) == 12
    assert finder.results["lr"][-1] == pytest.approx(1e-2)
    assert finder.results["lr"][1] - finder.results["lr"][0] == pytest.approx((1e-2 - 1e-4) / 11)
    assert model.hparams.lr == finder.suggestion() != 0.5


def test_lr_find_needs_an_attribute_to_update():
    class NoLR(Regression):
        def __init__(self):
            super().__init__()
            del self.lr

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(AttributeError, match="`lr` or `learning_rate`"):
        Tuner(fast_trainer()).lr_find(NoLR())
    finder = Tuner(fast_trainer()).lr_find(NoLR(), update_attr=False, num_training=5)
    assert len(finder.results["lr"]) == 5


@pytest.mark.parametrize("kw, match", [
    ({"mode": "cosine"}, "'exponential' or 'linear'"),
    ({"min_lr": 0.0, "max_lr": 0.1}, "must be > 0"),  # (max_lr < min_lr sweeps downwards, as in Lightning)
    ({"num_training": 0}, "num_training"),  # (1 is accepted, as in Lightning)
])
def test_lr_find_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        Tuner(fast_trainer()).lr_find(Regression(), **kw)


def test_lr_find_with_two_optimizers_raises_before_training(tmp_path):
    """Lightning's tuner/test_lr_finder.py::test_error_with_multiple_optimizers: a manual
    module with two optimizers raises "only works with single optimizer" (it used to hang)."""
    class TwoOptimizers(Regression):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            self.calls += 1

        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=self.lr), torch.optim.Adam(self.parameters(), lr=self.lr)]

    model = TwoOptimizers()
    before = snapshot(model)
    with pytest.raises(ValueError, match="returned 2, but learning rate finder only works with single optimizer"):
        Tuner(fast_trainer(default_root_dir=tmp_path, max_epochs=1)).lr_find(model)
    assert_same(before, model)  # no batch ran (calls is a buffer), and the weights are as they were


def test_suggestion_is_steepest_descent_and_handles_short_or_nan_curves():
    f = LRFinder("exponential", 1e-3, 1.0, 5)
    f.results = {"lr": [1e-3, 1e-2, 1e-1, 1.0, 10.0], "loss": [5.0, 4.9, 3.0, 2.9, float("nan")]}
    assert f.suggestion(skip_begin=0, skip_end=0) in (1e-2, 1e-1)  # the big drop is between them
    f.results = {"lr": [1e-3, 1e-2], "loss": [1.0, 0.5]}
    assert f.suggestion() is None


def test_plot_without_matplotlib_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("simulated")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"pip install distengine\[tuner\]"):
        LRFinder("exponential", 1e-3, 1.0, 5).plot()


# ---------------------------------------------------------------------------- scale_batch_size
class MemoryLimited(Regression):
    """Pretends to run out of memory for batches larger than ``limit``."""

    def __init__(self, limit=48, use_hparams=False):
        super().__init__(batch_size=2)
        self.limit = limit
        self.seen: list[int] = []
        if use_hparams:
            del self.batch_size
            self.save_hyperparameters({"batch_size": 2})

    def training_step(self, batch, batch_idx):
        size = batch[0].shape[0]
        self.seen.append(size)
        if size > self.limit:
            raise RuntimeError(f"CUDA out of memory. Tried to allocate {size} MiB (simulated)")
        return super().training_step(batch, batch_idx)

    def train_dataloader(self):
        bs = self.hparams.batch_size if "batch_size" in self.hparams else self.batch_size
        return DataLoader(self.data, batch_size=bs, shuffle=False)


def test_scale_batch_size_power():
    model = MemoryLimited()
    before = snapshot(model)
    assert Tuner(fast_trainer()).scale_batch_size(model, mode="power") == 32
    assert model.batch_size == 32
    assert sorted(set(model.seen)) == [2, 4, 8, 16, 32, 64]
    assert_same(before, model)


def test_scale_batch_size_binsearch_via_hparams():
    model = MemoryLimited(use_hparams=True)
    before = snapshot(model)
    assert Tuner(fast_trainer()).scale_batch_size(model, mode="binsearch", steps_per_trial=2) == 48
    assert model.hparams.batch_size == 48
    assert {48, 49, 56, 64} <= set(model.seen)
    assert_same(before, model)


def test_scale_batch_size_stops_at_dataset_size_and_halves_when_init_fails():
    model = MemoryLimited(limit=10_000)
    model.data = regression_data(40)
    assert Tuner(fast_trainer()).scale_batch_size(model, init_val=16) == 64  # first size >= 40 samples
    model = MemoryLimited(limit=5)
    assert Tuner(fast_trainer()).scale_batch_size(model, init_val=16) == 4
    model = MemoryLimited(limit=0)
    with pytest.raises(RuntimeError, match="even batch size 1 runs out of memory"):
        Tuner(fast_trainer()).scale_batch_size(model, init_val=2)


def test_scale_batch_size_propagates_other_errors_and_checks_arguments():
    class Broken(MemoryLimited):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        Tuner(fast_trainer()).scale_batch_size(Broken())
    with pytest.raises(ValueError, match="'power' or 'binsearch'"):
        Tuner(fast_trainer()).scale_batch_size(MemoryLimited(), mode="linear")
    with pytest.raises(AttributeError, match="no `bs`"):
        Tuner(fast_trainer()).scale_batch_size(MemoryLimited(), batch_arg_name="bs")


def test_is_oom_error():
    assert is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_oom_error(torch.cuda.OutOfMemoryError("x"))
    wrapped = ValueError("step failed")
    wrapped.__cause__ = RuntimeError("DefaultCPUAllocator: can't allocate memory")
    assert is_oom_error(wrapped)
    assert not is_oom_error(RuntimeError("size mismatch"))


# ---------------------------------------------------------------------------- 1.x tune()
def test_trainer_tune_runs_batch_size_then_lr():
    model = MemoryLimited()
    trainer = fast_trainer(auto_lr_find=True, auto_scale_batch_size="binsearch")
    result = trainer.tune(model, lr_find_kwargs={"num_training": 8, "min_lr": 1e-4, "max_lr": 1e-1})
    assert result["scale_batch_size"] == 48 == model.batch_size
    assert isinstance(result["lr_find"], LRFinder) and model.lr == result["lr_find"].suggestion()
    assert max(model.seen[-8:]) == 48  # the LR sweep ran with the batch size just found


def test_tune_with_attr_name_and_nothing_requested():
    class Named(Regression):
        def __init__(self):
            super().__init__()
            self.my_lr = 0.1

    model = Named()
    out = tune(fast_trainer(auto_lr_find="my_lr"), model, lr_find_kwargs={"num_training": 5})
    assert model.my_lr == out["lr_find"].suggestion() and model.lr == 1e-3
    assert tune(fast_trainer(), model) == {}
    with pytest.raises(ValueError, match="auto_scale_batch_size"):
        tune(fast_trainer(auto_scale_batch_size="huge"), model)


def _run_script(tmp_path, code: str):
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_scale_batch_size_prints_each_trial_and_the_result(tmp_path):
    proc = _run_script(tmp_path, (
        "import torch; torch.set_num_threads(1)\n"
        "from tests.tuner.test_tuner import MemoryLimited, fast_trainer\n"
        "from distengine.tuner import Tuner\n"
        "print('FOUND', Tuner(fast_trainer()).scale_batch_size(MemoryLimited(), mode='binsearch'))\n"))
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("distengine: scale_batch_size")]
    # one line per trial, in order: 2..32 fit, 64 does not, then the bisection to 48
    want = [f"batch size {n} fits" for n in (2, 4, 8, 16, 32)] + ["batch size 64 runs out of memory",
                                                                   "batch size 48 fits",
                                                                   "batch size 56 runs out of memory",
                                                                   "batch size 52 runs out of memory",
                                                                   "batch size 50 runs out of memory",
                                                                   "batch size 49 runs out of memory",
                                                                   "using batch size 48 (set as batch_size)"]
    assert lines == [f"distengine: scale_batch_size (binsearch): {w}" for w in want], proc.stderr
    assert "FOUND 48" in proc.stdout
