"""A Lightning CLI script, unchanged between Lightning and distengine.

Under distengine it runs with the Lightning import shim on PYTHONPATH
(tests/conformance/shim), so ``pytorch_lightning.cli`` is ``distengine.cli``::

    PYTHONPATH=tests/conformance/shim distengine launch --cpus 2 tests/cli/train_cli.py fit --config c.yaml

With ``CLI_TEST_OUT=DIR`` every rank saves what it ended with to ``DIR/rank{R}.pt`` (global
step, max_epochs, world size, seed, the model's weights): the tests and the comparison with
Lightning read them.
"""
import os

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LightningCLI
from torch.utils.data import DataLoader, TensorDataset


class Regressor(pl.LightningModule):
    def __init__(self, hidden_dim: int = 8, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden_dim), torch.nn.Tanh(), torch.nn.Linear(hidden_dim, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class RegressionData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 8, num_samples: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        x = torch.randn(self.hparams.num_samples, 4, generator=torch.Generator().manual_seed(0))
        self.dataset = TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]))

    def train_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size)

    def test_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size)


if __name__ == "__main__":
    torch.set_num_threads(1)
    cli = LightningCLI(Regressor, RegressionData)
    out = os.environ.get("CLI_TEST_OUT")
    if out:
        t = cli.trainer
        torch.save({"rank": t.global_rank, "world_size": t.world_size, "global_step": t.global_step,
                    "seed": int(os.environ.get("PL_GLOBAL_SEED", "-1")),
                    "max_epochs": t.max_epochs, "hidden_dim": cli.model.hparams.hidden_dim,
                    "state_dict": {k: v.detach().cpu() for k, v in cli.model.state_dict().items()}},
                   os.path.join(out, f"rank{t.global_rank}.pt"))
