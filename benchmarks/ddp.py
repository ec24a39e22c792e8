"""2-rank DDP on CPU (gloo): ``distengine launch`` + Trainer vs a hand-written script under torchrun.

Contenders, interleaved, each a whole job started from this process:

- ``de_2``: ``distengine launch --cpus 2 examples/synthetic.py --features off``
- ``torchrun_2``: ``torchrun --standalone --nproc-per-node 2 benchmarks/_ddp_plain.py``
- ``de_1`` / ``plain_1``: the same two scripts as one plain ``python`` process (scaling).

Both scripts train the same MLP (same seed) on the same data, batch 64 per rank, for the
same epochs; rank zero reports its fit time (process-group set-up included). Reported:
fit time ratio, whole-job wall time ratio (spawn to exit, as the user waits for it), and
throughput at 1 and 2 ranks. On a machine with 2 cores shared with other work, the 2-rank
scaling says more about the machine than about the framework; the ratios are the point.

Run alone::

    python -m benchmarks.ddp [--rounds 3] [--quick]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from benchmarks._harness import REPO_ROOT, Row, interleave, markdown_table, ratio_row, timed_subprocess

BENCH = "ddp"


def launcher_cmd() -> list[str]:
    """The command that is ``distengine launch`` in this environment.

    The console script may not be on PATH (a venv used without activating it), so start the
    same entry point with this interpreter.
    """
    if importlib.util.find_spec("distengine.launch.__main__") is not None:
        return [sys.executable, "-m", "distengine.launch"]
    return [sys.executable, "-c", "import sys; from distengine.launch.cli import main; sys.exit(main())",
            "launch"]


def torchrun_cmd() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run"]


def _job(cmd: list[str], report: str, walls: dict[str, list[float]], fits: dict[str, list[float]],
         thr: dict[str, list[float]], name: str) -> Callable[[], float]:
    def go() -> float:
        if os.path.exists(report):
            os.remove(report)
        wall = timed_subprocess(cmd, timeout=600)
        with open(report) as f:
            rep = json.load(f)
        walls.setdefault(name, []).append(wall)
        fits.setdefault(name, []).append(rep["fit_s"])
        thr.setdefault(name, []).append(rep["samples_per_s"])
        return wall
    return go


def run(rounds: int | None = None, quick: bool = False) -> dict[str, Any]:
    """Run the DDP benchmark; return ``{"rows": [Row, ...], "details": {...}}``."""
    rounds = rounds or (1 if quick else 3)
    work = (["--num-samples", "6400", "--max-epochs", "1"] if quick
            else ["--num-samples", "12800", "--max-epochs", "2"]) + ["--hidden", "256"]
    tmp = tempfile.mkdtemp(prefix="bench-ddp-")
    ex = os.path.join(REPO_ROOT, "examples", "synthetic.py")
    plain = os.path.join(REPO_ROOT, "benchmarks", "_ddp_plain.py")
    reports = {n: os.path.join(tmp, f"{n}.json") for n in ("de_2", "torchrun_2", "de_1", "plain_1")}
    cmds = {
        "de_2": launcher_cmd() + ["--cpus", "2", ex, "--features", "off", "--report-json", reports["de_2"]] + work,
        "torchrun_2": torchrun_cmd() + ["--standalone", "--nproc-per-node", "2", plain,
                                        "--report-json", reports["torchrun_2"]] + work,
        "de_1": [sys.executable, ex, "--features", "off", "--report-json", reports["de_1"]] + work,
        "plain_1": [sys.executable, plain, "--report-json", reports["plain_1"]] + work,
    }
    walls: dict[str, list[float]] = {}
    fits: dict[str, list[float]] = {}
    thr: dict[str, list[float]] = {}
    jobs = {n: _job(c, reports[n], walls, fits, thr, n) for n, c in cmds.items()}
    # No warm-up round: every job is a fresh process tree, and when this runs after the
    # other benchmarks the page cache already holds torch.
    interleave(jobs, rounds, warmup=0)

    rows: list[Row] = [
        ratio_row(BENCH, "2-rank fit: distengine / hand-written DDP", fits["de_2"], fits["torchrun_2"],
                  target=1.10, numer_name="distengine", denom_name="DDP"),
        ratio_row(BENCH, "2-rank job wall: distengine launch / torchrun", walls["de_2"], walls["torchrun_2"],
                  target=1.0, numer_name="launch", denom_name="torchrun"),
        ratio_row(BENCH, "1-rank fit: distengine / hand-written", fits["de_1"], fits["plain_1"],
                  numer_name="distengine", denom_name="loop"),
        ratio_row(BENCH, "scaling distengine: samples/s 2 ranks / 1 rank", thr["de_2"], thr["de_1"],
                  higher_is_better=True, unit_label="samples/s"),
        ratio_row(BENCH, "scaling hand-written: samples/s 2 ranks / 1 rank", thr["torchrun_2"], thr["plain_1"],
                  higher_is_better=True, unit_label="samples/s"),
    ]
    details = {"wall_s": walls, "fit_s": fits, "samples_per_s": thr, "work": work, "commands": cmds,
               "median_samples_per_s": {n: statistics.median(v) for n, v in thr.items()}}
    return {"rows": rows, "details": details}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="2-rank DDP on CPU: distengine vs torchrun")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    result = run(args.rounds, args.quick)
    print(markdown_table(result["rows"]))


if __name__ == "__main__":
    main()
