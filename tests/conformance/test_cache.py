"""The stored Lightning results (cache.py): used only for the exact inputs they came from."""
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conformance import cache, harness

REPO = harness.HERE.parents[1]


@pytest.fixture(autouse=True)
def _cache_on(monkeypatch):
    for name in ("DISTENGINE_CONFORMANCE_CACHE", "DISTENGINE_CONFORMANCE_PL1", "DISTENGINE_CONFORMANCE_PL2"):
        monkeypatch.delenv(name, raising=False)


def _copy(tmp_path, name="max_steps"):
    (tmp_path / "scripts").mkdir(exist_ok=True)
    path = tmp_path / "scripts" / f"{name}.py"
    shutil.copy(harness.SCRIPTS / f"{name}.py", path)
    return harness.load_script(path)


def _run(tmp_path):
    weights = {0: {"w": torch.randn(3, 2), "n": torch.tensor(7)}, 1: {"w": torch.randn(3, 2), "n": torch.tensor(7)}}
    results = {r: {"global_step": 7, "current_epoch": 2, "callback_metrics": {"loss": 0.1 + r}, "extra": {"k": [1, 2]}}
               for r in (0, 1)}
    scalars = {("lightning_logs/version_0", "loss", 3): 1 / 3, ("csv/metrics.csv", "acc", 0): float("nan")}
    return harness.Run(tmp_path, results, weights, scalars, ["a/epoch=1-step=7.ckpt"], "")


def test_a_stored_result_reads_back_exactly(tmp_path):
    script, run = _copy(tmp_path), _run(tmp_path)
    cache.save(script, 2, run, store=tmp_path / "store")
    back = cache.load(script, 2, store=tmp_path / "store")
    assert back.results == run.results and back.checkpoints == run.checkpoints
    assert back.scalars.keys() == run.scalars.keys()
    assert back.scalars[("lightning_logs/version_0", "loss", 3)] == 1 / 3
    assert math.isnan(back.scalars[("csv/metrics.csv", "acc", 0)])
    for r in (0, 1):
        assert harness.weights_diff(back.weights[r], run.weights[r]) is None
    assert cache.load(script, 1, store=tmp_path / "store") is None  # another rank count: no entry


def test_an_edited_script_is_not_served_its_old_result_and_is_reported_stale(tmp_path):
    script = _copy(tmp_path)
    store = tmp_path / "store"
    cache.save(script, 1, _run(tmp_path), store=store)
    assert cache.load(script, 1, store=store) is not None and cache.stale(store, [script]) == []
    script.path.write_text(script.path.read_text().replace("max_steps=7", "max_steps=8"))
    assert cache.load(script, 1, store=store) is None
    assert cache.stale(store, [script]) == ["max_steps/1"]
    assert cache.stale(store, []) == ["max_steps/1 (no such script)"]
    script.ranks = False
    cache.save(script, 2, _run(tmp_path), store=store)
    assert "max_steps/2 (the script does not run on 2 ranks)" in cache.stale(store, [script])


def test_another_platform_or_cache_off_runs_lightning(tmp_path, monkeypatch):
    script = _copy(tmp_path)
    store = tmp_path / "store"
    folder = cache.save(script, 1, _run(tmp_path), store=store)
    monkeypatch.setenv("DISTENGINE_CONFORMANCE_CACHE", "0")
    assert cache.load(script, 1, store=store) is None
    monkeypatch.delenv("DISTENGINE_CONFORMANCE_CACHE")
    monkeypatch.setenv("DISTENGINE_CONFORMANCE_PL2", sys.executable)  # another interpreter than the recipe's
    assert cache.load(script, 1, store=store) is None
    monkeypatch.delenv("DISTENGINE_CONFORMANCE_PL2")
    assert cache.load(script, 1, store=store) is not None
    key = cache.stored_key(folder)
    good = dict(key["platform"])
    key["platform"]["cpu"] = "another CPU"
    (folder / "key.json").write_text(__import__("json").dumps(key))
    assert cache.load(script, 1, store=store) is None
    assert cache.stale(store, [script]) == []  # not stale: the script did not change
    key["platform"] = good
    (folder / "key.json").write_text(__import__("json").dumps(key))
    assert cache.load(script, 1, store=store).approx is False


def test_a_cpu_that_rounds_otherwise_compares_within_tolerance(tmp_path):
    """The same capability with other kernels (AMX or not): the stored 1-process result is used with
    its weights compared within tolerance, a 2-rank one as it is; a real slip still shows."""
    script = _copy(tmp_path)
    store = tmp_path / "store"
    for ranks in (1, 2):
        folder = cache.save(script, ranks, _run(tmp_path), store=store)
        key = cache.stored_key(folder)
        key["platform"]["kernels"] = "0123456789abcdef"
        (folder / "key.json").write_text(__import__("json").dumps(key))
    assert cache.load(script, 1, store=store).approx is True
    assert cache.load(script, 2, store=store).approx is False
    assert cache.missing([script], store=store) == []
    w = {"w": torch.tensor([0.5, -1.25, 2.0])}
    rounded = {"w": w["w"] + torch.tensor([3e-8, 0.0, -1e-7])}
    slipped = {"w": w["w"] - 1e-3 * torch.tensor([0.3, 0.1, -0.2])}  # one more SGD step's worth
    assert harness.weights_diff(w, rounded) is not None
    assert harness.weights_diff(w, rounded, approx=True) is None
    assert "1 of 1 tensors differ" in harness.weights_diff(w, slipped, approx=True)


def test_reference_entries_match_their_scripts():
    stale = cache.stale()
    assert not stale, (f"stored Lightning results out of date for {stale}: refresh them with "
                       f"`.venv/bin/python -m tests.conformance.record` and commit tests/conformance/reference/")


def test_record_names_an_unknown_script():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([sys.executable, "-m", "tests.conformance.record", "no_such_script"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no such script(s) ['no_such_script']" in proc.stderr


def test_make_test_builds_the_2x_environment_even_when_every_result_is_stored(monkeypatch):
    """`make test` builds what `envs --needed` names in the background; the 2.x environment is always
    run by a few tests (envs.ALWAYS), so it is named even with every corpus result stored: built
    on demand instead, it held a worker for its whole build (77 s in a fresh-clone run)."""
    from tests.conformance import envs

    monkeypatch.setattr(cache, "missing", lambda: [])
    assert envs.needed() == ["2.x"]
    one_x = next(s for s in harness.corpus() if s.style == "1.x")
    monkeypatch.setattr(cache, "missing", lambda: [(one_x, 1)])
    assert envs.needed() == ["1.x", "2.x"]
