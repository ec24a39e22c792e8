"""Issue 23: exact resume after a SIGKILL on 2 x 2 meshes (4 gloo ranks, async sharded saves).

The job is tests/fsdp/scripts/fsdp_train.py (dropout, shuffled data, uneven validation, AdamW with
an LR schedule, gradient accumulation 2, clipping, an asynchronous sharded checkpoint after every
optimizer step) on two layouts:

* ``mp-2x2``: ``ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=2)``: each block's
  fc1 column-wise and fc2 row-wise over the tensor-parallel pair, FSDP2 over the data-parallel pair;
  24 samples a data-parallel group an epoch: 6 batches, 3 optimizer steps;
* ``hsdp-2x2``: ``FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=(2, 2))``: 2 replicas of
  2 shards; 12 samples a rank an epoch: 3 batches, 2 optimizer steps.

The 4 rank processes are started here directly (RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* as a launcher
sets them; no launcher process: 4 processes in all). For each case one rank is SIGKILLed (a real
signal, ``os.kill`` in that rank) mid-epoch; the other 3 die on their own of the broken gloo
connection (or are killed here by PID after 10 s); then a fresh job resumes with ``ckpt_path="last"``
on the same mesh. The cases:

* after step K's checkpoint was published (``last.json`` names it) the killed rank is rank 3 (mp-2x2)
  or rank 2 (hsdp-2x2): the resume starts at step K;
* while step K's async save is in flight (mp-2x2, rank 1 killed in its background write, after its
  training thread went on to the next batch): nothing of step K is published, its temporary folder
  is left behind, the resume starts at step K - 1 and clears that folder.

The TP x DP run's published checkpoint also resumes onto another mesh, HSDP 2 x 2 on the same ranks
(weights as saved, every sample of the epoch once).

Each resumed run ends as the uninterrupted run of its layout (one per layout, shared): every rank's
local shards of the weights and AdamW state ``torch.equal``, the gathered (full_tensor) weights and
AdamW state ``torch.equal``, the logged metrics equal at every step, and each rank's batches (the
killed run's before the resume step plus the resumed run's) the uninterrupted run's, in order.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from distengine.checkpoint.io import read_last_pointer
from tests.helpers import free_port, start_rank

pytestmark = pytest.mark.slow  # 9 jobs of 4 ranks: 62-83 s on a shared 2-core machine

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "fsdp_train.py")
WORLD = 4
STEPS = {"mp-2x2": 6, "hsdp-2x2": 4}  # optimizer steps in the 2 epochs
# case -> (layout, kill step, killed rank, killed in the async write of step K's checkpoint)
CASES = {"mp-2x2-published": ("mp-2x2", 2, 3, False), "mp-2x2-in-flight": ("mp-2x2", 2, 1, True),
         "hsdp-2x2-published": ("hsdp-2x2", 1, 2, False)}


def _job(root: str, out: str, run: str, *extra: str, kill_rank: int | None = None) -> list[int]:
    """Start the 4 ranks; wait for them (or, with ``kill_rank``, for that rank, then up to 10 s for
    the others before killing them by PID); return the exit codes. Output goes to ``<out>/<run>-<rank>.out``."""
    port, procs = str(free_port()), []
    os.makedirs(out, exist_ok=True)
    for rank in range(WORLD):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISTENGINE_", "TORCHELASTIC_"))
               and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR")}
        env.update({"PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
                    "DISTENGINE_TIMEOUT": "60", "RANK": str(rank), "LOCAL_RANK": str(rank),
                    "WORLD_SIZE": str(WORLD), "LOCAL_WORLD_SIZE": str(WORLD), "GROUP_RANK": "0",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
        # the launcher's rank entry point, in this process's place (see test_fsdp_trainer._launch)
        cmd = [sys.executable, "-m", "distengine.launch.rank", SCRIPT, "--root", root, "--out", out,
               "--run", run, *extra]
        procs.append(start_rank(cmd, env, os.path.join(out, f"{run}-{rank}.out"), rank))
    try:
        if kill_rank is not None:
            procs[kill_rank].wait(timeout=240)
        for p in procs:
            try:
                p.wait(timeout=10 if kill_rank is not None else 240)
            except subprocess.TimeoutExpired:
                p.kill()  # a survivor of the killed rank still waiting in a collective
                p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs]


def _output(out: str, run: str, rank: int) -> str:
    with open(os.path.join(out, f"{run}-{rank}.out")) as f:
        return f.read()[-3000:]


def _log(out: str, run: str) -> dict:
    with open(os.path.join(out, f"{run}-log.jsonl")) as f:
        return {(r["step"], k): v for line in f for r in [json.loads(line)] for k, v in r["metrics"].items()}


def _seen(out: str, run: str, rank: int) -> list[dict]:
    with open(os.path.join(out, f"{run}-seen-{rank}.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """layout -> the output folder of its uninterrupted run (started on first use, shared)."""
    done: dict[str, str] = {}

    def get(layout: str) -> str:
        if layout not in done:
            base = tmp_path_factory.mktemp(layout)
            codes = _job(str(base / "base"), str(base / "out"), "base", "--strategy", layout)
            assert codes == [0] * WORLD, [_output(str(base / "out"), "base", r) for r in range(WORLD)]
            done[layout] = str(base)
        return done[layout]

    return get


@pytest.fixture(scope="module")
def killed(uninterrupted, tmp_path_factory):
    """case -> its killed run and the resume from it (run on first use, shared)."""
    done: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in done:
            done[name] = _kill_and_resume(name, uninterrupted, tmp_path_factory)
        return done[name]

    return get


def _kill_and_resume(name: str, uninterrupted, tmp_path_factory) -> dict:
    layout, step, rank, in_flight = CASES[name]
    base = uninterrupted(layout)
    work = tmp_path_factory.mktemp(name)
    out = str(work / "out")
    extra = ["--kill-step", str(step), "--kill-rank", str(rank)] + (["--kill-in-save"] if in_flight else [])
    codes = _job(str(work / "kill"), out, "kill", "--strategy", layout, *extra, kill_rank=rank)
    shutil.copytree(work / "kill", work / "pristine", symlinks=True)  # as the kill left it
    shutil.copytree(work / "kill", work / "resume", symlinks=True)  # last.ckpt stays a link
    resumed = _job(str(work / "resume"), out, "resume", "--strategy", layout, "--resume")
    assert resumed == [0] * WORLD, [_output(out, "resume", r) for r in range(WORLD)]
    return {"layout": layout, "step": step, "rank": rank, "in_flight": in_flight, "codes": codes, "work": work,
            "out": out, "base": os.path.join(base, "out")}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, killed):
    return killed(request.param)


def test_one_rank_sigkilled_leaves_the_expected_checkpoint(case):
    codes, rank, step = case["codes"], case["rank"], case["step"]
    assert codes[rank] == -signal.SIGKILL, _output(case["out"], "kill", rank)
    assert all(c != 0 for c in codes), codes  # the others failed on the dead peer (or were ended here)
    ckpts = case["work"] / "pristine" / "checkpoints"
    names = sorted(os.listdir(ckpts))
    if case["in_flight"]:  # killed inside step K's write: K-1 stays the last, K's temporary folder is left
        assert read_last_pointer(ckpts) == str(ckpts / f"epoch=0-step={step - 1}.ckpt")
        assert [n for n in names if n.startswith(".")] and all(
            n.startswith(f".epoch=0-step={step}.ckpt") for n in names if n.startswith(".")), names
        killed = _seen(case["out"], "kill", rank)
        assert killed[-1]["step"] == step  # its training thread had started the batch after step K
    else:  # killed after step K was published
        assert read_last_pointer(ckpts) == str(ckpts / f"epoch=0-step={step}.ckpt")
        assert names == sorted([f"epoch=0-step={step}.ckpt", "last.ckpt", "last.json"])
    want = step - 1 if case["in_flight"] else step
    assert torch.load(os.path.join(case["out"], "resume-start.pt"))["global_step"] == want


def test_resumed_run_equals_the_uninterrupted_run(case):
    out, layout = case["out"], case["layout"]
    start = torch.load(os.path.join(out, "resume-start.pt"))["global_step"]
    after = sorted(os.listdir(case["work"] / "resume" / "checkpoints"))
    end = f"epoch=1-step={STEPS[layout]}.ckpt"  # the run's own last.ckpt is last-v1.ckpt (a copied folder)
    assert after == sorted([f"epoch=0-step={start}.ckpt", end, "last-v1.ckpt", "last.ckpt", "last.json"]), after
    for kind in ["final"] + [f"local-{r}" for r in range(WORLD)]:  # gathered, then each rank's own shards
        want = torch.load(os.path.join(case["base"], f"base-{kind}.pt"))
        got = torch.load(os.path.join(out, f"resume-{kind}.pt"))
        assert sorted(want) == sorted(got) and any(k.startswith("optim.") and k.endswith("exp_avg") for k in want)
        differ = [k for k in want if not torch.equal(want[k], got[k])]
        assert not differ, f"{kind}: weights / AdamW state differ from the uninterrupted run in {differ}"
    if layout == "mp-2x2":  # each rank holds a quarter of fc1's weight: half by TP, half of that by FSDP
        assert torch.load(os.path.join(out, "resume-local-0.pt"))["blocks.0.fc1.weight"].shape == (4, 8)
    merged = _log(out, "kill")
    merged.update(_log(out, "resume"))
    assert merged == _log(case["base"], "base")
    for rank in range(WORLD):
        base_rows, resumed = _seen(case["base"], "base", rank), _seen(out, "resume", rank)
        killed = [r for r in _seen(out, "kill", rank) if r["step"] < start]
        assert resumed == [r for r in base_rows if r["step"] >= start], f"rank {rank}: other batches after resume"
        assert killed + resumed == base_rows, f"rank {rank}: batches seen differ from the uninterrupted run"


def test_killed_tp_dp_checkpoint_resumes_onto_the_hsdp_mesh(killed):
    """Another mesh on the same 4 ranks: the checkpoint the SIGKILLed TP 2 x DP 2 run published
    resumes under HSDP 2 x 2 (``--resume-from`` its ``last.ckpt``): the weights come back as saved, and
    the rest of epoch 0 (the samples the 2 data-parallel groups had not reached, now split over 4
    replicas) and epoch 1 cover every sample exactly once."""
    from distengine.checkpoint.sharded import load_consolidated

    run = killed("mp-2x2-published")
    work, out = run["work"], run["out"]
    shutil.copytree(work / "pristine", work / "hsdp", symlinks=True)
    codes = _job(str(work / "hsdp"), out, "hsdp", "--strategy", "hsdp-2x2",
                 "--resume-from", str(work / "hsdp" / "checkpoints" / "last.ckpt"))
    assert codes == [0] * WORLD, [_output(out, "hsdp", r) for r in range(WORLD)]
    saved = load_consolidated(read_last_pointer(work / "pristine" / "checkpoints"))
    start = torch.load(os.path.join(out, "hsdp-start.pt"))
    assert start["global_step"] == saved["global_step"] == run["step"]
    differ = [k for k, v in saved["state_dict"].items() if not torch.equal(v, start["state_dict"][k])]
    assert not differ, f"weights resumed under HSDP differ from the TP x DP checkpoint in {differ}"
    # TP x DP: the 2 data-parallel groups read 8 samples a step each; ranks 0 and 2 stand for them
    before = [i for r in (0, 2) for row in _seen(run["base"], "base", r) if row["epoch"] == 0
              and row["step"] < run["step"] for i in row["index"]]
    after = [i for r in range(WORLD) for row in _seen(out, "hsdp", r) if row["epoch"] == 0 for i in row["index"]]
    assert len(before) == 16 * run["step"] and sorted(before + after) == list(range(48))  # each sample once
    assert sorted(i for r in range(WORLD) for row in _seen(out, "hsdp", r) if row["epoch"] == 1
                  for i in row["index"]) == list(range(48))
