"""The model parallel benchmark's workload in plain PyTorch (no distengine import): the Llama-style
model of tests/fsdp/llama.py (RMSNorm, causal attention, SwiGLU MLP; fp32) at a chosen width,
its tensor-parallel plan, and the data (a regression on random inputs, as in the tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

#: "full": 4.2M parameters; "quick": a smoke run
SIZES: dict[str, dict[str, int]] = {
    "full": {"dim": 256, "heads": 8, "blocks": 4, "seq_len": 32},
    "quick": {"dim": 32, "heads": 4, "blocks": 2, "seq_len": 8},
}
LR = 1e-3
PLAN = {"attn.wq": "col", "attn.wk": "col", "attn.wv": "col", "attn.wo": "row",
        "mlp.w1": "col", "mlp.w3": "col", "mlp.w2": "row"}


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.head_dim = dim // heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(dim, dim, bias=False) for _ in range(4))

    def forward(self, x):
        b, t, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds heads / tp of them
        q, k, v = (w(x).view(b, t, -1, self.head_dim).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w1, self.w3 = nn.Linear(dim, 4 * dim, bias=False), nn.Linear(dim, 4 * dim, bias=False)
        self.w2 = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.RMSNorm(dim), Attention(dim, heads)
        self.norm2, self.mlp = nn.RMSNorm(dim), MLP(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LlamaNet(nn.Module):
    """Blocks, a final norm and a linear head to one output per token (seeded: every contender starts equal)."""

    def __init__(self, dim: int, heads: int, blocks: int, seq_len: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(blocks))
        self.norm, self.head = nn.RMSNorm(dim), nn.Linear(dim, 1)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def parallelize(model: nn.Module, mesh) -> None:
    """Tensor parallel over ``mesh["tensor_parallel"]`` in each block, then FSDP2 over
    ``mesh["data_parallel"]``: each block its own unit, then the root."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp, dp = mesh["tensor_parallel"], mesh["data_parallel"]
    for block in model.blocks:
        parallelize_module(block, tp, {k: ColwiseParallel() if v == "col" else RowwiseParallel()
                                       for k, v in PLAN.items()})
        fully_shard(block, mesh=dp)
    fully_shard(model, mesh=dp)


@dataclass
class Work:
    """What every contender trains: the size, the batch per data-parallel group, the steps."""

    size: str = "full"
    batch: int = 4            # per data-parallel group (TP x DP: 2 groups; FSDP over 4: batch / 2 a rank)
    dp: int = 2               # data-parallel groups of the TP x DP layout
    steps: int = 6
    warm: int = 2             # steps before the clock starts

    @property
    def cfg(self) -> dict[str, int]:
        return SIZES[self.size]

    def data(self) -> TensorDataset:
        """One epoch is exactly ``steps`` global batches."""
        g = torch.Generator().manual_seed(1)
        x = torch.randn(self.batch * self.dp * self.steps, self.cfg["seq_len"], self.cfg["dim"], generator=g)
        return TensorDataset(x, x.sum(-1, keepdim=True).sin())

    def model(self) -> LlamaNet:
        return LlamaNet(**self.cfg)
