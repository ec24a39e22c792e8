"""Optimization styles from older Lightning (issue 10, items 6 and 7) and manual global_step.

The 1.x automatic optimization over several optimizers (``training_step(batch, batch_idx,
optimizer_idx)``) is compared with a plain-torch loop written from pytorch-lightning 1.9.5's
semantics; the same scripts were checked by hand against 1.9.5 itself (torch.equal weights,
equal global_step, equal sequence of training_step calls).
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.utilities.warnings import PossibleUserWarning
from tests.core.models import Regressor, loader, quiet_trainer, regression_data

N, BS, EPOCHS = 40, 4, 2  # 10 batches per epoch: 10 % 3 != 0 exercises the frequency cycle's restart


def gan_data() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(N, 4, generator=g), torch.randn(N, 1, generator=g))


def make_nets():
    torch.manual_seed(3)
    g = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    d = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    return g, d


def gan_loss(g, d, x, y, batch_idx, optimizer_idx, variant):
    if optimizer_idx == 0:
        return torch.nn.functional.mse_loss(d(g(x)), y)
    if variant == "none1" and batch_idx % 2:
        return None  # skip this optimizer's backward on odd batches
    return torch.nn.functional.mse_loss(d(g(x)), -y)


def make_optimizers(g, d, variant):
    og = torch.optim.SGD(g.parameters(), lr=0.1)
    od = torch.optim.SGD(d.parameters(), lr=0.05, momentum=0.9)
    sched = [torch.optim.lr_scheduler.StepLR(og, 1, gamma=0.5),
             {"scheduler": torch.optim.lr_scheduler.StepLR(od, 1, gamma=0.7), "interval": "step", "frequency": 2}]
    return og, od, sched


TRAINER_FLAGS = {"accum": {"accumulate_grad_batches": 3}, "clip": {"gradient_clip_val": 0.01}}


class OneXGAN(de.LightningModule):
    def __init__(self, variant: str):
        super().__init__()
        self.g, self.d = make_nets()
        self.variant = variant
        self.calls: list[tuple[int, int, int, list[str]]] = []
        self.batch_end_outputs: list[int] = []
        self.epoch_end_shapes: list[list[int]] = []

    def training_step(self, batch, batch_idx, optimizer_idx):
        frozen = sorted({n[0] for n, p in self.named_parameters() if not p.requires_grad})
        self.calls.append((batch_idx, optimizer_idx, self.global_step, frozen))
        x, y = batch
        return gan_loss(self.g, self.d, x, y, batch_idx, optimizer_idx, self.variant)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.batch_end_outputs.append(len(outputs))

    def training_epoch_end(self, outputs):
        self.epoch_end_shapes.append([len(o) for o in outputs])

    def configure_optimizers(self):
        og, od, sched = make_optimizers(self.g, self.d, self.variant)
        if self.variant == "freq":
            return [{"optimizer": og, "frequency": 2}, {"optimizer": od, "frequency": 1}]
        if self.variant == "sched":
            return [og, od], sched
        return [og, od]


def one_x_reference(variant: str):
    """pytorch-lightning 1.9.5's automatic optimization over two optimizers, by hand."""
    g, d = make_nets()
    og, od, sched = make_optimizers(g, d, variant)
    opts, groups = [og, od], [list(g.parameters()), list(d.parameters())]
    accum = TRAINER_FLAGS.get(variant, {}).get("accumulate_grad_batches", 1)
    x_all, y_all = gan_data().tensors
    nb, step, calls = N // BS, 0, []
    for _ in range(EPOCHS):
        for b in range(nb):
            x, y = x_all[b * BS:(b + 1) * BS], y_all[b * BS:(b + 1) * BS]
            last = (b + 1) % accum == 0 or b + 1 == nb
            active = [[0, 0, 1][b % 3]] if variant == "freq" else [0, 1]
            for i in active:
                for p in groups[1 - i]:  # toggle_optimizer: freeze the other optimizer's parameters
                    p.requires_grad_(False)
                calls.append((b, i, step, ["d" if i == 0 else "g"]))
                loss = gan_loss(g, d, x, y, b, i, variant)
                if loss is not None:
                    (loss / accum).backward()
                if last:  # the step is taken and counted even without a loss, as in 1.9.5
                    if variant == "clip":
                        torch.nn.utils.clip_grad_norm_(groups[i], 0.01)
                    opts[i].step()
                    opts[i].zero_grad()
                    step += 1
                for p in groups[1 - i]:
                    p.requires_grad_(True)
            if variant == "sched" and last and (b + 1) % 2 == 0:
                sched[1]["scheduler"].step()  # step interval, frequency 2 (batches of the epoch)
        if variant == "sched":
            sched[0].step()  # epoch interval
    return [p.detach() for p in [*g.parameters(), *d.parameters()]], step, calls


@pytest.mark.parametrize("variant", ["plain", "freq", "accum", "clip", "sched", "none1"])
def test_one_x_several_optimizers_match_the_1_9_semantics(tmp_path, variant):
    de.seed_everything(7)
    module = OneXGAN(variant)
    trainer = quiet_trainer(tmp_path, max_epochs=EPOCHS, deterministic=True, num_sanity_val_steps=0,
                            **TRAINER_FLAGS.get(variant, {}))
    trainer.fit(module, DataLoader(gan_data(), batch_size=BS))
    weights, steps, calls = one_x_reference(variant)
    # 1.9.5: +1 per optimizer step (+2 per batch; +1 with frequencies; per accumulation window)
    assert trainer.global_step == steps == {"freq": 20, "accum": 16}.get(variant, 40)
    assert module.calls == calls  # (batch_idx, optimizer_idx, global_step seen, frozen nets)
    for got, want in zip(module.parameters(), weights):
        assert torch.equal(got, want)
    assert all(p.requires_grad for p in module.parameters())
    per_batch = 1 if variant == "freq" else 2
    if variant != "none1":  # 1.x: per batch, the outputs of the optimizers that ran
        assert module.batch_end_outputs == [per_batch] * (EPOCHS * N // BS)
        assert module.epoch_end_shapes == [[per_batch] * (N // BS)] * EPOCHS


def test_one_x_on_two_optimizers_trains_without_warnings(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=PossibleUserWarning)  # advice (workers...), not checked here
        quiet_trainer(tmp_path, max_epochs=1).fit(OneXGAN("plain"), DataLoader(gan_data(), batch_size=BS))


class Two(Regressor):
    def configure_optimizers(self):
        return [torch.optim.SGD(self.net[0].parameters(), lr=0.1), torch.optim.SGD(self.net[2].parameters(), lr=0.1)]


def test_several_optimizers_without_optimizer_idx_get_the_2x_advice(tmp_path):
    with pytest.raises(ValueError, match="does not take optimizer_idx: set self.automatic_optimization = False"):
        quiet_trainer(tmp_path, max_epochs=1).fit(Two(), loader(regression_data()))


def test_optimizer_idx_under_manual_optimization_is_refused(tmp_path):
    class Manual(Two):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx, optimizer_idx):
            raise AssertionError("not reached")

    with pytest.raises(ValueError, match="under manual optimization you step the optimizers yourself"):
        quiet_trainer(tmp_path, max_epochs=1).fit(Manual(), loader(regression_data()))


@pytest.mark.parametrize("variant, flags, match", [
    ("freq", {"accumulate_grad_batches": 2}, "frequencies with accumulate_grad_batches"),
    ("freq_sched", {}, "schedulers with optimizer frequencies"),
])
def test_unsupported_one_x_combinations_are_one_line_errors(tmp_path, variant, flags, match):
    class Module(OneXGAN):
        def configure_optimizers(self):
            og, od, sched = make_optimizers(self.g, self.d, "")
            if variant == "freq_sched":
                return [{"optimizer": og, "frequency": 1, "lr_scheduler": sched[0]}, {"optimizer": od, "frequency": 1}]
            return [{"optimizer": og, "frequency": 2}, {"optimizer": od, "frequency": 1}]

    with pytest.raises(ValueError, match=match):
        quiet_trainer(tmp_path, max_epochs=1, **flags).fit(Module("plain"), DataLoader(gan_data(), batch_size=BS))


# ------------------------------------------------------------------ manual optimization: global_step
def test_manual_global_step_counts_every_optimizer_step(tmp_path):
    """Lightning 2.6.6: +1 per optimizer.step() call (so +2 per batch with two optimizers),
    visible in training_step right after the call."""
    class ManualGAN(de.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.g, self.d = make_nets()
            self.seen: list[int] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            for i, opt in enumerate(self.optimizers()):
                self.toggle_optimizer(opt)
                opt.zero_grad()
                self.manual_backward(gan_loss(self.g, self.d, x, y, batch_idx, i, ""))
                opt.step()
                self.untoggle_optimizer(opt)
                self.seen.append(self.global_step)

        def configure_optimizers(self):
            return [torch.optim.SGD(self.g.parameters(), lr=0.1), torch.optim.SGD(self.d.parameters(), lr=0.1)]

    module = ManualGAN()
    trainer = quiet_trainer(tmp_path, max_epochs=2, max_steps=-1)
    trainer.fit(module, DataLoader(gan_data(), batch_size=BS))
    assert trainer.global_step == 40 and module.seen == list(range(1, 41))
    before = trainer.global_step
    trainer.optimizers[0].step()  # outside fit, stepping no longer counts
    assert trainer.global_step == before


def test_manual_optimization_with_accumulate_grad_batches_is_refused(tmp_path):
    class Manual(Regressor):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(ValueError, match="accumulate_grad_batches is not supported with manual optimization"):
        quiet_trainer(tmp_path, accumulate_grad_batches=2).fit(Manual(), loader(regression_data()))


# ------------------------------------------------------------------ training_end (item 7)
def test_training_end_without_arguments_runs_once_after_the_last_step(tmp_path):
    events: list[str] = []

    class Module(Regressor):
        def training_step(self, batch, batch_idx):
            events.append("step")
            return super().training_step(batch, batch_idx)

        def training_end(self):
            events.append(f"training_end@{self.global_step}")

        def on_train_end(self):
            events.append("on_train_end")

    trainer = quiet_trainer(tmp_path, max_epochs=2)
    trainer.fit(Module(), loader(regression_data()))
    assert events == ["step"] * 12 + ["training_end@12", "on_train_end"]


@pytest.mark.parametrize("hook", ["training_end", "training_step_end"])
def test_step_end_hook_returning_none_keeps_the_step_output(tmp_path, hook):
    seen: list[float] = []

    def step_end(self, outputs):
        seen.append(float(outputs["loss"].detach()))  # inspects the output, returns nothing

    Module = type("Module", (Regressor,), {
        hook: step_end,
        "training_step": lambda self, batch, batch_idx: {"loss": Regressor.training_step(self, batch, batch_idx)},
    })
    module = Module()
    before = [p.detach().clone() for p in module.parameters()]
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(module, loader(regression_data()))
    assert len(seen) == 6 and trainer.global_step == 6  # trained: every batch took its step
    assert all(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_step_end_hook_may_replace_the_output(tmp_path):
    class Module(Regressor):
        def training_step_end(self, outputs):
            return outputs * 0.0  # a loss without gradient signal: the weights stay

    module = Module()
    before = [p.detach().clone() for p in module.parameters()]
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(module, loader(regression_data()))
    assert trainer.global_step == 6
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))
