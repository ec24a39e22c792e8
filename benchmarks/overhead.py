"""Framework overhead on a small MLP: a hand-written loop vs the Trainer vs pytorch-lightning.

The work is deliberately small (a 32-128-128-10 MLP, batch 64, in-memory data, one CPU
thread), so that per-step framework cost is visible rather than hidden behind compute.
Every contender trains the same model (same seed, so the same initial weights) on the same
data for the same number of optimizer steps; the hand-written loop is the natural PyTorch
loop (DataLoader over a TensorDataset with shuffle=True after torch.manual_seed, zero_grad, forward,
loss, backward, step). The clock covers what a user waits for: building the
DataLoader/optimizer or the Trainer, and fit.

Contenders, interleaved in this one process:

- ``loop``: the hand-written loop, the zero-overhead limit.
- ``trainer_off``: ``Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
  enable_model_summary=False)``.
- ``trainer_defaults``: the Trainer's defaults (TensorBoard logger, a checkpoint every epoch,
  model summary, progress bar into /dev/null as in a log file) and a module that calls
  ``self.log("train_loss", loss)``.
- ``lightning_off`` / ``lightning_defaults``: the same two with pytorch-lightning, when installed.

Also measured, each in fresh subprocesses: the extra cost of ``import distengine`` over
``import torch``, and peak RSS of a whole training process against the hand-written loop.

Run alone::

    python -m benchmarks.overhead [--rounds 7] [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import statistics
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmarks._harness import Clock, Row, diff_row, fresh_python, interleave, markdown_table, ratio_row
from benchmarks._work import build_mlp, make_dataset

BENCH = "overhead"


@dataclass(frozen=True)
class Work:
    num_samples: int = 12_800  # 200 steps per epoch at batch 64
    epochs: int = 2
    batch_size: int = 64
    dim: int = 32
    hidden: int = 128
    lr: float = 0.1
    seed: int = 0

    @property
    def steps(self) -> int:
        return -(-self.num_samples // self.batch_size) * self.epochs


QUICK = Work(num_samples=6_400, epochs=1)


# --------------------------------------------------------------------------- contenders
def run_loop(work: Work, data) -> tuple[Clock, nn.Module]:
    """The hand-written loop: what a PyTorch user writes without a framework."""
    torch.manual_seed(work.seed)
    model = build_mlp(work.dim, work.hidden)
    with Clock() as clock:
        # a plain shuffled loader: each epoch draws its permutation's seed from torch's global
        # generator (seeded above); the Trainer's one-process sampler draws the same ones, as
        # Lightning's RandomSampler does, so both see the same batches in the same order
        loader = DataLoader(data, batch_size=work.batch_size, shuffle=True)
        optimizer = torch.optim.SGD(model.parameters(), lr=work.lr)
        model.train()
        for _ in range(work.epochs):
            for x, y in loader:
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
    return clock, model


def _quiet():
    """Progress bars and banners go to /dev/null, like a job whose output is a log file;
    the frameworks still do all the work of producing them."""
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed by the ExitStack
    stack = contextlib.ExitStack()
    stack.callback(devnull.close)
    stack.enter_context(contextlib.redirect_stdout(devnull))
    stack.enter_context(contextlib.redirect_stderr(devnull))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def fit_engine(trainer_cls: Any, model: Any, loader: DataLoader, max_epochs: int,
               defaults: bool) -> tuple[Clock, Any]:
    """Time ``trainer_cls(...).fit(model, loader)`` on one CPU device in a throw-away root dir.

    distengine and Lightning share the Trainer API, so both contenders run through here;
    ``defaults=False`` turns off the logger, checkpointing, progress bar and model summary.
    """
    root = tempfile.mkdtemp(prefix="bench-fit-")
    flags: dict[str, Any] = {"max_epochs": max_epochs, "accelerator": "cpu", "devices": 1, "default_root_dir": root}
    if not defaults:
        flags.update(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)
    try:
        with _quiet(), Clock() as clock:
            trainer = trainer_cls(**flags)
            trainer.fit(model, loader)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return clock, trainer


def run_trainer(work: Work, data, defaults: bool) -> tuple[Clock, nn.Module]:
    import distengine as de
    from examples.synthetic import SyntheticMLP

    torch.manual_seed(work.seed)
    model = SyntheticMLP(work.dim, work.hidden, lr=work.lr, log_loss=defaults)
    clock, trainer = fit_engine(de.Trainer, model, DataLoader(data, batch_size=work.batch_size, shuffle=True),
                                max_epochs=work.epochs, defaults=defaults)
    if trainer.global_step != work.steps:
        raise RuntimeError(f"distengine ran {trainer.global_step} steps, expected {work.steps}")
    return clock, model.net


def lightning_available() -> bool:
    try:
        import pytorch_lightning  # noqa: F401
    except ImportError:
        return False
    return True


def _lightning_module(work: Work, log_loss: bool):
    import pytorch_lightning as pl

    class LitMLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_mlp(work.dim, work.hidden)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            if log_loss:
                self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=work.lr)

    return LitMLP()


def run_lightning(work: Work, data, defaults: bool) -> tuple[Clock, nn.Module]:
    import pytorch_lightning as pl

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.manual_seed(work.seed)
    model = _lightning_module(work, log_loss=defaults)
    clock, _ = fit_engine(pl.Trainer, model, DataLoader(data, batch_size=work.batch_size, shuffle=True),
                          max_epochs=work.epochs, defaults=defaults)
    return clock, model.net


def contenders(work: Work, with_lightning: bool) -> dict[str, Callable[[Any], tuple[Clock, nn.Module]]]:
    out: dict[str, Callable[[Any], tuple[Clock, nn.Module]]] = {
        "loop": lambda d: run_loop(work, d),
        "trainer_off": lambda d: run_trainer(work, d, defaults=False),
        "trainer_defaults": lambda d: run_trainer(work, d, defaults=True),
    }
    if with_lightning:
        out["lightning_off"] = lambda d: run_lightning(work, d, defaults=False)
        out["lightning_defaults"] = lambda d: run_lightning(work, d, defaults=True)
    return out


# --------------------------------------------------------------------------- fresh-process parts
_IMPORT_CHILD = """
import json, sys, time
w0, c0 = time.perf_counter(), time.process_time()
import torch
w1, c1 = time.perf_counter(), time.process_time()
with_torch = set(sys.modules)
import distengine
distengine.Trainer, distengine.Module
w2, c2 = time.perf_counter(), time.process_time()
extra = sorted({m.split('.')[0] for m in set(sys.modules) - with_torch})
print(json.dumps({"torch_s": w1 - w0, "torch_cpu": c1 - c0, "extra_s": w2 - w1, "extra_cpu": c2 - c1,
                  "extra_modules": extra}))
"""

_BARE_IMPORT_CHILD = """
import json, time
w0 = time.perf_counter()
import distengine
print(json.dumps({"s": time.perf_counter() - w0}))
"""

# Peak RSS from /proc (VmHWM, the high-water mark of this process image), not getrusage:
# ru_maxrss survives exec on Linux, so a child started by a big parent would report the
# parent's size.
_RSS_CHILD = """
import json, torch
torch.set_num_threads(1)
from benchmarks.overhead import Work, contenders, make_dataset
work = Work(**{work})
data = make_dataset(work.num_samples, work.dim, seed=work.seed)
contenders(work, with_lightning=True)[{name!r}](data)
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(json.dumps({{"peak_rss_kb": int(hwm.split()[1])}}))
"""


def measure_import(rounds: int) -> tuple[list[Row], dict[str, Any]]:
    """What ``import distengine`` (+ ``Trainer``, ``Module``) adds to ``import torch``.

    Measured inside one fresh interpreter per round: import torch, then time distengine on
    top. The difference of two separate fresh imports would be the same quantity, but on a
    busy machine it drowns in the noise of torch's own multi-second import.
    """
    recs = [fresh_python(_IMPORT_CHILD) for _ in range(rounds)]
    bare = [fresh_python(_BARE_IMPORT_CHILD)["s"] for _ in range(rounds)]
    extra_s = [r["extra_s"] for r in recs]
    extra_cpu = [r["extra_cpu"] for r in recs]
    torch_s = [r["torch_s"] for r in recs]
    modules = sorted({m for r in recs for m in r["extra_modules"]})
    row = Row(BENCH, "import distengine + Trainer, Module on top of torch", statistics.median(extra_s),
              min(extra_s), max(extra_s), "s", 0.15, context=(
                  f"CPU median {statistics.median(extra_cpu):.3f} s; import torch itself median "
                  f"{statistics.median(torch_s):.2f} s; new top-level modules: {', '.join(modules) or 'none'}"),
              rounds=rounds)
    bare_row = Row(BENCH, "bare import distengine (lazy; no torch)", statistics.median(bare), min(bare),
                   max(bare), "s", 0.15, rounds=rounds)
    return [row, bare_row], {"import": recs, "bare_import_s": bare}


def measure_rss(work: Work, rounds: int, with_lightning: bool) -> tuple[list[Row], dict[str, Any]]:
    """Peak RSS of one whole training process per contender (fresh interpreter each)."""
    names = ["loop", "trainer_off", "trainer_defaults"] + (["lightning_defaults"] if with_lightning else [])
    work_kwargs = {k: getattr(work, k) for k in Work.__dataclass_fields__}

    def child(name: str) -> Callable[[], float]:
        return lambda: fresh_python(_RSS_CHILD.format(work=work_kwargs, name=name))["peak_rss_kb"] / 1024

    mb = interleave({n: child(n) for n in names}, rounds, warmup=0)
    rows = [diff_row(BENCH, f"peak RSS {n} - loop", mb[n], mb["loop"], unit="MB",
                     target=50.0 if n.startswith("trainer") else None)
            for n in names[1:]]
    return rows, {"peak_rss_mb": mb}


# --------------------------------------------------------------------------- entry points
def run(rounds: int | None = None, quick: bool = False, with_lightning: bool | None = None,
        parts: tuple[str, ...] = ("fit", "import", "rss")) -> dict[str, Any]:
    """Run the overhead benchmark; return ``{"rows": [Row, ...], "details": {...}}``.

    Example::

        result = run(rounds=3, quick=True)
        print(markdown_table(result["rows"]))
    """
    torch.set_num_threads(1)
    work = QUICK if quick else Work()
    rounds = rounds or (3 if quick else 9)
    if with_lightning is None:
        with_lightning = lightning_available()
    rows: list[Row] = []
    details: dict[str, Any] = {"work": work.__dict__ | {"steps": work.steps}, "lightning": with_lightning}

    if "fit" in parts:
        data = make_dataset(work.num_samples, work.dim, seed=work.seed)
        finals: dict[str, nn.Module] = {}

        def wrap(name: str, fn: Callable[[Any], tuple[Clock, nn.Module]]) -> Callable[[], Clock]:
            def go() -> Clock:
                clock, model = fn(data)
                finals[name] = model
                return clock
            return go

        clocks = interleave({n: wrap(n, f) for n, f in contenders(work, with_lightning).items()}, rounds)
        times = {n: [c.wall for c in cs] for n, cs in clocks.items()}
        cpu = {n: [c.cpu for c in cs] for n, cs in clocks.items()}
        targets = {"trainer_off": 1.05, "trainer_defaults": 1.10}
        for name in times:
            if name != "loop":
                rows.append(ratio_row(BENCH, f"fit {name} / loop (wall)", times[name], times["loop"],
                                      target=targets.get(name), numer_name=name, denom_name="loop"))
                rows.append(ratio_row(BENCH, f"fit {name} / loop (CPU time)", cpu[name], cpu["loop"],
                                      target=targets.get(name), numer_name=name, denom_name="loop"))
        # Same init, data order and step count should give the very same weights; if not,
        # the contenders did not do the same work and the ratio means less.
        ref = finals["loop"].state_dict()
        details["weights_equal_loop"] = {
            n: all(torch.equal(ref[k], v) for k, v in m.state_dict().items()) for n, m in finals.items()}
        details["fit_s"] = times
        details["fit_cpu_s"] = cpu
        # per-step framework cost in CPU time: the figure to compare with a profile
        details["per_step_overhead_cpu_ms"] = {
            n: 1e3 * (statistics.median(cpu[n]) - statistics.median(cpu["loop"])) / work.steps
            for n in cpu if n != "loop"}
    if "import" in parts:
        r, d = measure_import(min(rounds, 5))
        rows += r
        details.update(d)
    if "rss" in parts:
        r, d = measure_rss(work, max(2, rounds // 2), with_lightning)
        rows += r
        details.update(d)
    return {"rows": rows, "details": details}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Framework overhead on a small MLP")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-lightning", action="store_true")
    p.add_argument("--parts", default="fit,import,rss", help="comma list of fit, import, rss")
    args = p.parse_args(argv)
    result = run(args.rounds, args.quick, False if args.no_lightning else None, tuple(args.parts.split(",")))
    print(markdown_table(result["rows"]))
    print({k: v for k, v in result["details"].items() if k in ("weights_equal_loop", "per_step_overhead_cpu_ms")})


if __name__ == "__main__":
    main()
