"""TensorBoardLogger: event files read back with tensorboard's own reader."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from distengine.loggers import Logger, TensorBoardLogger


def _read(log_dir: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    acc = _read(log_dir)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _session_hparams(log_dir: str) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = _read(log_dir).PluginTagToContent("hparams")
    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    out = {}
    for k, v in data.session_start_info.hparams.items():
        kind = v.WhichOneof("kind")
        out[k] = getattr(v, kind)
    return out


def _files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path)
                  for d, _, fs in os.walk(path) for f in fs) + \
        sorted(os.path.relpath(d, path) for d, _, _ in os.walk(path) if d != str(path))


def test_constructor_touches_nothing_and_layout(tmp_path):
    logger = TensorBoardLogger(tmp_path / "runs", name="exp")
    assert isinstance(logger, Logger)
    assert not (tmp_path / "runs").exists()
    assert logger.version == 0
    assert logger.name == "exp"
    assert logger.root_dir == str(tmp_path / "runs" / "exp")
    assert logger.log_dir == str(tmp_path / "runs" / "exp" / "version_0")
    assert not (tmp_path / "runs").exists()  # reading properties creates nothing either


def test_scalars_exact_values_and_steps(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"loss": 0.75, "acc": 0.5}, step=0)
    logger.log_metrics({"loss": 0.5}, step=10)
    logger.log_metrics({"loss": torch.tensor(0.1), "lr": np.float64(1e-3)}, step=20)
    logger.log_metrics({"epoch": 1}, step=20)
    logger.finalize("success")
    got = _scalars(logger.log_dir)
    # event files store float32: compare with the float32 rounding of what was logged
    assert got == {
        "loss": [(0, 0.75), (10, 0.5), (20, float(np.float32(0.1)))],
        "acc": [(0, 0.5)],
        "lr": [(20, float(np.float32(1e-3)))],
        "epoch": [(20, 1.0)],
    }


def test_prefix_and_sub_dir(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="exp", prefix="fold1", sub_dir="inner", version=3)
    assert logger.log_dir == os.path.join(tmp_path, "exp", "version_3", "inner")
    logger.log_metrics({"loss": 0.25}, step=4)
    logger.finalize("success")
    assert _scalars(logger.log_dir) == {"fold1-loss": [(4, 0.25)]}


def test_hyperparams_tab_and_yaml(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.01, "layers": 3, "opt": {"name": "sgd", "nesterov": True},
                            "dims": [64, 32], "note": None})
    logger.finalize("success")
    assert _session_hparams(logger.log_dir) == {
        "lr": 0.01, "layers": 3.0, "opt/name": "sgd", "opt/nesterov": True,
        "dims": "[64, 32]", "note": "None",
    }
    # the default hp_metric makes the run show up in the hparams tab
    assert _scalars(logger.log_dir) == {"hp_metric": [(0, -1.0)]}
    assert (tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text() == (
        "lr: 0.01\nlayers: 3\nopt:\n  name: sgd\n  nesterov: true\ndims:\n  - 64\n  - 32\nnote: null\n")


def test_hyperparams_custom_metrics_and_no_default_metric(tmp_path):
    logger = TensorBoardLogger(tmp_path, version="custom", default_hp_metric=False)
    logger.log_hyperparams({"lr": 0.5})
    logger.finalize("success")
    acc = _read(logger.log_dir)
    assert acc.Tags()["scalars"] == []
    with pytest.raises(KeyError):  # no hparams summary without a metric to show
        acc.PluginTagToContent("hparams")
    assert (tmp_path / "lightning_logs" / "custom" / "hparams.yaml").read_text() == "lr: 0.5\n"

    logger2 = TensorBoardLogger(tmp_path, version="with_metric")
    logger2.log_hyperparams({"lr": 0.5}, metrics={"val_acc": 0.0})
    logger2.log_metrics({"val_acc": 0.75}, step=7)
    logger2.finalize("success")
    assert _session_hparams(logger2.log_dir) == {"lr": 0.5}
    assert _scalars(logger2.log_dir) == {"val_acc": [(0, 0.0), (7, 0.75)]}


def test_hyperparams_metrics_take_a_step_and_a_bare_number_as_hp_metric(tmp_path):
    # as Lightning 2.6: log_hyperparams(params, metrics, step) writes the metrics at that step
    # through log_metrics, unchanged (the default {"hp_metric": -1} with step None); a number is hp_metric
    seen = []

    class Seen(TensorBoardLogger):
        def log_metrics(self, metrics, step=None):
            seen.append((dict(metrics), step))
            super().log_metrics(metrics, step)

    logger = Seen(tmp_path, version="a")
    logger.log_hyperparams({"lr": 0.5})
    logger.log_hyperparams({"lr": 0.5}, metrics=0.25, step=3)
    logger.finalize("success")
    assert seen == [({"hp_metric": -1}, None), ({"hp_metric": 0.25}, 3)]
    assert _scalars(logger.log_dir) == {"hp_metric": [(0, -1.0), (3, 0.25)]}


def test_version_numbering(tmp_path):
    versions = []
    for _ in range(3):
        logger = TensorBoardLogger(tmp_path, name="exp")
        logger.log_metrics({"x": 1.0}, step=0)
        logger.finalize("success")
        versions.append(os.path.basename(logger.log_dir))
    assert versions == ["version_0", "version_1", "version_2"]
    (tmp_path / "exp" / "version_10").mkdir()
    (tmp_path / "exp" / "version_99").write_text("a file, not a run folder")
    assert TensorBoardLogger(tmp_path, name="exp").version == 11
    assert TensorBoardLogger(tmp_path, name="").log_dir == os.path.join(tmp_path, "version_0")


def test_pickle_drops_writer_and_keeps_writing_to_same_run(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    logger.log_metrics({"loss": 1.0}, step=1)
    assert logger._writer is not None
    clone = pickle.loads(pickle.dumps(logger))
    assert clone._writer is None and clone.log_dir == logger.log_dir
    logger.finalize("success")
    clone.log_metrics({"loss": 0.5}, step=2)
    clone.finalize("success")
    # sorted: TensorBoard reads the two event files in name order, and their names end in a
    # per-process writer counter that sorts as text (".10" before ".9") late in a long session
    assert {k: sorted(v) for k, v in _scalars(logger.log_dir).items()} == {"loss": [(1, 1.0), (2, 0.5)]}


def test_log_graph(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    off = TensorBoardLogger(tmp_path, version="off")
    off.log_graph(model, torch.zeros(2, 3))
    assert not os.path.exists(off.log_dir)  # log_graph=False: not even a folder

    on = TensorBoardLogger(tmp_path, version="on", log_graph=True)
    with pytest.warns(UserWarning, match="example_input_array"):
        on.log_graph(model)
    on.log_graph(model, torch.zeros(2, 3))
    on.finalize("success")
    assert _read(on.log_dir).Tags()["graph"] is True


def test_log_graph_of_a_module_outside_a_trainer(tmp_path):
    import distengine as de

    class Net(de.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(3, 1)
            self.example_input_array = torch.zeros(2, 3)

        def forward(self, x):
            return self.layer(x)

    logger = TensorBoardLogger(tmp_path, log_graph=True)
    logger.log_graph(Net())  # the tracer reads self.trainer, which is unset here: no error
    logger.finalize("success")
    assert _read(logger.log_dir).Tags()["graph"] is True
    with pytest.raises(RuntimeError, match="not attached to a Trainer"):
        Net().trainer  # outside the graph export, reading it is an error again


def test_bad_input_is_rejected_clearly(tmp_path):
    with pytest.raises(ValueError, match="version must be >= 0"):
        TensorBoardLogger(tmp_path, version=-1)
    with pytest.raises(TypeError, match="version must be an int, a str or None"):
        TensorBoardLogger(tmp_path, version=1.5)
    logger = TensorBoardLogger(tmp_path)
    with pytest.raises(TypeError, match="hyperparameters must be a dict"):
        logger.log_hyperparams([("lr", 1)])
    with pytest.raises(TypeError, match="metric 'name' must be a number"):
        logger.log_metrics({"name": "abc"}, step=0)
    logger.finalize("failed")


def test_non_zero_rank_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = TensorBoardLogger(tmp_path / "runs", log_graph=True)
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_graph(torch.nn.Linear(2, 2), torch.zeros(1, 2))
    logger.experiment.add_text("note", "hi")  # the stand-in swallows writer calls
    logger.save()
    logger.finalize("success")
    assert not (tmp_path / "runs").exists()


def test_import_does_not_load_tensorboard():
    code = ("import sys, distengine.loggers as L; L.TensorBoardLogger; L.CSVLogger;"
            "bad = [m for m in ('tensorboard', 'torch.utils.tensorboard', 'yaml') if m in sys.modules];"
            "print(bad)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": root}, timeout=60)
    assert out.stdout.strip() == "[]"
