"""GPU check: the Trainer on a real NVIDIA device, one PASS/FAIL/SKIP line per check.

Checks (all on ``cuda:0``; with ``--dry-run-cpu`` the same code runs on the CPU, tiny, and
the speed/memory targets are reported but not judged):

- ``precision-32``, ``precision-16-mixed``, ``precision-bf16-mixed``: a transformer LM
  trained by a hand-written loop, by the Trainer and by pytorch-lightning (when installed),
  interleaved: loss parity step by step, steady-state tokens/s ratio (target >= 0.98) and
  ``torch.cuda.max_memory_allocated`` ratio (<= 1.02) against the loop. 16-mixed also runs
  the Trainer with a fused AdamW (no per-step sync in ``GradScaler.step``).
- ``sync-free``: GPU->CPU syncs per training step counted with ``torch.cuda.set_sync_debug_mode``
  (Trainer and loop, bf16/16-mixed, fused or not, ``on_nonfinite_loss="skip"``); a NaN loss
  raises the documented error naming its step; fp16 skipped steps are counted.
- ``launch-nccl``: ``distengine launch --gpus 1`` runs this file as a child that trains on
  CUDA and all-reduces over NCCL.
- ``compile``: ``Trainer(compile=True)`` trains, dynamo captured graphs, the weights match eager.
- ``device-stats``: ``DeviceStatsMonitor`` logs GPU utilisation and memory read through NVML.
- ``checkpoint-resume``: train, save, resume in a new Trainer; the result equals one
  uninterrupted run and the resumed parameters live on the GPU.
- ``sigkill-resume``: the exact-resume-after-SIGKILL test matrix at 1 rank, on the GPU.
- ``async-checkpoint``: a ~1B-parameter model on the GPU: time an async save blocks training
  against a synchronous save (<= 10%), and the file loads back ``torch.equal``.
- ``fsdp1-*`` (benchmarks/_gpu_fsdp1.py): FSDP2 on ONE GPU, ``Trainer(strategy="fsdp")`` in this
  process on a mesh of 1 through its own process-group set-up: bf16 against a hand-written
  ``fully_shard`` loop (loss, tokens/s >= 0.95x, peak memory <= 1.05x, 0 syncs/step), fp32
  targets under bf16, a skipped fp16 inf step (syncs 1 unfused, 0 fused), clipping, one
  reduction per accumulation window, activation checkpointing (peak <= 0.7x), meta init with a
  RoPE buffer, cpu_offload (pinned shards), sharded save -> FSDP / one process / consolidate
  (``torch.equal``), three async sharded saves of a 1B model (<= 10% of a sync save), predict
  memory flat. SKIP while the Trainer refuses one rank.
- ``mp1-tp-fsdp`` (benchmarks/_gpu_mp.py): ``ModelParallelStrategy(1, 1)`` on ONE GPU, a Llama-style
  model parallelizing itself (TP plan + ``fully_shard``): fp32 losses equal a hand-written loop with
  the same plan within 1e-5, bf16-mixed losses finite; prints what needs 2+ GPUs (TP > 1, HSDP replicas).
- ``fsdp-bf16-mixed``, ``fsdp-act-ckpt``: ``Trainer(strategy="fsdp")`` against a hand-written
  ``fully_shard`` loop (and DDP) on 2 ranks, one per GPU (SKIP with one GPU), bf16, the second
  with activation checkpointing: losses, step time, peak memory, sharded saves
  (benchmarks/_gpu_fsdp.py).

Time: about 8 minutes on one H100 (estimated: the H200 run's 6.3 minutes with 3 precision
rounds, the precision checks 1.15x slower on an H100's memory bandwidth and now 2 timed rounds,
about 40 s for the small fsdp1 checks, 30 s for fsdp1-bf16 and 50 s for fsdp1-async-ckpt, whose
5 writes of 4 GiB go at the disk's speed: 9 s per 4 GiB on the H200 machine). The new, never yet
run checks come before the long precision rounds, so a run stopped by a time limit has them.

Results go to ``$OUT/gpu_check.json`` when ``OUT`` is set, else ``benchmarks/results/``.
Usually started through ``benchmarks/gpu_check.sh``, which finds a CUDA-enabled Python.

    python benchmarks/gpu_check.py [--dry-run-cpu] [--only precision-32,compile] [--rounds 5]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import gc
import json
import logging
import math
import os
import socket
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402  (after the sys.path line: runnable as a plain script)
from torch.utils.data import DataLoader  # noqa: E402

from benchmarks._work import TinyGPT, lm_loss, make_tokens  # noqa: E402

# quick checks first, so a run stopped by a time limit still has them, then the one-GPU FSDP
# checks (new, never run on a GPU yet), then the long precision rounds; compile is the slowest
# the one-GPU FSDP2 checks (benchmarks/_gpu_fsdp1.py), their 1B async saves last among them
FSDP1_CHECKS = ("fsdp1-target-dtype", "fsdp1-meta-init", "fsdp1-clip", "fsdp1-accumulate", "fsdp1-cpu-offload",
                "fsdp1-sharded-ckpt", "fsdp1-predict-memory", "fsdp1-16-mixed-inf", "fsdp1-act-ckpt", "fsdp1-bf16",
                "fsdp1-async-ckpt")
CHECKS = ("launch-nccl", "device-stats", "checkpoint-resume", "sync-free", *FSDP1_CHECKS, "mp1-tp-fsdp", "precision-32",
          "precision-16-mixed", "precision-bf16-mixed", "sigkill-resume", "async-checkpoint", "fsdp-bf16-mixed",
          "fsdp-act-ckpt", "compile")
PRECISION_TOL = {"32-true": 1e-3, "16-mixed": 2e-2, "bf16-mixed": 2e-2}  # mean relative loss diff
Result = tuple[bool | None, str, dict]  # ok (None: skipped), message, data


class Setup:
    """Device and sizes: an H100-sized transformer on CUDA, a toy one on the CPU dry run."""

    def __init__(self, dry_run: bool, rounds: int | None, batch: int | None = None) -> None:
        self.dry_run = dry_run
        self.device = torch.device("cpu") if dry_run else torch.device("cuda", 0)
        self.accelerator = "cpu" if dry_run else "gpu"
        if dry_run:
            self.lm = {"vocab": 128, "seq_len": 32, "d_model": 64, "layers": 1, "heads": 2}
            self.batch, self.steps, self.warm, self.rounds = 8, 8, 2, rounds or 1
        else:
            self.lm = {"vocab": 8192, "seq_len": 256, "d_model": 512, "layers": 6, "heads": 8}
            # 2 timed rounds (3 before the fsdp1 checks came; --rounds 3): the whole check in 8 minutes
            self.batch, self.steps, self.warm, self.rounds = 32, 100, 20, rounds or 2
        self.fixed_batch = batch

    def for_precision(self, precision: str) -> Setup:
        """This set-up with the LM batch for ``precision``. In mixed precision a batch of 32 leaves
        an H200 waiting for the Python that launches its kernels, so wall time measures the host's
        jitter (the loop alone varied by 20% between rounds); 128 makes the GPU the bottleneck,
        as in real training. float32 is GPU-bound at 32 already."""
        import copy

        out = copy.copy(self)
        if self.fixed_batch:
            out.batch = self.fixed_batch
        elif not self.dry_run and precision != "32-true":
            out.batch = 128
        return out

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def model(self) -> TinyGPT:
        torch.manual_seed(0)
        return TinyGPT(**self.lm)

    def data(self, steps: int | None = None):
        return make_tokens(self.batch * (steps or self.steps), self.lm["seq_len"], self.lm["vocab"], seed=0)


class StepClock:
    """Steady-state wall time: from the start of batch ``warm`` to the end of training, with
    the GPU synchronised at both ends, the same for every contender (set-up, the first
    steps' kernel selection and autocast caches stay outside)."""

    def __init__(self, s: Setup) -> None:
        self.s, self.start, self.end = s, math.nan, math.nan
        self.cpu_start = self.cpu_end = math.nan

    def batch_start(self, batch_idx: int) -> None:
        if batch_idx == self.s.warm:
            self.s.sync()
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def done(self) -> None:
        self.s.sync()
        self.end, self.cpu_end = time.perf_counter(), time.process_time()

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def cpu_seconds(self) -> float:
        """CPU time of the process (all its threads) over the same steps: the framework's own
        per-step cost, free of the GPU's clock changes."""
        return self.cpu_end - self.cpu_start


def clock_callback(base: type, clock: StepClock) -> Any:
    """A callback of ``base`` (distengine's or Lightning's: same hook names) driving ``clock``."""

    class Clocked(base):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            clock.batch_start(batch_idx)

        def on_train_end(self, trainer, module):
            clock.done()

    return Clocked()


def lm_module(base: type, s: Setup, losses: list, fused: bool = False, bad_at: int | None = None,
              bad: float = math.nan) -> Any:
    """The LM as a module of ``base`` (distengine.Module or pl.LightningModule)."""

    class LM(base):
        def __init__(self) -> None:
            super().__init__()
            self.gpt = s.model()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = lm_loss(self.gpt(x), y)
            if batch_idx == bad_at:
                loss = loss * bad
            losses.append(loss.detach())
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3, fused=True if fused else None)

    return LM()


def framework(kind: str) -> tuple[type, type, type]:
    """(module base, callback base, Trainer) of distengine or pytorch-lightning."""
    if kind == "lightning":
        import pytorch_lightning as pl

        for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
            logging.getLogger(name).setLevel(logging.ERROR)
        return pl.LightningModule, pl.Callback, pl.Trainer
    import distengine as de
    from distengine.callbacks import Callback

    return de.Module, Callback, de.Trainer


def engine_fit(kind: str, s: Setup, precision: str, data, losses: list, fused: bool = False,
               bad_at: int | None = None, bad: float = math.nan, **flags: Any) -> tuple[StepClock, Any]:
    """Fit the LM with the distengine or Lightning Trainer; (its steady-state clock, trainer)."""
    base, cb_base, trainer_cls = framework(kind)
    clock = StepClock(s)
    module = lm_module(base, s, losses, fused, bad_at, bad)
    kw: dict[str, Any] = {"max_epochs": 1, "accelerator": s.accelerator, "devices": 1, "precision": precision,
                          "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                          "enable_model_summary": False, "num_sanity_val_steps": 0,
                          "default_root_dir": tempfile.mkdtemp(prefix="gpucheck-"),
                          "callbacks": [clock_callback(cb_base, clock)]}
    kw.update(flags)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and tensor cores ...
        warnings.filterwarnings("always", message=".*synchroniz")  # ... but never count_syncs' reports
        trainer = trainer_cls(**kw)
        trainer.fit(module, DataLoader(data, batch_size=s.batch, shuffle=False))
    return clock, trainer


def _autocast(s: Setup, precision: str):
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    return torch.autocast(s.device.type, dtype=dtype) if dtype else torch.autocast(s.device.type, enabled=False)


def loop_run(s: Setup, precision: str, data, losses: list, fused: bool = False) -> StepClock:
    """The hand-written mixed-precision loop (GradScaler for float16); its steady-state clock."""
    model = s.model().to(s.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True if fused else None)
    scaler = torch.amp.GradScaler(s.device.type) if precision == "16-mixed" else None
    clock = StepClock(s)
    for i, (x, y) in enumerate(DataLoader(data, batch_size=s.batch, shuffle=False)):
        clock.batch_start(i)
        x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(s, precision):
            loss = lm_loss(model(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        losses.append(loss.detach())
    clock.done()
    return clock


def lightning_installed() -> bool:
    try:
        import pytorch_lightning  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- precision
def check_precision(s: Setup, precision: str) -> Result:
    s = s.for_precision(precision)
    data = s.data()
    runners: dict[str, Callable[[list], StepClock]] = {
        "loop": lambda got: loop_run(s, precision, data, got),
        "trainer": lambda got: engine_fit("distengine", s, precision, data, got)[0],
    }
    if precision == "16-mixed":
        runners["trainer_fused"] = lambda got: engine_fit("distengine", s, precision, data, got, fused=True)[0]
    if lightning_installed():
        runners["lightning"] = lambda got: engine_fit("lightning", s, precision, data, got)[0]
    times: dict[str, list[float]] = {n: [] for n in runners}
    cpu: dict[str, list[float]] = {n: [] for n in runners}
    mem: dict[str, list[float]] = {n: [] for n in runners}
    losses: dict[str, list[float]] = {}
    names = list(runners)
    for r in range(-1, s.rounds):  # round -1 warms up kernels, cuBLAS handles and autocast caches
        order = names[r % len(names):] + names[:r % len(names)]  # each contender leads a round
        for name in order:
            if not s.dry_run:  # a collection before each measured run; the CPU dry run judges no
                gc.collect()   # time or memory, and in a large test process one takes up to 1 s
            if s.device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            got: list = []
            clock = runners[name](got)
            if r < 0:
                continue
            times[name].append(clock.seconds)
            cpu[name].append(clock.cpu_seconds)
            if s.device.type == "cuda":
                mem[name].append(torch.cuda.max_memory_allocated() - base)
            losses.setdefault(name, [float(v) for v in got])
    ref = losses["loop"]
    tokens = s.batch * (s.steps - s.warm) * s.lm["seq_len"]
    out: dict[str, Any] = {"batch": s.batch, "loss_first": ref[0], "loss_last": {n: v[-1] for n, v in losses.items()},
                           "tokens_per_s": {n: tokens / statistics.median(t) for n, t in times.items()},
                           "seconds": times, "cpu_seconds": cpu}
    ok, parts = True, []
    for name in names[1:]:
        got = losses[name]
        if len(got) != len(ref):
            return False, f"step counts differ: loop {len(ref)}, {name} {len(got)}", out
        rel = sum(abs(x - y) / max(abs(x), 1e-8) for x, y in zip(ref, got)) / len(ref)
        thr = statistics.median(lt / nt for lt, nt in zip(times["loop"], times[name]))
        cpu_ratio = statistics.median(nc / lc for lc, nc in zip(cpu["loop"], cpu[name]))
        out[name] = {"loss_mean_rel_diff": rel, "tokens_per_s_ratio": thr, "cpu_time_ratio": cpu_ratio,
                     "tokens_per_s_ratio_all": [lt / nt for lt, nt in zip(times["loop"], times[name])]}
        part = f"{name}: loss diff {rel:.1e}, tokens/s x{thr:.3f}, CPU time x{cpu_ratio:.3f}"
        if mem["loop"]:
            mratio = max(t / max(lp, 1) for t, lp in zip(mem[name], mem["loop"]))
            out[name]["memory_ratio"] = mratio
            out[name]["peak_memory_mb"] = max(mem[name]) / 2**20
            part += f", peak mem x{mratio:.3f}"
        parts.append(part)
        if name == "lightning":
            continue  # reported, not judged
        ok = ok and rel <= PRECISION_TOL[precision] and all(math.isfinite(v) for v in got)
        if not s.dry_run and name == "trainer":
            ok = ok and thr >= 0.98 and out[name].get("memory_ratio", 0) <= 1.02
    if mem["loop"]:
        out["peak_memory_mb_loop"] = max(mem["loop"]) / 2**20
    msg = (f"batch {s.batch}, vs loop ({out['tokens_per_s']['loop']:,.0f} tokens/s): " + "; ".join(parts)
           + f" [targets for trainer: loss diff <= {PRECISION_TOL[precision]:g}, tokens/s >= 0.98, mem <= 1.02]")
    if not lightning_installed():
        msg += " [pytorch-lightning not installed: no Lightning figures]"
    if s.dry_run:
        msg += " [dry run: speed and memory not judged]"
    return ok, msg, out


# --------------------------------------------------------------------------- syncs
def count_syncs(fn: Callable[[], Any]) -> tuple[int, Any]:
    """(GPU->CPU synchronisations torch reports while ``fn`` runs, fn's result or exception)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result: Any = fn()
        except Exception as exc:  # noqa: BLE001 - the NaN case expects one
            result = exc
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught), result


def syncs_per_step(s: Setup, run: Callable[[int], Any], short: int = 10, long: int = 30) -> float:
    """Syncs per training step: the difference between a ``long`` and a ``short`` run, so the
    one-off syncs of set-up and the epoch end cancel out."""
    a, _ = count_syncs(lambda: run(short))
    b, _ = count_syncs(lambda: run(long))
    return (b - a) / (long - short)


def check_sync_free(s: Setup) -> Result:
    if s.dry_run:
        return None, "needs CUDA (torch.cuda.set_sync_debug_mode) [dry run]", {}
    from benchmarks._gpu_extra import MemoryLogger

    data = s.data(30)
    quiet = {"log_every_n_steps": 1000}

    def trainer(precision: str, fused: bool = False, **kw: Any) -> Callable[[int], Any]:
        return lambda n: engine_fit("distengine", s, precision, data, [], fused=fused, limit_train_batches=n,
                                    **quiet, **kw)

    def loop(precision: str, fused: bool = False) -> Callable[[int], Any]:
        return lambda n: loop_run(s, precision, make_tokens(s.batch * n, s.lm["seq_len"], s.lm["vocab"]), [],
                                  fused=fused)

    per_step = {
        "loop bf16-mixed": syncs_per_step(s, loop("bf16-mixed")),
        "trainer bf16-mixed": syncs_per_step(s, trainer("bf16-mixed")),
        "loop 16-mixed": syncs_per_step(s, loop("16-mixed")),
        "trainer 16-mixed": syncs_per_step(s, trainer("16-mixed")),
        "trainer 16-mixed fused AdamW": syncs_per_step(s, trainer("16-mixed", fused=True)),
        "trainer 32-true skip fused AdamW": syncs_per_step(s, trainer("32-true", True, on_nonfinite_loss="skip")),
        "trainer 32-true skip AdamW": syncs_per_step(s, trainer("32-true", on_nonfinite_loss="skip")),
    }
    must_be_zero = ["trainer bf16-mixed", "trainer 16-mixed fused AdamW", "trainer 32-true skip fused AdamW"]
    ok = all(per_step[k] == 0 for k in must_be_zero)
    # a NaN at batch 3 with metrics written every 8 steps: the error names step 3, at step <= 8
    mem = MemoryLogger()
    nan_syncs, err = count_syncs(lambda: engine_fit(
        "distengine", s, "bf16-mixed", data, [], bad_at=3, limit_train_batches=20, log_every_n_steps=8,
        logger=mem.logger))
    nan_ok = isinstance(err, FloatingPointError) and "global step 3" in str(err)
    # fp16: an infinite loss at batch 3 adds exactly one skipped step to GradScaler's own
    counts = []
    for bad_at in (None, 3):
        mem16 = MemoryLogger()
        engine_fit("distengine", s, "16-mixed", data, [], bad_at=bad_at, bad=math.inf, limit_train_batches=12,
                   log_every_n_steps=4, logger=mem16.logger)
        counts.append([m["skipped_steps"] for _, m in mem16.logger.rows if "skipped_steps" in m][-1])
    skip_ok = counts[1] - counts[0] == 1
    ok = ok and nan_ok and skip_ok
    table = ", ".join(f"{k} {v:g}" for k, v in per_step.items())
    msg = (f"syncs/step: {table} (must be 0: {', '.join(must_be_zero)}); NaN at step 3 -> "
           f"{type(err).__name__}: {str(err)[:80]!r} ({nan_syncs} syncs in 8 steps); "
           f"fp16 skipped steps {counts[0]:g} clean vs {counts[1]:g} with one inf loss")
    return ok, msg, {"syncs_per_step": per_step, "nan_error": str(err), "nan_run_syncs": nan_syncs,
                     "fp16_skipped": counts}


# --------------------------------------------------------------------------- main
def run_checks(s: Setup, names: list[str], save: Callable[[list], None] = lambda r: None) -> list[dict[str, Any]]:
    from benchmarks import _gpu_extra as extra
    from benchmarks import _gpu_fsdp, _gpu_fsdp1, _gpu_mp

    table: dict[str, Callable[[], Result]] = {
        "precision-32": lambda: check_precision(s, "32-true"),
        "precision-16-mixed": lambda: check_precision(s, "16-mixed"),
        "precision-bf16-mixed": lambda: check_precision(s, "bf16-mixed"),
        "sync-free": lambda: check_sync_free(s),
        "launch-nccl": lambda: extra.check_launch(s),
        "compile": lambda: extra.check_compile(s),
        "device-stats": lambda: extra.check_device_stats(s),
        "checkpoint-resume": lambda: extra.check_checkpoint(s),
        "sigkill-resume": lambda: extra.check_sigkill_resume(s),
        "async-checkpoint": lambda: extra.check_async_checkpoint(s),
        "fsdp-bf16-mixed": lambda: _gpu_fsdp.check_fsdp(s, act_ckpt=False),
        "fsdp-act-ckpt": lambda: _gpu_fsdp.check_fsdp(s, act_ckpt=True),
        "mp1-tp-fsdp": lambda: _gpu_mp.check_mp1(s),
    }
    table.update({name: functools.partial(_gpu_fsdp1.CHECKS[name], s) for name in FSDP1_CHECKS})
    results = []
    for name in names:
        start = time.perf_counter()
        try:
            ok, msg, data = table[name]()
        except Exception as exc:  # noqa: BLE001 - a crashing check is a FAIL line, the rest still run
            ok, msg, data = False, f"{type(exc).__name__}: {exc}", {"traceback": traceback.format_exc()}
        seconds = time.perf_counter() - start
        word = "SKIP" if ok is None else "PASS" if ok else "FAIL"
        print(f"{word} {name}: {msg} [{seconds:.1f} s]", flush=True)
        results.append({"check": name, "ok": ok, "message": msg, "seconds": seconds, "data": data})
        save(results)  # after every check: a run stopped by a time limit keeps what it measured
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Check the Trainer on a real NVIDIA GPU")
    p.add_argument("--dry-run-cpu", action="store_true", help="run the same code paths on the CPU, tiny")
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma list of {', '.join(CHECKS)}")
    p.add_argument("--skip", default="", help="comma list of checks to leave out")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per precision")
    p.add_argument("--batch", type=int, default=None,
                   help="LM batch size for every precision (default: 32 in float32, 128 mixed; 8 on the dry run)")
    p.add_argument("--out", default=None, help="results folder (default: $OUT, else benchmarks/results)")
    p.add_argument("--child-launch", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(1 if args.dry_run_cpu else min(4, os.cpu_count() or 1))
    if args.child_launch:
        from benchmarks._gpu_extra import launch_child

        launch_child(args.child_launch, args.dry_run_cpu)
        return 0
    names = [n for n in args.only.split(",") if n and n not in args.skip.split(",")]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        p.error(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    if not args.dry_run_cpu and not torch.cuda.is_available():
        print(f"FAIL setup: torch {torch.__version__} at {sys.executable} sees no CUDA device; "
              "run on a GPU machine or pass --dry-run-cpu", flush=True)
        return 1
    s = Setup(args.dry_run_cpu, args.rounds, args.batch)
    device_name = torch.cuda.get_device_name(0) if not s.dry_run else "cpu (dry run)"
    print(f"gpu_check on {device_name}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"python {sys.version.split()[0]} at {sys.executable}", flush=True)
    out_dir = args.out or os.environ.get("OUT") or os.path.join(REPO_ROOT, "benchmarks", "results")
    os.makedirs(out_dir, exist_ok=True)
    name = "gpu_check.json" if (args.out or os.environ.get("OUT")) else \
        f"gpu_check-{socket.gethostname()}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    start = time.perf_counter()

    def save(results: list) -> None:
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump({"device": device_name, "torch": torch.__version__, "dry_run": s.dry_run,
                       "cuda": torch.version.cuda, "python": sys.version.split()[0],
                       "seconds": time.perf_counter() - start,
                       "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       "checks": results}, f, indent=1, default=str)

    results = run_checks(s, names, save)
    total = time.perf_counter() - start
    failed = [r["check"] for r in results if r["ok"] is False]
    skipped = [r["check"] for r in results if r["ok"] is None]
    print(f"{'FAIL' if failed else 'PASS'} all: {len(results) - len(failed) - len(skipped)} passed, "
          f"{len(failed)} failed, {len(skipped)} skipped in {total:.0f} s", flush=True)
    print(f"wrote {os.path.join(out_dir, name)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
