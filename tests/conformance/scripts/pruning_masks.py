"""ModelPruning: global L1 pruning of the weights with an amount per epoch and the lottery ticket; the masks kept.

style: 2.x
"""
import pytorch_lightning as pl
import torch
from conformance_report import regression_data, report
from pytorch_lightning.callbacks import ModelPruning
from torch import nn
from torch.utils.data import DataLoader


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(11)
    model = Regressor()
    pruning = ModelPruning("l1_unstructured", parameter_names=["weight"], amount=lambda epoch: [0.3, 0.2, 0.0][epoch],
                           make_pruning_permanent=False, use_lottery_ticket_hypothesis=lambda epoch: epoch == 0)
    trainer = pl.Trainer(max_epochs=3, enable_progress_bar=False, enable_checkpointing=False, log_every_n_steps=2,
                         callbacks=[pruning])
    trainer.fit(model, DataLoader(regression_data(32), batch_size=8))
    masks = {k: int(v.sum()) for k, v in model.state_dict().items() if k.endswith("_mask")}
    report(trainer, model, kept=masks, pruned=[[type(m).__name__, n] for m, n in pruning._parameters_to_prune])
