"""Exact resume after a SIGKILL, at 1 and 2 ranks, and resume at a different world size.

Each case trains the same job three ways: uninterrupted (the baseline), killed by SIGKILL right
after the checkpoint of step k (or at an epoch boundary), and resumed with ``ckpt_path="last"``.
The resumed job must end with bit-identical weights (``torch.equal``) and log exactly the same
metric values as the baseline. Across world sizes (2 -> 1, 1 -> 2) the weights legitimately
differ, but the rest of the interrupted epoch must visit every sample exactly once.

The jobs are real processes (tests/checkpoint/scripts/resume_train.py): shuffled data,
``num_workers=2``, dropout, Adam and an LR schedule; 2 ranks run on gloo.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from distengine.checkpoint.io import read_last_pointer, safe_load
from tests.helpers import free_port, start_rank, wait_rank

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "resume_train.py")
N_TRAIN = 40
LAUNCH_TIMEOUT = 120  # one job (a normal one takes 5-20 s); two fit in pytest-timeout's 300 s per test


def _launch(world: int, root: str, out: str, run: str, *extra: str, killed: bool = False,
            expect: int | None = None) -> list[float]:
    """Run the script on ``world`` ranks; every rank must exit 0 (or die by SIGKILL if killed,
    or exit ``expect``). Returns each rank's exit time."""
    port = str(free_port())
    procs, logs = [], []
    os.makedirs(out, exist_ok=True)
    for rank in range(world):
        env = dict(os.environ)
        for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                     "MASTER_PORT", "GROUP_RANK"):
            env.pop(name, None)
        env.update({"PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""),
                    "OMP_NUM_THREADS": "1", "DISTENGINE_TIMEOUT": "60",
                    "PYTHONFAULTHANDLER": "1"})  # a job stopped for running too long shows its stacks
        if world > 1:
            env.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                        "LOCAL_WORLD_SIZE": str(world), "GROUP_RANK": "0",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
        # the rank entry point of `distengine launch`: a plain `python SCRIPT` of several gloo
        # ranks can abort at interpreter shutdown (exit 134, pytorch/pytorch#190489; launch/rank.py)
        entry = ["-m", "distengine.launch.rank"] if world > 1 else []
        cmd = [sys.executable, *entry, SCRIPT, "--root", root, "--out", out, "--run", run, *extra]
        logs.append(os.path.join(out, f"{run}-rank{rank}.out"))
        procs.append(start_rank(cmd, env, logs[-1], rank))
    outputs, codes, ended = [], [], []
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    try:
        for p, log in zip(procs, logs, strict=True):
            try:
                text = wait_rank(p, max(deadline - time.monotonic(), 0.1), log)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"run {run!r} ran past {LAUNCH_TIMEOUT} s; the stacks of its "
                                     f"processes:\n{_stop_with_stacks(procs, logs)}") from None
            ended.append(time.time())
            outputs.append(text)
            codes.append(p.returncode)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    want = expect if expect is not None else -signal.SIGKILL if killed else 0
    if any(c != want for c in codes):
        tails = "\n".join(f"--- rank {r} exit {c}:\n{o[-3000:]}" for r, (c, o) in
                          enumerate(zip(codes, outputs, strict=True)))
        raise AssertionError(f"run {run!r}: expected every rank to exit {want}\n{tails}")
    return ended


def _stop_with_stacks(procs: list, logs: list[str]) -> str:
    """SIGABRT every process of a job that ran too long, loader workers first (each prints its
    thread stacks: PYTHONFAULTHANDLER), and return what each rank printed."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(p.pid).children(recursive=True):
                    child.send_signal(signal.SIGABRT)
            time.sleep(1)
            p.send_signal(signal.SIGABRT)
    texts = []
    for rank, (p, log) in enumerate(zip(procs, logs, strict=True)):
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        with open(log) as f:
            text = f.read()
        texts.append(f"--- rank {rank} exit {p.returncode}:\n{text[-6000:]}")
    return "\n".join(texts)


def _records(out: str, run: str) -> list[dict]:
    with open(os.path.join(out, f"{run}-log.jsonl")) as f:
        return [json.loads(line) for line in f]


def _indices(out: str, run: str, world: int) -> list[dict]:
    recs = []
    for rank in range(world):
        path = os.path.join(out, f"{run}-idx-rank{rank}.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                recs += [dict(json.loads(line), rank=rank) for line in f]
    return recs


def _keyed(records: list[dict]) -> dict:
    # one entry per (step, metric names): a resumed run may log a step the killed run logged
    return {(r["step"], tuple(sorted(r["metrics"]))): r["metrics"] for r in records}


# The killed runs are shared by the exact-resume and the world-size tests, so each runs once.
_KILLS = {
    (1, "mid"): ["--kill-step", "3"],                                # 10 steps per epoch
    (1, "boundary_step"): ["--kill-step", "10"],                     # ckpt before epoch-end work
    (1, "boundary_epoch"): ["--kill-epoch", "1", "--ckpt-every", "epochs"],
    (2, "mid"): ["--kill-step", "2"],                                # 5 steps per epoch
    (2, "boundary_step"): ["--kill-step", "5"],
}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    cache: dict = {}

    def baseline(world: int) -> str:
        key = ("base", world)
        if key not in cache:
            out = str(base / "out")
            _launch(world, str(base / f"base{world}"), out, f"base{world}")
            cache[key] = out
        return cache[key]

    def killed(world: int, variant: str) -> tuple[str, str, int]:
        """A pristine copy of the checkpoint folder left by the killed run, and its step."""
        key = ("kill", world, variant)
        if key not in cache:
            root, out = base / f"kill{world}-{variant}", str(base / "out")
            run = f"kill{world}-{variant}"
            _launch(world, str(root), out, run, *_KILLS[(world, variant)], killed=True)
            pristine = base / f"pristine{world}-{variant}"
            shutil.copytree(root, pristine)
            step = safe_load(read_last_pointer(pristine / "checkpoints"))["global_step"]
            cache[key] = (str(pristine), run, step)
        return cache[key]

    def resume(world: int, variant: str, new_world: int) -> tuple[str, str, str, int]:
        pristine, killed_run, step = killed(world, variant)
        root = base / f"resume{world}to{new_world}-{variant}"
        shutil.copytree(pristine, root)
        run = f"resume{world}to{new_world}-{variant}"
        out = str(base / "out")
        _launch(new_world, str(root), out, run, "--resume",
                *(["--ckpt-every", "epochs"] if "epoch" in variant else []))
        return out, killed_run, run, step

    return baseline, killed, resume


@pytest.mark.parametrize("world, variant", list(_KILLS))
def test_exact_resume_after_sigkill(work, world, variant):
    baseline, _, resume = work
    base_out = baseline(world)
    out, killed_run, run, step = resume(world, variant, world)
    assert step > 0
    base_w = torch.load(os.path.join(base_out, f"base{world}-final.pt"))
    got_w = torch.load(os.path.join(out, f"{run}-final.pt"))
    differ = [k for k in base_w if not torch.equal(base_w[k], got_w[k])]
    assert not differ, f"final weights differ from the uninterrupted run in {differ}"

    base_log = _keyed(_records(base_out, f"base{world}"))
    killed_log = _records(out, killed_run)
    resumed_log = _records(out, run)
    assert resumed_log and min(r["step"] for r in resumed_log) <= step + 1
    merged = _keyed(killed_log)
    merged.update(_keyed(resumed_log))
    mismatched = {k: (base_log.get(k), merged.get(k)) for k in set(base_log) | set(merged)
                  if base_log.get(k) != merged.get(k)}
    assert not mismatched, f"logged metrics differ (step, names): (baseline, resumed) {mismatched}"


def _epoch_coverage(killed: list[dict], resumed: list[dict], step: int, epoch: int) -> list[int]:
    seen = [i for r in killed if r["epoch"] == epoch and r["step"] <= step for i in r["idx"]]
    seen += [i for r in resumed if r["epoch"] == epoch for i in r["idx"]]
    return sorted(seen)


@pytest.mark.parametrize("world, new_world", [(2, 1), (1, 2)])
def test_resume_at_another_world_size_visits_each_sample_once(work, world, new_world):
    _, _, resume = work
    out, killed_run, run, step = resume(world, "mid", new_world)
    killed = _indices(out, killed_run, world)
    resumed = _indices(out, run, new_world)
    assert any(r["step"] > step for r in resumed)
    # the interrupted epoch: what the killed run trained on up to its checkpoint, then the rest
    assert _epoch_coverage(killed, resumed, step, 0) == list(range(N_TRAIN))
    # the next epoch runs whole at the new world size
    assert sorted(i for r in resumed if r["epoch"] == 1 for i in r["idx"]) == list(range(N_TRAIN))
    # and training carried on from the checkpoint, not from scratch
    assert min(r["step"] for r in resumed) == step + 1


@pytest.mark.slow
def test_sigterm_one_step_apart_stops_once_and_resumes_exactly(work, tmp_path):
    """SIGTERM reaches rank 1 after step 2 and rank 0 after step 3: the ranks agree to stop at
    one step boundary (the stop vote may land a step after the request), write ONE checkpoint,
    both exit 143 within 30 s of the first signal; resuming from it is exact."""
    baseline, _, _ = work
    base_out = baseline(2)
    root, out = str(tmp_path / "root"), str(tmp_path / "out")
    ended = _launch(2, root, out, "term", "--term-steps", "3,2", "--ckpt-every", "epochs",
                    expect=128 + signal.SIGTERM)
    with open(os.path.join(out, "term-term-rank1")) as f:
        signalled = float(f.read())
    assert max(ended) - signalled < 30
    folder = os.path.join(root, "checkpoints")
    ckpts = sorted(n for n in os.listdir(folder) if n.endswith(".ckpt"))
    step = safe_load(os.path.join(folder, ckpts[0]))["global_step"]
    assert ckpts == [f"epoch=0-step={step}-signal_15.ckpt"] and step in (2, 3), ckpts
    assert read_last_pointer(folder) == os.path.join(folder, ckpts[0])
    # both ranks stopped at that step: neither trained past it
    for rank in (0, 1):
        assert max(r["step"] for r in _indices(out, "term", 2) if r["rank"] == rank) == step
    _launch(2, root, out, "after-term", "--resume", "--ckpt-every", "epochs")
    base_w = torch.load(os.path.join(base_out, "base2-final.pt"))
    got_w = torch.load(os.path.join(out, "after-term-final.pt"))
    assert [k for k in base_w if not torch.equal(base_w[k], got_w[k])] == []
    merged = _keyed(_records(out, "term"))
    merged.update(_keyed(_records(out, "after-term")))
    assert merged == _keyed(_records(base_out, "base2"))


@pytest.mark.slow
def test_resumed_twice_in_consecutive_epochs_is_exact(work, tmp_path):
    """Killed mid-epoch 0, resumed, killed again mid-epoch 1, resumed: the epoch after a
    resumed one must save its own data position, not add the resumed epoch's starting offset
    (it did: the third run then skipped most of epoch 1, found by the chaos test)."""
    baseline, _, _ = work
    base_out = baseline(1)
    root, out = str(tmp_path / "root"), str(tmp_path / "out")
    _launch(1, root, out, "twice-a", "--kill-step", "3", killed=True)
    _launch(1, root, out, "twice-b", "--resume", "--kill-step", "14", killed=True)
    _launch(1, root, out, "twice-c", "--resume")
    base_w = torch.load(os.path.join(base_out, "base1-final.pt"))
    got_w = torch.load(os.path.join(out, "twice-c-final.pt"))
    assert [k for k in base_w if not torch.equal(base_w[k], got_w[k])] == []
    # twice-b trained epoch 1 up to step 14, twice-c from step 15 on
    epoch1 = sorted(i for r in _indices(out, "twice-b", 1) + _indices(out, "twice-c", 1)
                    if r["epoch"] == 1 for i in r["idx"])
    assert epoch1 == list(range(N_TRAIN)), "epoch 1 must visit every sample exactly once"


@pytest.mark.parametrize("generator", [False, True])
def test_one_process_shuffle_resumes_its_drawn_permutation(tmp_path, generator):
    """One process, shuffled: each epoch's permutation comes from a seed drawn from torch's
    global generator (or from the loader's generator=), as with Lightning's RandomSampler.
    Killed in the middle of the second epoch (the generator has moved on since its seeding)
    and resumed, the run takes the checkpoint's drawn seed (generator state)
    again instead of drawing anew: the same samples, weights and random draws after the fit as
    the uninterrupted run. (num_workers=0: the permutation is drawn at the first batch, after
    the resumed run restored the RNG; the num_workers=2 case is test_exact_resume_after_sigkill.)"""
    out = str(tmp_path / "out")
    flags = ("--workers", "0", *(["--generator"] if generator else []))
    _launch(1, str(tmp_path / "base"), out, "base", *flags)
    root = str(tmp_path / "root")
    _launch(1, root, out, "cut", "--kill-step", "14", *flags, killed=True)
    _launch(1, root, out, "resumed", "--resume", *flags)
    base_w = torch.load(os.path.join(out, "base-final.pt"))
    got_w = torch.load(os.path.join(out, "resumed-final.pt"))
    assert [k for k in base_w if not torch.equal(base_w[k], got_w[k])] == []
    assert torch.equal(torch.load(os.path.join(out, "base-draw.pt")), torch.load(os.path.join(out, "resumed-draw.pt")))
    order = [(r["step"], r["idx"]) for r in _indices(out, "base", 1)]
    cut = [(r["step"], r["idx"]) for r in _indices(out, "cut", 1) if r["step"] <= 14]
    assert cut + [(r["step"], r["idx"]) for r in _indices(out, "resumed", 1)] == order
