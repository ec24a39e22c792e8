"""``is_overridden`` and the ``LightningModule.trainer`` setter, as Lightning's tests use them."""
from __future__ import annotations

import functools
from unittest import mock

import pytest

import distengine as de
from distengine.utilities.model_helpers import is_overridden


class _Module(de.LightningModule):
    def training_step(self, batch, batch_idx):
        return None

    @functools.wraps(de.LightningModule.validation_step)
    def validation_step(self, *args):  # wrapped: still its own code
        return None


class _Data(de.LightningDataModule):
    def train_dataloader(self):
        return []


def test_is_overridden_for_modules_datamodules_and_callbacks():
    module = _Module()
    assert is_overridden("training_step", module) and not is_overridden("test_step", module)
    assert is_overridden("train_dataloader", _Data()) and not is_overridden("val_dataloader", _Data())
    assert not is_overridden("on_fit_start", de.callbacks.Callback())
    assert not is_overridden("training_step", None)
    with mock.patch.object(_Module, "training_step", wraps=_Module.training_step):
        assert is_overridden("training_step", _Module())
    with pytest.raises(ValueError, match="pass parent="):
        is_overridden("forward", object())


def test_trainer_setter_reaches_child_modules():
    parent, child = _Module(), _Module()
    parent.child = child
    trainer = de.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    parent.trainer = trainer
    assert parent.trainer is trainer and child.trainer is trainer
    parent.trainer = None
    assert child._trainer is None
    with pytest.raises(RuntimeError, match="is not attached to a Trainer"):
        child.trainer


def test_a_module_attached_to_a_trainer_scripts_with_torch_jit():
    import torch

    class Scripted(de.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.layer(x)

    module = Scripted()
    module.trainer = de.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    scripted = torch.jit.script(module)  # the Trainer-reading properties are left out, as in Lightning
    x = torch.randn(2, 4)
    assert torch.equal(scripted(x), module(x))
