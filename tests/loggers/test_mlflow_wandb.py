"""MLFlowLogger and WandbLogger on the real mlflow (file store) and wandb (offline) packages.

Everything is read back the way a user would: ``MlflowClient`` for MLflow, and for W&B the
offline run's ``run-<id>.wandb`` file (wandb 0.31 offers no Python reader of it; the format is
a 7-byte header then LevelDB log records, each a ``wandb_internal_pb2.Record``).
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from tests.helpers import run_ranks

# find_spec, not importorskip: the 2-rank test's children import this module, and must not
# get mlflow or wandb from it (they check that rank 1 never imports them)
pytestmark = pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("mlflow", "wandb")),
                                reason="needs mlflow and wandb (pip install 'distengine[mlflow,wandb]')")

WANDB_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
             "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
             "WANDB__DISABLE_STATS": "true", "WANDB__DISABLE_MACHINE_INFO": "true"}


def wandb_env(root: str) -> dict[str, str]:
    """Offline, quiet, and every folder wandb writes (run, cache, staging) inside ``root``."""
    home = os.path.join(root, "wandb-home")
    return {**WANDB_ENV, **{k: home for k in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR",
                                             "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR")}}


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    for k, v in wandb_env(str(tmp_path)).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    assert _wandb_children() == [], "a wandb process outlived the run"


def _wandb_children() -> list[str]:
    """Processes started by this one whose command line mentions wandb (its service)."""
    deadline, found = time.monotonic() + 5, []
    while time.monotonic() < deadline:
        found = []
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                with open(stat) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(stat[:-4] + "cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError, IndexError):
                continue
            if ppid == os.getpid() and "wandb" in cmd:
                found.append(cmd)
        if not found:
            break
        time.sleep(0.1)
    return found


def wandb_records(run_dir: str) -> list[tuple[str, dict]]:
    """``(kind, fields)`` for the records of the offline run folder ``run_dir``."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    pos, block, pending, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # FULL, FIRST
            pending = chunk
        elif kind in (3, 4):  # MIDDLE, LAST
            pending += chunk
        if kind not in (1, 4):
            continue
        rec = pb.Record.FromString(pending)
        which = rec.WhichOneof("record_type")
        if which == "history":
            out.append(("history", {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                    for i in rec.history.item}))
        elif which == "config":
            out.append(("config", {i.key: json.loads(i.value_json) for i in rec.config.update}))
        elif which == "run":
            out.append(("run", {"id": rec.run.run_id, "project": rec.run.project,
                                "name": rec.run.display_name}))
        elif which == "artifact":
            out.append(("artifact", {"name": rec.artifact.name, "type": rec.artifact.type,
                                     "aliases": sorted(rec.artifact.aliases),
                                     "files": [e.path for e in rec.artifact.manifest.contents],
                                     "metadata": json.loads(rec.artifact.metadata or "{}")}))
        elif which == "exit":
            out.append(("exit", {"code": rec.exit.exit_code}))
    return out


def offline_runs(save_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(save_dir, "wandb", "offline-run-*")))


class Reg(de.Module):
    def __init__(self, lr: float = 0.1, opt: dict | None = None, fail_at: int = -1):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        if self.global_step == self.hparams.fail_at:
            raise RuntimeError("boom")
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _loaders():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 2, generator=g)
    y = x.sum(1, keepdim=True)
    return (DataLoader(TensorDataset(x[:8], y[:8]), batch_size=2),
            DataLoader(TensorDataset(x[8:], y[8:]), batch_size=2))


def _csv_rows(path) -> list[dict[str, float]]:
    lines = open(path).read().splitlines()
    head = lines[0].split(",")
    return [{k: float(v) for k, v in zip(head, line.split(",")) if v} for line in lines[1:]]


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, f.path) if f.is_dir else [f.path]
    return sorted(out)


def test_four_loggers_in_one_fit_record_the_same_history(tmp_path, offline_wandb):
    uri = f"file:{tmp_path / 'mlruns'}"
    mlf = MLFlowLogger(tracking_uri=uri, run_name="four", tags={"team": "a"}, log_model=True)
    wb = WandbLogger(name="four", save_dir=tmp_path / "wb", offline=True, log_model="all")
    tb, csv = TensorBoardLogger(tmp_path / "tb"), CSVLogger(tmp_path / "csv")
    trainer = de.Trainer(accelerator="cpu", devices=1, default_root_dir=str(tmp_path), max_epochs=2,
                         logger=[mlf, wb, tb, csv], log_every_n_steps=2, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Reg(opt={"name": "sgd", "betas": [0.9, 0.99]}), *_loaders())

    rows = _csv_rows(csv.metrics_file)  # the reference: one row per logging call
    history = {k: [(int(r["step"]), r[k]) for r in rows if k in r] for k in ("train_loss", "val_loss", "epoch")}
    assert [s for s, _ in history["epoch"]] == [1, 3, 3, 5, 7, 7]  # Lightning 2.6.6's indices
    from tests.loggers.test_tensorboard import _scalars

    scalars = _scalars(tb.log_dir)
    for key, want in history.items():
        assert [s for s, _ in scalars[key]] == [s for s, _ in want]
        assert [v for _, v in scalars[key]] == pytest.approx([v for _, v in want], rel=1e-6)

    # MLflow: the same steps and values, the params, the status, the checkpoint (log_model=True)
    client = _client(uri)
    run = client.get_run(mlf.run_id)
    for key, want in history.items():
        assert [(m.step, m.value) for m in client.get_metric_history(mlf.run_id, key)] == want
    assert run.data.params == {"lr": "0.1", "opt/name": "sgd", "opt/betas": "[0.9, 0.99]", "fail_at": "-1"}
    assert run.info.status == "FINISHED" and run.info.run_name == "four" and run.data.tags["team"] == "a"
    assert "mlflow.user" in run.data.tags  # MLflow's own context tags, as Lightning adds them
    ckpt = trainer.checkpoint_callback.best_model_path
    # the first logger is MLflow: Lightning 2.6.6's folder <save_dir>/<experiment id>/<run id>/checkpoints
    assert ckpt == str(tmp_path / "mlruns" / mlf.experiment_id / mlf.run_id / "checkpoints" / "epoch=1-step=8.ckpt")
    assert trainer.log_dir == str(tmp_path / "mlruns")
    assert _artifacts(client, mlf.run_id) == ["epoch=1-step=8/aliases.txt", "epoch=1-step=8/epoch=1-step=8.ckpt",
                                              "epoch=1-step=8/metadata.yaml"]
    local = client.download_artifacts(mlf.run_id, "epoch=1-step=8", str(tmp_path / "dl"))
    with open(os.path.join(local, "epoch=1-step=8.ckpt"), "rb") as a, open(ckpt, "rb") as b:
        assert a.read() == b.read()
    import yaml

    meta = yaml.safe_load(open(os.path.join(local, "metadata.yaml")))
    assert meta["original_filename"] == "epoch=1-step=8.ckpt" and meta["Checkpoint"]["save_top_k"] == 1
    assert open(os.path.join(local, "aliases.txt")).read() == "['latest', 'best']"

    # W&B: one offline run; each history row is one CSV row, the step in trainer/global_step
    (run_dir,) = offline_runs(str(tmp_path / "wb"))
    records = wandb_records(run_dir)
    kinds = [k for k, _ in records]
    assert kinds.count("run") == 1 and records[kinds.index("run")][1] == {
        "id": wb.version, "project": "lightning_logs", "name": "four"}
    config = {}
    for _, update in (r for r in records if r[0] == "config"):
        config.update(update)
    assert {k: v for k, v in config.items() if k != "_wandb"} == {
        "lr": 0.1, "opt": {"name": "sgd", "betas": [0.9, 0.99]}, "fail_at": -1}
    logged = [{("step" if k == "trainer/global_step" else k): v for k, v in h.items() if not k.startswith("_")}
              for kind, h in records if kind == "history"]
    assert logged == rows
    # log_model="all": each checkpoint as it was saved (top-1: epoch 0's, then epoch 1's)
    arts = [a for kind, a in records if kind == "artifact"]
    assert [(a["name"], a["type"], a["files"], a["aliases"], a["metadata"]["original_filename"]) for a in arts] == [
        (f"model-{wb.version}", "model", ["model.ckpt"], ["best", "latest"], name)
        for name in ("epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt")]
    assert records[-1] == ("exit", {"code": 0})  # finalize finished the run


def test_failed_fit_marks_both_runs_failed(tmp_path, offline_wandb):
    uri = f"file:{tmp_path / 'mlruns'}"
    mlf, wb = MLFlowLogger(tracking_uri=uri), WandbLogger(save_dir=tmp_path, offline=True)
    trainer = de.Trainer(accelerator="cpu", max_epochs=2, logger=[wb, mlf], log_every_n_steps=1,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Reg(fail_at=2), *_loaders())
    run = _client(uri).get_run(mlf.run_id)
    assert run.info.status == "FAILED"
    assert [m.step for m in _client(uri).get_metric_history(mlf.run_id, "train_loss")] == [0, 1]
    (run_dir,) = offline_runs(str(tmp_path))
    assert wandb_records(run_dir)[-1] == ("exit", {"code": 1})
    # W&B first: trainer.log_dir is its save_dir, checkpoints go to <save_dir>/<project>/<run id>
    assert trainer.log_dir == str(tmp_path)  # (both as Lightning 2.6.6's WandbLogger)
    assert trainer.checkpoint_callback.dirpath == str(tmp_path / "lightning_logs" / wb.version / "checkpoints")


def test_mlflow_params_metrics_status_and_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = f"file:{tmp_path / 'mlruns'}"
    lg = MLFlowLogger(experiment_name="unit", run_name="r", tracking_uri=uri, tags={"team": "a"}, prefix="fold1")
    assert not (tmp_path / "mlruns").exists()  # nothing before the first write
    with pytest.warns(UserWarning, match="cut to MLflow's 6000 characters: \\['long'\\]"):
        lg.log_hyperparams({"long": "x" * 7000, "nested": {"a": [{"b": 1}]}, "ns": argparse.Namespace(k=2)})
    assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"  # the opt-in for the store asked for
    lg.log_hyperparams({"nested": {"a": [{"b": 1}]}})  # the same value again: fine, no warning
    with pytest.warns(UserWarning, match=r"not logged .*\['ns/k'\]"):
        lg.log_hyperparams({"ns": {"k": 3}})  # MLflow cannot change a parameter
    with pytest.warns(UserWarning, match="'fold1-acc@1' is logged as 'fold1-acc1'"):
        lg.log_metrics({"acc@1": 0.5, "loss": torch.tensor(2.0)}, step=3)
    lg.log_metrics({"acc@1": 0.25}, step=4)  # warned once per name
    with pytest.warns(UserWarning, match="not a number"):
        lg.log_metrics({"label": "cat"}, step=5)
    lg.finalize("interrupted")
    client = _client(uri)
    run = client.get_run(lg.run_id)
    assert run.data.params == {"long": "x" * 6000, "nested/a/0/b": "1", "ns/k": "2"}
    assert [(m.step, m.value) for m in client.get_metric_history(lg.run_id, "fold1-acc1")] == [(3, 0.5), (4, 0.25)]
    assert [(m.step, m.value) for m in client.get_metric_history(lg.run_id, "fold1-loss")] == [(3, 2.0)]
    assert (run.info.status, run.info.run_name, run.data.tags["team"]) == ("KILLED", "r", "a")
    # resuming by run id (or a pickled copy, which keeps it): the same run, RUNNING again, then FINISHED
    again = pickle.loads(pickle.dumps(lg))
    assert again._client is None and again.run_id == lg.run_id
    again = MLFlowLogger(tracking_uri=uri, run_id=lg.run_id)
    again.log_metrics({"x": 1.0}, step=0)
    assert client.get_run(lg.run_id).info.status == "RUNNING" and again.name == lg.name
    again.finalize("success")
    assert client.get_run(lg.run_id).info.status == "FINISHED"
    assert len(client.search_runs([lg.experiment_id])) == 1


def test_log_model_all_uploads_every_save_with_async_writes(tmp_path, monkeypatch, capsys):
    """Each checkpoint is uploaded once durable, even one that the next save evicts; the
    logger sees the callback as it was at that save, though the write ran in the background."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"file:{tmp_path / 'mlruns'}"
    mlf = MLFlowLogger(tracking_uri=uri, log_model="all")
    ckpt = de.callbacks.ModelCheckpoint(save_top_k=1, every_n_train_steps=1,  # each save evicts the last
                                        async_save=True, verbose=True)
    trainer = de.Trainer(accelerator="cpu", max_epochs=1, logger=mlf, callbacks=[ckpt], log_every_n_steps=1,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Reg(), _loaders()[0])
    saved = re.findall(r"saved checkpoint (\S+)", capsys.readouterr().err)
    assert len(saved) == 4 and len(os.listdir(ckpt.dirpath)) == 2  # the best file and last.json
    folders = {os.path.dirname(p) for p in _artifacts(_client(uri), mlf.run_id)}
    assert folders == {os.path.splitext(os.path.basename(p))[0] for p in saved}


def test_a_failed_upload_warns_and_training_goes_on(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "a_file").write_text("not a folder")
    # the experiment's artifact root lies under a plain file: every upload fails in MLflow itself
    mlf = MLFlowLogger(tracking_uri=f"file:{tmp_path / 'mlruns'}", log_model="all",
                       artifact_location=f"file:{tmp_path / 'a_file' / 'artifacts'}")
    trainer = de.Trainer(accelerator="cpu", max_epochs=2, logger=mlf, enable_progress_bar=False,
                         enable_model_summary=False)
    with pytest.warns(RuntimeWarning, match="MLFlowLogger.after_save_checkpoint failed"):
        trainer.fit(Reg(), _loaders()[0])
    assert trainer.global_step == 8 and os.path.basename(trainer.checkpoint_callback.best_model_path) == \
        "epoch=1-step=8.ckpt"
    assert _client(f"file:{tmp_path / 'mlruns'}").get_run(mlf.run_id).info.status == "FINISHED"


def test_rank_one_and_bad_input(tmp_path, monkeypatch, offline_wandb):
    monkeypatch.setenv("RANK", "1")
    mlf = MLFlowLogger(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    wb = WandbLogger(save_dir=tmp_path / "wb", offline=True)
    for lg in (mlf, wb):
        lg.log_hyperparams({"a": 1})
        lg.log_metrics({"loss": 1.0}, step=0)
        lg.experiment.log_artifact("whatever")  # a do-nothing stand-in off rank zero
        lg.finalize("success")
    assert (mlf.version, wb.version) == (None, None)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "wb").exists()
    with pytest.raises(ValueError, match="log_model='best'.*False, True .* or 'all'"):
        MLFlowLogger(save_dir=tmp_path, log_model="best")
    with pytest.raises(ValueError, match="add_file_policy"):
        WandbLogger(add_file_policy="copy")
    from distengine.loggers.artifacts import require

    with pytest.raises(ImportError, match=r"^MLFlowLogger needs no_such_pkg_x: pip install 'distengine\[mlflow\]'$"):
        require("no_such_pkg_x", "MLFlowLogger", "mlflow")
    if importlib.util.find_spec("sqlalchemy") is None:  # mlflow-skinny: no SQL store
        with pytest.raises(ImportError, match="SQL store.*pip install mlflow"):
            MLFlowLogger(tracking_uri="sqlite:///mlflow.db")


def test_imports_stay_light(repo_root, tmp_path):
    if importlib.util.find_spec("rich") is None:
        pytest.skip("needs rich (pip install 'distengine[rich]')")
    code = ("import sys, distengine, distengine.loggers as L, distengine.callbacks as C;"
            f"L.MLFlowLogger(save_dir={str(tmp_path)!r}); L.WandbLogger(offline=True); C.RichProgressBar();"
            "print([m for m in ('mlflow', 'wandb', 'rich') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": repo_root})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _two_ranks(rank: int, tmp: str):
    mlf = MLFlowLogger(tracking_uri=f"file:{os.path.join(tmp, 'mlruns')}")
    wb = WandbLogger(save_dir=os.path.join(tmp, "wb"), offline=True)
    csv = CSVLogger(os.path.join(tmp, f"csv{rank}"))
    trainer = de.Trainer(accelerator="cpu", max_epochs=2, default_root_dir=os.path.join(tmp, f"root{rank}"),
                         logger=[mlf, wb, csv], log_every_n_steps=1, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(Reg(), *_loaders())
    imported = [m for m in ("mlflow", "wandb") if m in sys.modules]
    return trainer.checkpoint_callback.dirpath, mlf.version, wb.version, imported


def test_two_ranks_one_mlflow_run_one_wandb_run(tmp_path):
    (dir0, run0, wb0, mods0), (dir1, run1, wb1, mods1) = run_ranks(
        _two_ranks, 2, str(tmp_path), timeout=120, env=wandb_env(str(tmp_path)))
    assert run1 is None and wb1 is None and run0 and wb0  # rank 1 never started a run
    assert (mods0, mods1) == (["mlflow", "wandb"], [])  # nor imported mlflow or wandb
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # this process reads the file store too
    client = _client(f"file:{tmp_path / 'mlruns'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "lightning_logs"]
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in runs] == [run0] and runs[0].info.status == "FINISHED"
    assert dir0 == dir1 == str(tmp_path / "mlruns" / exp.experiment_id / run0 / "checkpoints")
    assert "epoch=1-step=4.ckpt" in os.listdir(dir0)
    (run_dir,) = offline_runs(str(tmp_path / "wb"))
    assert run_dir.endswith(wb0)
    assert not (tmp_path / "csv1").exists() and not (tmp_path / "root1").exists()
    # 8 samples over 2 ranks, batch 2: 2 steps per epoch, written at 0..3 by every logger
    rows = _csv_rows(tmp_path / "csv0" / "lightning_logs" / "version_0" / "metrics.csv")
    want = [(int(r["step"]), r["train_loss"]) for r in rows if "train_loss" in r]
    assert [s for s, _ in want] == [0, 1, 2, 3]
    assert [(m.step, m.value) for m in client.get_metric_history(run0, "train_loss")] == want
    logged = [(h["trainer/global_step"], h["train_loss"]) for k, h in wandb_records(run_dir)
              if k == "history" and "train_loss" in h]
    assert logged == want
