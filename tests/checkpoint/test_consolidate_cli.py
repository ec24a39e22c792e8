"""``distengine checkpoint consolidate`` as a user runs it (the console script, a subprocess):
``--help`` prints the usage and exits 0; an existing destination is refused with one line
unless ``--overwrite`` is given."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch

from distengine.checkpoint.sharded import ShardedCheckpointer

CONSOLE = [str(Path(sys.executable).parent / "distengine")]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTENGINE_", "TORCHELASTIC_"))}
    return subprocess.run(CONSOLE + ["checkpoint", "consolidate", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_consolidate_help_prints_the_usage_and_exits_0():
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: distengine checkpoint consolidate [--overwrite] SRC DST.ckpt")
    assert "--overwrite" in out.stdout and out.stderr == ""


def test_consolidate_refuses_an_existing_destination_unless_overwrite(tmp_path):
    src = tmp_path / "step=1.ckpt"
    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DCP: "assuming ... a single process"
        ckpt = ShardedCheckpointer()
        ckpt.save(src, {"state_dict": weights}, meta={"global_step": 1})
        ckpt.close()
    dst = tmp_path / "full.ckpt"
    dst.write_bytes(b"my precious file")

    out = _run(str(src), str(dst))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert f"'{dst}' exists; pass --overwrite to replace it, or name another DST file" in out.stderr
    assert dst.read_bytes() == b"my precious file"

    out = _run("--overwrite", str(src), str(dst))
    assert out.returncode == 0, out.stderr
    assert torch.equal(torch.load(dst, weights_only=True)["state_dict"]["w"], weights["w"])
