"""The GPU check's FSDP2 runs: ``Trainer(strategy="fsdp")`` against the hand-written
``fully_shard`` loop on CUDA, in bf16-mixed, and in bf16-mixed with activation checkpointing.

Each check starts ``benchmarks/_fsdp_worker.py`` (the CPU benchmark's worker) under torchrun
on 2 GPUs, one rank each (NCCL for the model, gloo beside it for ``dcp.async_save``), and
judges, Trainer against the loop: loss per step, steady-state step time, peak
``torch.cuda.max_memory_allocated``, exact bytes of params + grads + AdamW state; FSDP
against DDP memory; and the sharded saves. With one GPU the checks say SKIP: they compare two
ranks, and NCCL refuses two ranks on one GPU (the one-GPU FSDP checks are ``fsdp1-*``, in
benchmarks/_gpu_fsdp1.py). ``--dry-run-cpu`` runs the same
on 2 CPU ranks (gloo), tiny, judging only what does not depend on speed (losses, exact bytes).
"""
from __future__ import annotations

from typing import Any

import torch

from benchmarks import fsdp as bench

Result = tuple[bool | None, str, dict]
TARGET_CUDA_MEM = 1.05
BF16_LOSS_TOL = 2e-2  # as the precision checks: mean relative loss difference per step


def worker_args(s: Any, act_ckpt: bool) -> list[str]:
    rounds = str(s.rounds)
    if s.dry_run:
        args = ["--size", "quick", "--steps", "3", "--warm", "1", "--rounds", rounds, "--warmup-rounds", "0",
                "--ckpt-rounds", "1"]
    else:
        # SIZES["gpu"] in benchmarks/_fsdp_plain.py: 218M parameters
        args = ["--size", "gpu", "--batch", "8", "--steps", "30", "--warm", "10", "--rounds", rounds,
                "--warmup-rounds", "1", "--ckpt-rounds", "2", "--device", "cuda"]
    return args + ["--bf16"] + (["--act-ckpt"] if act_ckpt else [])


def _cuda_rows(steps: dict[str, Any]) -> list[Any]:
    from benchmarks._harness import Row

    r = steps["rounds"]
    rows = []
    pairs = [("fsdp_trainer", "fsdp_loop", TARGET_CUDA_MEM), ("fsdp_trainer", "ddp_trainer", bench.TARGET_MEM_VS_DDP)]
    for a, b, target in pairs:
        if a in r and b in r:
            x, y = bench.memory(r[a], "cuda_peak"), bench.memory(r[b], "cuda_peak")
            rows.append(Row(bench.BENCH, f"peak max_memory_allocated: {a} / {b}", x / y, unit="x", target=target,
                            context=f"{x / 2**20:,.0f} MiB vs {y / 2**20:,.0f} MiB per rank", rounds=len(r[a])))
    return rows


def check_fsdp(s: Any, act_ckpt: bool) -> Result:
    """One FSDP2 run (bf16-mixed; ``act_ckpt``: activation checkpointing on every block)."""
    world = 2 if s.dry_run else min(2, torch.cuda.device_count())
    if world < 2:
        return None, ("needs 2 GPUs: it compares 2 ranks, and NCCL runs one rank per GPU; this machine has "
                      f"{torch.cuda.device_count()} (the fsdp1-* checks cover FSDP on one GPU)"), {}
    rep = bench.run_worker(worker_args(s, act_ckpt), nproc=world, timeout=540)
    if "trainer_skipped" in rep["steps"]:
        return False, f"the Trainer side did not run: {rep['steps']['trainer_skipped']}", rep
    n_timed = rep["work"]["steps"] - rep["work"]["warm"]
    rows = bench.step_rows(rep["steps"], n_timed) + bench.ckpt_rows(rep["ckpt"])
    if not s.dry_run:
        rows += _cuda_rows(rep["steps"])
    for row in rows:  # bf16: the loss tolerance of the precision checks
        if "loss per step" in row.comparison:
            row.target = BF16_LOSS_TOL
    # judged on the dry run: what does not depend on the machine's speed
    exact = [r for r in rows if "loss per step" in r.comparison or r.comparison.startswith("memory:")]
    judged = exact if s.dry_run else rows
    ok = all(r.ok is not False for r in judged)
    parts = [f"{r.comparison} {r.value:.3g}{r.unit}"
             + ("" if r.ok is None or r not in judged else (" ok" if r.ok else " MISS")) for r in rows]
    msg = f"{world} rank(s), {rep['num_params'] / 1e6:.1f}M params: " + "; ".join(parts)
    if s.dry_run:
        msg += " [dry run: times and peak memory not judged]"
    return ok, msg, {"rows": [r.to_dict() for r in rows], "report": rep}
