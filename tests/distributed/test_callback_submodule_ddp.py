"""A callback that gives the module new trainable parameters at an epoch start (a new head, a
replaced encoder, both handed to the optimizer), on 2 real gloo ranks: DDP is rebuilt there,
with its start-up broadcast from rank 0, so after the fit every tensor of the module is equal
on both ranks. Parameters replaced in the middle of an epoch are refused with one line."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import run_ranks


def _rank(rank, tmp, when):
    import distengine as de

    torch.set_num_threads(1)
    torch.manual_seed(100 + rank)  # no seed_everything: each rank initialises new layers its own way

    class Net(de.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
            self.head = torch.nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            z = self.encoder(x)
            out = self.head(z)
            if hasattr(self, "head2"):
                out = out + self.head2(z)
            return torch.nn.functional.mse_loss(out, y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    def change(trainer, module):
        # a new encoder of the same shapes (the trainable flags line up with the old ones), and,
        # mid-epoch, a second head as well
        module.encoder = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
        new = list(module.encoder.parameters())
        if when == "mid_epoch":
            module.head2 = torch.nn.Linear(8, 1)
            new += list(module.head2.parameters())
        trainer.optimizers[0].add_param_group({"params": new})

    class Change(de.Callback):
        def on_train_epoch_start(self, trainer, module):
            if when == "epoch_start" and trainer.current_epoch == 1:
                change(trainer, module)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if when == "mid_epoch" and trainer.current_epoch == 1 and batch_idx == 2:
                change(trainer, module)

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 6, generator=g), torch.randn(64, 1, generator=g))
    module = Net()
    trainer = de.Trainer(accelerator="cpu", strategy="ddp_find_unused_parameters_true", max_epochs=3,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp, callbacks=[Change()])
    try:
        trainer.fit(module, DataLoader(data, batch_size=8, shuffle=True))
    except RuntimeError as e:
        return str(e)
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_new_parameters_at_epoch_start_keep_ranks_equal(tmp_path):
    r0, r1 = run_ranks(_rank, 2, str(tmp_path), "epoch_start", timeout=90)
    assert isinstance(r0, dict), r0
    assert r0.keys() == r1.keys()
    differ = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not differ, f"{len(differ)} of {len(r0)} tensors differ between ranks: {differ}"


@pytest.mark.parametrize("when", ["mid_epoch"])
def test_new_parameters_mid_epoch_are_refused(tmp_path, when):
    r0, r1 = run_ranks(_rank, 2, str(tmp_path), when, timeout=90)
    for message in (r0, r1):
        assert isinstance(message, str), "the fit went on with parameters DDP does not reduce"
        assert "during epoch 1" in message and "on_train_epoch_start" in message, message
