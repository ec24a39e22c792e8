"""1.x: two optimizers in automatic optimization, training_step(batch, batch_idx, optimizer_idx).

style: 1.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader


class GAN(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.discriminator = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        self.calls = []

    def training_step(self, batch, batch_idx, optimizer_idx):
        real, _ = batch
        z = torch.randn(real.shape[0], 4, generator=torch.Generator().manual_seed(batch_idx))
        bce = nn.functional.binary_cross_entropy_with_logits
        frozen = [p.requires_grad for p in self.discriminator.parameters()][0]
        self.calls.append((batch_idx, optimizer_idx, frozen))
        if optimizer_idx == 0:
            loss = bce(self.discriminator(self.generator(z)), torch.ones(real.shape[0], 1))
            self.log("g_loss", loss)
        else:
            loss = (bce(self.discriminator(real), torch.ones(real.shape[0], 1))
                    + bce(self.discriminator(self.generator(z).detach()), torch.zeros(real.shape[0], 1))) / 2
            self.log("d_loss", loss)
        return loss

    def configure_optimizers(self):
        return [torch.optim.Adam(self.generator.parameters(), lr=2e-3),
                torch.optim.Adam(self.discriminator.parameters(), lr=2e-3)]


if __name__ == "__main__":
    pl.seed_everything(31)
    model = GAN()
    trainer = pl.Trainer(max_epochs=2, log_every_n_steps=2, enable_progress_bar=False)
    trainer.fit(model, DataLoader(regression_data(48), batch_size=8))
    report(trainer, model, calls=model.calls)
