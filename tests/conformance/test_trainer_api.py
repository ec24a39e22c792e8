"""Issue 26: the Trainer API that Lightning's own tests use gives what pytorch-lightning 2.6.6
gives: probes/trainer_api.py prints the same JSON under both (distengine through the shim)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _probe(python: str | Path, part: str, shim: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PL_TRAINER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE / "shim"), str(REPO)] if shim else [])
    env["PATH"] = "/usr/bin:/bin"  # no `srun` on the PATH
    proc = subprocess.run([str(python), str(HERE / "probes" / "trainer_api.py"), part], env=env,
                          capture_output=True, text=True, timeout=120)
    line = [x for x in proc.stdout.splitlines() if x.startswith("PROBE ")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    return json.loads(line[-1][len("PROBE "):])


PARTS = ["exceptions", "properties", "env_defaults", "callback_log", "loggers", "user_warnings"]


@pytest.mark.parametrize("part", PARTS)
def test_same_as_lightning(part, reference_python):
    ours = _probe(sys.executable, part, shim=True)
    theirs = _probe(reference_python("2.x"), part, shim=False)
    assert ours == theirs
