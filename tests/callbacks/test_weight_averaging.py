"""WeightAveraging / EMAWeightAveraging: the average in checkpoints and an exact resume."""
from __future__ import annotations

import torch
from torch.optim.swa_utils import get_ema_avg_fn
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks import EMAWeightAveraging, ModelCheckpoint, WeightAveraging


class BNModel(de.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data(n=24):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def _trainer(tmp, epochs, cb, **kw):
    return de.Trainer(default_root_dir=tmp, max_epochs=epochs, accelerator="cpu", logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=[cb, ModelCheckpoint(dirpath=tmp, save_last=True, save_top_k=0)], **kw)


def _ema():
    return EMAWeightAveraging(decay=0.8, update_every_n_steps=2, update_starting_at_step=1)


def test_resume_is_exact_and_the_checkpoint_holds_the_average(tmp_path):
    full = BNModel()
    _trainer(str(tmp_path / "a"), 4, _ema()).fit(full, _data(), _data(8))
    half = BNModel()
    _trainer(str(tmp_path / "b"), 2, _ema()).fit(half, _data(), _data(8))
    ckpt = torch.load(tmp_path / "b" / "last.ckpt", weights_only=False)
    assert set(ckpt["current_model_state"]) == set(ckpt["state_dict"])
    assert "n_averaged" in ckpt["averaging_state"]
    assert not torch.equal(ckpt["state_dict"]["net.0.weight"], ckpt["current_model_state"]["net.0.weight"])
    resumed = BNModel()
    last = str(tmp_path / "b" / "last.ckpt")
    _trainer(str(tmp_path / "b"), 4, _ema()).fit(resumed, _data(), _data(8), ckpt_path=last)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_the_mean_and_the_ema_by_hand(tmp_path):
    """With no validation: WeightAveraging is the mean over every step's weights; EMA follows
    get_ema_avg_fn over the steps it chose, and the module ends with the average."""
    torch.manual_seed(0)
    ref = BNModel()
    seen = []

    class Snap(WeightAveraging):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(pl_module.net[0].weight.detach().clone())
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    de.Trainer(default_root_dir=str(tmp_path), max_epochs=2, accelerator="cpu", logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               callbacks=[Snap()]).fit(ref, _data())
    assert len(seen) == 12
    torch.testing.assert_close(ref.net[0].weight, torch.stack(seen).mean(0))

    model, ema_seen = BNModel(), []

    class SnapEMA(EMAWeightAveraging):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.should_update(step_idx=trainer.global_step - 1):
                ema_seen.append(pl_module.net[0].weight.detach().clone())
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    de.Trainer(default_root_dir=str(tmp_path), max_epochs=2, accelerator="cpu", logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               callbacks=[SnapEMA(decay=0.5, update_every_n_steps=3)]).fit(model, _data())
    assert len(ema_seen) == 4  # steps 0, 3, 6, 9
    avg_fn, expect = get_ema_avg_fn(0.5), ema_seen[0]
    for i, w in enumerate(ema_seen[1:], start=1):
        expect = avg_fn(expect, w, torch.tensor(i))
    torch.testing.assert_close(model.net[0].weight, expect)
