"""ThroughputMonitor writes the same (tag, step) pairs as Lightning 2.6.6's, on 1 process and on
2 ranks, with plausible rates: probes/throughput_fit.py runs under both. The values are timings,
so they are checked against the wall-clock time the script measures itself, not against
Lightning's."""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

from tests.conformance import harness

SCRIPT = harness.Script(harness.HERE / "probes" / "throughput_fit.py", "ThroughputMonitor", "2.x")


def _run_both(tmp_path: Path, reference_python, ranks: int) -> tuple[harness.Run, harness.Run]:
    ours = harness.start(SCRIPT, sys.executable, tmp_path / "distengine", True, ranks)
    theirs = harness.start(SCRIPT, reference_python("2.x"), tmp_path / "lightning", False, ranks)
    return harness.collect(ours), harness.collect(theirs)


def _values(run: harness.Run, tag: str) -> list[float]:
    return [v for (f, t, _), v in sorted(run.scalars.items()) if t == tag and f.startswith("csv")]


@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_same_tags_and_steps_as_lightning(tmp_path, reference_python, ranks):
    ours, theirs = _run_both(tmp_path, reference_python, ranks)
    assert set(ours.scalars) == set(theirs.scalars), sorted(set(ours.scalars) ^ set(theirs.scalars))
    tags = {t for _, t, _ in ours.scalars}
    for stage in ("train", "test", "predict"):
        assert {f"{stage}/device/samples_per_sec", f"{stage}/device/flops_per_sec", f"{stage}/device/items_per_sec",
                f"{stage}/samples"} <= tags
    assert ("train/samples_per_sec" in tags) == (ranks > 1)  # the global rates only on several ranks
    assert not any(t.endswith("/mfu") for t in tags)  # no peak FLOPs on a CPU, as in Lightning

    extra = ours.results[0]["extra"]
    for tag in tags:
        if tag.endswith("_per_sec"):
            assert min(_values(ours, tag)) > 0, tag
    # the rate over a window of steps against the script's own clock (its epochs' wall time,
    # a little validation included) and against the sleep every step takes
    logged = statistics.median(_values(ours, "train/device/samples_per_sec"))
    clock = extra["samples"] / extra["seconds"]
    batch = 4
    assert clock / 3 < logged < 3 * clock, (logged, clock)
    assert logged < batch / extra["sleep"], (logged, batch / extra["sleep"])
    flops = statistics.median(_values(ours, "train/device/flops_per_sec"))
    assert flops == pytest.approx(logged / batch * extra["flops_per_batch"], rel=0.5)
    if ranks > 1:  # the global rates count both ranks' samples
        for (f, tag, step), value in ours.scalars.items():
            if tag == "train/samples_per_sec":
                assert value == pytest.approx(2 * ours.scalars[(f, "train/device/samples_per_sec", step)])
