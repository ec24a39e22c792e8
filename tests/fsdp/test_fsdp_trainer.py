"""``Trainer(strategy=FSDPStrategy(...))`` end to end: exact resume after a SIGKILL on 2 ranks,
the same sharded checkpoint resumed by FSDP on 3 ranks (resharded) and in one process (no FSDP),
and refused for another model.

The jobs are real processes (tests/fsdp/scripts/fsdp_train.py): shuffled data, uneven validation,
dropout, AdamW with an LR schedule, accumulation and clipping, an async sharded checkpoint
after every optimizer step; 2 ranks on gloo.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys

import pytest
import torch

from distengine.checkpoint.io import read_last_pointer, resolve_checkpoint
from tests.helpers import free_port, start_rank, wait_rank

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "fsdp_train.py")
KILL_STEP = 2  # mid-epoch: 3 optimizer steps per epoch


def _launch(root: str, out: str, run: str, *extra: str, killed: bool = False, world: int = 2) -> None:
    port, procs, logs = str(free_port()), [], []
    os.makedirs(out, exist_ok=True)
    for rank in range(world):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
        env.update({"PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
                    "DISTENGINE_TIMEOUT": "60", "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                    "LOCAL_WORLD_SIZE": str(world), "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
        # through the launcher's rank entry point, as `distengine launch` starts a rank: a plain
        # `python SCRIPT` can abort at interpreter shutdown in torch's gloo threads (exit 134
        # after a finished run, pytorch/pytorch#190489; see launch/rank.py)
        cmd = [sys.executable, "-m", "distengine.launch.rank", SCRIPT, "--root", root, "--out", out, "--run", run,
               *extra]
        logs.append(os.path.join(out, f"{run}-rank{rank}.out"))
        procs.append(start_rank(cmd, env, logs[-1], rank))
    try:
        outputs = [wait_rank(p, 240, log) for p, log in zip(procs, logs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    want = -signal.SIGKILL if killed else 0
    for rank, (p, text) in enumerate(zip(procs, outputs)):
        assert p.returncode == want, f"rank {rank} exited {p.returncode}, expected {want}:\n{text[-3000:]}"


def _log(out: str, run: str) -> dict:
    with open(os.path.join(out, f"{run}-log.jsonl")) as f:
        return {(r["step"], k): v for line in f for r in [json.loads(line)] for k, v in r["metrics"].items()}


def _kill_and_resume(base, *extra: str) -> str:
    """The uninterrupted run, the run SIGKILLed after optimizer step KILL_STEP, and its resume from
    ``last`` (in a copy; ``pristine`` keeps the killed run's folder): returns the output folder."""
    out = str(base / "out")
    _launch(str(base / "base"), out, "base", *extra)
    _launch(str(base / "kill"), out, "kill", "--kill-step", str(KILL_STEP), *extra, killed=True)
    shutil.copytree(base / "kill", base / "pristine", symlinks=True)  # last.ckpt stays a link
    shutil.copytree(base / "kill", base / "resume", symlinks=True)
    _launch(str(base / "resume"), out, "resume", "--resume", *extra)
    return out


def _assert_exact_resume(base, out: str, steps: int = 6) -> None:
    """Weights, optimizer state, logged metrics and the batches each rank saw: the killed run up to
    its checkpoint plus the resumed run are ``torch.equal`` to (the same as) the uninterrupted run."""
    last = read_last_pointer(base / "pristine" / "checkpoints")
    # the async save of step KILL_STEP may still have been in flight: then the one before counts
    assert last is not None and os.path.isdir(last)
    assert os.path.basename(last) in {f"epoch=0-step={s}.ckpt" for s in (KILL_STEP - 1, KILL_STEP)}
    after = sorted(os.listdir(base / "resume" / "checkpoints"))  # save_top_k=1: older directories deleted
    # the folder is a copy: the checkpoint's state names another dirpath, so the copied files are not this
    # run's; they stay, and last.ckpt is not overwritten: the run's own is last-v1.ckpt (as in Lightning)
    end = f"epoch=1-step={steps}.ckpt"  # 48 samples in batches of 4 per replica, accumulation 2, 2 epochs
    assert after == sorted([os.path.basename(last), end, "last-v1.ckpt", "last.ckpt", "last.json"]), after
    # save_last: last-v1.ckpt is a relative link to the newest directory (no copy of the shards)
    link = base / "resume" / "checkpoints" / "last-v1.ckpt"
    assert os.path.islink(link) and os.readlink(link) == end
    want = torch.load(os.path.join(out, "base-final.pt"))
    got = torch.load(os.path.join(out, "resume-final.pt"))
    assert sorted(want) == sorted(got) and any(k.startswith("optim.") and k.endswith("exp_avg") for k in want)
    differ = [k for k in want if not torch.equal(want[k], got[k])]
    assert not differ, f"final weights / optimizer state differ from the uninterrupted run in {differ}"
    base_log, merged = _log(out, "base"), _log(out, "kill")
    merged.update(_log(out, "resume"))
    assert merged == base_log
    # data position: the resumed run sees exactly the uninterrupted run's batches from its start step
    # on (same samples, order, epoch), and with the killed run's batches before it, as many in all
    start = torch.load(os.path.join(out, "resume-start.pt"))["global_step"]
    for rank in range(2):
        base_rows, resumed = _seen(out, "base", 2, rank), _seen(out, "resume", 2, rank)
        killed = [r for r in _seen(out, "kill", 2, rank) if r["step"] < start]
        assert resumed == [r for r in base_rows if r["step"] >= start], f"rank {rank}: other batches after resume"
        assert killed + resumed == base_rows, f"rank {rank}: batches seen differ from the uninterrupted run"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("fsdp_resume")
    return base, _kill_and_resume(base)


def test_sigkilled_fsdp_run_resumes_exactly(runs):
    _assert_exact_resume(*runs)


@pytest.mark.slow  # 3 jobs of 2 ranks: ~60 s on a loaded 2-core machine
@pytest.mark.parametrize("strategy", ["mp", "hsdp"])
def test_sigkilled_2d_run_resumes_exactly(strategy, tmp_path):
    """Issue 23: the same SIGKILL exact resume (async sharded saves) for ``ModelParallelStrategy``
    (tensor parallel 2 x data parallel 1) and HSDP (``device_mesh=(2, 1)``: 2 replicas of 1 shard)."""
    # one data-parallel replica under ModelParallelStrategy: 12 batches an epoch, 6 steps; 2 otherwise
    _assert_exact_resume(tmp_path, _kill_and_resume(tmp_path, "--strategy", strategy), 12 if strategy == "mp" else 6)


def test_sharded_checkpoint_resumes_in_one_process_and_refuses_another_model(runs, tmp_path):
    import distengine as de
    from distengine.checkpoint.io import CheckpointError, safe_load
    from distengine.launch.cli import main
    from tests.fsdp.scripts.fsdp_train import Net

    base, _ = runs
    src = resolve_checkpoint("last", str(base / "pristine" / "checkpoints"))
    assert main(["checkpoint", "consolidate", src, str(tmp_path / "full.ckpt")]) == 0
    full = safe_load(str(tmp_path / "full.ckpt"))
    step = full["global_step"]
    assert step in (KILL_STEP - 1, KILL_STEP) and len(full["rng"]) == 2

    def trainer():
        return de.Trainer(max_steps=step, accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))

    from tests.fsdp.scripts.fsdp_train import Indexed
    loader = torch.utils.data.DataLoader(Indexed(48), batch_size=4)
    model = Net()
    t = trainer()
    t.fit(model, loader, ckpt_path=src)  # one process, no FSDP: complete tensors from the shards
    assert t.global_step == step
    assert all(torch.equal(v, full["state_dict"][k]) for k, v in model.state_dict().items())
    now = t.optimizers[0].state_dict()["state"]
    saved = full["optimizer_states"][0]["state"]
    assert len(saved) == len(now) and all(torch.equal(now[i]["exp_avg"], s["exp_avg"]) for i, s in saved.items())

    class Other(Net):
        def __init__(self):
            super().__init__()
            self.extra = torch.nn.Linear(2, 2)

    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: extra\.bias, extra\.weight"):
        trainer().fit(Other(), loader, ckpt_path=src)


def test_sharded_checkpoint_reshards_onto_three_fsdp_ranks(runs):
    """Saved by 2 FSDP ranks, resumed by 3 (through the ``last.ckpt`` link): every weight and
    the step come back as saved, and the run trains on to its end."""
    base, out = runs
    ckpts = base / "pristine" / "checkpoints"
    src = read_last_pointer(ckpts)
    assert os.path.realpath(ckpts / "last.ckpt") == os.path.realpath(src)
    root = base / "three"
    shutil.copytree(base / "pristine", root, symlinks=True)
    _launch(str(root), out, "three", "--resume-from", str(root / "checkpoints" / "last.ckpt"), world=3)
    from distengine.checkpoint.sharded import load_consolidated

    saved = load_consolidated(src)
    start = torch.load(os.path.join(out, "three-start.pt"))
    assert start["global_step"] == saved["global_step"]
    differ = [k for k, v in saved["state_dict"].items() if not torch.equal(v, start["state_dict"][k])]
    assert not differ, f"weights resumed on 3 ranks differ from the 2-rank checkpoint in {differ}"
    # from step 1 (16 of epoch 0's 48 samples seen) or 2 (32 seen): epoch 0's rest is 3 batches
    # (or 2) per rank, 2 steps (or 1) with accumulation 2; epoch 1 is 4 batches of 4 per rank, 2 steps
    assert start["global_step"] in (1, 2)
    kept = os.path.basename(src)  # the copied folder's own checkpoint: tracking starts afresh there
    # and its last.ckpt (the link resumed from) is not this run's either: this run's is last-v1.ckpt
    assert sorted(os.listdir(root / "checkpoints")) == sorted([kept, "epoch=1-step=5.ckpt", "last-v1.ckpt",
                                                               "last.ckpt", "last.json"])
    assert os.readlink(root / "checkpoints" / "last-v1.ckpt") == "epoch=1-step=5.ckpt"
    assert os.readlink(root / "checkpoints" / "last.ckpt") == kept
    # exact data coverage: the batches of the steps the checkpoint holds (from the uninterrupted
    # run, identical up to the kill) and the 3 ranks' rest of epoch 0 see every sample once
    step = start["global_step"]
    before = [i for r in _seen(out, "base", 2) if r["epoch"] == 0 and r["step"] < step for i in r["index"]]
    after = [i for r in _seen(out, "three", 3) if r["epoch"] == 0 for i in r["index"]]
    assert len(before) == 16 * step and set(before).isdisjoint(after) and set(before + after) == set(range(48))
    # the rest (48 - 16 * step samples) is padded to a multiple of 3 with repeats, so every rank
    # runs the same number of steps (data.py): at most 2 samples twice
    assert len(after) == -(-(48 - 16 * step) // 3) * 3
    assert sorted(i for r in _seen(out, "three", 3) if r["epoch"] == 1 for i in r["index"]) == list(range(48))


def _seen(out: str, run: str, world: int, rank: int | None = None) -> list[dict]:
    rows = []
    for rank in range(world) if rank is None else [rank]:
        with open(os.path.join(out, f"{run}-seen-{rank}.jsonl")) as f:
            rows += [json.loads(line) for line in f]
    return rows
