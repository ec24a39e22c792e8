"""``Trainer.init_module()`` (Lightning's): tensors made inside it are on the training device and,
with a ``*-true`` precision, in its dtype; ``empty_init=True`` skips the initialisation."""
from __future__ import annotations

import torch

import distengine as de


def test_init_module_builds_on_the_cpu_in_the_precision_dtype():
    trainer = de.Trainer(accelerator="cpu", precision="64-true", logger=False)
    with trainer.init_module():
        layer = torch.nn.Linear(3, 2)
    assert layer.weight.dtype == torch.float64 and layer.weight.device == torch.device("cpu")
    assert torch.get_default_dtype() == torch.float32  # put back after the block
    with de.Trainer(accelerator="cpu", logger=False).init_module():
        assert torch.nn.Linear(3, 2).weight.dtype == torch.float32


def test_empty_init_skips_reset_parameters():
    trainer = de.Trainer(accelerator="cpu", logger=False)
    torch.manual_seed(0)
    with trainer.init_module(empty_init=True):
        skipped = torch.nn.Linear(64, 64)
    torch.manual_seed(0)
    initialised = torch.nn.Linear(64, 64)
    assert not torch.equal(skipped.weight, initialised.weight)
    torch.manual_seed(0)
    with trainer.init_module(empty_init=False):
        again = torch.nn.Linear(64, 64)
    assert torch.equal(again.weight, initialised.weight)
