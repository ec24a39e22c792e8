"""Hook order and arguments as Lightning 2.x gives them (its tests_pytorch/models/test_hooks.py):
setup/teardown with ``stage=`` by keyword, the callbacks' before the module's; the module's
``zero_grad()`` before a stage's loop; the evaluation epoch end (callbacks, then the module);
``limit_*_batches=0`` skipping the evaluation; ``prepare_data`` a module hook."""
from __future__ import annotations

import functools

import torch

import distengine as de
from tests.core.models import Regressor, loader, quiet_trainer, regression_data


class Recorder(de.Callback):
    def __init__(self, calls):
        self.calls = calls

    def setup(self, trainer, pl_module, stage):
        self.calls.append(("Callback.setup", stage))

    def teardown(self, trainer, pl_module, stage):
        self.calls.append(("Callback.teardown", stage))

    def on_validation_epoch_end(self, trainer, pl_module):
        self.calls.append(("Callback.on_validation_epoch_end", float(trainer.callback_metrics["step_val"])))


class Model(Regressor):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def prepare_data(self):
        self.calls.append(("prepare_data",))

    def setup(self, stage):  # a keyword-only caller would still match this name
        self.calls.append(("setup", stage))

    def teardown(self, stage):
        self.calls.append(("teardown", stage))

    def validation_step(self, batch, batch_idx):
        self.log("step_val", 2.0)
        return super().validation_step(batch, batch_idx)

    def on_validation_epoch_end(self):
        self.calls.append(("on_validation_epoch_end",))
        self.log("late_val", 3.0)


def test_setup_teardown_order_and_stage_keyword(tmp_path):
    calls = []

    def kw_only(*, stage):  # Lightning passes stage by keyword
        calls.append(("kw", stage))

    model = Model(calls)
    model.setup = functools.partial(kw_only)
    trainer = quiet_trainer(tmp_path, callbacks=[Recorder(calls)], limit_val_batches=1)
    trainer.validate(model, loader(regression_data()), verbose=False)
    names = [c[0] for c in calls]
    assert names[:3] == ["prepare_data", "Callback.setup", "kw"]
    assert calls[2] == ("kw", "validate")
    assert names[-2:] == ["Callback.teardown", "teardown"]


def test_eval_epoch_end_callbacks_first_and_late_logs_kept(tmp_path):
    calls = []
    trainer = quiet_trainer(tmp_path, callbacks=[Recorder(calls)], limit_val_batches=2)
    out = trainer.validate(Model(calls), loader(regression_data()), verbose=False)
    ends = [c for c in calls if c[0].endswith("on_validation_epoch_end")]
    # the callbacks' hook first, already seeing the epoch value of what the steps logged
    assert ends == [("Callback.on_validation_epoch_end", 2.0), ("on_validation_epoch_end",)]
    assert out[0]["late_val"] == 3.0 and out[0]["step_val"] == 2.0


def test_zero_grad_before_stage_loop(tmp_path):
    model = Regressor()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    quiet_trainer(tmp_path, limit_val_batches=1).validate(model, loader(regression_data()), verbose=False)
    assert all(p.grad is None for p in model.parameters())


def test_zero_limit_skips_evaluation(tmp_path):
    called = []

    class M(Regressor):
        def val_dataloader(self):
            called.append("val_dataloader")
            return loader(regression_data())

        def on_validation_start(self):
            called.append("on_validation_start")

    assert quiet_trainer(tmp_path, limit_val_batches=0).validate(M(), verbose=False) == []
    assert called == []


def test_wrapped_default_one_x_hook_is_not_called(tmp_path):
    """A wrapper around the default 1.x ``on_epoch_start`` (which Lightning 2.x lacks) is no override."""
    called = []
    model = Regressor()
    base = model.on_epoch_start

    def record(*a, **k):
        called.append("on_epoch_start")
        return base(*a, **k)

    model.on_epoch_start = functools.update_wrapper(functools.partial(record), base)
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0).fit(
        model, loader(regression_data()))
    assert called == []


def test_val_dataloader_loaded_in_the_sanity_check(tmp_path):
    """Lightning calls val_dataloader() inside the sanity check (trainer.sanity_checking set,
    after on_sanity_check_start); with check_val_every_n_epoch=3 and a reload every 4 epochs the
    later loads are at epochs 2 and 8, as in Lightning."""
    events = []

    class M(Regressor):
        def train_dataloader(self):
            return loader(regression_data(), batch_size=96)

        def val_dataloader(self):
            events.append(("val_dataloader", self.trainer.sanity_checking, self.current_epoch))
            return loader(regression_data(), batch_size=96)

    class Cb(de.Callback):
        def on_sanity_check_start(self, trainer, pl_module):
            events.append(("on_sanity_check_start",))

    trainer = quiet_trainer(tmp_path, max_epochs=10, limit_train_batches=1, limit_val_batches=1,
                            num_sanity_val_steps=1, check_val_every_n_epoch=3,
                            reload_dataloaders_every_n_epochs=4, callbacks=[Cb()])
    trainer.fit(M())
    assert events == [("on_sanity_check_start",), ("val_dataloader", True, 0),
                      ("val_dataloader", False, 2), ("val_dataloader", False, 8)]
    assert trainer.num_sanity_val_batches == [1]


def test_train_epoch_end_order_and_checkpoint_hooks(tmp_path):
    """Lightning: the callbacks' on_train_epoch_end, the module's, then the monitoring callbacks'
    (a ModelCheckpoint monitoring what the module logged there); on_save_checkpoint: the
    callbacks' before the module's; the default configure_gradient_clipping passes keywords."""
    events = []

    class Cb(de.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            events.append(("Callback.on_train_epoch_end", float(trainer.callback_metrics["train_loss"])))

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            events.append(("Callback.on_save_checkpoint",))

    class Ckpt(de.callbacks.ModelCheckpoint):
        def on_train_epoch_end(self, trainer, pl_module):
            events.append(("ModelCheckpoint.on_train_epoch_end", float(trainer.callback_metrics["late"])))
            super().on_train_epoch_end(trainer, pl_module)

    class M(Regressor):
        def on_train_epoch_end(self):
            events.append(("on_train_epoch_end",))
            self.log("late", 7.0)

        def on_save_checkpoint(self, checkpoint):
            events.append(("on_save_checkpoint",))

        def clip_gradients(self, optimizer, *args, **kwargs):
            events.append(("clip_gradients", args, sorted(kwargs)))

        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0,
                            callbacks=[Ckpt(dirpath=str(tmp_path), monitor="late", save_top_k=1), Cb()])
    trainer.fit(M(), loader(regression_data()))
    names = [e[0] for e in events]
    assert events[0] == ("clip_gradients", (), ["gradient_clip_algorithm", "gradient_clip_val"])
    assert names[1:4] == ["Callback.on_train_epoch_end", "on_train_epoch_end", "ModelCheckpoint.on_train_epoch_end"]
    assert events[3][1] == 7.0
    assert names[4:6] == ["Callback.on_save_checkpoint", "on_save_checkpoint"]


def test_epoch_scheduler_steps_before_last_batch_end_and_grads_released_before_validation(tmp_path):
    """Lightning steps the epoch-interval schedulers before the epoch's last on_train_batch_end
    (not when max_steps cuts the epoch short), and calls on_validation_model_zero_grad (default:
    zero_grad) before a validation inside fit, not before the sanity check."""
    seen = []

    class M(Regressor):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=1.0)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

        def on_train_batch_end(self, outputs, batch, batch_idx):
            seen.append(("batch_end", batch_idx, self.optimizers().param_groups[0]["lr"]))

        def on_validation_model_zero_grad(self):
            seen.append(("zero_grad", self.trainer.sanity_checking))
            super().on_validation_model_zero_grad()

    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(M(), loader(regression_data()), loader(regression_data()))
    assert seen == [("batch_end", 0, 1.0), ("batch_end", 1, 0.5), ("zero_grad", False)]
    seen.clear()
    model = M()
    quiet_trainer(tmp_path, max_steps=1, limit_train_batches=2, limit_val_batches=0).fit(
        model, loader(regression_data()))
    assert seen == [("batch_end", 0, 1.0)] and model.optimizers().param_groups[0]["lr"] == 1.0


def test_module_backward_override_is_called(tmp_path):
    """Lightning's LightningModule.backward hook: an override runs the backward of automatic
    optimization (here with retain_graph=True), between on_before_backward and on_after_backward."""
    seen = []

    class M(Regressor):
        def on_before_backward(self, loss):
            seen.append("on_before_backward")

        def backward(self, loss, *args, **kwargs):
            seen.append("backward")
            loss.backward(retain_graph=True)

        def on_after_backward(self):
            seen.append("on_after_backward")

    model = M()
    before = [p.detach().clone() for p in model.parameters()]
    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(model, loader(regression_data()))
    assert seen == ["on_before_backward", "backward", "on_after_backward"]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_manual_optimization_calls_backward_and_step_hooks(tmp_path):
    """Lightning: manual_backward runs on_before_backward, the backward, on_after_backward; each
    optimizer.step() is preceded by on_before_optimizer_step (module and callbacks)."""
    seen = []

    class Cb(de.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append("Callback.on_before_optimizer_step")

    class M(Regressor):
        automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))
            seen.append("manual_backward")
            opt.step()
            seen.append("step")

        def on_before_backward(self, loss):
            seen.append("on_before_backward")

        def on_after_backward(self):
            seen.append("on_after_backward")

        def on_before_optimizer_step(self, optimizer):
            seen.append("on_before_optimizer_step")

    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[Cb()]).fit(M(), loader(regression_data()))
    assert seen == ["on_before_backward", "on_after_backward", "manual_backward",
                    "Callback.on_before_optimizer_step", "on_before_optimizer_step", "step"]


def test_manual_step_with_a_closure_runs_the_closure_before_on_before_optimizer_step(tmp_path):
    """Lightning: ``opt.step(closure)`` runs the closure (which computes the gradients), then
    on_before_optimizer_step, then updates the weights; the hook sees the closure's gradients."""
    seen = []

    class M(Regressor):
        automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()

            def closure():
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
                self.manual_backward(loss)
                seen.append("closure")
                return loss

            before = [p.detach().clone() for p in self.parameters()]
            opt.step(closure=closure)
            seen.append(("changed", any(not torch.equal(b, p) for b, p in zip(before, self.parameters()))))

        def on_before_optimizer_step(self, optimizer):
            seen.append(("on_before_optimizer_step", all(p.grad is not None for p in self.parameters())))

    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(M(), loader(regression_data()))
    assert seen == ["closure", ("on_before_optimizer_step", True), ("changed", True)]
