"""measure_flops: FLOPs of a forward / forward+backward pass, on the meta device."""
from __future__ import annotations

import torch

from distengine.utilities import measure_flops


def test_linear_forward_and_backward_on_meta():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        x = torch.randn(2, 32)
    forward = measure_flops(model, lambda: model(x))
    assert forward == 2 * 2 * 32 * 16 + 2 * 2 * 16 * 4  # 2 * batch * in * out per matmul
    total = measure_flops(model, lambda: model(x), lambda y: y.sum())
    # backward: weight gradients of both layers and the input gradient of the second
    assert total == forward + 2 * 2 * 32 * 16 + 2 * (2 * 2 * 16 * 4)
    assert all(p.is_meta for p in model.parameters()), "nothing was materialised"


def test_no_matmul_counts_zero():
    model = torch.nn.ReLU()
    assert measure_flops(model, lambda: model(torch.randn(3))) == 0
