"""Issue 26: the Trainer API that Lightning's own tests use gives what pytorch-lightning 2.6.6
gives: probes/trainer_api.py prints the same JSON under both (distengine through the shim).

Lightning's side is stored in probes/trainer_api.reference.json with a hash of the probe and of
the reference recipe; a stale or missing entry runs Lightning instead (and
test_reference_is_current fails until it is refreshed). Refresh:

    DISTENGINE_CONFORMANCE_RECORD=1 .venv/bin/python -m pytest -q tests/conformance/test_trainer_api.py
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conformance import envs

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROBE = HERE / "probes" / "trainer_api.py"
STORED = HERE / "probes" / "trainer_api.reference.json"
PARTS = ["exceptions", "properties", "env_defaults", "callback_log", "loggers", "user_warnings"]


def _key() -> str:
    return hashlib.sha256(PROBE.read_bytes() + repr(envs.RECIPES["2.x"]).encode()).hexdigest()


def _stored() -> dict:
    return json.loads(STORED.read_text()) if STORED.exists() else {}


def _probe(python: str | Path, part: str, shim: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PL_TRAINER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE / "shim"), str(REPO)] if shim else [])
    env["PATH"] = "/usr/bin:/bin"  # no `srun` on the PATH
    proc = subprocess.run([str(python), str(PROBE), part], env=env, capture_output=True, text=True, timeout=120)
    line = [x for x in proc.stdout.splitlines() if x.startswith("PROBE ")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    return json.loads(line[-1][len("PROBE "):])


def _lightning(part: str, reference_python) -> dict:
    stored = _stored()
    if stored.get("key") == _key() and part in stored.get("parts", {}):
        return stored["parts"][part]
    theirs = _probe(reference_python("2.x"), part, shim=False)
    if os.environ.get("DISTENGINE_CONFORMANCE_RECORD") == "1":
        if stored.get("key") != _key():
            stored = {"key": _key(), "parts": {}}
        stored["parts"][part] = theirs
        STORED.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    return theirs


@pytest.mark.parametrize("part", PARTS)
def test_same_as_lightning(part, reference_python):
    ours = _probe(sys.executable, part, shim=True)
    assert ours == _lightning(part, reference_python)


def test_reference_is_current():
    stored = _stored()
    assert stored.get("key") == _key() and sorted(stored.get("parts", {})) == sorted(PARTS), \
        "probes/trainer_api.reference.json is stale: refresh it (see this module's docstring)"
