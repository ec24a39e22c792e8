"""A checkpoint distengine saves with ModelPruning(make_pruning_permanent=True) holds plain weights
that the unpruned module loads strictly under real Lightning 2.6.6: scripts/pruning_checkpoint.py
trains under distengine, then Lightning's environment loads the file's ``state_dict`` into a
fresh ``Regressor`` and must get the final pruned weights. (Lightning's own
``load_from_checkpoint`` is not used: it refuses any distengine checkpoint, pruned or not, for
lacking its ``pytorch-lightning_version`` entry.)"""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from tests.conformance import harness

LOAD = """
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("script", sys.argv[1])
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
model = script.Regressor()
model.load_state_dict(torch.load(sys.argv[2], weights_only=False)["state_dict"])  # strict
torch.save(model.state_dict(), sys.argv[3])
"""


def test_lightning_loads_the_pruned_checkpoint(tmp_path, reference_python):
    script = harness.load_script(harness.SCRIPTS / "pruning_checkpoint.py")
    run = harness.collect(harness.start(script, sys.executable, tmp_path / "distengine", distengine=True))
    (ckpt,) = [c for c in run.checkpoints]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(harness.HERE / "runtime")
    out = tmp_path / "loaded.pt"
    proc = subprocess.run([str(reference_python("2.x")), "-W", "ignore", "-c", LOAD, str(script.path),
                           str(run.folder / ckpt), str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = torch.load(out, weights_only=True)
    final = run.weights[0]
    assert loaded.keys() == final.keys() == {"hidden.weight", "hidden.bias", "out.weight", "out.bias"}
    assert all(torch.equal(loaded[k], final[k]) for k in final)
    assert int((loaded["hidden.weight"].abs().sum(0) == 0).sum()) == 4  # 2 columns pruned per epoch
