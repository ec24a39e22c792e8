"""CometLogger offline, on the real comet_ml package: a Lightning script (through the shim, so
``from pytorch_lightning.loggers import CometLogger`` is what the user writes) trains with
``online=False``; the offline archive it leaves is read back and must hold the same metrics,
steps and epochs as a CSVLogger beside it, and the hyperparameters."""
from __future__ import annotations

import csv
import glob
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("comet_ml") is None,
                                reason="needs comet_ml (pip install 'distengine[comet]')")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CometLogger, CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Model(pl.LightningModule):
    def __init__(self, lr=0.1, layers={"hidden": 4}):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        loss = self.net(batch[0]).pow(2).mean()
        self.log("loss", loss, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


pl.seed_everything(0)
kwargs = {"online": False} if sys.argv[1] == "online=False" else {}
comet = CometLogger(project="proj", name="run-1", offline_directory="comet", **kwargs)
trainer = pl.Trainer(max_epochs=2, log_every_n_steps=2, logger=[comet, CSVLogger(".", name="csv")],
                     enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
trainer.fit(Model(), DataLoader(TensorDataset(torch.randn(24, 3)), batch_size=4))
print("KEY", comet.version, comet.name, comet.save_dir)
"""


def _run(tmp_path: Path, how: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    (tmp_path / "train.py").write_text(SCRIPT)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("COMET_", "PYTHON"))},
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "conformance" / "shim"), str(REPO)]),
           # nothing may need the network: any connection attempt fails at once
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "OMP_NUM_THREADS": "1",
           **env}
    proc = subprocess.run([sys.executable, "-W", "ignore", "train.py", how], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _archive(tmp_path: Path) -> tuple[list[tuple], dict, dict]:
    archives = glob.glob(str(tmp_path / "comet" / "*.zip"))
    assert len(archives) == 1, archives
    with zipfile.ZipFile(archives[0]) as z:
        messages = [json.loads(line) for line in z.read("messages.json").decode().splitlines()]
    metrics = [(m["payload"]["metric"]["metricName"], m["payload"]["metric"]["step"], m["payload"]["metric"]["epoch"],
                m["payload"]["metric"]["metricValue"]) for m in messages if m["type"] == "metric_msg"]
    params = {m["payload"]["param"]["paramName"]: m["payload"]["param"]["paramValue"]
              for m in messages if m["type"] == "parameter_msg" and m["payload"]["param"]["source"] == "manual"}
    others = {m["payload"]["key"]: m["payload"]["value"] for m in messages if m["type"] == "log_other"}
    return metrics, params, others


def _csv(tmp_path: Path) -> list[tuple]:
    rows = []
    with open(tmp_path / "csv" / "version_0" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            epoch = int(float(row.pop("epoch")))
            step = int(row.pop("step"))
            rows += [(k, step, epoch, float(v)) for k, v in row.items() if v]
    return rows


@pytest.mark.parametrize("how,env", [("online=False", {}), pytest.param(
    "COMET_START_ONLINE", {"COMET_START_ONLINE": "false"}, marks=pytest.mark.slow)])
def test_offline_archive_holds_the_metrics_and_hyperparameters(tmp_path, how, env):
    proc = _run(tmp_path, how, env)
    metrics, params, others = _archive(tmp_path)
    ours = sorted((name, step, epoch, pytest.approx(value)) for name, step, epoch, value in metrics
                  if not name.startswith("sys.") and name != "process duration")
    assert ours == sorted(_csv(tmp_path)) and len(ours) == 8  # loss_step at steps 1,3,5,7,9,11; loss_epoch twice
    assert params == {"lr": 0.1, "layers|hidden": 4}
    assert others["Name"] == "run-1" and others["Created from"] == "pytorch-lightning"
    key = proc.stdout.split("KEY ")[1].split()
    assert key[1:] == ["proj", "comet"] and Path(glob.glob(str(tmp_path / "comet" / "*.zip"))[0]).name.startswith(
        key[0])


def test_bad_mode_is_one_clear_error():
    from distengine.loggers import CometLogger

    with pytest.raises(ValueError, match="mode='append'"):
        CometLogger(mode="append", online=False)
