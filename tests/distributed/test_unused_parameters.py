"""A module with a parameter that training_step never uses, on 2 real DDP ranks: torch's
"Expected to have finished reduction in the prior iteration ..." becomes one line naming the
parameter and the fix, strategy="ddp_find_unused_parameters_true" (as Lightning's advice),
with torch's error kept as the cause; and that fix then trains."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

import distengine as de
from tests.core.models import Regressor, regression_data
from tests.helpers import run_ranks


class WithUnused(Regressor):
    def __init__(self):
        super().__init__()
        self.head_b = torch.nn.Linear(6, 1)  # never used by training_step


def _trainer(tmp, **kw):
    return de.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, max_steps=3, default_root_dir=tmp, **kw)


def _rank(rank, tmp):
    data = DataLoader(regression_data(32), batch_size=4)
    try:
        _trainer(tmp).fit(WithUnused(), data)
        failed = None
    except RuntimeError as exc:
        failed = (str(exc), str(exc.__cause__))
    fixed = _trainer(tmp, strategy="ddp_find_unused_parameters_true")
    fixed.fit(WithUnused(), data)
    return failed, fixed.global_step


def test_unused_parameter_error_names_the_fix(tmp_path):
    for failed, steps in run_ranks(_rank, 2, str(tmp_path), timeout=90):
        assert failed is not None
        message, cause = failed
        assert "\n" not in message
        assert "strategy='ddp_find_unused_parameters_true'" in message and "head_b.weight" in message, message
        assert "Expected to have finished reduction in the prior iteration" in cause
        assert steps == 3
