"""Manual optimization, GAN style: two optimizers with toggle_optimizer/untoggle_optimizer.

style: 2.x
"""
import os

import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from torch import nn
from torch.utils.data import DataLoader


class GAN(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8))
        self.discriminator = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        real, _ = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], 4, generator=torch.Generator().manual_seed(batch_idx))
        bce = nn.functional.binary_cross_entropy_with_logits

        self.toggle_optimizer(opt_g)
        fake = self.generator(z)
        g_loss = bce(self.discriminator(fake), torch.ones(real.shape[0], 1))
        self.manual_backward(g_loss)
        opt_g.step()
        opt_g.zero_grad()
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        d_loss = (bce(self.discriminator(real), torch.ones(real.shape[0], 1))
                  + bce(self.discriminator(self.generator(z).detach()), torch.zeros(real.shape[0], 1))) / 2
        self.manual_backward(d_loss)
        opt_d.step()
        opt_d.zero_grad()
        self.untoggle_optimizer(opt_d)
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss})

    def configure_optimizers(self):
        return [torch.optim.Adam(self.generator.parameters(), lr=2e-3),
                torch.optim.Adam(self.discriminator.parameters(), lr=2e-3)]


if __name__ == "__main__":
    pl.seed_everything(2)
    model = GAN()
    # each optimizer's step leaves the other network's parameters without gradients: on several
    # processes DDP has to be told (Lightning's GAN examples do the same)
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    trainer = pl.Trainer(max_epochs=2, log_every_n_steps=4, enable_progress_bar=False,
                         strategy="ddp_find_unused_parameters_true" if several else "auto")
    trainer.fit(model, DataLoader(regression_data(64), batch_size=8))
    report(trainer, model)
