"""The strategy flag: names, instances, the one-line error, and what Lightning code calls on
``trainer.strategy`` in one process."""
from __future__ import annotations

import pytest
import torch

import distengine as de
from distengine.strategies import STRATEGIES, Strategy
from distengine.strategies.ddp import DDPStrategy
from distengine.strategies.single import SingleDeviceStrategy


def _trainer(**kw):
    return de.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kw)


def test_names_resolve_to_strategies_and_instances_are_kept():
    assert type(_trainer().strategy) is SingleDeviceStrategy  # "auto" in one process
    assert type(_trainer(strategy="single_device").strategy) is SingleDeviceStrategy
    assert type(_trainer(strategy="ddp").strategy) is DDPStrategy
    assert _trainer(strategy="ddp_find_unused_parameters_true").strategy.find_unused_parameters is True
    mine = DDPStrategy(bucket_cap_mb=5)
    trainer = _trainer(strategy=mine)
    assert trainer.strategy is mine and trainer.find_unused_parameters is False
    with pytest.raises(ValueError, match=r"strategy='fdsp' is not supported; use 'auto', 'single_device', 'ddp'"):
        _trainer(strategy="fdsp")
    with pytest.raises(ValueError, match=r"find_unused_parameters=True\) is a DDP option"):
        _trainer(strategy="single_device", find_unused_parameters=True)
    assert all(len(v) == 3 for v in STRATEGIES.values())


def test_trainer_strategy_has_what_lightning_code_calls():
    trainer = _trainer()
    s = trainer.strategy
    assert isinstance(s, Strategy) and s.root_device == torch.device("cpu") == trainer.root_device
    assert (s.world_size, s.global_rank, trainer.is_global_zero) == (1, 0, True)
    s.barrier()
    assert s.broadcast({"a": 1}) == {"a": 1}
    t = torch.tensor([2.0, 3.0])
    assert torch.equal(s.reduce(t, reduce_op="mean"), t)
    assert s.reduce_boolean_decision(True) is True and s.reduce_boolean_decision(False, all=False) is False


class _Net(de.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen_params = None

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        # built after the strategy placed the module: the optimizer holds the placed parameters
        self.seen_params = [p for p in self.parameters()]
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_optimizers_are_configured_after_setup_module_and_fresh_copies_keep_options():
    order = []

    class Recording(SingleDeviceStrategy):
        def setup_module(self, module):
            order.append("setup_module")
            return super().setup_module(module)

        def teardown(self):
            order.append("teardown")
            super().teardown()

    class Net(_Net):
        def configure_optimizers(self):
            order.append("configure_optimizers")
            return super().configure_optimizers()

        def predict_step(self, batch, batch_idx):
            return self.layer(batch[0])

    class TeardownOrder(de.Callback):
        def teardown(self, trainer, module, stage):
            order.append(f"callback teardown {stage}")

    trainer = _trainer(strategy=Recording(), max_steps=1, callbacks=[TeardownOrder()])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer.fit(Net(), loader)
    # the strategy is torn down at the end of every stage, after the callbacks (which wait for saves)
    assert order == ["setup_module", "configure_optimizers", "callback teardown fit", "teardown"]
    trainer.predict(trainer.lightning_module, loader)
    assert order[4:] == ["callback teardown predict", "teardown"]
    assert trainer.strategy.model is trainer.lightning_module and trainer.model is trainer.lightning_module
    copy = DDPStrategy(static_graph=True, bucket_cap_mb=3).fresh()
    assert (copy.static_graph, copy.bucket_cap_mb, copy.model) == (True, 3, None)


def test_a_tuner_trial_trainer_carries_every_hardware_and_precision_flag(tmp_path):
    from distengine.config import TRIAL_DROPPED, TRIAL_OVERRIDES, TrainerConfig
    from distengine.tuner import Tuner

    flags = dict(accelerator="cpu", devices=1, num_nodes=1, precision="64-true", compile=True, deterministic=True,
                 benchmark=False, sync_batchnorm=True, inference_mode=False, use_distributed_sampler=False,
                 dist_timeout=77.0, accumulate_grad_batches=2, gradient_clip_val=0.5, gradient_clip_algorithm="value",
                 default_root_dir=str(tmp_path), strategy=DDPStrategy(bucket_cap_mb=3, static_graph=True),
                 find_unused_parameters=True, max_epochs=9, log_every_n_steps=3, profiler="simple")
    trainer = de.Trainer(enable_progress_bar=False, **flags)
    trial = Tuner(trainer)._trial_trainer(5, [])
    for name, value in flags.items():
        if name in TRIAL_DROPPED or name in TRIAL_OVERRIDES or name == "strategy":
            continue
        assert getattr(trial.config, name) == value, name
    assert (trial.compile, trial.precision, trial.gradient_clip_algorithm, trial.max_steps) == (True, "64-true",
                                                                                                 "value", 5)
    assert type(trial.strategy) is DDPStrategy and trial.strategy is not trainer.strategy
    assert (trial.strategy.bucket_cap_mb, trial.strategy.static_graph, trial.find_unused_parameters) == (3, True, True)
    assert trial.max_epochs == -1 and trial.log_every_n_steps == 50 and trial.loggers == []
    # every flag of Trainer.__init__ is in the config (so the trial sees it), and only those
    import inspect

    params = set(inspect.signature(de.Trainer.__init__).parameters) - {"self"}
    assert {f.name for f in __import__("dataclasses").fields(TrainerConfig)} == params
    assert set(TRIAL_OVERRIDES) | TRIAL_DROPPED <= params


def test_every_checkpoint_key_is_saved_and_restored_in_one_place(tmp_path):
    from distengine.checkpoint.trainer_state import RESTORE_ORDER

    trainer = _trainer(strategy="single_device", max_steps=2, default_root_dir=str(tmp_path))
    trainer.fit(_Net(), torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2))
    checkpointer = trainer._checkpoints().checkpointer()
    restored = set(RESTORE_ORDER) | set(checkpointer.weights)
    assert set(checkpointer.states) <= restored
    path = tmp_path / "x.ckpt"
    trainer.save_checkpoint(str(path))
    saved = torch.load(path, weights_only=False)
    assert set(saved) == set(checkpointer.states)  # (no on_save_checkpoint hook adds keys here)
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "callbacks", "progress", "rng", "data",
                "precision", "optimizer_classes", "epoch", "global_step"):
        assert key in saved, key
    assert saved["global_step"] == 2 and saved["optimizer_classes"] == ["SGD"]
