"""FSDP2 defects fixed one by one, each checked on 2 real gloo ranks (one job for all of them).

1. ``MixedPrecisionPolicy.cast_forward_inputs`` reaches only the module's forward inputs, not
   the batch a step method receives (float targets stayed fp32 under DDP; under FSDP they
   became bf16/fp16, and 70000.0 became inf in fp16).
2. Meta-device init in ``configure_model``: a module owning meta tensors without
   ``reset_parameters()`` is refused (it stayed uninitialised memory), one with it is filled
   by it, and tensors that were not on meta keep their values (``to_empty`` wiped them).
3. Meta-device init on CPU (``cpu_offload`` or CPU ranks): each rank keeps its own shard of
   one complete init (every rank drew the same shard), equal to the init without FSDP.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.fsdp.models import D, Block, Net, data
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


def _inv_freq(dim):
    return 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))


class Rope(nn.Module):
    """A buffer computed in ``__init__`` and no ``reset_parameters()``: on meta it has no value."""

    def __init__(self, dim: int = D) -> None:
        super().__init__()
        self.register_buffer("inv_freq", _inv_freq(dim), persistent=False)

    def forward(self, x):
        return x * torch.cos(self.inv_freq).repeat(2)


class ResetRope(Rope):
    def reset_parameters(self) -> None:
        self.inv_freq.copy_(_inv_freq(self.inv_freq.numel() * 2))


class Scale(nn.Module):
    """A parameter filled in ``__init__`` and no ``reset_parameters()``."""

    def __init__(self, dim: int = D) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gain


class MetaRopeNet(nn.Module):
    """``head`` and ``cpu_rope`` are built in ``__init__``; the blocks and ``extra`` on meta in
    ``configure_model``."""

    def __init__(self, extra) -> None:
        super().__init__()
        self.extra_cls = extra
        self.head = nn.Linear(D, 1)
        self.cpu_rope = Rope()

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        with torch.device("meta"):
            self.blocks = nn.Sequential(*[Block() for _ in range(3)])
            self.extra = nn.Sequential(*[cls() for cls in self.extra_cls])
        for block in self.blocks:
            fully_shard(block)

    def forward(self, x):
        return self.head(self.blocks(self.extra(self.cpu_rope(x))))

    def training_step(self, batch, batch_idx=0):
        return nn.functional.mse_loss(self(batch[0]), batch[1])


def _meta_init(rank, out):
    from distengine.strategies.fsdp import full_tensor

    for name, kw in (("cpu", {}), ("offload", {"cpu_offload": True})):
        model = MetaRopeNet([ResetRope])
        head = {k: v.clone() for k, v in model.head.state_dict().items()}
        torch.manual_seed(0)  # the same seed on every rank, as seed_everything gives
        s, m = _strategy(model, **kw)
        state = {k: full_tensor(v).detach().clone() for k, v in m.state_dict().items()}
        out[f"meta_{name}"] = {
            "head_kept": all(torch.equal(state[f"head.{k}"], v) for k, v in head.items()),
            "cpu_rope": m.cpu_rope.inv_freq.clone(), "rope": m.extra[0].inv_freq.clone(),
            "blocks": {k: v for k, v in state.items() if k.startswith("blocks.")},
            "loss": m.training_step(data(8)).detach().item(),
        }
    for extra in ([Rope], [Scale, ResetRope, Rope]):
        try:
            _strategy(MetaRopeNet(extra))
        except RuntimeError as exc:
            out[f"refused_{len(extra)}"] = str(exc)


def _job(rank):
    out: dict[str, object] = {}
    _step_inputs(rank, out)
    _meta_init(rank, out)
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


def test_meta_init_fills_modules_with_reset_parameters_and_keeps_real_tensors(job):
    for r in job:
        for name in ("cpu", "offload"):
            got = r[f"meta_{name}"]
            assert got["head_kept"], "the head built in __init__ was re-initialised"
            assert torch.equal(got["cpu_rope"], _inv_freq(D)), "a buffer built off meta lost its value"
            assert torch.equal(got["rope"], _inv_freq(D)), "reset_parameters() did not fill the meta buffer"
            assert torch.isfinite(torch.tensor(got["loss"]))


def test_meta_init_refuses_modules_without_reset_parameters(job):
    for r in job:
        msg = r.get("refused_1", "")
        assert "Rope own parameters or buffers on the meta device but have no reset_parameters()" in msg
        assert "define reset_parameters()" in msg and "\n" not in msg
        assert "meta-device init: Rope, Scale own" in r.get("refused_3", ""), r.get("refused_3")


def test_meta_init_on_cpu_draws_one_init_sharded_over_the_ranks(job):
    torch.manual_seed(0)
    want = {f"blocks.{k}": v for k, v in nn.Sequential(*[Block() for _ in range(3)]).state_dict().items()}
    r0, r1 = job
    for name in ("cpu", "offload"):
        got = r0[f"meta_{name}"]["blocks"]
        assert got.keys() == want.keys()
        w = got["blocks.0.fc1.weight"]
        assert not torch.equal(w[: len(w) // 2], w[len(w) // 2:]), f"{name}: every rank drew the same shard"
        assert all(torch.equal(got[k], v) for k, v in want.items()), f"{name}: not the init without FSDP"
        assert all(torch.equal(r1[f"meta_{name}"]["blocks"][k], v) for k, v in got.items())
