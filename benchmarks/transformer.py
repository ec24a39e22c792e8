"""A small transformer language model on synthetic tokens: where compute dominates.

The same per-step framework cost that is visible on the tiny MLP of ``overhead.py`` should
vanish here, because each step does far more arithmetic. Contenders (interleaved, one
process, one thread): the hand-written loop, the Trainer with logger/checkpoints/progress
off, and pytorch-lightning with the same features off when it is installed. Same seed,
same data, same number of AdamW steps; reported as a time ratio with tokens/s as context.

Run alone::

    python -m benchmarks.transformer [--rounds 5] [--quick]
"""
from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks._harness import Clock, Row, interleave, markdown_table, ratio_row
from benchmarks._work import TinyGPT, lm_loss, make_tokens
from benchmarks.overhead import fit_engine, lightning_available

BENCH = "transformer"


@dataclass(frozen=True)
class LMWork:
    vocab: int = 256
    seq_len: int = 64
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    batch_size: int = 16
    num_sequences: int = 384  # 24 steps of batch 16, one epoch
    lr: float = 1e-3
    seed: int = 0

    @property
    def steps(self) -> int:
        return -(-self.num_sequences // self.batch_size)

    @property
    def tokens(self) -> int:
        return self.num_sequences * self.seq_len

    def model(self) -> TinyGPT:
        torch.manual_seed(self.seed)
        return TinyGPT(self.vocab, self.seq_len, self.d_model, self.layers, self.heads)


QUICK = LMWork(num_sequences=128)


def run_loop(work: LMWork, data) -> Clock:
    model = work.model()
    with Clock() as clock:
        # a plain shuffled loader, whose permutation the Trainer draws alike (see overhead.run_loop)
        loader = DataLoader(data, batch_size=work.batch_size, shuffle=True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=work.lr)
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss = lm_loss(model(x), y)
            loss.backward()
            optimizer.step()
    return clock


def _lm_module(base: type, work: LMWork):
    """The LM as a module of ``base`` (distengine.Module or pl.LightningModule): same API."""

    class LM(base):
        def __init__(self) -> None:
            super().__init__()
            self.gpt = work.model()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return lm_loss(self.gpt(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=work.lr)

    return LM()


def run_trainer(work: LMWork, data) -> Clock:
    import distengine as de

    model = _lm_module(de.Module, work)
    return fit_engine(de.Trainer, model, DataLoader(data, batch_size=work.batch_size, shuffle=True),
                      max_epochs=1, defaults=False)[0]


def run_lightning(work: LMWork, data) -> Clock:
    import pytorch_lightning as pl

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)

    model = _lm_module(pl.LightningModule, work)
    return fit_engine(pl.Trainer, model, DataLoader(data, batch_size=work.batch_size, shuffle=True),
                      max_epochs=1, defaults=False)[0]


def run(rounds: int | None = None, quick: bool = False, with_lightning: bool | None = None) -> dict[str, Any]:
    """Run the transformer benchmark; return ``{"rows": [Row, ...], "details": {...}}``."""
    torch.set_num_threads(1)
    work = QUICK if quick else LMWork()
    rounds = rounds or (2 if quick else 5)
    if with_lightning is None:
        with_lightning = lightning_available()
    data = make_tokens(work.num_sequences, work.seq_len, work.vocab, seed=work.seed)
    contenders: dict[str, Callable[[], Clock]] = {
        "loop": lambda: run_loop(work, data),
        "trainer_off": lambda: run_trainer(work, data),
    }
    if with_lightning:
        contenders["lightning_off"] = lambda: run_lightning(work, data)
    clocks = interleave(contenders, rounds)
    times = {n: [c.wall for c in cs] for n, cs in clocks.items()}
    cpu = {n: [c.cpu for c in cs] for n, cs in clocks.items()}
    rows: list[Row] = []
    for name in times:
        if name == "loop":
            continue
        for label, series in (("wall", times), ("CPU time", cpu)):
            row = ratio_row(BENCH, f"fit {name} / loop ({label})", series[name], series["loop"],
                            target=1.05 if name == "trainer_off" else None, numer_name=name, denom_name="loop")
            row.context += f"; {work.tokens / statistics.median(series[name]):,.0f} tokens/s"
            rows.append(row)
    step_ms = 1e3 * statistics.median(cpu["loop"]) / work.steps
    return {"rows": rows, "details": {"work": work.__dict__ | {"steps": work.steps}, "fit_s": times,
                                      "fit_cpu_s": cpu, "loop_step_cpu_ms": step_ms}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Trainer overhead on a small transformer LM")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-lightning", action="store_true")
    args = p.parse_args(argv)
    result = run(args.rounds, args.quick, False if args.no_lightning else None)
    print(markdown_table(result["rows"]))
    print(f"hand-written loop: {result['details']['loop_step_cpu_ms']:.1f} ms/step (CPU time)")


if __name__ == "__main__":
    main()
