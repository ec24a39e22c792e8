"""Run every benchmark and write ``benchmarks/results/<host>-<date>.json`` and ``.md``.

Usage::

    python -m benchmarks                    # everything, about 10 minutes on 2 CPU cores
    python -m benchmarks --quick            # fewer rounds and less work: a smoke run
    python -m benchmarks --only overhead,transformer --rounds 5
    python -m benchmarks --out /tmp/results

Each benchmark also runs alone: ``python -m benchmarks.overhead`` (and ``ddp``,
``transformer``, ``launch``, ``checkpoint``, ``fsdp``,
``model_parallel``). A benchmark that fails is reported in the JSON
with its error, and the others still run; the exit status is 1 when any failed.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import shlex
import sys
import time
import traceback
from typing import Any

from benchmarks._harness import REPO_ROOT, Row, machine_info, markdown_table, rows_from_foreign, write_results

#: name -> (module, whether its run() takes ``quick``); launch and checkpoint belong to the
#: launcher and checkpoint work and are called through their ``run(rounds=...)``.
BENCHMARKS: dict[str, tuple[str, bool]] = {
    "overhead": ("benchmarks.overhead", True),
    "transformer": ("benchmarks.transformer", True),
    "ddp": ("benchmarks.ddp", True),
    "launch": ("benchmarks.launch", False),
    "checkpoint": ("benchmarks.checkpoint", False),
    "fsdp": ("benchmarks.fsdp", True),
    "model_parallel": ("benchmarks.model_parallel", True),
}
#: rounds for modules whose run() has no quick mode
_FOREIGN_ROUNDS = {False: 3, True: 1}


def run_one(name: str, rounds: int | None, quick: bool) -> tuple[list[Row], dict[str, Any]]:
    module_name, has_quick = BENCHMARKS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return [], {"skipped": f"{module_name} is not there yet"}
        raise
    if has_quick:
        result = module.run(rounds=rounds, quick=quick)
        return list(result["rows"]), result.get("details", {})
    kwargs: dict[str, Any] = {"rounds": rounds or _FOREIGN_ROUNDS[quick]}
    # pass quick=True on to a run() that understands it, and nothing it does not
    if quick and "quick" in inspect.signature(module.run).parameters:
        kwargs["quick"] = True
    result = module.run(**kwargs)
    return rows_from_foreign(name, result), {"result": result}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description="Run the distengine benchmarks.")
    p.add_argument("--quick", action="store_true", help="fewer rounds, less work (a smoke run)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per comparison (default: per benchmark)")
    p.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma list of {', '.join(BENCHMARKS)}")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "benchmarks", "results"),
                   help="folder for the JSON and markdown results")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.rounds is not None and args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")

    # one thread everywhere: the comparisons are about framework cost, not BLAS scaling,
    # and a shared machine gives steadier numbers this way
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

    start_info = machine_info()
    rows: list[Row] = []
    details: dict[str, Any] = {}
    failed = False
    for name in names:
        start = time.perf_counter()
        print(f"== {name} ...", flush=True)
        try:
            r, d = run_one(name, args.rounds, args.quick)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            failed = True
            traceback.print_exc()
            r, d = [], {"error": f"{type(exc).__name__}: {exc}"}
        d["seconds"] = round(time.perf_counter() - start, 1)
        rows += r
        details[name] = d
        status = d.get("skipped") or d.get("error") or "done"
        print(f"== {name}: {status} in {d['seconds']} s", flush=True)
        if r:
            print(markdown_table(r), flush=True)

    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    json_path, md_path = write_results(rows, {"details": details}, args.out, command.strip(), start_info)
    print("\n" + markdown_table(rows))
    print(f"\nwrote {os.path.relpath(json_path)} and {os.path.relpath(md_path)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
