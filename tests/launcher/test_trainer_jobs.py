"""The launcher with the real Trainer: graceful stop, restart and resume, re-launch, two nodes."""
from __future__ import annotations

import signal
import subprocess
import sys

import torch

from tests.helpers import free_port
from tests.launcher.util import ROOT, SCRIPTS, alive, clean_env, finish, read_json, start, wait_for

TRAIN = str(SCRIPTS / "train.py")


def test_sigterm_to_launcher_stops_ranks_at_a_step_with_a_checkpoint(tmp_path, launched):
    # (SIGINT takes the same path; test_jobs covers its forwarding and the 130 exit status.)
    sig = signal.SIGTERM
    logs = tmp_path / "logs"
    proc = launched(["--cpus", "2", "--log-dir", str(logs), TRAIN],
                    env=clean_env(OUT_DIR=str(tmp_path), EPOCHS="100000", READY_AT_STEP="3"))
    wait_for(lambda: (tmp_path / "ready").exists(), 90, "training to run", proc)
    pids = [read_json(tmp_path / f"start_{r}_0.json")["pid"] for r in (0, 1)]
    proc.send_signal(sig)
    code, _, err = finish(proc, 40)
    assert code == 128 + sig, err
    assert not alive(pids)
    ckpts = list((tmp_path / "root" / "checkpoints").glob("*.ckpt"))
    assert ckpts, "the Trainer saves a checkpoint when it stops on a signal"
    for r in (0, 1):  # every rank stopped through the Trainer, at the same step, with 128 + signum
        assert "KeyboardInterrupt" not in (logs / f"rank_{r}.log").read_text()
    assert f"stopped by signal {sig.name} at step" in (logs / "rank_0.log").read_text()
    step = torch.load(ckpts[0], weights_only=False)["global_step"]
    assert step >= 3


def test_max_restarts_resumes_from_the_last_checkpoint(tmp_path, launched):
    logs = tmp_path / "logs"
    # 64 samples / batch 8 / 2 ranks = 4 steps per epoch; rank 1 dies in epoch 2 of the first attempt.
    proc = launched(["--cpus", "2", "--max-restarts", "1", "--log-dir", str(logs), TRAIN],
                    env=clean_env(OUT_DIR=str(tmp_path), EPOCHS="2", KILL_AT_STEP="6"))
    code, out, err = finish(proc, 100)
    assert code == 0, err
    assert "rank 1 killed by signal SIGKILL (9); restarting all ranks (restart 1 of 1)" in err
    for r in (0, 1):
        assert read_json(tmp_path / f"start_{r}_0.json")["global_step"] == 0
        assert read_json(tmp_path / f"start_{r}_1.json")["global_step"] == 4  # resumed after epoch 1
        text = (logs / f"rank_{r}.log").read_text()
        assert "attempt 2: restart 1 of at most 1" in text and f"done rank {r} step 8" in text
    assert "resumed from" in err


def test_trainer_with_devices_2_relaunches_a_plain_python_run(tmp_path):
    env = clean_env(OUT_DIR=str(tmp_path), EPOCHS="1", DEVICES="2")
    out = subprocess.run([sys.executable, TRAIN, "--flag", "x"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    for r in (0, 1):
        assert read_json(tmp_path / f"start_{r}_0.json")["world_size"] == 2
    assert "done rank 0 step 4 argv ['--flag', 'x']" in out.stdout


def test_two_nodes_on_one_machine_train_to_identical_weights(tmp_path):
    port = str(free_port())
    nodes = []
    try:
        for node in (0, 1):
            out = tmp_path / f"node{node}"
            out.mkdir()
            nodes.append(start(["--nnodes", "2", "--node-rank", str(node), "--master-addr", "127.0.0.1",
                                "--master-port", port, "--cpus", "1", TRAIN],
                               env=clean_env(OUT_DIR=str(out), EPOCHS="2")))
        results = [finish(p, 100) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
    for code, _, err in results:
        assert code == 0, err
    assert read_json(tmp_path / "node0" / "start_0_0.json")["world_size"] == 2
    w0 = torch.load(tmp_path / "node0" / "final_0.pt")
    w1 = torch.load(tmp_path / "node1" / "final_1.pt")
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert not torch.equal(w0["layer.weight"], torch.nn.Linear(4, 1).weight.detach())  # it did train
