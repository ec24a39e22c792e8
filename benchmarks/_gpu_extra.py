"""The GPU check's checks beyond the LM precision runs: launch, compile, NVML stats,
checkpoints (in-process resume, the SIGKILL matrix, a ~1B-parameter async save).
See ``benchmarks/gpu_check.py`` for what each one asserts."""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks._work import make_dataset

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Result = tuple[bool | None, str, dict]


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


def _small_fit(s: Any, max_epochs: int = 1, **flags: Any):
    """An MLP fit on the check device; returns (trainer, module)."""
    import distengine as de
    from examples.synthetic import SyntheticMLP

    fit_kwargs = flags.pop("_fit", {})
    adam = flags.pop("_adam", False)

    class AdamMLP(SyntheticMLP):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    module = (AdamMLP if adam else SyntheticMLP)(32, 64, log_loss=True)
    flags = dict({"max_epochs": max_epochs, "accelerator": s.accelerator, "devices": 1, "logger": False,
                  "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
                  "default_root_dir": tempfile.mkdtemp(prefix="gpucheck-")}, **flags)
    trainer = de.Trainer(**flags)
    # shuffle=False: a resumed run and an uninterrupted one must see the same batches
    trainer.fit(module, DataLoader(make_dataset(2048, 32), batch_size=64, shuffle=False), **fit_kwargs)
    return trainer, module


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))


# --------------------------------------------------------------------------- compile
def compile_prerequisites() -> str | None:
    """Why ``torch.compile`` cannot build kernels with this Python, or None when it can.
    Inductor's C++ and Triton launchers are compiled against ``Python.h`` with a C compiler."""
    include = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    missing = []
    if not os.path.exists(include):
        missing.append(f"Python.h ({include})")
    if not (shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")):
        missing.append("a C compiler (cc/gcc)")
    return f"this Python lacks {' and '.join(missing)}" if missing else None


def check_compile(s: Any) -> Result:
    why = compile_prerequisites()
    if why:
        return None, f"torch.compile cannot build kernels: {why}; use a Python with its headers (python3-dev)", {}
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    start = time.perf_counter()
    trainer, module = _small_fit(s, compile=True)
    seconds = time.perf_counter() - start
    graphs = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    _, eager = _small_fit(s)
    diff = _max_diff(module, eager)
    ok = graphs > 0 and diff < 1e-3 and trainer.global_step == 32
    return ok, (f"{graphs} graph(s) compiled, {trainer.global_step} steps in {seconds:.1f} s, "
                f"max |w_compiled - w_eager| {diff:.1e} (< 1e-3)"), {"graphs": graphs, "weight_diff": diff}


# --------------------------------------------------------------------------- NVML
def check_device_stats(s: Any) -> Result:
    from distengine.callbacks import DeviceStatsMonitor

    mem = MemoryLogger()
    _small_fit(s, logger=mem.logger, callbacks=[DeviceStatsMonitor(every_n_steps=4)])
    keys = sorted({k for _, m in mem.logger.rows for k in m if k.startswith("device_stats/")})
    want = ["device_stats/cpu_percent"] if s.dry_run else ["device_stats/gpu0.utilization",
                                                           "device_stats/gpu0.memory_used_gb"]
    last = mem.logger.rows[-1][1] if mem.logger.rows else {}
    gpu_keys = [k for k in keys if ".gpu" in k or "/gpu" in k]
    ok = all(k in keys for k in want)
    shown = ", ".join(f"{k.split('/')[-1]}={last[k]:.3g}" for k in want if k in last)
    return ok, f"logged {len(keys)} device_stats keys ({len(gpu_keys)} from NVML): {shown}", \
        {"keys": keys, "last": last}


# --------------------------------------------------------------------------- checkpoints
def check_checkpoint(s: Any) -> Result:
    root = tempfile.mkdtemp(prefix="gpucheck-ckpt-")
    path = os.path.join(root, "half.ckpt")
    first, _ = _small_fit(s, max_epochs=1, _adam=True)
    first.save_checkpoint(path)
    resumed, module = _small_fit(s, max_epochs=2, _adam=True, _fit={"ckpt_path": path})
    _, straight = _small_fit(s, max_epochs=2, _adam=True)
    diff = _max_diff(module, straight)
    devices = {p.device.type for p in module.parameters()}
    steps = {v["step"].device.type for v in resumed.optimizers[0].state.values()}
    ok = resumed.global_step == 64 and diff <= 1e-6 and devices == {s.device.type} and steps == {"cpu"}
    return ok, (f"resumed to step {resumed.global_step} (want 64), max |resumed - uninterrupted| {diff:.1e}, "
                f"parameters on {sorted(devices)}, Adam step counters on {sorted(steps)} (want cpu)"), \
        {"weight_diff": diff, "size_bytes": os.path.getsize(path)}


def check_sigkill_resume(s: Any) -> Result:
    """The 1-rank exact-resume-after-SIGKILL matrix of the test suite, on this device."""
    if s.dry_run:
        return None, "the CPU test suite runs this matrix [dry run]", {}
    cases = ["1-mid", "1-boundary_step", "1-boundary_epoch"]
    ids = [f"tests/checkpoint/test_resume.py::test_exact_resume_after_sigkill[{c}]" for c in cases]
    env = dict(os.environ, DISTENGINE_TEST_ACCELERATOR="gpu", PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400, check=False)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    ok = proc.returncode == 0 and f"{len(cases)} passed" in proc.stdout
    msg = f"pytest {', '.join(cases)} on the GPU: {tail[0]}"
    return ok, msg if ok else msg + "\n" + (proc.stdout + proc.stderr)[-3000:], {"returncode": proc.returncode}


def check_async_checkpoint(s: Any) -> Result:
    """A ~1B-parameter model on the GPU: the async writer's blocking time against a synchronous
    save of the same state (the Trainer's own atomic_save), and the files load back exactly."""
    from distengine.checkpoint.async_writer import AsyncCheckpointWriter
    from distengine.checkpoint.io import atomic_save

    width, layers = (256, 4) if s.dry_run else (8192, 15)  # 15 * 8192^2 = 1.007e9 parameters
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False, device=s.device) for _ in range(layers)])
    params = sum(p.numel() for p in model.parameters())
    root = tempfile.mkdtemp(prefix="gpucheck-async-")
    data: dict[str, Any] = {"parameters": params, "bytes": params * 4}
    try:
        s.sync()
        t0 = time.perf_counter()
        atomic_save({"state_dict": model.state_dict()}, os.path.join(root, "sync.ckpt"))
        data["sync_save_s"] = time.perf_counter() - t0
        os.remove(os.path.join(root, "sync.ckpt"))
        writer = AsyncCheckpointWriter()
        blocked = []
        for i in range(2):  # the first save allocates the pinned buffers; later ones refill them
            s.sync()
            t0 = time.perf_counter()
            writer.submit({"state_dict": model.state_dict()}, os.path.join(root, f"async{i}.ckpt"))
            blocked.append(time.perf_counter() - t0)
            with torch.no_grad():  # "the next optimizer step": must not leak into the file
                for p in model.parameters():
                    p.mul_(2.0)
            t0 = time.perf_counter()
            writer.wait()
            data.setdefault("write_after_submit_s", []).append(time.perf_counter() - t0)
            if i == 0:
                os.remove(os.path.join(root, "async0.ckpt"))
        writer.release()
        data["async_blocked_s"] = blocked
        loaded = torch.load(os.path.join(root, "async1.ckpt"), map_location="cpu", weights_only=True, mmap=True)
        equal = all(torch.equal(loaded["state_dict"][k].to(s.device), v / 2.0)
                    for k, v in model.state_dict().items())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio_first, ratio = blocked[0] / data["sync_save_s"], blocked[1] / data["sync_save_s"]
    data.update(blocked_ratio_first=ratio_first, blocked_ratio=ratio, loads_back_equal=equal)
    ok = equal and (s.dry_run or ratio <= 0.10)
    msg = (f"{params / 1e9:.2f}B parameters ({params * 4 / 2**30:.1f} GiB): sync save {data['sync_save_s']:.2f} s; "
           f"async blocks {blocked[1]:.3f} s = x{ratio:.3f} of it (<= 0.10; first save, buffers allocated: "
           f"{blocked[0]:.2f} s = x{ratio_first:.3f}); loads back torch.equal: {equal}")
    return ok, msg + (" [dry run: ratio not judged]" if s.dry_run else ""), data


# --------------------------------------------------------------------------- launcher
def check_launch(s: Any) -> Result:
    from benchmarks.ddp import launcher_cmd

    out = os.path.join(tempfile.mkdtemp(prefix="gpucheck-launch-"), "child.json")
    flag = ["--cpus", "1"] if s.dry_run else ["--gpus", "1"]
    script = os.path.join(REPO_ROOT, "benchmarks", "gpu_check.py")
    cmd = launcher_cmd() + flag + [script, "--child-launch", out] + (["--dry-run-cpu"] if s.dry_run else [])
    # the caller's PYTHONPATH first: gpu_check.sh may have put a shim there that maps launch/ to
    # distengine.launch, which the bare tree (REPO_ROOT/distengine) does not have
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), REPO_ROOT) if p))
    start = time.perf_counter()
    # not cwd=REPO_ROOT: `python -m` puts the working folder first on sys.path, ahead of the shim
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240, env=env,
                          cwd=os.path.dirname(out))
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

    from benchmarks.gpu_check import Setup

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
