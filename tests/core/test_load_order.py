"""When the Trainer loads the dataloaders, as Lightning 2.x does (its tests_pytorch/models/
test_hooks.py and trainer/test_dataloaders.py): ``val_dataloader()`` in the sanity check, then
``train_dataloader()`` after it, before ``on_train_start``; earlier only when
``trainer.estimated_stepping_batches`` is read; no ``val_dataloader()`` call when nothing would be
validated. A datamodule's hooks in the same order (a datamodule that builds its training set
lazily sees the validation loader asked for first)."""
from __future__ import annotations

import math

import torch

import distengine as de
from tests.core.models import Regressor, loader, quiet_trainer, regression_data


class Recorder(de.Callback):
    def __init__(self, calls):
        self.calls = calls

    def on_fit_start(self, trainer, pl_module):
        self.calls.append(("on_fit_start", trainer.num_training_batches))

    def on_sanity_check_start(self, trainer, pl_module):
        self.calls.append(("on_sanity_check_start",))

    def on_sanity_check_end(self, trainer, pl_module):
        self.calls.append(("on_sanity_check_end",))

    def on_train_start(self, trainer, pl_module):
        self.calls.append(("on_train_start", trainer.num_training_batches))


class Model(Regressor):
    def __init__(self, calls, steps_in_configure=False):
        super().__init__()
        self.calls, self.steps_in_configure = calls, steps_in_configure

    def configure_optimizers(self):
        self.calls.append(("configure_optimizers",))
        if self.steps_in_configure:
            self.calls.append(("estimated_stepping_batches", self.trainer.estimated_stepping_batches))
        return super().configure_optimizers()

    def train_dataloader(self):
        self.calls.append(("train_dataloader",))
        return loader(regression_data(), batch_size=32)

    def val_dataloader(self):
        self.calls.append(("val_dataloader",))
        return loader(regression_data(), batch_size=32)


def test_train_dataloader_is_loaded_after_the_sanity_check(tmp_path):
    calls = []
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=1, callbacks=[Recorder(calls)])
    trainer.fit(Model(calls))
    assert calls == [("configure_optimizers",), ("on_fit_start", math.inf), ("on_sanity_check_start",),
                     ("val_dataloader",), ("on_sanity_check_end",), ("train_dataloader",), ("on_train_start", 3)]


def test_estimated_stepping_batches_loads_the_training_data_once(tmp_path):
    calls = []
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=1, callbacks=[Recorder(calls)])
    trainer.fit(Model(calls, steps_in_configure=True))
    assert calls == [("configure_optimizers",), ("train_dataloader",), ("estimated_stepping_batches", 6),
                     ("on_fit_start", 3), ("on_sanity_check_start",), ("val_dataloader",), ("on_sanity_check_end",),
                     ("on_train_start", 3)]


def test_no_val_dataloader_call_when_nothing_is_validated(tmp_path):
    calls = []
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[Recorder(calls)])
    trainer.fit(Model(calls))
    assert ("val_dataloader",) not in calls
    assert calls[-2:] == [("train_dataloader",), ("on_train_start", 3)]


def test_limit_train_batches_zero_loads_no_training_data(tmp_path):
    calls = []
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=0, limit_val_batches=0)
    trainer.fit(Model(calls))
    assert ("train_dataloader",) not in calls
    assert trainer.global_step == 0


# ---------------------------------------------------------------- overfit_batches
class Shuffled(Regressor):
    def __init__(self, seen=None):
        super().__init__()
        self.seen = seen if seen is not None else {"train": [], "val": []}

    def training_step(self, batch, batch_idx):
        self.seen["train"].append(batch[0].clone())
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.seen["val"].append(batch[0].clone())
        return super().validation_step(batch, batch_idx)

    def train_dataloader(self):
        return loader(regression_data(), batch_size=16, shuffle=True)

    def val_dataloader(self):
        return loader(regression_data(), batch_size=16, shuffle=True)


def test_overfit_batches_reads_shuffled_loaders_in_order_with_a_warning(tmp_path):
    """Lightning: under overfit_batches a loader that shuffles is rebuilt on a SequentialSampler
    (a UserWarning for each of the training and the validation loader); every epoch then trains
    on the dataset's first batches."""
    import warnings

    from torch.utils.data import SequentialSampler

    model = Shuffled()
    trainer = quiet_trainer(tmp_path, max_epochs=2, overfit_batches=2, num_sanity_val_steps=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    overfit = [str(w.message) for w in caught if "overfit_batches" in str(w.message)]
    assert len(overfit) == 2 and all(issubclass(w.category, UserWarning) for w in caught
                                     if "overfit_batches" in str(w.message))
    assert isinstance(trainer.train_dataloader.sampler, SequentialSampler)
    assert isinstance(trainer.val_dataloaders.sampler, SequentialSampler)
    first = regression_data().tensors[0][:16]
    assert len(model.seen["train"]) == 4 and all(torch.equal(b, first) for b in model.seen["train"][::2])


def test_overfit_batches_trains_and_validates_on_the_same_batch(tmp_path):
    """Lightning's test_overfit_batches_same_batch_for_train_and_val: overfit_batches=1 with the
    same data behind both loaders gives the same batch to training_step and validation_step."""
    model = Shuffled()
    trainer = quiet_trainer(tmp_path, max_epochs=2, overfit_batches=1)
    trainer.fit(model)
    assert model.seen["train"] and model.seen["val"]
    assert torch.equal(model.seen["train"][0], model.seen["val"][0])


# ---------------------------------------------------------------- a datamodule's hooks
class LazyData(de.LightningDataModule):
    """Builds its training set only when asked for it (after the validation loader), keeps a
    counter in its state_dict, and records its hooks."""

    def __init__(self, calls):
        super().__init__()
        self.calls, self.loads = calls, 0

    def prepare_data(self):
        self.calls.append(("dm.prepare_data",))

    def setup(self, stage):
        self.calls.append(("dm.setup", stage))

    def train_dataloader(self):
        self.calls.append(("dm.train_dataloader",))
        self.loads += 1
        return loader(regression_data(), batch_size=32)

    def val_dataloader(self):
        self.calls.append(("dm.val_dataloader",))
        return loader(regression_data(), batch_size=32)

    def state_dict(self):
        self.calls.append(("dm.state_dict",))
        return {"loads": self.loads}

    def load_state_dict(self, state):
        self.calls.append(("dm.load_state_dict", state))
        self.loads = state["loads"]

    def teardown(self, stage):
        self.calls.append(("dm.teardown", stage))


class ModuleSetup(Regressor):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def prepare_data(self):
        self.calls.append(("prepare_data",))

    def setup(self, stage):
        self.calls.append(("setup", stage))

    def teardown(self, stage):
        self.calls.append(("teardown", stage))


class SetupRecorder(de.Callback):
    def __init__(self, calls):
        self.calls = calls

    def setup(self, trainer, pl_module, stage):
        self.calls.append(("Callback.setup", stage))

    def teardown(self, trainer, pl_module, stage):
        self.calls.append(("Callback.teardown", stage))


def test_datamodule_hook_order_in_fit_and_its_state_in_the_checkpoint(tmp_path):
    """Lightning's order: prepare_data (the datamodule's, then the module's), setup (the
    datamodule's, the callbacks', the module's), val_dataloader in the sanity check, then
    train_dataloader; the datamodule's state_dict saved with each checkpoint (under its class
    name) and loaded back on resume; its teardown before the callbacks' and the module's."""
    calls = []
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=1, callbacks=[SetupRecorder(calls)],
                            enable_checkpointing=True)
    trainer.fit(ModuleSetup(calls), datamodule=LazyData(calls))
    assert calls == [("dm.prepare_data",), ("prepare_data",), ("dm.setup", "fit"), ("Callback.setup", "fit"),
                     ("setup", "fit"), ("dm.val_dataloader",), ("dm.train_dataloader",), ("dm.state_dict",),
                     ("dm.teardown", "fit"), ("Callback.teardown", "fit"), ("teardown", "fit")]
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=False)
    assert ckpt["LazyData"] == {"loads": 1}

    calls.clear()
    resumed = quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=1)
    dm = LazyData(calls)
    resumed.fit(ModuleSetup([]), datamodule=dm, ckpt_path=trainer.checkpoint_callback.best_model_path)
    assert ("dm.load_state_dict", {"loads": 1}) in calls
    assert dm.loads == 2


def test_datamodule_without_a_hook_gives_no_such_data(tmp_path):
    """The base class defines the loader hooks (as Lightning's, so wrappers see them); one not
    overridden counts as not defined: no validation here, and a call raises a ConfigError."""
    import pytest

    from distengine.utilities.exceptions import ConfigError

    class TrainOnly(de.LightningDataModule):
        def train_dataloader(self):
            return loader(regression_data(), batch_size=32)

    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(Regressor(), datamodule=TrainOnly())
    assert trainer.global_step == 3 and trainer.num_val_batches == []
    with pytest.raises(ConfigError, match="test_dataloader"):
        TrainOnly().test_dataloader()


# ---------------------------------------------------------------- resume
class Indexed(Regressor):
    def __init__(self, seen, steps_in_configure=False):
        super().__init__()
        self.seen, self.steps_in_configure = seen, steps_in_configure

    def configure_optimizers(self):
        if self.steps_in_configure:
            assert self.trainer.estimated_stepping_batches == 6  # loads the training data now
        return super().configure_optimizers()

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        self.seen.append(idx.tolist())
        return super().training_step((x, y), batch_idx)

    def train_dataloader(self):
        from torch.utils.data import TensorDataset

        x, y = regression_data().tensors
        return loader(TensorDataset(x, y, torch.arange(len(x))), batch_size=16, shuffle=True)


def test_mid_epoch_resume_sees_the_remaining_samples_when_the_data_loads_late(tmp_path):
    """The sampler position of a mid-epoch checkpoint is applied when the training data is
    loaded (after the sanity check, or earlier through estimated_stepping_batches): the resumed
    epoch trains on exactly the batches the uninterrupted run trained on after the checkpoint."""
    de.seed_everything(3)
    whole = []
    quiet_trainer(tmp_path / "a", max_epochs=1, limit_val_batches=0).fit(Indexed(whole))
    for steps_in_configure in (False, True):
        de.seed_everything(3)
        first, rest = [], []
        cut = quiet_trainer(tmp_path / "b", max_steps=2, limit_val_batches=0)
        cut.fit(Indexed(first))
        ckpt = str(tmp_path / "mid.ckpt")
        cut.save_checkpoint(ckpt)
        resumed = quiet_trainer(tmp_path / "c", max_epochs=1, limit_val_batches=0)
        resumed.fit(Indexed(rest, steps_in_configure), ckpt_path=ckpt)
        assert first + rest == whole and len(rest) == 4
