"""Checkpoint benchmark: distengine's save/load against plain torch.save/torch.load, and how long
an async save blocks the training loop.

The state is a ~100M-parameter MLP and its Adam state (about 1.2 GB of fp32 tensors), laid out
as the Trainer lays it out (``state_dict`` + ``optimizer_states``). Every comparison runs in
interleaved rounds (A, B, B, A, ...) on the same temporary folder on local disk, and reports the
median of the per-round ratios with the spread:

* save: ``atomic_save`` (temp file, fsync, rename, folder fsync) / ``torch.save``. Plain
  ``torch.save`` does not fsync, so a second row compares with ``torch.save`` + ``fsync``: the
  cost of durability itself versus the cost of distengine's machinery.
* load: ``safe_load`` / ``torch.load(weights_only=True)`` of the same file.
* async: the time ``AsyncCheckpointWriter.submit`` blocks the caller / a synchronous
  ``atomic_save`` (target <= 10%), in steady state: the first submit allocates the host buffers
  that later ones refill, and is reported apart.

Run alone: ``python -m benchmarks.checkpoint [--rounds N] [--params 100e6]``; prints JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Callable

import torch

from distengine.checkpoint.async_writer import AsyncCheckpointWriter
from distengine.checkpoint.io import atomic_save, safe_load

TARGET_IO = 1.1
TARGET_ASYNC = 0.10


def build_state(params: float = 100e6, width: int = 4096) -> dict[str, Any]:
    """A model of about ``params`` parameters with one Adam step taken (so moments exist)."""
    layers = max(1, round(params / (width * width + width)))
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for p in model.parameters():  # a cheap "backward": Adam only needs a gradient to exist
        p.grad = torch.full_like(p, 1e-3)
    opt.step()
    opt.zero_grad(set_to_none=True)
    n = sum(p.numel() for p in model.parameters())
    return {"state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()],
            "global_step": 1, "epoch": 0, "num_params": n}


def _plain_save(state: dict, path: str) -> None:
    torch.save(state, path)


def _plain_save_fsync(state: dict, path: str) -> None:
    torch.save(state, path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _interleaved(contenders: dict[str, Callable[[], Any]], rounds: int,
                 cleanup: Callable[[], None] | None = None) -> dict[str, list[float]]:
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(_timed(contenders[name]))
            if cleanup is not None:
                cleanup()
    return times


def _ratio_row(comparison: str, num: list[float], den: list[float], target: float | None,
               context: str) -> dict[str, Any]:
    ratios = [a / b for a, b in zip(num, den, strict=True)]
    return {"benchmark": "checkpoint", "comparison": comparison,
            "value": statistics.median(ratios), "lo": min(ratios), "hi": max(ratios), "unit": "x",
            "target": target, "rounds": len(ratios),
            "context": f"{context}: {statistics.median(num):.3f}s vs {statistics.median(den):.3f}s"}


def run(rounds: int = 3, params: float = 100e6, folder: str | None = None) -> dict[str, Any]:
    """Run all comparisons; returns ``{"rows": [...], <flat numbers>}`` (see the module doc)."""
    torch.set_num_threads(1)
    state = build_state(params)
    nbytes = sum(t.numel() * t.element_size() for t in _tensors(state))
    work = tempfile.mkdtemp(prefix="distengine-ckpt-bench-", dir=folder)
    try:
        a, b = os.path.join(work, "de.ckpt"), os.path.join(work, "plain.ckpt")

        def clean() -> None:
            for p in (a, b):
                if os.path.exists(p):
                    os.remove(p)

        save = _interleaved({"distengine": lambda: atomic_save(state, a),
                             "torch.save": lambda: _plain_save(state, b),
                             "torch.save+fsync": lambda: _plain_save_fsync(state, b)},
                            rounds, cleanup=clean)
        atomic_save(state, a)  # one file both loaders read
        load = _interleaved({"distengine": lambda: safe_load(a),
                             "torch.load": lambda: torch.load(a, map_location="cpu", weights_only=True)},
                            rounds)
        clean()

        writer = AsyncCheckpointWriter()
        # the first save allocates the host buffers that later saves refill: time it apart
        t0 = time.perf_counter()
        writer.submit(state, a)
        first_block = time.perf_counter() - t0
        writer.wait()
        clean()
        blocked, total, sync = [], [], []
        for r in range(rounds):
            def async_save() -> None:
                t0 = time.perf_counter()
                writer.submit(state, a)
                blocked.append(time.perf_counter() - t0)
                writer.wait()
                total.append(time.perf_counter() - t0)

            for name in (("async", "sync") if r % 2 == 0 else ("sync", "async")):
                gc.collect()
                if name == "async":
                    async_save()
                else:
                    sync.append(_timed(lambda: atomic_save(state, b)))
                clean()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    gb = nbytes / 1e9
    rows = [
        _ratio_row("save: atomic_save / torch.save", save["distengine"], save["torch.save"],
                   TARGET_IO, f"{gb:.2f} GB"),
        _ratio_row("save: atomic_save / (torch.save + fsync)", save["distengine"],
                   save["torch.save+fsync"], TARGET_IO, f"{gb:.2f} GB"),
        _ratio_row("load: safe_load / torch.load", load["distengine"], load["torch.load"],
                   TARGET_IO, f"{gb:.2f} GB"),
        _ratio_row("async save: time blocked / synchronous save", blocked, sync, TARGET_ASYNC,
                   f"submit() vs atomic_save (first submit, allocating: {first_block:.3f}s)"),
    ]
    return {
        "rows": rows, "num_params": state["num_params"], "bytes": nbytes,
        "save_ratio": rows[0]["value"], "save_ratio_vs_fsync": rows[1]["value"],
        "load_ratio": rows[2]["value"], "async_block_ratio": rows[3]["value"],
        "first_async_block_s": first_block,
        "seconds": {"save": save, "load": load,
                    "async_blocked": blocked, "async_total": total, "sync_save": sync},
    }


def _tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--params", type=float, default=100e6)
    ap.add_argument("--dir", default=None, help="folder on the disk to measure (default: temp)")
    args = ap.parse_args()
    result = run(rounds=args.rounds, params=args.params, folder=args.dir)
    for row in result["rows"]:
        target = f" (target <= {row['target']})" if row["target"] is not None else ""
        print(f"{row['comparison']}: {row['value']:.3f}x [{row['lo']:.3f}..{row['hi']:.3f}]"
              f"{target}; {row['context']}", flush=True)
    print(json.dumps({k: v for k, v in result.items() if k != "seconds"}, default=str))


if __name__ == "__main__":
    main()
