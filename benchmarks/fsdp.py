"""FSDP2 on 2 ranks: ``Trainer(strategy="fsdp")`` against a hand-written ``fully_shard`` loop,
and DDP against FSDP, in memory, step time and sharded checkpoints.

One ``torchrun --standalone --nproc-per-node 2 benchmarks/_fsdp_worker.py`` job (gloo on the
CPU) runs every contender in interleaved rounds inside the same two processes:

- step time: the Trainer's steady-state time for ``steps - warm`` AdamW steps of a 55.1M-parameter
  decoder-only LM (6 blocks, 768 wide, vocab 8192, sequence 32, batch 2 per rank) against the
  hand-written FSDP2 loop and, for DDP, against a hand-written DDP loop;
- memory: the exact bytes of parameters + gradients + AdamW state one rank holds after a step
  (local shards of DTensors, full tensors under DDP). The CPU has no ``max_memory_allocated``;
  ``benchmarks/gpu_check.sh`` adds that figure on CUDA;
- checkpoints: the Trainer's sharded save against ``get_state_dict`` + ``dcp.save`` of the same
  model and optimizer, and the time an async sharded save blocks against a synchronous one.

Run alone::

    python -m benchmarks.fsdp [--rounds 3] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from typing import Any

from benchmarks._harness import REPO_ROOT, Row, markdown_table, ratio_row, ratios, timed_subprocess

BENCH = "fsdp"
TARGET_STEP = 1.05
TARGET_MEM_VS_DDP = 0.55
TARGET_MEM_VS_LOOP = 1.05
TARGET_SAVE = 1.10
TARGET_ASYNC = 0.10
LOSS_TOL = 1e-4  # mean relative loss difference, Trainer vs loop (the same work)


def worker_args(quick: bool, rounds: int | None) -> list[str]:
    if quick:
        return ["--size", "quick", "--steps", "3", "--warm", "1", "--rounds", str(rounds or 1),
                "--warmup-rounds", "0", "--ckpt-rounds", str(rounds or 1)]
    # the checkpoint rounds need no warm-up round: each contender's first save is not timed
    return ["--size", "full", "--steps", "4", "--warm", "1", "--rounds", str(rounds or 3),
            "--warmup-rounds", "1", "--ckpt-rounds", str(rounds or 3)]


def run_worker(args: list[str], nproc: int = 2, timeout: float = 900) -> dict[str, Any]:
    """Start the 2-rank job; return rank zero's report."""
    with tempfile.TemporaryDirectory(prefix="bench-fsdp-report-") as folder:  # removed afterwards
        report = os.path.join(folder, "report.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               os.path.join(REPO_ROOT, "benchmarks", "_fsdp_worker.py"), "--report-json", report] + args
        wall = timed_subprocess(cmd, timeout=timeout)
        with open(report) as f:
            out = json.load(f)
    out["job_wall_s"] = wall
    return out


def slowest(rounds: list[dict[str, Any]], key: str) -> list[float]:
    """Per round, the slowest rank's figure (a step ends when every rank is done)."""
    return [max(r[key] for r in rnd["ranks"]) for rnd in rounds]


def memory(rounds: list[dict[str, Any]], key: str = "total") -> float:
    """The largest per-rank figure over ranks and rounds (it is the same in every round)."""
    return max(max(r["bytes"][key] if key != "cuda_peak" else r["cuda_peak"] for r in rnd["ranks"])
               for rnd in rounds)


def loss_diff(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """Mean relative difference of the per-step losses (every rank) of two contenders' first rounds."""
    xs = [x for r in a[0]["ranks"] for x in r["losses"]]
    ys = [y for r in b[0]["ranks"] for y in r["losses"]]
    if len(xs) != len(ys):
        return float("inf")
    return sum(abs(x - y) / max(abs(x), 1e-8) for x, y in zip(xs, ys)) / len(xs)


def _mem_row(comparison: str, numer: float, denom: float, target: float | None, what: str) -> Row:
    v = numer / denom
    return Row(BENCH, comparison, v, v, v, "x", target, False,
               f"{what}: {numer / 2**20:,.1f} MiB vs {denom / 2**20:,.1f} MiB per rank (exact bytes)", 1)


def step_rows(steps: dict[str, Any], n_timed: int) -> list[Row]:
    r = steps["rounds"]
    rows: list[Row] = []
    unit = f"s/{n_timed} steps"
    pairs = [("fsdp_trainer", "fsdp_loop", "FSDP2 step: Trainer / fully_shard loop"),
             ("ddp_trainer", "ddp_loop", "DDP step: Trainer / DDP loop")]
    for a, b, label in pairs:
        if a in r and b in r:
            for key, what in (("wall", "wall"), ("cpu", "CPU time")):
                rows.append(ratio_row(BENCH, f"{label} ({what})", slowest(r[a], key), slowest(r[b], key),
                                      target=TARGET_STEP, unit_label=unit, numer_name=a, denom_name=b))
            d = loss_diff(r[b], r[a])
            rows.append(Row(BENCH, f"{label.split(':')[0]}: loss per step vs loop (mean rel. diff)", d,
                            unit="", target=LOSS_TOL, context=f"{a} vs {b}, every rank's losses", rounds=1))
    what = "params+grads+AdamW"
    if "fsdp_trainer" in r and "ddp_trainer" in r:
        rows.append(_mem_row(f"memory: {what}, Trainer FSDP / Trainer DDP", memory(r["fsdp_trainer"]),
                             memory(r["ddp_trainer"]), TARGET_MEM_VS_DDP, "fsdp_trainer vs ddp_trainer"))
    if "fsdp_trainer" in r and "fsdp_loop" in r:
        rows.append(_mem_row(f"memory: {what}, Trainer FSDP / fully_shard loop", memory(r["fsdp_trainer"]),
                             memory(r["fsdp_loop"]), TARGET_MEM_VS_LOOP, "fsdp_trainer vs fsdp_loop"))
    if "fsdp_loop" in r and "ddp_loop" in r:
        rows.append(_mem_row(f"memory: {what}, fully_shard loop / DDP loop", memory(r["fsdp_loop"]),
                             memory(r["ddp_loop"]), None, "hand-written, for reference"))
    return rows


def ckpt_rows(ckpt: dict[str, Any]) -> list[Row]:
    s = ckpt["seconds"]
    gb = ckpt["bytes_per_rank"] / 1e9
    rows: list[Row] = []
    if "trainer_save" in s:
        rows.append(ratio_row(BENCH, "sharded save: Trainer / dcp.save", s["trainer_save"], s["dcp_save"],
                              target=TARGET_SAVE, numer_name="Trainer", denom_name="dcp.save"))
    if "trainer_async_blocked" in s:
        row = ratio_row(BENCH, "async sharded save: Trainer blocked / Trainer sync save",
                        s["trainer_async_blocked"], s["trainer_save"], target=TARGET_ASYNC,
                        numer_name="blocked", denom_name="sync")
        vs_dcp = statistics.median(ratios(s["trainer_async_blocked"], s["dcp_save"]))
        row.context += f"; blocked / dcp.save {vs_dcp:.3f}x"
        rows.append(row)
    rows.append(ratio_row(BENCH, "hand-written: dcp.async_save blocked / dcp.save", s["dcp_async_save"],
                          s["dcp_save"], numer_name="blocked", denom_name="dcp.save"))

    for row in rows:
        row.context += f"; {gb:.2f} GB of params+AdamW per rank"
    return rows


def run(rounds: int | None = None, quick: bool = False) -> dict[str, Any]:
    """Run the FSDP benchmark; return ``{"rows": [Row, ...], "details": {...}}``."""
    args = worker_args(quick, rounds)
    rep = run_worker(args)
    n_timed = rep["work"]["steps"] - rep["work"]["warm"]
    rows = step_rows(rep["steps"], n_timed)
    if "ckpt" in rep:
        rows += ckpt_rows(rep["ckpt"])
    details: dict[str, Any] = {"worker_args": args, "num_params": rep["num_params"],
                               "job_wall_s": rep["job_wall_s"], "worker_seconds": rep["seconds"],
                               "report": rep}
    if "trainer_skipped" in rep["steps"]:
        details["trainer_skipped"] = rep["steps"]["trainer_skipped"]
    r = rep["steps"]["rounds"]
    details["median_step_s"] = {n: statistics.median(slowest(v, "wall")) / n_timed for n, v in r.items()}
    details["bytes_per_rank"] = {n: v[0]["ranks"][0]["bytes"] for n, v in r.items()}
    return {"rows": rows, "details": details}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="FSDP2 on 2 CPU ranks: Trainer vs hand-written fully_shard and DDP")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    result = run(args.rounds, args.quick)
    if "trainer_skipped" in result["details"]:
        print(f"Trainer side skipped: {result['details']['trainer_skipped']}")
    print(markdown_table(result["rows"]))


if __name__ == "__main__":
    main()
