"""LBFGS (an optimizer whose step calls its closure several times) in automatic optimization, as
in Lightning 2.6.6 (compared by hand on this module: 20 training_step calls, 4 steps, the same
final loss): each evaluation runs training_step, backward, ``on_before_optimizer_step`` and
clipping; the weights equal a hand-written closure loop. It failed before (``step()`` without
its closure)."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de


class Fitted(de.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 1)
        self.steps, self.before_step = 0, 0

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def on_before_optimizer_step(self, optimizer):
        self.before_step += 1

    def configure_optimizers(self):
        return torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=5)


def _data():
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    return TensorDataset(x, x.sum(1, keepdim=True))


def test_lbfgs_trains_as_a_closure_loop():
    model = Fitted()
    trainer = de.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, DataLoader(_data(), batch_size=8))

    torch.manual_seed(0)
    ref = torch.nn.Linear(4, 1)
    opt, evaluations = torch.optim.LBFGS(ref.parameters(), lr=0.1, max_iter=5), 0
    for _ in range(2):
        for x, y in DataLoader(_data(), batch_size=8):
            def closure():
                nonlocal evaluations
                evaluations += 1
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(ref(x), y)
                loss.backward()
                return loss
            opt.step(closure)
    assert trainer.global_step == 4 and model.steps == evaluations == model.before_step
    assert torch.equal(model.layer.weight, ref.weight) and torch.equal(model.layer.bias, ref.bias)


def test_lbfgs_under_a_grad_scaler_is_refused_with_one_line():
    with pytest.raises(ValueError, match="LBFGS calls its closure several times"):
        de.Trainer(max_epochs=1, precision="16-mixed", accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False).fit(Fitted(), DataLoader(_data(), batch_size=8))
