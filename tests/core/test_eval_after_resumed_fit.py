"""``test(model)`` after ``fit(ckpt_path=X)`` evaluates the model as it is, as Lightning 2.6.6 does
(checked against it with the same script: weights unchanged, ``trainer.ckpt_path`` None after the
test). distengine reloaded X's weights instead, discarding what the fit trained since X: the restore
recorded X as a user-set path (``trainer.ckpt_path = X``) that every later call without
``ckpt_path`` loads. Found by the 4-rank model-parallel differential (tests/conformance, a test
after the resumed fit)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks import ModelCheckpoint


class _Module(de.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def test_step(self, batch, batch_idx):
        self.log("test_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_test_with_a_model_after_a_resumed_fit_uses_the_trained_weights(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)
    kw = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
          "default_root_dir": str(tmp_path)}
    de.Trainer(max_epochs=1, callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "c"))], **kw).fit(_Module(), loader)
    model, path = _Module(), str(tmp_path / "c" / "epoch=0-step=4.ckpt")
    trainer = de.Trainer(max_epochs=3, enable_checkpointing=False, **kw)
    trainer.fit(model, loader, ckpt_path=path)
    assert trainer.ckpt_path == path  # the checkpoint this fit resumed from (Lightning's too)
    trained = model.layer.weight.detach().clone()
    trainer.test(model, loader)
    assert torch.equal(model.layer.weight, trained)  # not the epoch-0 checkpoint's weights again
    assert trainer.ckpt_path is None  # this test loaded no checkpoint
