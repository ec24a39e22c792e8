"""GPU check: the Trainer on a real NVIDIA device, one PASS/FAIL line per check.

Checks (all on ``cuda:0``; with ``--dry-run-cpu`` the same code runs on the CPU, tiny, and
the speed/memory targets are reported but not judged):

- ``precision-32``, ``precision-16-mixed``, ``precision-bf16-mixed``: a transformer LM
  trained by a hand-written loop and by the Trainer, interleaved: loss parity step by step,
  tokens/s ratio (target >= 0.98) and ``torch.cuda.max_memory_allocated`` ratio (<= 1.02).
- ``launch-nccl``: ``distengine launch --gpus 1`` runs this file as a child that trains on
  CUDA and all-reduces over NCCL.
- ``compile``: ``Trainer(compile=True)`` trains, dynamo captured graphs, the loss matches eager.
- ``device-stats``: ``DeviceStatsMonitor`` logs GPU figures read through NVML.
- ``checkpoint-resume``: train, save, resume in a new Trainer; the result equals one
  uninterrupted run and the resumed parameters live on the GPU.

Results go to ``$OUT/gpu_check.json`` when ``OUT`` is set, else ``benchmarks/results/``.
Usually started through ``benchmarks/gpu_check.sh``, which finds a CUDA-enabled Python.

    python benchmarks/gpu_check.py [--dry-run-cpu] [--only precision-32,compile] [--rounds 5]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402  (after the sys.path line: runnable as a plain script)
from torch.utils.data import DataLoader  # noqa: E402

from benchmarks._work import TinyGPT, lm_loss, make_dataset, make_tokens  # noqa: E402

CHECKS = ("precision-32", "precision-16-mixed", "precision-bf16-mixed", "launch-nccl", "compile",
          "device-stats", "checkpoint-resume")
PRECISION_TOL = {"32-true": 1e-3, "16-mixed": 2e-2, "bf16-mixed": 2e-2}  # mean relative loss diff


class Setup:
    """Device and sizes: an H100-sized transformer on CUDA, a toy one on the CPU dry run."""

    def __init__(self, dry_run: bool, rounds: int | None) -> None:
        self.dry_run = dry_run
        self.device = torch.device("cpu") if dry_run else torch.device("cuda", 0)
        self.accelerator = "cpu" if dry_run else "gpu"
        if dry_run:
            self.lm = {"vocab": 128, "seq_len": 32, "d_model": 64, "layers": 1, "heads": 2}
            self.batch, self.steps, self.rounds = 8, 6, rounds or 1
        else:
            self.lm = {"vocab": 8192, "seq_len": 256, "d_model": 512, "layers": 6, "heads": 8}
            self.batch, self.steps, self.rounds = 32, 80, rounds or 5

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def model(self) -> TinyGPT:
        torch.manual_seed(0)
        return TinyGPT(**self.lm)

    def data(self):
        return make_tokens(self.batch * self.steps, self.lm["seq_len"], self.lm["vocab"], seed=0)


class MemoryLogger:
    """An in-memory logger for checks that read what the Trainer logged."""

    def __init__(self) -> None:
        from distengine.loggers.base import Logger

        class _L(Logger):
            def __init__(self) -> None:
                self.rows: list[tuple[int, dict[str, float]]] = []

            def log_metrics(self, metrics, step):
                self.rows.append((step, dict(metrics)))

        self.logger = _L()


# --------------------------------------------------------------------------- precision
def _autocast(s: Setup, precision: str):
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    return torch.autocast(s.device.type, dtype=dtype) if dtype else torch.autocast(s.device.type, enabled=False)


def loop_run(s: Setup, precision: str, data, losses: list) -> float:
    """The hand-written mixed-precision loop (GradScaler for float16)."""
    model = s.model()
    scaler = torch.amp.GradScaler(s.device.type) if precision == "16-mixed" else None
    s.sync()
    start = time.perf_counter()
    model.to(s.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for x, y in DataLoader(data, batch_size=s.batch, shuffle=False):
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
    s.sync()
    return time.perf_counter() - start


def trainer_run(s: Setup, precision: str, data, losses: list) -> float:
    import distengine as de

    class LM(de.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gpt = s.model()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = lm_loss(self.gpt(x), y)
            losses.append(loss.detach())
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    model = LM()
    s.sync()
    start = time.perf_counter()
    trainer = de.Trainer(max_epochs=1, accelerator=s.accelerator, devices=1, precision=precision,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tempfile.mkdtemp(prefix="gpucheck-"))
    trainer.fit(model, DataLoader(data, batch_size=s.batch, shuffle=False))
    s.sync()
    return time.perf_counter() - start


def check_precision(s: Setup, precision: str) -> tuple[bool, str, dict]:
    data = s.data()
    times: dict[str, list[float]] = {"loop": [], "trainer": []}
    mem: dict[str, list[float]] = {"loop": [], "trainer": []}
    losses: dict[str, list[float]] = {}
    runners: dict[str, Callable] = {"loop": loop_run, "trainer": trainer_run}
    for r in range(-1, s.rounds):  # round -1 warms up kernels, cuBLAS handles and autocast caches
        order = ["loop", "trainer"] if r % 2 == 0 else ["trainer", "loop"]
        for name in order:
            gc.collect()
            if s.device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            got: list = []
            seconds = runners[name](s, precision, data, got)
            if r < 0:
                continue
            times[name].append(seconds)
            if s.device.type == "cuda":
                mem[name].append(torch.cuda.max_memory_allocated() - base)
            losses.setdefault(name, [float(v) for v in got])
    a, b = losses["loop"], losses["trainer"]
    if len(a) != len(b):
        return False, f"step counts differ: loop {len(a)}, trainer {len(b)}", {}
    rel = [abs(x - y) / max(abs(x), 1e-8) for x, y in zip(a, b)]
    mean_rel = sum(rel) / len(rel)
    thr = [lt / tt for lt, tt in zip(times["loop"], times["trainer"])]  # tokens/s trainer / loop
    thr_med = sorted(thr)[len(thr) // 2]
    tokens = s.batch * s.steps * s.lm["seq_len"]
    out = {"loss_mean_rel_diff": mean_rel, "loss_first": a[0], "loss_last": (a[-1], b[-1]),
           "tokens_per_s_ratio": thr_med, "tokens_per_s_ratio_all": thr,
           "tokens_per_s_loop": tokens / sorted(times["loop"])[len(thr) // 2],
           "tokens_per_s_trainer": tokens / sorted(times["trainer"])[len(thr) // 2]}
    parity_ok = mean_rel <= PRECISION_TOL[precision] and all(math.isfinite(v) for v in b)
    msg = f"loss mean rel diff {mean_rel:.2e} (<= {PRECISION_TOL[precision]:g})"
    ok = parity_ok
    if mem["loop"]:
        mratio = [t / max(lp, 1) for t, lp in zip(mem["trainer"], mem["loop"])]
        out["memory_ratio"] = max(mratio)
        out["peak_memory_mb"] = {k: max(v) / 2**20 for k, v in mem.items()}
        msg += f", peak memory ratio {max(mratio):.3f} (<= 1.02)"
        ok = ok and max(mratio) <= 1.02
    msg += f", tokens/s ratio {thr_med:.3f} (>= 0.98; {out['tokens_per_s_trainer']:,.0f} tokens/s)"
    if s.dry_run:
        msg += " [dry run: speed and memory not judged]"
    else:
        ok = ok and thr_med >= 0.98
    return ok, msg, out


# --------------------------------------------------------------------------- other checks
def _small_fit(s: Setup, max_epochs: int = 1, **flags: Any):
    """An MLP fit on the check device; returns (trainer, module)."""
    import distengine as de
    from examples.synthetic import SyntheticMLP

    fit_kwargs = flags.pop("_fit", {})
    torch.manual_seed(0)
    module = SyntheticMLP(32, 64, log_loss=True)
    flags = dict({"max_epochs": max_epochs, "accelerator": s.accelerator, "devices": 1, "logger": False,
                      "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
                      "default_root_dir": tempfile.mkdtemp(prefix="gpucheck-")}, **flags)
    trainer = de.Trainer(**flags)
    # shuffle=False: a resumed run and an uninterrupted one must see the same batches
    trainer.fit(module, DataLoader(make_dataset(2048, 32), batch_size=64, shuffle=False), **fit_kwargs)
    return trainer, module


def check_compile(s: Setup) -> tuple[bool, str, dict]:
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    start = time.perf_counter()
    trainer, module = _small_fit(s, compile=True)
    seconds = time.perf_counter() - start
    graphs = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    _, eager = _small_fit(s)
    diff = max((a - b).abs().max().item() for a, b in zip(module.parameters(), eager.parameters()))
    ok = graphs > 0 and diff < 1e-3 and trainer.global_step == 32
    return ok, (f"{graphs} graph(s) compiled, {trainer.global_step} steps in {seconds:.1f} s, "
                f"max |w_compiled - w_eager| {diff:.1e} (< 1e-3)"), {"graphs": graphs, "weight_diff": diff}


def check_device_stats(s: Setup) -> tuple[bool, str, dict]:
    from distengine.callbacks import DeviceStatsMonitor

    mem = MemoryLogger()
    _small_fit(s, logger=mem.logger, callbacks=[DeviceStatsMonitor(every_n_steps=4)])
    keys = sorted({k for _, m in mem.logger.rows for k in m if k.startswith("device_stats/")})
    want = "device_stats/cpu_percent" if s.dry_run else "device_stats/gpu0.memory_used_gb"
    gpu_keys = [k for k in keys if ".gpu" in k or "/gpu" in k]
    ok = want in keys
    return ok, f"logged {len(keys)} device_stats keys ({len(gpu_keys)} from NVML); wants {want}", {"keys": keys}


def check_checkpoint(s: Setup) -> tuple[bool, str, dict]:
    root = tempfile.mkdtemp(prefix="gpucheck-ckpt-")
    path = os.path.join(root, "half.ckpt")
    first, _ = _small_fit(s, max_epochs=1)
    first.save_checkpoint(path)
    resumed, module = _small_fit(s, max_epochs=2, _fit={"ckpt_path": path})
    _, straight = _small_fit(s, max_epochs=2)
    diff = max((a - b).abs().max().item() for a, b in zip(module.parameters(), straight.parameters()))
    devices = {p.device.type for p in module.parameters()}
    ok = resumed.global_step == 64 and diff <= 1e-6 and devices == {s.device.type}
    return ok, (f"resumed to step {resumed.global_step} (want 64), max |resumed - uninterrupted| {diff:.1e}, "
                f"parameters on {sorted(devices)}"), {"weight_diff": diff, "size_bytes": os.path.getsize(path)}


def check_launch(s: Setup) -> tuple[bool, str, dict]:
    from benchmarks.ddp import launcher_cmd

    out = os.path.join(tempfile.mkdtemp(prefix="gpucheck-launch-"), "child.json")
    flag = ["--cpus", "1"] if s.dry_run else ["--gpus", "1"]
    cmd = launcher_cmd() + flag + [os.path.abspath(__file__), "--child-launch", out] + (
        ["--dry-run-cpu"] if s.dry_run else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240, env=env, cwd=REPO_ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not os.path.exists(out):
        return False, f"launcher exit {proc.returncode}: {(proc.stdout + proc.stderr)[-800:]}", {}
    with open(out) as f:
        rep = json.load(f)
    want = "gloo" if s.dry_run else "nccl"
    ok = rep["backend"] == want and rep["all_reduce"] == 3.0 and rep["env_ok"] and rep["device"] == s.device.type
    return ok, (f"backend {rep['backend']} (want {want}), all_reduce {rep['all_reduce']}, fit on {rep['device']}, "
                f"job wall {wall:.1f} s"), {**rep, "wall_s": wall}


def launch_child(out: str, dry_run: bool) -> None:
    """Runs inside ``distengine launch``: fit, then an all-reduce on the job's process group."""
    import torch.distributed as dist

    s = Setup(dry_run, 1)
    env_ok = all(os.environ.get(k) == v for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")))
    trainer, module = _small_fit(s)
    device = next(module.parameters()).device.type
    # with one rank the Trainer may leave the process group out; then make one as a user would
    if not dist.is_initialized():
        dist.init_process_group("gloo" if dry_run else "nccl", timeout=_dt.timedelta(seconds=60))
    t = torch.full((1,), 3.0, device=s.device)
    dist.all_reduce(t)
    rep = {"backend": dist.get_backend(), "all_reduce": float(t.item()), "env_ok": env_ok, "device": device,
           "global_step": trainer.global_step}
    dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump(rep, f)


# --------------------------------------------------------------------------- main
def run_checks(s: Setup, names: list[str]) -> list[dict[str, Any]]:
    table: dict[str, Callable[[], tuple[bool, str, dict]]] = {
        "precision-32": lambda: check_precision(s, "32-true"),
        "precision-16-mixed": lambda: check_precision(s, "16-mixed"),
        "precision-bf16-mixed": lambda: check_precision(s, "bf16-mixed"),
        "launch-nccl": lambda: check_launch(s),
        "compile": lambda: check_compile(s),
        "device-stats": lambda: check_device_stats(s),
        "checkpoint-resume": lambda: check_checkpoint(s),
    }
    results = []
    for name in names:
        start = time.perf_counter()
        try:
            ok, msg, data = table[name]()
        except Exception as exc:  # noqa: BLE001 - a crashing check is a FAIL line, the rest still run
            ok, msg, data = False, f"{type(exc).__name__}: {exc}", {"traceback": traceback.format_exc()}
        seconds = time.perf_counter() - start
        print(f"{'PASS' if ok else 'FAIL'} {name}: {msg} [{seconds:.1f} s]", flush=True)
        results.append({"check": name, "ok": ok, "message": msg, "seconds": seconds, "data": data})
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Check the Trainer on a real NVIDIA GPU")
    p.add_argument("--dry-run-cpu", action="store_true", help="run the same code paths on the CPU, tiny")
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma list of {', '.join(CHECKS)}")
    p.add_argument("--skip", default="", help="comma list of checks to leave out")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per precision")
    p.add_argument("--out", default=None, help="results folder (default: $OUT, else benchmarks/results)")
    p.add_argument("--child-launch", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(1 if args.dry_run_cpu else min(4, os.cpu_count() or 1))
    if args.child_launch:
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
    s = Setup(args.dry_run_cpu, args.rounds)
    device_name = torch.cuda.get_device_name(0) if not s.dry_run else "cpu (dry run)"
    print(f"gpu_check on {device_name}, torch {torch.__version__}, python {sys.executable}", flush=True)
    start = time.perf_counter()
    results = run_checks(s, names)
    total = time.perf_counter() - start
    passed = sum(r["ok"] for r in results)
    print(f"{'PASS' if passed == len(results) else 'FAIL'} all: {passed}/{len(results)} checks passed "
          f"in {total:.0f} s", flush=True)
    out_dir = args.out or os.environ.get("OUT") or os.path.join(REPO_ROOT, "benchmarks", "results")
    os.makedirs(out_dir, exist_ok=True)
    name = "gpu_check.json" if (args.out or os.environ.get("OUT")) else \
        f"gpu_check-{socket.gethostname()}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    with open(os.path.join(out_dir, name), "w") as f:
        json.dump({"device": device_name, "torch": torch.__version__, "dry_run": s.dry_run,
                   "cuda": torch.version.cuda, "seconds": total, "checks": results}, f, indent=1, default=str)
    print(f"wrote {os.path.join(out_dir, name)}", flush=True)
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
