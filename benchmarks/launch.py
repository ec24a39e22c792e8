"""Launcher cost: ``distengine launch --cpus 2`` against ``torchrun --nproc-per-node 2``.

Both start the same short DDP script (2 gloo ranks on CPU, a few SGD steps), in
interleaved rounds whose order alternates, so a busy neighbour slows both alike. Reported:

* wall time of the whole job, median per-round ratio distengine / torchrun (target <= 1.0x),
  with the min..max over rounds;
* time from starting the command to rank 0's first finished training step (both launchers,
  and their ratio).

torchrun runs with its default static rendezvous on a free loopback port (the closest match
to what ``distengine launch`` does on one machine); ``OMP_NUM_THREADS=1`` for both.

Usage::

    python benchmarks/launch.py --rounds 5          # or: python -m benchmarks.launch
    python benchmarks/launch.py --script my_train.py  # your own script (no first-step time)

From Python: ``run(rounds=5) -> dict`` with ``rows`` (for ``python -m benchmarks``) and the
raw samples.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

STEPS = 20

_RANK_SCRIPT = f'''
import os, time
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

torch.set_num_threads(1)
dist.init_process_group("gloo")
torch.manual_seed(0)
model = DDP(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x = torch.randn(32, 64)
for step in range({STEPS}):
    loss = model(x).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    if step == 0 and dist.get_rank() == 0 and os.environ.get("BENCH_FIRST_STEP"):
        with open(os.environ["BENCH_FIRST_STEP"], "w") as f:
            f.write(repr(time.time()))
dist.destroy_process_group()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTENGINE_", "TORCHELASTIC_"))
           and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _commands(script: str, nproc: int) -> dict[str, list[str]]:
    return {
        "distengine": [sys.executable, "-m", "distengine.launch", "--cpus", str(nproc), script],
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                     "--master-addr", "127.0.0.1", "--master-port", "{port}", script],
    }


def _one_job(cmd: list[str], workdir: str, timeout: float) -> tuple[float, float | None]:
    """Run one job; return (wall seconds, seconds to rank 0's first step or None)."""
    marker = os.path.join(workdir, "first_step")
    if os.path.exists(marker):
        os.remove(marker)
    env = _env()
    env["BENCH_FIRST_STEP"] = marker
    cmd = [c.replace("{port}", str(_free_port())) for c in cmd]
    t0_wall, t0 = time.time(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    first = None
    if os.path.exists(marker):
        with open(marker) as f:
            first = float(f.read()) - t0_wall
    return wall, first


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def run(rounds: int = 5, script: str | None = None, nproc: int = 2, warmup: int = 1,
        timeout: float = 300) -> dict[str, Any]:
    """Time both launchers over ``rounds`` interleaved rounds (after ``warmup`` unrecorded ones)."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    with tempfile.TemporaryDirectory(prefix="bench-launch-") as workdir:
        if script is None:
            script = os.path.join(workdir, "ddp_steps.py")
            with open(script, "w") as f:
                f.write(_RANK_SCRIPT)
        script = os.path.abspath(script)
        commands = _commands(script, nproc)
        names = list(commands)
        wall: dict[str, list[float]] = {n: [] for n in names}
        first: dict[str, list[float]] = {n: [] for n in names}
        for r in range(-warmup, rounds):
            order = names if r % 2 == 0 else names[::-1]  # alternate who goes first
            for name in order:
                w, f = _one_job(commands[name], workdir, timeout)
                if r >= 0:
                    wall[name].append(w)
                    if f is not None:
                        first[name].append(f)
    ratio = [a / b for a, b in zip(wall["distengine"], wall["torchrun"])]
    builtin = script.endswith("ddp_steps.py")
    result: dict[str, Any] = {
        "rounds": rounds, "nproc": nproc, "script": "built-in DDP script" if builtin else script,
        "wall_s": wall, "first_step_s": first,
        "ratio_median": statistics.median(ratio), "ratio_min": min(ratio), "ratio_max": max(ratio),
    }
    ctx = (f"median {statistics.median(wall['distengine']):.2f} s vs torchrun "
           f"{statistics.median(wall['torchrun']):.2f} s")
    rows = [{"benchmark": "launch", "comparison": f"job wall time, distengine launch / torchrun ({nproc} CPU ranks)",
             "value": result["ratio_median"], "lo": min(ratio), "hi": max(ratio), "unit": "x", "target": 1.0,
             "context": ctx, "rounds": rounds}]
    if len(first["distengine"]) == len(first["torchrun"]) == rounds:
        fr = [a / b for a, b in zip(first["distengine"], first["torchrun"])]
        result["first_step_ratio_median"] = statistics.median(fr)
        for name in names:
            s = _spread(first[name])
            rows.append({"benchmark": "launch", "comparison": f"time to first training step, {name}",
                         "value": s["median"], "lo": s["min"], "hi": s["max"], "unit": "s", "rounds": rounds})
        rows.append({"benchmark": "launch", "comparison": "time to first step, distengine / torchrun",
                     "value": statistics.median(fr), "lo": min(fr), "hi": max(fr), "unit": "x", "target": 1.0,
                     "rounds": rounds})
    result["rows"] = rows
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/launch.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--script", default=None, help="a script to launch instead of the built-in DDP one")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = p.parse_args(argv)
    res = run(rounds=args.rounds, script=args.script, nproc=args.nproc, warmup=args.warmup)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    for row in res["rows"]:
        unit = "x" if row["unit"] == "x" else " s"
        target = f"  (target <= {row['target']:g}x)" if row.get("target") else ""
        print(f"{row['comparison']}: {row['value']:.3f}{unit}  [{row['lo']:.3f} .. {row['hi']:.3f}]{target}"
              f"{'  ' + row['context'] if row.get('context') else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
