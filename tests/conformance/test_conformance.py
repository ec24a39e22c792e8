"""The differential harness: every corpus script under distengine and under real Lightning.

See harness.py for what is compared. 1 process, unshuffled data: weights must be torch.equal.
Each script also runs on 2 ranks: under distengine (two ranks with the environment of
`distengine launch --cpus 2`, or under the launcher itself: harness.LAUNCHED) and, for Lightning, under
torchrun with `PL_TRAINER_ACCELERATOR=cpu PL_TRAINER_DEVICES=2`: no hang, exit 0, every distengine
rank at the same step with the same weights, and the same (global_step, current_epoch) as
Lightning on 2 ranks.
A script with `world: N` (model_parallel_tp_dp: tensor parallel 2 x data parallel 2) runs only
as N rank processes started directly under both, and is compared in full on every rank.
"""
import pytest
import torch

from tests.conformance import harness, table

SCRIPTS = [s for s in harness.corpus() if s.world == 1]
IDS = [s.name for s in SCRIPTS]
WORLDS = [s for s in harness.corpus() if s.world > 1]


def _check(script, found):
    undeclared = {k: v for k, v in found.items() if k not in script.known}
    assert not undeclared, f"{script.name} differs from Lightning: {undeclared}"


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_same_as_lightning(script, reference_python, tmp_path):
    ours, theirs = harness.run_both(script, reference_python, tmp_path)
    found = harness.compare(ours, theirs)
    if theirs.approx:  # stored on a CPU that rounds otherwise: weights within tolerance (cache.py)
        print(f"{script.name}: Lightning's stored result comes from another CPU; weights compared within "
              f"{harness.REL_TOL}")
    _check(script, found)
    # a declared weights difference may be within tolerance: not called stale on another CPU
    stale = sorted(set(script.known) - set(found) - {"ranks"} - ({"weights"} if theirs.approx else set()))
    assert not stale, f"{script.name} declares differences that no longer occur: {stale} (remove them)"


RANKED = [s for s in SCRIPTS if s.ranks]


@pytest.mark.parametrize("script", RANKED, ids=[s.name for s in RANKED])
def test_two_ranks(script, reference_python, tmp_path):
    ours, theirs = harness.run_both(script, reference_python, tmp_path, ranks=2)
    problem = harness.compare_ranks(ours, theirs)
    found = {"ranks": problem} if problem else {}
    _check(script, found)
    if "ranks" in script.known:
        assert problem, f"{script.name} declares a 2-rank difference that no longer occurs (remove it)"


def test_docs_table_is_generated_from_the_corpus():
    assert table.current() == table.render(), \
        "the table in docs/lightning.md is stale: run python -m tests.conformance.table --write"


def test_harness_detects_a_changed_weight():
    a = {"w": torch.ones(3)}
    b = {"w": torch.tensor([1.0, 1.0, 1.0 + 2**-20])}
    assert harness.weights_diff(a, a) is None
    assert "1 of 1 tensors differ" in harness.weights_diff(a, b)


@pytest.mark.parametrize("script", WORLDS, ids=[s.name for s in WORLDS])
def test_every_rank_as_lightning(script, reference_python, tmp_path):
    """A `world: N` script: N rank processes started directly under each; on every rank the weights
    (torch.equal), steps, epochs, callback metrics and extras, and the run's logged scalars and checkpoints."""
    ours, theirs = harness.run_both(script, reference_python, tmp_path, ranks=script.world)
    assert sorted(theirs.results) == list(range(script.world))
    found = harness.compare_every_rank(ours, theirs)
    _check(script, found)
    stale = sorted(set(script.known) - set(found) - ({"weights"} if theirs.approx else set()))
    assert not stale, f"{script.name} declares differences that no longer occur: {stale} (remove them)"


def test_the_launched_scripts_run_on_two_ranks():
    """harness.LAUNCHED names scripts whose 2-rank run goes through `distengine launch` itself."""
    assert harness.LAUNCHED <= {s.name for s in RANKED}
