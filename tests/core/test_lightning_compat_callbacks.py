"""Callbacks and loggers behave as Lightning's do where a user can see it (found by Lightning's own
tests, ``tests/lightning_suite``): parsed arguments, warnings, files on disk, logged values."""
from __future__ import annotations

import inspect
import logging
import os

import pytest
import torch

from distengine.callbacks import ModelCheckpoint
from distengine.loggers import CSVLogger, TensorBoardLogger
from distengine.utilities.exceptions import MisconfigurationException
from tests.core.models import Regressor, loader, quiet_trainer, regression_data


@pytest.mark.parametrize("text, value", [("True", True), ("false", False), ("yes", True), ("link", "link")])
def test_model_checkpoint_save_last_annotation_parses_on_the_command_line(text, value):
    jsonargparse = pytest.importorskip("jsonargparse")
    annotation = inspect.signature(ModelCheckpoint).parameters["save_last"].annotation
    assert not isinstance(annotation, str)
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--save_last", type=annotation)
    assert parser.parse_args(["--save_last", text]).save_last == value


def test_model_checkpoint_restored_into_another_dirpath_warns(tmp_path):
    saved = ModelCheckpoint(dirpath=tmp_path / "a", save_top_k=-1)
    saved.best_model_path = str(tmp_path / "a" / "epoch=1.ckpt")
    saved.best_k_models = {saved.best_model_path: torch.tensor(1.0)}
    restored = ModelCheckpoint(dirpath=tmp_path / "b")
    with pytest.warns(UserWarning, match="dirpath"):
        restored.load_state_dict(saved.state_dict())
    assert restored.best_model_path == saved.best_model_path and restored.best_k_models == {}


def test_csv_logger_log_metrics_without_a_step_numbers_the_rows(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"a": 1.0})
    logger.log_metrics({"a": 2.0}, None)
    logger.log_metrics({"a": 3.0}, step=7)
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines() == [
        "step,a", "0,1.0", "1,2.0", "7,3.0"]


@pytest.mark.parametrize("kind", [CSVLogger, TensorBoardLogger])
def test_logger_subclass_overriding_name_and_version_moves_log_dir(tmp_path, kind):
    class Fixed(kind):
        @property
        def name(self):
            return "name"

        @property
        def version(self):
            return "version"

    assert Fixed(tmp_path).log_dir == os.path.join(tmp_path, "name", "version")
    assert Fixed(tmp_path).root_dir == os.path.join(tmp_path, "name")


def test_swa_argument_errors_are_config_errors():
    from distengine.callbacks import StochasticWeightAveraging
    for kwargs in ({"swa_epoch_start": 0}, {"swa_epoch_start": 1.5}, {"swa_epoch_start": 5, "swa_lrs": [0.2, -1]}):
        with pytest.raises(MisconfigurationException, match="StochasticWeightAveraging"):
            StochasticWeightAveraging(**{"swa_lrs": 0.1, **kwargs})


class _StepScheduled(Regressor):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1),
                                                   "interval": "step"}}


def test_swa_replacing_a_per_step_scheduler_warns_and_says_so(tmp_path, caplog):
    from distengine.callbacks import StochasticWeightAveraging
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[StochasticWeightAveraging(swa_lrs=0.01)])
    with caplog.at_level(logging.INFO), pytest.warns(UserWarning, match="interval='step'"):
        trainer.fit(_StepScheduled(), loader(regression_data(32)))
    assert "Swapping scheduler `StepLR` for `SWALR`" in caplog.text


def test_lr_monitor_without_a_logger_is_a_config_error(tmp_path):
    from distengine.callbacks import LearningRateMonitor
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[LearningRateMonitor()])
    with pytest.raises(MisconfigurationException, match="logger"):
        trainer.fit(Regressor(), loader(regression_data(32)))


def test_model_checkpoint_survives_pickling_unchanged(tmp_path):
    import pickle
    ckpt = ModelCheckpoint(dirpath=tmp_path, train_time_interval=60.0)
    assert vars(pickle.loads(pickle.dumps(ckpt))) == vars(ckpt)


def test_model_checkpoint_calls_save_checkpoint_as_lightning_does(tmp_path):
    from unittest import mock
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[ModelCheckpoint(dirpath=tmp_path / "c")])
    with mock.patch.object(trainer, "save_checkpoint", wraps=trainer.save_checkpoint) as save:
        trainer.fit(Regressor(), loader(regression_data(32)))
    save.assert_has_calls([mock.call(str(tmp_path / "c" / "epoch=0-step=2.ckpt"), False)])


def test_resume_without_a_callback_whose_state_is_in_the_checkpoint_warns(tmp_path):
    by_epoch, by_loss = ModelCheckpoint(monitor="epoch", dirpath=tmp_path), ModelCheckpoint(monitor="train_loss",
                                                                                              dirpath=tmp_path)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[by_epoch, by_loss])
    trainer.fit(Regressor(), loader(regression_data(32)))
    again = quiet_trainer(tmp_path, max_epochs=2, callbacks=[ModelCheckpoint(monitor="train_loss", dirpath=tmp_path)])
    with pytest.warns(UserWarning, match="monitor': 'epoch'"):
        again.fit(Regressor(), loader(regression_data(32)), ckpt_path=by_loss.best_model_path)


def test_early_stopping_check_has_lightnings_overridable_name(tmp_path):
    from distengine.callbacks import EarlyStopping
    calls = []

    class Counting(EarlyStopping):
        def _run_early_stopping_check(self, trainer):
            calls.append(trainer.current_epoch)

    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[Counting(monitor="train_loss")])
    trainer.fit(Regressor(), loader(regression_data(32)))
    assert calls == [0, 1, 2]


def test_early_stopping_subclass_state_key_names_the_subclass():
    from distengine.callbacks import EarlyStopping

    class MyStopping(EarlyStopping):
        pass

    assert MyStopping(monitor="loss").state_key == (MyStopping.__qualname__ + "{'monitor': 'loss', 'mode': 'min'}")
    assert MyStopping.__qualname__.endswith("<locals>.MyStopping")
    assert EarlyStopping(monitor="loss").state_key == "EarlyStopping{'monitor': 'loss', 'mode': 'min'}"


def test_an_overridden_module_backward_is_what_the_trainer_calls(tmp_path):
    seen = []

    class OwnBackward(Regressor):
        def backward(self, loss, *args, **kwargs):
            seen.append(float(loss))
            loss.backward(*args, **kwargs)

    model = OwnBackward()
    before = [p.detach().clone() for p in model.parameters()]
    quiet_trainer(tmp_path, max_epochs=1).fit(model, loader(regression_data(32)))
    assert len(seen) == 2 and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_mock_callback_receives_every_hook(tmp_path):
    from unittest import mock

    from distengine.callbacks import Callback
    spy = mock.Mock(spec=Callback)
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[spy]).fit(Regressor(), loader(regression_data(32)))
    names = [c[0] for c in spy.method_calls]
    assert names[:2] == ["setup", "on_fit_start"] and "on_train_batch_end" in names and names[-1] == "teardown"


def test_backbone_finetuning_default_doubles_the_backbone_rate_until_aligned(tmp_path):
    from distengine.callbacks import BackboneFinetuning
    seen = []

    class WithBackbone(Regressor):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Linear(6, 6)

        def configure_optimizers(self):
            return torch.optim.SGD(self.net.parameters(), lr=0.1)

    class Watch(BackboneFinetuning):
        def on_train_epoch_start(self, trainer, module):
            super().on_train_epoch_start(trainer, module)
            seen.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    quiet_trainer(tmp_path, max_epochs=7, callbacks=[Watch(unfreeze_backbone_at_epoch=2)]).fit(
        WithBackbone(), loader(regression_data(16)))
    assert [round(lrs[-1], 6) for lrs in seen[2:]] == [0.01, 0.02, 0.04, 0.08, 0.1]


def test_model_checkpoint_starting_version_set_on_the_instance_is_used(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "epoch=0-step=2.ckpt").write_bytes(b"another run's")
    mc = ModelCheckpoint(dirpath=tmp_path / "c")
    mc.STARTING_VERSION = 9
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[mc]).fit(Regressor(), loader(regression_data(32)))
    assert os.path.basename(mc.best_model_path) == "epoch=0-step=2-v9.ckpt"


def test_model_checkpoint_last_model_path_is_last_ckpt_with_save_last(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path / "c", monitor="train_loss", save_top_k=3, save_last=True)
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[mc]).fit(Regressor(), loader(regression_data(32)))
    assert mc.last_model_path == str(tmp_path / "c" / "last.ckpt")
    assert torch.load(mc.last_model_path, weights_only=True)["global_step"] == 4
    restored = ModelCheckpoint(dirpath=tmp_path / "c", monitor="train_loss", save_top_k=3, save_last=True)
    restored.load_state_dict(mc.state_dict())
    assert restored.last_model_path == mc.last_model_path and restored.best_k_models == mc.best_k_models


def test_resuming_a_checkpoint_saved_past_max_epochs_is_refused(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path / "c")
    quiet_trainer(tmp_path, max_epochs=3, callbacks=[mc]).fit(Regressor(), loader(regression_data(32)))
    with pytest.raises(MisconfigurationException, match="max_epochs=1"):
        quiet_trainer(tmp_path, max_epochs=1).fit(Regressor(), loader(regression_data(32)),
                                                  ckpt_path=mc.best_model_path)
    again = quiet_trainer(tmp_path, max_epochs=2)  # saved in epoch 2 (index): finished, as in Lightning
    again.fit(Regressor(), loader(regression_data(32)), ckpt_path=mc.best_model_path)
    assert again.global_step == 6


def test_tensorboard_log_dir_expands_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("DE_TB_ROOT", str(tmp_path))
    logger = TensorBoardLogger("$DE_TB_ROOT/tb", name="n", version=1, sub_dir="s")
    assert logger.log_dir == os.path.join(tmp_path, "tb", "n", "version_1", "s")


def test_csv_logger_has_lightnings_module_path(tmp_path):
    from distengine.loggers.csv_logs import CSVLogger as FromLightningPath
    from distengine.loggers.csv_logs import ExperimentWriter
    logger = FromLightningPath(tmp_path)
    logger.log_metrics({"a": 1.0}, 10)
    assert FromLightningPath is CSVLogger
    assert os.path.isfile(os.path.join(logger.log_dir, ExperimentWriter.NAME_METRICS_FILE))


def test_csv_logger_refuses_a_remote_url_instead_of_a_local_folder_named_after_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MisconfigurationException, match="memory://x"):
        CSVLogger("memory://x")
    assert not os.path.exists("memory:")
    assert CSVLogger(f"file://{tmp_path}/logs").log_dir == os.path.join(tmp_path, "logs", "lightning_logs", "version_0")
