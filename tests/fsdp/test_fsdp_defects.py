"""FSDP2 defects fixed one by one, each checked on 2 real gloo ranks (one job for all of them).

1. ``MixedPrecisionPolicy.cast_forward_inputs`` reaches only the module's forward inputs, not
   the batch a step method receives (float targets stayed fp32 under DDP; under FSDP they
   became bf16/fp16, and 70000.0 became inf in fp16).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.fsdp.models import Block, Net, data
from tests.helpers import run_ranks


def _strategy(model, **kw):
    from distengine.dist.env import detect
    from distengine.strategies.fsdp import FSDPStrategy

    s = FSDPStrategy(**kw)
    s.setup_environment("cpu", detect(), None, 30)
    return s, s.setup_module(model)


class _DtypeNet(Net):
    """Records the dtypes a step sees: its batch, the forward's input and the forward's output."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, object] = {}

    def forward(self, x):
        self.seen["forward_in"] = x.dtype
        out = super().forward(x)
        self.seen["forward_out"] = out.dtype
        return out

    def training_step(self, batch, batch_idx=0):
        x, y = batch
        self.seen["x"], self.seen["y"], self.seen["y_max"] = x.dtype, y.dtype, float(y.max())
        return nn.functional.mse_loss(self(x).float(), y)

    def validation_step(self, batch, batch_idx=0):
        self.seen["val_y"] = batch[1].dtype
        return self(batch[0])


def _step_inputs(rank, out):
    for precision in ("bf16-mixed", "16-mixed"):
        s, m = _strategy(_DtypeNet(), auto_wrap_policy={Block}, mixed_precision=precision)
        x, y = data(8)
        y = y + 70000.0  # inf in fp16
        m.training_step((x, y)).backward()
        with torch.no_grad(), s.evaluation_context(m):
            m.validation_step((x, y))
        out[f"dtypes_{precision}"] = dict(m.seen)


def _job(rank):
    out: dict[str, object] = {}
    _step_inputs(rank, out)
    return out


@pytest.fixture(scope="module")
def job():
    return run_ranks(_job, 2, timeout=180)


def test_step_batch_keeps_its_dtype_while_forward_computes_low_precision(job):
    for r in job:
        for precision, low in (("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)):
            seen = r[f"dtypes_{precision}"]
            assert (seen["x"], seen["y"], seen["val_y"]) == (torch.float32,) * 3, seen
            assert seen["y_max"] > 70000.0 and seen["y_max"] != float("inf")
            assert (seen["forward_in"], seen["forward_out"]) == (low, low), seen
