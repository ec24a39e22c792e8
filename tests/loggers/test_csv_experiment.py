"""CSVLogger.experiment is Lightning's ExperimentWriter (issue 26; compared with Lightning 2.6.6
by tests/conformance/test_trainer_api.py, part loggers)."""
from __future__ import annotations

import csv
import os

import torch

from distengine.loggers import CSVLogger


def test_experiment_writer_keeps_rows_until_save(tmp_path):
    logger = CSVLogger(str(tmp_path), name="n", version=0)
    writer = logger.experiment
    assert writer is logger.experiment and os.path.isdir(logger.log_dir)
    assert writer.metrics_file_path == os.path.join(logger.log_dir, "metrics.csv")
    writer.log_metrics({"a": torch.tensor(1.5)}, step=3)
    writer.log_metrics({"b": 2.0})
    assert writer.metrics == [{"a": 1.5, "step": 3}, {"b": 2.0, "step": 1}]
    assert not os.path.exists(writer.metrics_file_path)
    writer.save()
    logger.log_metrics({"c": 4.0}, step=5)  # the logger's own rows land in the same file
    assert writer.metrics == []
    with open(writer.metrics_file_path) as f:
        rows = [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]
    assert rows == [{"a": 1.5, "step": 3}, {"b": 2.0, "step": 1}, {"c": 4.0, "step": 5}]
    writer.log_hparams({"lr": 0.1})
    assert writer.hparams == {"lr": 0.1} == logger.hparams
    assert "lr: 0.1" in open(os.path.join(logger.log_dir, "hparams.yaml")).read()
