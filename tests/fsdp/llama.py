"""A small Llama-style model (RMSNorm, causal attention, SwiGLU MLP; fp32) for the 2-D parallel tests,
with the tensor-parallel plan both the Trainer's module and the hand-written loop apply."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import distengine as de

D, HEADS, T = 16, 4, 6


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(D, D, bias=False) for _ in range(4))

    def forward(self, x):
        b, t, _ = x.shape
        # -1 heads: under tensor parallelism each rank holds HEADS / tp of them
        q, k, v = (w(x).view(b, t, -1, D // HEADS).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w3 = nn.Linear(D, 2 * D, bias=False), nn.Linear(D, 2 * D, bias=False)
        self.w2 = nn.Linear(2 * D, D, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = nn.RMSNorm(D), Attention(), nn.RMSNorm(D), MLP()

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


PLAN = {"attn.wq": "col", "attn.wk": "col", "attn.wv": "col", "attn.wo": "row",
        "mlp.w1": "col", "mlp.w3": "col", "mlp.w2": "row"}


def parallelize(model: nn.Module, mesh) -> None:
    """Tensor parallel over ``mesh["tensor_parallel"]`` in each block, then FSDP2 over ``mesh["data_parallel"]``."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    tp, dp = mesh["tensor_parallel"], mesh["data_parallel"]
    for block in model.blocks:
        parallelize_module(block, tp, {k: ColwiseParallel() if v == "col" else RowwiseParallel()
                                       for k, v in PLAN.items()})
        fully_shard(block, mesh=dp)
    fully_shard(model, mesh=dp)


class Llama(de.Module):
    def __init__(self, n_blocks: int = 2) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(Block() for _ in range(n_blocks))
        self.norm, self.head = nn.RMSNorm(D), nn.Linear(D, 1)
        self.losses: list[float] = []

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.losses.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.01)


class ParallelLlama(Llama):
    def configure_model(self) -> None:
        parallelize(self, self.device_mesh)


def data(n: int = 32) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, T, D, generator=g)
    return torch.utils.data.TensorDataset(x, x.sum(-1, keepdim=True).sin())


def reference_losses(batch: int, steps: int, accumulate: int = 1, epochs: int = 1,
                     clip: float | None = None) -> list[float]:
    """Per-micro-batch losses of one process on the global batches (no parallelism)."""
    model = Llama()
    opt = model.configure_optimizers()
    loader = torch.utils.data.DataLoader(data(), batch_size=batch)
    losses = []
    for _ in range(epochs):
        for i, (x, y) in enumerate(loader):
            loss = F.mse_loss(model(x), y)
            losses.append(loss.item())
            (loss / accumulate).backward()
            if (i + 1) % accumulate == 0:
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
                opt.zero_grad()
    return losses[:steps]
