"""The reference Lightning environments the conformance harness runs the corpus under.

Each lives in its own virtual environment under `.conformance/` at the repository root
(ignored by git), created on first use and reused by later runs (a stamp file records what was
installed). Both use the same CPU build of torch 2.13 as distengine's tests.

pytorch-lightning 1.9.5 needs `pkg_resources` (setuptools < 70) while torch 2.13 asks for
setuptools >= 77, which pip's resolver refuses in one command; so 1.9.5 is installed without
its dependencies, they are installed by name, and setuptools is pinned last. 1.9.5 runs on
torch 2.13 for everything the corpus does.

Set DISTENGINE_CONFORMANCE_PL2 / DISTENGINE_CONFORMANCE_PL1 to an existing interpreter to
use it instead.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOT = Path(os.environ.get("DISTENGINE_CONFORMANCE_DIR", REPO / ".conformance"))

TORCH = "torch==2.13.0"
RECIPES = {
    "2.x": [[TORCH, "pytorch-lightning==2.6.6", "tensorboard"]],
    "1.x": [[TORCH, "tensorboard"],
            ["--no-deps", "pytorch-lightning==1.9.5"],
            ["lightning-utilities", "torchmetrics", "fsspec[http]", "pyyaml", "tqdm", "packaging",
             "typing-extensions"],
            ["setuptools<70"]],
}
OVERRIDE = {"2.x": "DISTENGINE_CONFORMANCE_PL2", "1.x": "DISTENGINE_CONFORMANCE_PL1"}
VERSIONS = {"2.x": "pytorch-lightning 2.6.6", "1.x": "pytorch-lightning 1.9.5"}


def _pip(python: Path, args: list[str], log) -> None:
    # pip's dependency-conflict warning for the setuptools pin is expected; the import check
    # below is what decides whether the environment works
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *args], check=True, stdout=log,
                   stderr=subprocess.STDOUT)


def lightning_python(style: str) -> Path:
    """The interpreter of the reference Lightning for `style` ("2.x" or "1.x"), built if needed."""
    if os.environ.get(OVERRIDE[style]):
        return Path(os.environ[OVERRIDE[style]])
    name = "pl2" if style == "2.x" else "pl1"
    venv = ROOT / name
    python = venv / "bin" / "python"
    stamp = venv / ".ready"
    recipe = repr(RECIPES[style])
    ROOT.mkdir(parents=True, exist_ok=True)
    with open(ROOT / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder even when several test processes ask
        if stamp.exists() and stamp.read_text() == recipe:
            return python
        with open(ROOT / f"{name}.log", "w") as log:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            for args in RECIPES[style]:
                _pip(python, args, log)
            subprocess.run([str(python), "-W", "ignore", "-c", "import pytorch_lightning, torch"],
                           check=True, stdout=log, stderr=subprocess.STDOUT)
        stamp.write_text(recipe)
    return python


# Tests that run real Lightning 2.x every time, stored results or not: the public-surface and
# ThroughputMonitor probes (test_public_surface.py, test_throughput.py) and Lightning loading
# distengine's pruned checkpoint (test_pruning_checkpoint.py)
ALWAYS = ("2.x",)


def needed() -> list[str]:
    """The styles the suite will run Lightning for here: those of ALWAYS, and those of the corpus
    scripts with no stored Lightning result usable on this machine (cache.py)."""
    from tests.conformance import cache

    return sorted(set(ALWAYS) | {script.style for script, _ in cache.missing()})


if __name__ == "__main__":
    # `make test` starts this (with --needed) in the background while the Slurm set-up and the first
    # test folders run, so the conformance tests find the environments they need built (or wait on
    # the lock above); with every script's Lightning result stored, it builds nothing
    for style in (needed() if "--needed" in sys.argv[1:] else RECIPES):
        print(f"building the reference {VERSIONS[style]} environment", flush=True)
        lightning_python(style)
