"""``save_hyperparameters()`` with an nn.Module ``__init__`` argument, as Lightning 2.6.6 does it:
the module stays in ``hparams`` (the same object) with Lightning's warning suggesting
``ignore=[...]``. The checkpoint keeps only plain data (it must load with ``weights_only=True``),
so ``load_from_checkpoint`` needs the module passed again and says so in one line."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import distengine as de


class WithBackbone(de.Module):
    def __init__(self, backbone: nn.Module, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = backbone

    def training_step(self, batch, batch_idx):
        return self.backbone(batch).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def test_module_argument_is_kept_in_hparams_with_lightnings_warning():
    backbone = nn.Linear(3, 1)
    with pytest.warns(UserWarning, match=r"Attribute 'backbone' is an instance of `nn.Module`.*"
                                         r"ignore=\['backbone'\]"):
        m = WithBackbone(backbone)
    assert sorted(m.hparams) == ["backbone", "lr"]
    assert m.hparams["backbone"] is backbone  # as Lightning: the object itself, not a copy


def test_checkpoint_and_load_from_checkpoint(tmp_path):
    with pytest.warns(UserWarning):
        m = WithBackbone(nn.Linear(3, 1), lr=0.2)
    trainer = de.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, accelerator="cpu", default_root_dir=str(tmp_path))
    trainer.fit(m, DataLoader(torch.randn(4, 3), batch_size=2))
    path = str(tmp_path / "m.ckpt")
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)  # plain data only
    assert ckpt["hyper_parameters"] == {"lr": 0.2} and ckpt["hparams_modules"] == ["backbone"]
    with pytest.raises(TypeError, match=r"\['backbone'\] were nn.Module objects.*load_from_checkpoint\(path, "
                                        r"backbone=\.\.\.\)") as info:
        WithBackbone.load_from_checkpoint(path)
    assert "\n" not in str(info.value)
    with pytest.warns(UserWarning):
        again = WithBackbone.load_from_checkpoint(path, backbone=nn.Linear(3, 1))
    assert again.hparams.lr == 0.2
    assert torch.equal(again.backbone.weight, m.backbone.weight)  # the weights came from the state_dict
