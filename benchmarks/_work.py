"""The benchmark workloads in plain PyTorch: no distengine import, so the hand-written
contenders (and their fresh processes for import time and memory) pay nothing for it.

``make_dataset`` and ``build_mlp`` must stay identical to those in ``examples/synthetic.py``
(a test checks equal data and equal initial weights), so that every contender does the
very same work.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import TensorDataset


def make_dataset(num_samples: int = 12_800, dim: int = 32, classes: int = 10, seed: int = 0) -> TensorDataset:
    """Gaussian inputs labelled by a fixed random linear teacher (as examples/synthetic.py)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_samples, dim, generator=gen)
    teacher = torch.randn(dim, classes, generator=gen)
    y = (x @ teacher).argmax(dim=1)
    return TensorDataset(x, y)


def build_mlp(dim: int = 32, hidden: int = 128, classes: int = 10) -> nn.Sequential:
    """The benchmark MLP (as examples/synthetic.py)."""
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, classes),
    )


def make_tokens(num_sequences: int, seq_len: int, vocab: int, seed: int = 0) -> TensorDataset:
    """Synthetic token sequences with learnable structure: each token is a fixed function of
    the previous one plus occasional noise, so a language model's loss falls below log(vocab)."""
    gen = torch.Generator().manual_seed(seed)
    successor = torch.randperm(vocab, generator=gen)
    seq = torch.empty(num_sequences, seq_len + 1, dtype=torch.int64)
    seq[:, 0] = torch.randint(vocab, (num_sequences,), generator=gen)
    noise = torch.rand(num_sequences, seq_len, generator=gen) < 0.1
    rand_tok = torch.randint(vocab, (num_sequences, seq_len), generator=gen)
    for t in range(seq_len):
        seq[:, t + 1] = torch.where(noise[:, t], rand_tok[:, t], successor[seq[:, t]])
    return TensorDataset(seq[:, :-1].contiguous(), seq[:, 1:].contiguous())


class TinyGPT(nn.Module):
    """A small decoder-only transformer LM (pre-norm, causal self-attention, learned positions).

    Example::

        model = TinyGPT(vocab=256, seq_len=64, d_model=128, layers=2, heads=4)
        logits = model(torch.randint(256, (8, 64)))      # [8, 64, 256]
    """

    def __init__(self, vocab: int, seq_len: int, d_model: int, layers: int, heads: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=4 * d_model, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq_len), persistent=False)
        self.scale = 1.0 / math.sqrt(d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        h = self.tok(tokens) + self.pos(torch.arange(t, device=tokens.device))
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
