"""save_hyperparameters, then Model.load_from_checkpoint on the saved file with an override.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self, hidden=12, lr=0.05, name="mlp"):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


if __name__ == "__main__":
    pl.seed_everything(20)
    model = Regressor(hidden=10)
    trainer = pl.Trainer(max_epochs=2, enable_progress_bar=False)
    trainer.fit(model, DataLoader(regression_data(32), batch_size=8))
    trainer.strategy.barrier()  # on several ranks: rank 0 has written the file
    path = trainer.checkpoint_callback.best_model_path
    loaded = Regressor.load_from_checkpoint(path, lr=0.5)
    same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    ckpt = torch.load(path, weights_only=False)
    report(trainer, model, hparams=dict(loaded.hparams), same_weights=same, epoch=ckpt["epoch"],
           global_step=ckpt["global_step"], ckpt_hparams=dict(ckpt["hyper_parameters"]))
