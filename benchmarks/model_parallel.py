"""Tensor parallel x FSDP2 on 4 CPU ranks: ``Trainer(strategy=ModelParallelStrategy(2, 2))`` against
a hand-written loop applying the same ``parallelize_module`` + ``fully_shard`` plan, and against
``FSDPStrategy`` over the 4 ranks.

One ``torchrun --standalone --nproc-per-node 4 benchmarks/_mp_worker.py`` job (gloo) runs the three
contenders in interleaved rounds inside the same four processes, on a 4.2M-parameter Llama-style
model (benchmarks/_llama.py: 4 blocks, 256 wide, sequence 32; a global batch of 8, AdamW):

- step time: the steady-state time of ``steps - warm`` steps, the slowest rank's, Trainer / loop
  (wall and CPU time; 4 ranks share the machine's cores, so CPU time is the steadier figure);
- memory: the exact bytes of parameters + gradients + AdamW state one rank holds after a step
  (local shards of DTensors), the largest over the ranks;
- the same figures for ``FSDPStrategy`` over 4 ranks, for reference (no target: TP trades
  communication for activation memory, which shows on GPUs, not here);
- the per-step losses (mean over the ranks), Trainer against loop.

Run alone::

    python -m benchmarks.model_parallel [--rounds 3] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from typing import Any

from benchmarks._harness import REPO_ROOT, Row, markdown_table, ratio_row, timed_subprocess
from benchmarks.fsdp import memory, slowest

BENCH = "model_parallel"
TARGET_STEP = 1.05
TARGET_MEM = 1.0
LOSS_TOL = 1e-5  # mean relative loss difference, Trainer vs loop (the same work)


def worker_args(quick: bool, rounds: int | None) -> list[str]:
    if quick:
        return ["--size", "quick", "--steps", "3", "--warm", "1", "--rounds", str(rounds or 1), "--warmup-rounds", "0"]
    # 8 timed steps x 5 rounds: 4 ranks share 2 cores here, so fewer steps left the ratio's spread near 0.7x
    return ["--size", "full", "--steps", "10", "--warm", "2", "--rounds", str(rounds or 5), "--warmup-rounds", "1"]


def run_worker(args: list[str], timeout: float = 600) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-mp-report-") as folder:  # removed afterwards
        report = os.path.join(folder, "report.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
               os.path.join(REPO_ROOT, "benchmarks", "_mp_worker.py"), "--report-json", report] + args
        wall = timed_subprocess(cmd, timeout=timeout)
        with open(report) as f:
            out = json.load(f)
    out["job_wall_s"] = wall
    return out


def global_losses(rounds: list[dict[str, Any]]) -> list[float]:
    """Per step, the mean over the ranks of the first round (the loss of the global batch)."""
    ranks = [r["losses"] for r in rounds[0]["ranks"]]
    return [sum(step) / len(step) for step in zip(*ranks)]


def loss_diff(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    xs, ys = global_losses(a), global_losses(b)
    if len(xs) != len(ys) or not xs:
        return float("inf")
    return sum(abs(x - y) / max(abs(x), 1e-8) for x, y in zip(xs, ys)) / len(xs)


def _mem_row(comparison: str, numer: float, denom: float, target: float | None, what: str) -> Row:
    v = numer / denom
    return Row(BENCH, comparison, v, v, v, "x", target, False,
               f"{what}: {numer / 2**20:,.2f} MiB vs {denom / 2**20:,.2f} MiB per rank (exact bytes)", 1)


def rows(rep: dict[str, Any]) -> list[Row]:
    r = rep["rounds"]
    n_timed = rep["work"]["steps"] - rep["work"]["warm"]
    unit = f"s/{n_timed} steps"
    out: list[Row] = []
    pairs = (("tp_trainer", "tp_loop", "TP 2 x DP 2 step: Trainer / hand-written loop", TARGET_STEP),
             ("tp_trainer", "fsdp_trainer", "step: Trainer TP 2 x DP 2 / Trainer FSDP over 4", None))
    for a, b, label, target in pairs:
        for key, what in (("wall", "wall"), ("cpu", "CPU time")):
            out.append(ratio_row(BENCH, f"{label} ({what})", slowest(r[a], key), slowest(r[b], key),
                                 target=target, unit_label=unit, numer_name=a, denom_name=b))
    out.append(Row(BENCH, "TP 2 x DP 2: loss per step, Trainer vs loop (mean rel. diff)",
                   loss_diff(r["tp_trainer"], r["tp_loop"]), unit="", target=LOSS_TOL,
                   context="mean over the ranks of each step's loss, first round", rounds=1))
    what = "params+grads+AdamW"
    out.append(_mem_row(f"memory: {what}, TP 2 x DP 2 Trainer / hand-written loop", memory(r["tp_trainer"]),
                        memory(r["tp_loop"]), TARGET_MEM, "tp_trainer vs tp_loop"))
    out.append(_mem_row(f"memory: {what}, Trainer TP 2 x DP 2 / Trainer FSDP over 4", memory(r["tp_trainer"]),
                        memory(r["fsdp_trainer"]), None, "tp_trainer vs fsdp_trainer"))
    return out


def run(rounds: int | None = None, quick: bool = False) -> dict[str, Any]:
    """Run the model parallel benchmark; return ``{"rows": [Row, ...], "details": {...}}``."""
    args = worker_args(quick, rounds)
    rep = run_worker(args)
    n_timed = rep["work"]["steps"] - rep["work"]["warm"]
    r = rep["rounds"]
    details: dict[str, Any] = {
        "worker_args": args, "num_params": rep["num_params"], "job_wall_s": rep["job_wall_s"],
        "worker_seconds": rep["seconds"],
        "median_step_s": {n: statistics.median(slowest(v, "wall")) / n_timed for n, v in r.items()},
        "bytes_per_rank": {n: [x["bytes"] for x in v[0]["ranks"]] for n, v in r.items()},
        "losses": {n: global_losses(v) for n, v in r.items()}, "report": rep}
    return {"rows": rows(rep), "details": details}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="TP 2 x DP 2 on 4 CPU ranks: Trainer vs hand-written loop and FSDP")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    print(markdown_table(run(args.rounds, args.quick)["rows"]))


if __name__ == "__main__":
    main()
