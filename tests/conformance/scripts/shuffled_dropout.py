"""A shuffled training loader (global RNG, then generator=), dropout, a random draw after fit.

A published tutorial's shape. In one process Lightning leaves the RandomSampler alone: each
epoch draws its seed from torch's global generator, so the data order, the dropout masks and the draw after the fit all
follow from seed_everything. A second fit shuffles with the loader's own generator=. On 2 ranks
Lightning's DistributedSampler(seed + epoch) shuffles.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
        self.seen = []

    def training_step(self, batch, batch_idx):
        i, x, y = batch
        self.seen += i.tolist()
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def indexed(n, seed):
    x, y = regression_data(n, seed=seed).tensors
    return TensorDataset(torch.arange(n), x, y)


def trainer():
    return pl.Trainer(max_epochs=3, enable_progress_bar=False, enable_checkpointing=False,
                      log_every_n_steps=2)


if __name__ == "__main__":
    pl.seed_everything(21)
    model = Regressor()
    first = trainer()
    first.fit(model, DataLoader(indexed(44, 0), batch_size=8, shuffle=True))
    after_draw = float(torch.rand(()))
    second = Regressor()  # the loader's own generator: its permutations, not the global RNG's
    fit2 = trainer()
    fit2.fit(second, DataLoader(indexed(30, 1), batch_size=8, shuffle=True,
                                generator=torch.Generator().manual_seed(5)))
    report(first, model, after_draw=after_draw, seen=model.seen,
           seen_generator=second.seen, after_draw_2=float(torch.rand(())),
           second_weights=float(sum(p.detach().double().sum() for p in second.parameters())))
