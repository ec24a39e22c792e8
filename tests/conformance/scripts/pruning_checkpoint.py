"""ModelPruning: L2 structured pruning per parameter at validation epoch ends; plain pruned weights saved.

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
        self.hidden = nn.Linear(8, 16)
        self.out = nn.Linear(16, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    pl.seed_everything(12)
    model = Regressor()
    pruning = ModelPruning("ln_structured", parameters_to_prune=[(model.hidden, "weight"), (model.out, "weight")],
                           use_global_unstructured=False, amount=2, pruning_dim=1, pruning_norm=2, verbose=2,
                           use_lottery_ticket_hypothesis=False, prune_on_train_epoch_end=False)
    trainer = pl.Trainer(max_epochs=2, enable_progress_bar=False, callbacks=[pruning])
    data = regression_data(32)
    trainer.fit(model, DataLoader(data, batch_size=8), DataLoader(data, batch_size=16))
    trainer.strategy.barrier()  # on several ranks: rank 0 has written the file
    path = trainer.checkpoint_callback.best_model_path
    ckpt = torch.load(path, weights_only=False)
    loaded = Regressor.load_from_checkpoint(path)
    same = all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    report(trainer, model, ckpt_keys=sorted(ckpt["state_dict"]), same_weights=same,
           zero_columns=int((loaded.hidden.weight.abs().sum(0) == 0).sum()), final_keys=sorted(model.state_dict()))
