"""Lightning's ``core.optimizer`` (LightningOptimizer) and ``core.saving`` (hyperparameter files)."""
from __future__ import annotations

import copy
import os
from argparse import Namespace

import pytest
import torch

from distengine.optim import LightningOptimizer
from distengine.saving import (
    load_hparams_from_tags_csv,
    load_hparams_from_yaml,
    save_hparams_to_tags_csv,
    save_hparams_to_yaml,
)
from tests.core.models import Regressor, loader, quiet_trainer, regression_data


def test_lightning_optimizer_shares_the_wrapped_optimizers_state():
    net = torch.nn.Linear(3, 4)
    adam = torch.optim.Adam(net.parameters(), lr=0.1)
    wrapped = LightningOptimizer(adam)
    assert isinstance(wrapped, torch.optim.Adam) and type(wrapped).__name__ == "LightningAdam"
    assert wrapped.optimizer is adam and LightningOptimizer(wrapped).optimizer is adam
    assert (wrapped.state, wrapped.param_groups, wrapped.defaults) == (adam.state, adam.param_groups, adam.defaults)
    assert wrapped.param_groups is adam.param_groups
    adam.param_groups[0]["lr"] = 1.0  # a change on either side is seen on the other
    assert wrapped.param_groups[0]["lr"] == 1.0
    other = torch.optim.Adam(net.parameters(), lr=100.0)
    LightningOptimizer(other).load_state_dict(copy.deepcopy(adam.state_dict()))
    assert other.param_groups[0]["lr"] == 1.0
    net(torch.randn(2, 3)).sum().backward()
    before = net.weight.detach().clone()
    wrapped.step()
    assert not torch.equal(before, net.weight) and len(adam.state) == 2  # the Adam state is the optimizer's
    wrapped.zero_grad()
    assert net.weight.grad is None
    assert repr(wrapped) == "Lightning" + repr(adam)
    assert isinstance(copy.deepcopy(wrapped), torch.optim.Adam)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        LightningOptimizer(object())


def test_lightning_optimizer_step_passes_the_closure_and_returns_its_result():
    net = torch.nn.Linear(2, 1)
    lbfgs = LightningOptimizer(torch.optim.LBFGS(net.parameters(), max_iter=3))
    calls = []

    def closure():
        calls.append(1)
        lbfgs.zero_grad()
        loss = net(torch.ones(4, 2)).pow(2).mean()
        loss.backward()
        return loss

    assert isinstance(lbfgs.step(closure), torch.Tensor) and 1 < len(calls) <= 4
    from unittest import mock

    sgd = LightningOptimizer(torch.optim.SGD(net.parameters(), lr=0.1))
    with mock.patch.object(torch.optim.SGD, "step") as step:  # the closure and extra arguments by keyword
        sgd.step(closure=closure, extra=1)
    assert step.mock_calls == [mock.call(closure=closure, extra=1)]


def test_automatic_optimizer_step_receives_a_lightning_optimizer(tmp_path):
    seen = []

    class Hooked(Regressor):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            seen.append((isinstance(optimizer, LightningOptimizer), isinstance(optimizer, torch.optim.Adam),
                         optimizer.state is optimizer.optimizer.state))
            optimizer.step(closure=optimizer_closure)

    quiet_trainer(tmp_path, max_epochs=1).fit(Hooked(), loader(regression_data()))
    assert seen and all(s == (True, True, True) for s in seen)


def test_yaml_hparams_round_trip(tmp_path):
    path = tmp_path / "hparams.yaml"
    save_hparams_to_yaml(path, Namespace(lr=0.1, layers=[64, 64], name="mlp", nested={"a": {"b": "c"}}, flag=True))
    assert load_hparams_from_yaml(path, use_omegaconf=False) == {
        "lr": 0.1, "layers": [64, 64], "name": "mlp", "nested": {"a": {"b": "c"}}, "flag": True}
    with pytest.warns(RuntimeWarning, match="does not exist"):
        assert load_hparams_from_yaml(tmp_path / "missing.yaml") == {}
    with pytest.raises(RuntimeError, match="does not exist"):
        save_hparams_to_yaml(tmp_path / "no" / "hparams.yaml", {"a": 1})


def test_tags_csv_round_trip(tmp_path):
    path = os.path.join(tmp_path, "meta_tags.csv")
    hparams = {"batch_size": 32, "learning_rate": 0.008, "optimizer_name": "adam", "flag": True, "sizes": [1, 2]}
    save_hparams_to_tags_csv(path, hparams)
    assert open(path).readline().strip() == "key,value"
    assert load_hparams_from_tags_csv(path) == hparams
    with pytest.warns(RuntimeWarning, match="does not exist"):
        assert load_hparams_from_tags_csv(os.path.join(tmp_path, "missing.csv")) == {}


def test_logger_hparams_yaml_reads_back(tmp_path):
    from distengine.loggers import CSVLogger

    logger = CSVLogger(tmp_path)
    logger.log_hyperparams({"float": 0.3, "string": "abc", "list": [1, 2, 3], "layer": torch.nn.BatchNorm1d})
    params = load_hparams_from_yaml(os.path.join(logger.log_dir, "hparams.yaml"))
    assert params["float"] == 0.3 and params["list"] == [1, 2, 3] and "layer" in params


def test_csv_log_hyperparams_without_params_writes_the_run_folder(tmp_path):
    from distengine.loggers import CSVLogger

    logger = CSVLogger(save_dir=tmp_path, name=None)
    logger.log_hyperparams()
    assert os.listdir(tmp_path / "version_0") == ["hparams.yaml"]
    assert load_hparams_from_yaml(tmp_path / "version_0" / "hparams.yaml", use_omegaconf=False) == {}


def test_tensorboard_names_its_hparams_file(tmp_path):
    pytest.importorskip("tensorboard")
    from distengine.loggers import TensorBoardLogger

    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams({"batch_size": 32, "optimizer_name": "adam"})
    path = os.path.join(logger.log_dir, TensorBoardLogger.NAME_HPARAMS_FILE)
    assert load_hparams_from_yaml(path, use_omegaconf=False) == {"batch_size": 32, "optimizer_name": "adam"}


def test_checkpoint_hyper_params_keys_name_what_checkpoints_hold(tmp_path):
    from distengine import Module

    class WithHparams(Regressor):
        def __init__(self, lr=0.05):
            super().__init__()
            self.save_hyperparameters()

    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(WithHparams(lr=0.02), loader(regression_data()))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert Module.CHECKPOINT_HYPER_PARAMS_KEY == "hyper_parameters"
    assert ckpt[Module.CHECKPOINT_HYPER_PARAMS_KEY]["lr"] == 0.02
    assert WithHparams.load_from_checkpoint(tmp_path / "m.ckpt").hparams.lr == 0.02


def test_has_len_all_ranks_and_iterable_datasets():
    from torch.utils.data import DataLoader, IterableDataset

    from distengine.strategies import SingleDeviceStrategy
    from distengine.utilities.data import has_iterable_dataset, has_len_all_ranks, sized_len

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(8))

    class SizedStream(Stream):
        def __len__(self):
            return 8

    strategy = SingleDeviceStrategy()
    plain = DataLoader(list(range(8)), batch_size=2)
    assert sized_len(plain) == 4 and has_len_all_ranks(plain, strategy) and not has_iterable_dataset(plain)
    stream = DataLoader(Stream(), batch_size=2)
    assert sized_len(stream) is None and not has_len_all_ranks(stream, strategy) and has_iterable_dataset(stream)
    with pytest.warns(UserWarning, match="defines __len__"):
        assert has_len_all_ranks(DataLoader(SizedStream(), batch_size=2), strategy)
    with pytest.warns(UserWarning, match="length 0 on every rank"):
        assert has_len_all_ranks(DataLoader([], batch_size=2), strategy)


def test_every_trainer_call_warns_about_an_iterable_dataset_with_a_length():
    import warnings

    from torch.utils.data import DataLoader, IterableDataset

    import distengine as de
    from tests.core.models import Regressor, regression_data

    data = regression_data(16)

    class SizedStream(IterableDataset):
        def __iter__(self):
            return iter(data)

        def __len__(self):
            return len(data)

    loader = DataLoader(SizedStream(), batch_size=8)
    trainer = de.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    model = Regressor()
    for call in (lambda: trainer.fit(model, loader), lambda: trainer.validate(model, [loader], verbose=False)):
        with pytest.warns(UserWarning, match="IterableDataset of this DataLoader defines __len__"):
            call()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*(log_every_n_steps|val_dataloader|validation_step).*")
        de.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False).fit(Regressor(), DataLoader(data, batch_size=8))


def test_load_from_checkpoint_downloads_an_http_url_once(tmp_path, monkeypatch):
    import functools
    import http.server
    import threading

    from distengine.checkpoint.io import CheckpointError

    class WithHparams(Regressor):
        def __init__(self, lr=0.05):
            super().__init__()
            self.save_hyperparameters()

    served = tmp_path / "served"
    served.mkdir()
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(WithHparams(lr=0.03), loader(regression_data()))
    trainer.save_checkpoint(served / "model.ckpt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/model.ckpt"
        assert WithHparams.load_from_checkpoint(url).hparams.lr == 0.03
        assert os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", "model.ckpt"))
        assert torch.hub.get_dir().startswith(str(tmp_path / "hub"))
        (served / "model.ckpt").unlink()  # the cached copy is used from now on
        assert WithHparams.load_from_checkpoint(url).hparams.lr == 0.03
        with pytest.raises(CheckpointError, match="could not be downloaded"):
            WithHparams.load_from_checkpoint(f"http://127.0.0.1:{server.server_port}/missing.ckpt")
    finally:
        server.shutdown()


def test_optimizers_wrap_the_current_fits_optimizers_only(tmp_path):
    model = Regressor()
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, loader(regression_data()))
    first = model.optimizers()
    assert first is model.optimizers() and first.optimizer is trainer.optimizers[0]
    trainer.fit_loop.max_epochs = 2
    trainer.fit(model, loader(regression_data()))  # the same Trainer; configure_optimizers ran again
    second = model.optimizers()
    assert second.optimizer is trainer.optimizers[0] and second.optimizer is not first.optimizer
    assert [w.optimizer for w in vars(trainer)["_lightning_optimizers"].values()] == trainer.optimizers
