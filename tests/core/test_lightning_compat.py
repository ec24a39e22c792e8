"""Lightning code runs on distengine: a 2.x tutorial script written with ``import distengine as
pl`` runs unchanged in a fresh interpreter, and the 1.x style trains without any warning."""
from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import distengine as de
from distengine.loggers.base import Logger
from distengine.utilities.warnings import PossibleUserWarning
from tests.core.models import loader, quiet_trainer, regression_data

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A typical Lightning 2.x tutorial script; only the import line differs from Lightning's.
TUTORIAL_2X = textwrap.dedent('''
    import json
    import sys

    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset, random_split

    import distengine as pl
    from distengine.callbacks import EarlyStopping, ModelCheckpoint
    from distengine.loggers import CSVLogger


    class BlobsDataModule:
        def __init__(self, batch_size=32):
            self.batch_size = batch_size

        def prepare_data(self):
            pass  # download would go here

        def setup(self, stage):
            g = torch.Generator().manual_seed(0)
            centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]])
            y = torch.randint(0, 3, (600,), generator=g)
            x = centers[y] + 0.5 * torch.randn(600, 2, generator=g)
            full = TensorDataset(x, y)
            self.train_set, self.val_set, self.test_set = random_split(
                full, [400, 100, 100], generator=torch.Generator().manual_seed(1))

        def train_dataloader(self):
            return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

        def val_dataloader(self):
            return DataLoader(self.val_set, batch_size=self.batch_size)

        def test_dataloader(self):
            return DataLoader(self.test_set, batch_size=self.batch_size)


    class LitClassifier(pl.LightningModule):
        def __init__(self, hidden_dim=32, learning_rate=0.05):
            super().__init__()
            self.save_hyperparameters()
            self.l1 = nn.Linear(2, self.hparams.hidden_dim)
            self.l2 = nn.Linear(self.hparams.hidden_dim, 3)
            self.validation_step_outputs = []

        def forward(self, x):
            return self.l2(torch.relu(self.l1(x)))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            loss = F.cross_entropy(logits, y)
            acc = (logits.argmax(dim=1) == y).float().mean()
            self.log("val_loss", loss, prog_bar=True)
            self.log("val_acc", acc, prog_bar=True)
            self.validation_step_outputs.append(acc)

        def on_validation_epoch_end(self):
            self.log("val_acc_mean_of_batches", torch.stack(self.validation_step_outputs).mean())
            self.validation_step_outputs.clear()

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_acc", (self(x).argmax(dim=1) == y).float().mean())

        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            x, _ = batch
            return self(x).argmax(dim=1)

        def configure_optimizers(self):
            optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "interval": "epoch", "frequency": 1}}


    def main(root):
        pl.seed_everything(42, workers=True)
        dm = BlobsDataModule()
        model = LitClassifier()
        checkpoint_callback = ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=2,
                                              filename="{epoch}-{val_loss:.3f}")
        early_stopping = EarlyStopping(monitor="val_loss", patience=3, mode="min")
        trainer = pl.Trainer(max_epochs=4, accelerator="auto", devices=1, default_root_dir=root,
                             callbacks=[checkpoint_callback, early_stopping],
                             logger=CSVLogger(save_dir=root, name="lit"), log_every_n_steps=5,
                             deterministic=True, enable_progress_bar=False)
        trainer.fit(model, datamodule=dm)
        fit_metrics = sorted(trainer.callback_metrics)
        test_results = trainer.test(model, datamodule=dm, ckpt_path="best")
        predictions = trainer.predict(model, dataloaders=dm.test_dataloader())
        best = LitClassifier.load_from_checkpoint(checkpoint_callback.best_model_path)
        print(json.dumps({
            "best_model_path": checkpoint_callback.best_model_path,
            "best_score": float(checkpoint_callback.best_model_score),
            "test_acc": test_results[0]["test_acc"],
            "n_predictions": int(torch.cat(predictions).numel()),
            "hparams": dict(best.hparams),
            "global_step": trainer.global_step,
            "fit_callback_metrics": fit_metrics,
            "callback_metrics": sorted(trainer.callback_metrics),
            "log_dir": trainer.logger.log_dir,
        }))


    if __name__ == "__main__":
        main(sys.argv[1])
''')


def test_lightning_2x_tutorial_script_runs_unchanged(tmp_path):
    script = tmp_path / "tutorial.py"
    script.write_text(TUTORIAL_2X)
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True,
                          text=True, env=env, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["test_acc"] > 0.9 and out["n_predictions"] == 100
    assert out["hparams"] == {"hidden_dim": 32, "learning_rate": 0.05}
    assert out["global_step"] == 4 * 13  # 400 samples / 32 per batch, 4 epochs
    assert {"train_loss", "train_loss_step", "train_loss_epoch", "val_loss", "val_acc",
            "val_acc_mean_of_batches"} <= set(out["fit_callback_metrics"])
    assert out["callback_metrics"] == []  # Lightning 2.6.6: predict() leaves them empty
    assert os.path.isfile(out["best_model_path"]) and "val_loss=" in os.path.basename(out["best_model_path"])
    assert len(glob.glob(os.path.join(os.path.dirname(out["best_model_path"]), "*.ckpt"))) == 2
    with open(os.path.join(out["log_dir"], "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val_acc") for r in rows) and any(r.get("train_loss_step") for r in rows)
    assert "Traceback" not in proc.stderr
    # no warning from distengine or about the script's own (Lightning-style) code
    ours = [line for line in proc.stderr.splitlines()
            if "Warning" in line and ("distengine" in line or "tutorial.py" in line)]
    assert ours == [], proc.stderr[-2000:]


def test_lightning_names_exist():
    assert de.LightningModule is de.Module
    from distengine.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint  # noqa: F401
    from distengine.loggers import CSVLogger, TensorBoardLogger  # noqa: F401

    assert de.seed_everything(7) == 7 and os.environ["PL_GLOBAL_SEED"] == "7"


def test_lightning_datamodule_base_class(tmp_path):
    class DM(de.LightningDataModule):
        def train_dataloader(self):
            return loader(regression_data())

    from tests.core.models import Regressor

    quiet_trainer(tmp_path, max_epochs=1).fit(Regressor(), datamodule=DM())


# ------------------------------------------------------------------ the 1.x style
class RecordingLogger(Logger):
    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))

    def keys(self):
        return {k for _, m in self.rows for k in m}


class OneX(de.LightningModule):
    """The 1.x style: dict returns with 'log', *_epoch_end(outputs), on_epoch_start, training_end."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(6, 1)
        self.epoch_starts = 0
        self.train_outputs_seen: list[int] = []

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        return {"loss": loss, "log": {"train_mse": loss}, "progress_bar": {"mse": loss}}

    def training_epoch_end(self, outputs):
        self.train_outputs_seen.append(len(outputs))
        avg = torch.stack([o["loss"] for o in outputs]).mean()
        return {"log": {"avg_train_loss": avg}}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return {"val_loss": torch.nn.functional.mse_loss(self(x), y)}

    def validation_epoch_end(self, outputs):
        avg = torch.stack([o["val_loss"] for o in outputs]).mean()
        return {"val_loss": avg, "log": {"avg_val_loss": avg}}

    def test_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)  # a bare tensor

    def test_epoch_end(self, outputs):
        return {"log": {"avg_test_loss": torch.stack(outputs).mean()}}

    def on_epoch_start(self):
        self.epoch_starts += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_one_x_style_trains_without_any_warning(tmp_path):
    logger = RecordingLogger()
    module = OneX()
    ds = regression_data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=PossibleUserWarning)  # advice (workers...), not checked here
        trainer = de.Trainer(gpus=0, max_epochs=2, logger=logger, checkpoint_callback=False,
                             progress_bar_refresh_rate=0, default_root_dir=str(tmp_path), log_every_n_steps=2,
                             num_sanity_val_steps=0, enable_model_summary=False)
        trainer.fit(module, loader(ds), loader(ds, batch_size=32))
        fit_metrics, fit_bar = dict(trainer.callback_metrics), dict(trainer.progress_bar_metrics)
        results = trainer.test(module, loader(ds, batch_size=48))
    relevant = [w for w in caught if "distengine" in str(w.filename) or "tests/core" in str(w.filename)]
    assert relevant == [], [f"{w.category.__name__}: {w.message}" for w in relevant]
    assert module.train_outputs_seen == [6, 6] and module.epoch_starts == 2
    assert {"train_mse", "avg_train_loss", "avg_val_loss"} <= logger.keys()
    assert "val_loss" in fit_metrics and "mse" in fit_bar
    assert "avg_test_loss" in results[0] and "val_loss" not in trainer.callback_metrics  # test's only


def test_one_x_training_epoch_end_gets_loss_dicts_from_tensor_returns(tmp_path):
    class TensorReturn(OneX):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

    module = TensorReturn()
    trainer = quiet_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(module, loader(regression_data()))
    assert module.train_outputs_seen == [6]  # o["loss"] worked on every output
    assert "avg_train_loss" in trainer.callback_metrics


def test_one_x_trainer_flags_all_at_once(tmp_path):
    module = OneX()
    path = tmp_path / "start.ckpt"
    first = quiet_trainer(tmp_path, max_epochs=1)
    first.fit(module, loader(regression_data()))
    first.save_checkpoint(str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=PossibleUserWarning)  # advice (workers...), not checked here
        trainer = de.Trainer(gpus=0, max_epochs=2, resume_from_checkpoint=str(path), checkpoint_callback=False,
                             progress_bar_refresh_rate=0, terminate_on_nan=True, replace_sampler_ddp=False,
                             weights_save_path=str(tmp_path / "w"), logger=False, enable_model_summary=False,
                             default_root_dir=str(tmp_path))
        trainer.fit(OneX(), loader(regression_data()))
    relevant = [w for w in caught if "distengine" in str(w.filename) or "tests/core" in str(w.filename)]
    assert relevant == [], [str(w.message) for w in relevant]
    assert trainer.global_step == 12 and trainer.use_distributed_sampler is False
    assert trainer.on_nonfinite_loss == "error" and trainer.accelerator == "cpu"


def test_test_with_ckpt_path_best_loads_the_best_weights(tmp_path):
    from distengine.callbacks import ModelCheckpoint

    class Scored(de.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(6, 1)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

        def validation_step(self, batch, batch_idx):
            # best at epoch 1 of 0..2
            self.log("score", [3.0, 1.0, 2.0][self.current_epoch])

        def test_step(self, batch, batch_idx):
            self.log("w", self.layer.weight.sum())

    snapshots = {}

    class Snap(de.callbacks.Callback):
        def on_train_epoch_end(self, trainer, module):
            snapshots[trainer.current_epoch] = float(module.layer.weight.detach().sum())

    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="score", mode="min")
    module = Scored()
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[ckpt, Snap()], enable_checkpointing=True,
                            num_sanity_val_steps=0)
    ds = regression_data()
    trainer.fit(module, loader(ds), loader(ds))
    assert "epoch=1" in ckpt.best_model_path
    (result,) = trainer.test(module, loader(ds), ckpt_path="best")
    assert result["w"] == pytest.approx(snapshots[1], rel=1e-6)
    assert result["w"] != pytest.approx(snapshots[2], rel=1e-6)


def test_ckpt_path_best_without_a_checkpoint_is_a_clear_error(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    module = OneX()
    trainer.fit(module, loader(regression_data()))
    with pytest.raises(ValueError, match='ckpt_path="best" needs a ModelCheckpoint'):
        trainer.test(module, loader(regression_data()), ckpt_path="best")


def test_predict_return_predictions_flag(tmp_path):
    class Pred(OneX):
        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            return self(batch[0])

    trainer = quiet_trainer(tmp_path)
    data = loader(regression_data(n=32))
    assert trainer.predict(Pred(), dataloaders=data, return_predictions=False) is None
    preds = trainer.predict(Pred(), dataloaders=data, return_predictions=True)
    assert torch.cat(preds).shape == (32, 1)


class NoBatchIdx(de.LightningModule):
    """Lightning 2.x passes batch_idx only to steps whose signature takes it."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(6, 1)

    def training_step(self, batch):
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def validation_step(self, batch):
        self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_steps_without_batch_idx(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(NoBatchIdx(), loader(regression_data()), loader(regression_data()))
    assert trainer.global_step == 6 and "val_loss" in trainer.callback_metrics


def test_module_prepare_data_setup_and_dataloaders_the_litmnist_way(tmp_path):
    class LitData(de.LightningModule):
        """Lightning's classic tutorial: the module prepares, sets up and serves its own data."""

        def __init__(self, root):
            super().__init__()
            self.root = root
            self.layer = torch.nn.Linear(6, 1)
            self.calls = []

        def prepare_data(self):  # "download"
            self.calls.append("prepare_data")
            torch.save(regression_data().tensors, os.path.join(self.root, "data.pt"))

        def setup(self, stage=None):
            self.calls.append(f"setup:{stage}")
            if stage in ("fit", None):
                x, y = torch.load(os.path.join(self.root, "data.pt"))
                self.train_set = torch.utils.data.TensorDataset(x, y)

        def train_dataloader(self):
            return loader(self.train_set)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    module = LitData(str(tmp_path))
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(module)
    assert module.calls == ["prepare_data", "setup:fit"] and trainer.global_step == 6
