"""CSVLogger: exact file contents, growing columns, resume, hparams.yaml."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from distengine.loggers import CSVLogger, Logger
from distengine.loggers.csv_logger import to_yaml


def test_constructor_touches_nothing(tmp_path):
    logger = CSVLogger(tmp_path / "logs", name="exp")
    assert isinstance(logger, Logger)
    assert logger.log_dir == str(tmp_path / "logs" / "exp" / "version_0")
    assert logger.version == 0 and logger.name == "exp"
    assert not (tmp_path / "logs").exists()


def test_metrics_csv_exact_with_new_keys_later(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"train_loss": 0.5}, step=0)
    logger.log_metrics({"train_loss": 0.25}, step=1)
    logger.log_metrics({"val_loss": 0.75, "epoch": 0}, step=1)  # epoch metrics: their own row
    logger.log_metrics({"train_loss": torch.tensor(0.125), "lr": 0.01}, step=2)
    logger.log_metrics({"step": 999, "val_loss": 0.5}, step=3)  # the step argument wins
    logger.log_metrics({}, step=4)  # nothing to write: no row
    logger.finalize("success")
    text = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert text.splitlines() == [
        "step,train_loss,val_loss,epoch,lr",
        "0,0.5,,,",
        "1,0.25,,,",
        "1,,0.75,0.0,",
        "2,0.125,,,0.01",
        "3,,0.5,,",
    ]


def test_resume_into_existing_version_appends(tmp_path):
    first = CSVLogger(tmp_path, version=0)
    first.log_metrics({"a": 1.0}, step=0)
    again = CSVLogger(tmp_path, version=0)
    again.log_metrics({"a": 2.0}, step=1)
    again.log_metrics({"b": 3.0}, step=2)
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines() == [
        "step,a,b", "0,1.0,", "1,2.0,", "2,,3.0"]


def test_prefix(tmp_path):
    logger = CSVLogger(tmp_path, prefix="fold2")
    logger.log_metrics({"loss": 0.5, "step": 3}, step=1)
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines() == [
        "step,fold2-loss", "1,0.5"]


def test_version_numbering_and_str_version(tmp_path):
    dirs = []
    for _ in range(2):
        logger = CSVLogger(tmp_path, name="exp")
        logger.log_metrics({"x": 1.0}, step=0)
        dirs.append(os.path.basename(logger.log_dir))
    assert dirs == ["version_0", "version_1"]
    assert CSVLogger(tmp_path, name="exp", version="final").log_dir == os.path.join(
        tmp_path, "exp", "final")
    assert CSVLogger(tmp_path, name=None).log_dir == os.path.join(tmp_path, "version_0")


def test_hparams_yaml_merges_calls(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.1, "batch_size": 32})
    logger.log_hyperparams(argparse.Namespace(lr=0.2, model="mlp"))
    assert logger.hparams == {"lr": 0.2, "batch_size": 32, "model": "mlp"}
    path = tmp_path / "lightning_logs" / "version_0" / "hparams.yaml"
    assert path.read_text() == "lr: 0.2\nbatch_size: 32\nmodel: mlp\n"
    with pytest.raises(TypeError, match="hyperparameters must be a dict"):
        logger.log_hyperparams(3)


def test_pickle_round_trip(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"a": 1.0}, step=0)
    clone = pickle.loads(pickle.dumps(logger))
    clone.log_metrics({"a": 2.0, "b": 1.0}, step=1)
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines() == [
        "step,a,b", "0,1.0,", "1,2.0,1.0"]


def test_non_zero_rank_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    logger = CSVLogger(tmp_path / "logs")
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    logger.finalize("success")
    assert not (tmp_path / "logs").exists()


def test_bad_metric_value(tmp_path):
    with pytest.raises(TypeError, match="metric 'x' must be a number"):
        CSVLogger(tmp_path).log_metrics({"x": [1, 2]}, step=0)


class _Thing:
    def __repr__(self) -> str:
        return "Thing(a=1)"


def test_yaml_emitter_quotes_what_would_change_type():
    text = to_yaml({
        "plain": "resnet-50/v1.2", "spaced": "a b", "yes": "yes", "num_str": "1e3",
        "empty": "", "colon": "a: b", "lead_space": " x", "unicode": "é",
        "tiny": 1e-05, "big": 1e+20, "neg": -2.5, "nan": float("nan"), "inf": float("-inf"),
        "flag": False, "none": None, "int": -3,
        "nested": {"inner": {"k": 1}, "empty_list": [], "empty_map": {}},
        "list_of_maps": [{"a": 1}, 2], "tuple": (1, "two"),
        "obj": torch.float32, "other": _Thing(), "scalar_tensor": torch.tensor(0.5),
    })
    assert text == (
        "plain: resnet-50/v1.2\n"
        "spaced: a b\n"
        '"yes": "yes"\n'
        'num_str: "1e3"\n'
        'empty: ""\n'
        'colon: "a: b"\n'
        'lead_space: " x"\n'
        'unicode: "\\u00e9"\n'
        "tiny: 1.0e-05\n"
        "big: 1.0e+20\n"
        "neg: -2.5\n"
        "nan: .nan\n"
        "inf: -.inf\n"
        "flag: false\n"
        "none: null\n"
        "int: -3\n"
        "nested:\n"
        "  inner:\n"
        "    k: 1\n"
        "  empty_list: []\n"
        "  empty_map: {}\n"
        "list_of_maps:\n"
        "  -\n"
        "    a: 1\n"
        "  - 2\n"
        "tuple:\n"
        "  - 1\n"
        "  - two\n"
        "obj: torch.float32\n"
        'other: "Thing(a=1)"\n'
        "scalar_tensor: 0.5\n"
    )
    assert to_yaml({}) == "{}\n"


def _python_with_yaml() -> str | None:
    """This venv has no PyYAML (not a dependency); a system Python often does."""
    for exe in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if exe and os.path.exists(exe) and subprocess.run(
                [exe, "-c", "import yaml"], capture_output=True, timeout=30).returncode == 0:
            return exe
    return None


def test_yaml_round_trips_through_pyyaml(tmp_path):
    exe = _python_with_yaml()
    if exe is None:
        pytest.skip("no Python with PyYAML on this machine")
    params = {
        "plain": "resnet-50/v1.2", "yes": "yes", "No": "off", "num_str": "1e3", "date": "2024-01-01",
        "octal": "0o17", "tilde": "~", "dash": "-", "quote": "it's", "anchor": "&a", "tag": "!x",
        "flow": "{a}", "hash": "a #b", "newline": "a\nb", "unicode": "é", "empty": "", "null_word": "NULL",
        "tiny": 1e-05, "sci": 1.5e-07, "big": 1e20, "whole": 3.0, "neg": -2.5, "inf": float("-inf"),
        "flag": False, "none": None, "int": -3,
        "nested": {"inner": {"k": 1}, "empty_list": [], "empty_map": {}},
        "lists": [{"a": 1, "b": [1, 2]}, 2, [3, [4]]],
    }
    path = tmp_path / "h.yaml"
    path.write_text(to_yaml(params))
    code = "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"
    out = subprocess.run([exe, "-c", code, str(path)], capture_output=True, text=True, timeout=30, check=True)
    assert json.loads(out.stdout) == params
