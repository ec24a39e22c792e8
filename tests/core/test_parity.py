"""The Trainer must produce EXACTLY the weights of the natural hand-written PyTorch loop."""
from __future__ import annotations

import copy

import pytest
import torch

from tests.core.models import Regressor, loader, make_net, quiet_trainer, regression_data

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def handwritten(net, ds, epochs, precision="32-true", accum=1, clip=None, clip_algo="norm"):
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu") if precision == "16-mixed" else None
    dl = loader(ds)
    n = len(dl)
    for _ in range(epochs):
        for i, (x, y) in enumerate(dl):
            if precision in AUTOCAST:
                with torch.autocast("cpu", dtype=AUTOCAST[precision]):
                    loss = torch.nn.functional.mse_loss(net(x), y)
            else:
                loss = torch.nn.functional.mse_loss(net(x), y)
            loss = loss / accum
            (scaler.scale(loss) if scaler else loss).backward()
            if (i + 1) % accum == 0 or i + 1 == n:
                if clip:
                    if scaler:
                        scaler.unscale_(opt)
                    if clip_algo == "norm":
                        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
                    else:
                        torch.nn.utils.clip_grad_value_(net.parameters(), clip)
                if scaler:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                opt.zero_grad(set_to_none=True)
    return net


@pytest.mark.parametrize("precision,accum,clip,algo", [
    ("32-true", 1, None, "norm"),
    ("bf16-mixed", 1, None, "norm"),
    ("16-mixed", 1, None, "norm"),
    ("32-true", 3, None, "norm"),
    ("32-true", 1, 0.05, "norm"),
    ("32-true", 1, 0.01, "value"),
    ("bf16-mixed", 2, 0.1, "norm"),
])
def test_trainer_weights_equal_handwritten_loop(tmp_path, precision, accum, clip, algo):
    ds = regression_data()
    net = make_net()
    reference = handwritten(copy.deepcopy(net), ds, epochs=2, precision=precision, accum=accum,
                            clip=clip, clip_algo=algo)
    module = Regressor(copy.deepcopy(net))
    trainer = quiet_trainer(tmp_path, max_epochs=2, precision=precision, accumulate_grad_batches=accum,
                            gradient_clip_val=clip, gradient_clip_algorithm=algo, num_sanity_val_steps=0)
    trainer.fit(module, loader(ds))
    assert trainer.global_step == 2 * -(-len(loader(ds)) // accum)
    for (name, a), b in zip(module.net.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs from the hand-written loop"


def test_fp16_scaler_skips_nonfinite_steps_and_counts_them(tmp_path):
    class Exploding(Regressor):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * (float("inf") if batch_idx == 3 else 1.0)

    def run(module):
        trainer = quiet_trainer(tmp_path, max_epochs=1, precision="16-mixed", limit_train_batches=5)
        trainer.fit(module, loader(regression_data()))
        return trainer.precision_plugin.skipped_steps

    # GradScaler may also skip early steps while it lowers its initial scale; the infinite
    # loss must add exactly one skipped step, and the weights must stay finite.
    baseline = run(Regressor())
    module = Exploding()
    assert run(module) == baseline + 1
    assert all(torch.isfinite(p).all() for p in module.parameters())
