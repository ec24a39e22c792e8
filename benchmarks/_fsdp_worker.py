"""One rank of the FSDP benchmark (benchmarks/fsdp.py starts 2 of them under torchrun).

Phase 1, training steps, interleaved rounds (every rank runs the same seeded order):
``fsdp_loop`` (hand-written ``fully_shard``), ``fsdp_trainer`` (``Trainer(strategy="fsdp")``),
``ddp_loop`` (hand-written DDP), ``ddp_trainer`` (``Trainer(strategy="ddp")``). Each trains the
same model from the same seed on the same data for the same steps and records its losses,
steady-state step time and bytes of parameters + gradients + optimizer state (see
benchmarks/_fsdp_plain.py); on CUDA also ``max_memory_allocated``.

Phase 2, sharded checkpoints of the model and its AdamW state, interleaved; each contender is
a 2-step fit that saves after each step, the second save timed: the hand-written FSDP2 loop with
``get_state_dict`` + ``dcp.save`` / ``dcp.async_save``, and the Trainer with ``ModelCheckpoint``
(sync and ``async_save=True``; benchmarks/_fsdp_trainer.py).

Rank zero writes everything to ``--report-json`` (times are the slowest rank's: a step or a
save ends when every rank is done).

    torchrun --standalone --nproc-per-node 2 benchmarks/_fsdp_worker.py --report-json /tmp/f.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _fsdp_plain as plain  # noqa: E402
from benchmarks._harness import interleave  # noqa: E402

STEP_CONTENDERS = ("fsdp_loop", "fsdp_trainer", "ddp_loop", "ddp_trainer")


def _gather(value: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _measured(fn: Callable[[], plain.Trained], device: torch.device) -> dict[str, Any]:
    """Run one contender; its record from every rank."""
    base = 0
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    rec, model, optimizer = fn()
    if device.type == "cuda":
        rec.cuda_peak = torch.cuda.max_memory_allocated(device) - base
    del model, optimizer
    return {"ranks": _gather(rec.to_dict())}


def trainer_contenders(work: plain.Work, device: torch.device) -> tuple[dict[str, Callable], str | None]:
    """The Trainer side, through its public API only; without the FSDP strategy, DDP alone and why."""
    from benchmarks import _fsdp_trainer as tr

    out: dict[str, Callable] = {"ddp_trainer": lambda: tr.fit(work, device, "ddp")}
    reason = tr.unavailable()
    if reason is None:
        out["fsdp_trainer"] = lambda: tr.fit(work, device, "fsdp")
    return out, reason


def step_phase(work: plain.Work, device: torch.device, rounds: int, warmup: int,
               only: list[str]) -> dict[str, Any]:
    runners: dict[str, Callable[[], plain.Trained]] = {
        "fsdp_loop": lambda: plain.fsdp_loop(work, device),
        "ddp_loop": lambda: plain.ddp_loop(work, device),
    }
    extra, why = trainer_contenders(work, device)
    runners.update(extra)
    runners = {n: runners[n] for n in STEP_CONTENDERS if n in runners and n in only}
    results = interleave({n: (lambda f=f: _measured(f, device)) for n, f in runners.items()},
                         rounds=rounds, warmup=warmup)
    out: dict[str, Any] = {"rounds": results}
    if why:
        out["trainer_skipped"] = why
    return out


def _clean(path: str) -> None:
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)
    dist.barrier()


def hand_ckpt_fit(work: plain.Work, device: torch.device, root: str, async_save: bool, group: Any) -> float:
    """The hand-written counterpart of the Trainer's ``ckpt_fit``: 2 steps of the FSDP2 loop
    with a ``dcp.save`` (or ``dcp.async_save``) after each; the seconds the second save held
    the loop (the previous save waited for first, outside the clock)."""
    short = plain.Work(**{**vars(work), "steps": 2, "warm": 0})
    folder = os.path.join(root, f"dcp-{'async' if async_save else 'sync'}")
    blocked: list[float] = []
    pending: list[Any] = []

    def save(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if pending:
            pending.pop().result()
        path = os.path.join(folder, str(len(blocked)))
        dist.barrier()
        t0 = time.perf_counter()
        if async_save:
            pending.append(plain.dcp_async_save(model, optimizer, path, group))
        else:
            plain.dcp_save(model, optimizer, path)
        blocked.append(time.perf_counter() - t0)

    plain.fsdp_loop(short, device, after_step=save)
    if pending:
        pending.pop().result()
    _clean(folder)
    return blocked[1]


def ckpt_phase(work: plain.Work, device: torch.device, rounds: int, root: str) -> dict[str, Any]:
    """Sharded saves of the model and its AdamW state, ``rounds`` interleaved rounds. Each
    contender is a 2-step fit saving after each step, the second save timed (the first sets up
    buffers and process groups); the slowest rank's seconds count."""
    from benchmarks import _fsdp_trainer as tr

    group = dist.new_group(backend="gloo")  # async saves talk on their own CPU group
    contenders: dict[str, Callable[[], float]] = {
        "dcp_save": lambda: hand_ckpt_fit(work, device, root, False, group),
        "dcp_async_save": lambda: hand_ckpt_fit(work, device, root, True, group),
    }
    if tr.unavailable() is None:
        contenders.update(tr.ckpt_contenders(work, device, root))
    times = interleave({n: (lambda f=f: max(_gather(f()))) for n, f in contenders.items()},
                       rounds=rounds, warmup=0)
    _, model, optimizer = plain.fsdp_loop(plain.Work(**{**vars(work), "steps": 1, "warm": 0}), device)
    nbytes = sum(plain._local(t).untyped_storage().nbytes() for t in
                 list(model.parameters()) + [v for st in optimizer.state.values() for v in st.values()
                                             if isinstance(v, torch.Tensor)])
    return {"seconds": times, "bytes_per_rank": nbytes}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="full", choices=sorted(plain.SIZES))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warm", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup-rounds", type=int, default=1)
    p.add_argument("--ckpt-rounds", type=int, default=3, help="0: no checkpoint phase")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--act-ckpt", action="store_true")
    p.add_argument("--only", default=",".join(STEP_CONTENDERS))
    p.add_argument("--report-json", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1 if args.device == "cpu" else 4)

    work = plain.Work(size=args.size, batch=args.batch, steps=args.steps, warm=args.warm, device=args.device,
                      bf16=args.bf16, act_ckpt=args.act_ckpt)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "cpu:gloo,cuda:nccl"  # a CPU backend too: dcp.async_save needs one
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=600))
    root = tempfile.mkdtemp(prefix="bench-fsdp-") if dist.get_rank() == 0 else ""
    root = _gather(root)[0]
    report: dict[str, Any] = {"work": vars(args), "world_size": dist.get_world_size(),
                              "num_params": sum(p.numel() for p in work.model().parameters())}
    start = time.perf_counter()
    try:
        report["steps"] = step_phase(work, device, args.rounds, args.warmup_rounds, args.only.split(","))
        report["steps_seconds"] = time.perf_counter() - start
        if args.ckpt_rounds > 0:
            report["ckpt"] = ckpt_phase(work, device, args.ckpt_rounds, root)
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        raise
    finally:
        report["seconds"] = time.perf_counter() - start
        if dist.get_rank() == 0:
            shutil.rmtree(root, ignore_errors=True)
            with open(args.report_json + ".tmp", "w") as f:
                json.dump(report, f, default=str)
            os.replace(args.report_json + ".tmp", args.report_json)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # end as distengine's ranks do (distengine/launch/rank.py): a gloo worker thread freeing a
    # tensor during interpreter teardown can abort a finished rank ("terminate called without an
    # active exception", exit -6; pytorch/pytorch#190489), which failed this job once under load
    from distengine.launch.rank import finish

    finish(0)
