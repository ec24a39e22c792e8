"""Prints, as JSON, what Lightning's Trainer API gives (issue 26: exceptions, Trainer
properties at hook times, PL_TRAINER_* defaults, logging from callbacks, logger experiments,
warnings). Run under real Lightning and under distengine through the shim; the test compares
the two outputs. Argument: the part to probe."""
import json
import os
import sys
import tempfile
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

os.environ.pop("PL_TRAINER_MAX_EPOCHS", None)


def _data(n=16, bs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=bs)


def _module_cls():
    import pytorch_lightning as pl

    class M(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", nn.functional.mse_loss(self.layer(x), y))

        def predict_step(self, batch, batch_idx):
            return self.layer(batch[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return M


def _trainer(tmp, **kw):
    import pytorch_lightning as pl

    args = dict(default_root_dir=tmp, enable_progress_bar=False, enable_model_summary=False, logger=False,
                enable_checkpointing=False, max_epochs=1)
    args.update(kw)
    return pl.Trainer(**args)


def exceptions(tmp):
    """Which bad configurations raise MisconfigurationException (and with which built-in base)."""
    import pytorch_lightning as pl
    from lightning_fabric.utilities.exceptions import MisconfigurationException as FabricMisconfig
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from pytorch_lightning.utilities.exceptions import MisconfigurationException

    M = _module_cls()

    class NoOpt(M):
        configure_optimizers = pl.LightningModule.configure_optimizers

    class NoTest(M):
        test_step = pl.LightningModule.test_step

    class Manual(M):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    class BadLog(M):
        def training_step(self, batch, batch_idx):
            self.log("x", torch.ones(3))
            return super().training_step(batch, batch_idx)

    cases = {
        "limit_str": lambda: _trainer(tmp, limit_train_batches="a"),
        "ckpt_disabled": lambda: _trainer(tmp, enable_checkpointing=False, callbacks=[ModelCheckpoint(dirpath=tmp)]),
        "ckpt_mode": lambda: ModelCheckpoint(mode="median"),
        "es_mode": lambda: EarlyStopping("val_loss", mode="median"),
        "no_configure_optimizers": lambda: _trainer(tmp).fit(NoOpt(), _data()),
        "no_test_step": lambda: _trainer(tmp).test(NoTest(), _data()),
        "no_train_data": lambda: _trainer(tmp).fit(M()),
        "manual_accumulate": lambda: _trainer(tmp, accumulate_grad_batches=2).fit(Manual(), _data()),
        "log_non_scalar": lambda: _trainer(tmp).fit(BadLog(), _data()),
        "test_without_model": lambda: _trainer(tmp).test(dataloaders=_data()),
    }
    out = {"same_class": MisconfigurationException is FabricMisconfig,
           "base": [b.__name__ for b in MisconfigurationException.__mro__[1:]][:1]}
    for name, fn in cases.items():
        try:
            fn()
            out[name] = "no error"
        except Exception as e:  # noqa: BLE001 - the exception class is what is compared
            out[name] = isinstance(e, MisconfigurationException)
    return out


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    part = globals()[sys.argv[1]]
    with tempfile.TemporaryDirectory() as tmp:
        print("PROBE " + json.dumps(part(tmp), sort_keys=True))
