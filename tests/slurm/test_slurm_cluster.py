"""Against a real single-node Slurm cluster on localhost (distengine/slurm/testing/start-local-cluster.sh).

Every job is ``tests/slurm/train_job.py`` on 2 CPU ranks (gloo), submitted with
``python -m distengine.slurm submit --cpus-per-node 2`` (or the sbatch template). After a
requeue SLURM holds a job for 120 s (its BeginTime); :func:`finish` lifts that hold with
``scontrol update StartTime=now`` so the tests do not wait for it, and changes nothing else.
It waits a few seconds first: slurmd refuses to launch a job again within the second its
previous run's credential was revoked ("Job credential revoked"), which is what the hold is for.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "slurm" / "train_job.py"
START = REPO / "distengine" / "slurm" / "testing" / "start-local-cluster.sh"
TEMPLATE = REPO / "distengine" / "slurm" / "templates" / "single_node.sbatch"

pytestmark = pytest.mark.slurm


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="module")
def cluster():
    """A running local cluster: used when up, started when this process may (root), else skip."""
    if _cluster_up():
        return
    if os.geteuid() != 0:
        pytest.skip("Slurm is not running and starting it needs root (run .ci/slurm-setup.sh as root)")
    if shutil.which("slurmctld") is None:
        if shutil.which("apt-get") is None:
            pytest.skip("Slurm is not installed and there is no apt-get to install slurm-wlm and munge")
        setup = subprocess.run(["bash", str(REPO / ".ci" / "slurm-setup.sh")], capture_output=True,
                               text=True, timeout=900, stdin=subprocess.DEVNULL)
        assert setup.returncode == 0, f".ci/slurm-setup.sh failed:\n{setup.stdout}\n{setup.stderr}"
    else:
        start = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=300)
        assert start.returncode == 0, f"could not start the local cluster:\n{start.stdout}\n{start.stderr}"
    assert _cluster_up(), "the local cluster started but sinfo shows no usable node"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["DISTENGINE_TIMEOUT"] = "60"  # a stuck rendezvous fails the job within a minute
    return env


def cli(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distengine.slurm", *args], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def submit(cwd: Path, *args: str) -> str:
    out = cli(cwd, "submit", *args)
    assert out.returncode == 0, out.stderr
    m = re.search(r"^Submitted job (\d+)", out.stdout, re.M)
    assert m, out.stdout
    assert f"Logs: {cwd / 'slurm_logs' / m.group(1)}" in out.stdout
    return m.group(1)


def status(cwd: Path, job: str) -> dict:
    out = cli(cwd, "status", job, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _scontrol_field(job: str, name: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    m = re.search(rf"\b{name}=(\S*)", out.stdout)
    return m.group(1) if m else ""


def finish(job: str, timeout: float) -> tuple[str, int]:
    """Wait until the job ends; returns (JobState, Restarts). Cancels it on timeout."""
    deadline = time.monotonic() + timeout
    held_since = None
    while time.monotonic() < deadline:
        state = _scontrol_field(job, "JobState")
        if state == "PENDING" and _scontrol_field(job, "Reason") == "BeginTime":
            held_since = held_since or time.monotonic()
            if time.monotonic() - held_since > 3:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True,
                               timeout=30)
                held_since = None
        else:
            held_since = None
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state, int(_scontrol_field(job, "Restarts") or 0)
        time.sleep(0.5)  # polling SLURM from the test, not synchronising ranks
    subprocess.run(["scancel", job], capture_output=True, timeout=30)
    pytest.fail(f"job {job} did not finish within {timeout:.0f}s")


def wait_for_line(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    pytest.fail(f"{text!r} did not appear in {path} within {timeout:.0f}s")


def logs(cwd: Path, job: str) -> str:
    return cli(cwd, "logs", job).stdout


def events(cwd: Path, job: str) -> list[tuple[str, object]]:
    lines = (cwd / "slurm_logs" / job / "distengine_events.jsonl").read_text().splitlines()
    return [(e["event"], e.get("requeued")) for e in map(json.loads, lines)]


def _stop_step(text: str) -> int:
    m = re.search(r"stopped by signal SIGUSR2 at step (\d+); checkpoint: \S+signal_12\.ckpt", text)
    assert m, text
    return int(m.group(1))


def _equal(a: Path, b: Path) -> bool:
    sa, sb = torch.load(a), torch.load(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# 2 epochs x 8 steps; the reference and the preempted run differ only in --step-sleep (no math)
TRAIN = ["--epochs", "2", "--batches", "8"]


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """Test 1's job: an uninterrupted 2-rank run through ``submit --wait``."""
    cwd = tmp_path_factory.mktemp("reference")
    out = cli(cwd, "submit", "--cpus-per-node", "2", "--time", "5", "--wait", str(SCRIPT),
              "--root", str(cwd / "run"), "--out", str(cwd / "final.pt"), *TRAIN, timeout=240)
    return cwd, out


@pytest.mark.timeout(300)
def test_two_cpu_ranks_train_to_completion(reference):
    cwd, out = reference
    assert out.returncode == 0, out.stdout + out.stderr
    job = re.search(r"^Submitted job (\d+)", out.stdout, re.M).group(1)
    # --wait streamed rank 0's output: both ranks joined one gloo process group
    assert "ranks joined: [0, 1] world_size=2 start step=0" in out.stdout
    assert "finished at step 16" in out.stdout and (cwd / "final.pt").exists()
    st = status(cwd, job)
    assert (st["state"], st["restarts"], st["timeouts"], st["preemptions"]) == ("COMPLETED", "0", 0, 0)
    assert events(cwd, job) == [("started", None), ("completed", None)]
    assert "ranks joined: [0, 1]" in logs(cwd, job)


@pytest.mark.timeout(300)
def test_preemption_checkpoints_requeues_and_matches_an_uninterrupted_run(reference, tmp_path):
    ref_cwd, ref_out = reference
    assert ref_out.returncode == 0, "the reference run failed (see the test above)"
    job = submit(tmp_path, "--cpus-per-node", "2", "--time", "5", str(SCRIPT), "--root", str(tmp_path / "run"),
                 "--out", str(tmp_path / "final.pt"), *TRAIN, "--step-sleep", "0.3")
    rank0 = tmp_path / "slurm_logs" / job / f"{job}_0_log.out"
    wait_for_line(rank0, "step 3 epoch 0", timeout=150)
    # the signal submitit listens to; SLURM delivers it to every task of the job
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    state, restarts = finish(job, timeout=200)
    text = logs(tmp_path, job)
    assert (state, restarts) == ("COMPLETED", 1), text
    stop = _stop_step(text)
    assert 3 <= stop < 8, f"expected a stop mid-epoch 0, got step {stop}"  # mid-epoch: 8 steps/epoch
    assert re.search(rf"start step={stop}\b", text) and "finished at step 16" in text
    assert "(preemption); requeueing" in text
    st = status(tmp_path, job)
    assert (st["timeouts"], st["preemptions"]) == (0, 1)
    assert events(tmp_path, job) == [("started", None), ("preemption", True), ("started", None),
                                     ("completed", None)]
    assert _equal(tmp_path / "final.pt", ref_cwd / "final.pt")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_single_task_job_resumes_after_a_requeue(cluster, tmp_path):
    """One task (SLURM_NTASKS=1): after a preemption requeue the Trainer must resume from the
    checkpoint, as a multi-task job does (it used to start again from step 0), and end with the
    weights of an uninterrupted 1-task run."""
    ref = tmp_path / "ref"
    ref.mkdir()
    out = cli(ref, "submit", "--cpus-per-node", "1", "--time", "5", "--wait", str(SCRIPT),
              "--root", str(ref / "run"), "--out", str(ref / "final.pt"), *TRAIN, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    job = submit(tmp_path, "--cpus-per-node", "1", "--time", "5", str(SCRIPT), "--root", str(tmp_path / "run"),
                 "--out", str(tmp_path / "final.pt"), *TRAIN, "--step-sleep", "0.3")
    wait_for_line(tmp_path / "slurm_logs" / job / f"{job}_0_log.out", "step 3 epoch 0", timeout=150)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    state, restarts = finish(job, timeout=200)
    text = logs(tmp_path, job)
    assert (state, restarts) == ("COMPLETED", 1), text
    stop = _stop_step(text)
    assert re.search(rf"world_size=1 start step={stop}\b", text), text  # resumed, not from step 0
    assert _equal(tmp_path / "final.pt", ref / "final.pt")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_time_limit_checkpoints_before_the_limit_and_requeues(cluster, tmp_path):
    # --time 2 with --signal-delay 20: the wrapper signals 100 s into each run. The job needs
    # 100-112 s of steps (200 x 0.5 s plus overhead) plus start-up, so run 1 is always stopped,
    # and run 2 (what run 1 could not do in 100 s minus its start-up) finishes before its own
    # signal as long as the two start-ups add up to less than ~88 s (62 s measured on a 2-core
    # machine shared with several other test suites): exactly one time-limit requeue.
    job = submit(tmp_path, "--cpus-per-node", "2", "--time", "2", "--signal-delay", "20", "--max-requeues", "2",
                 str(SCRIPT), "--root", str(tmp_path / "run"), "--out", str(tmp_path / "final.pt"),
                 "--epochs", "25", "--batches", "8", "--step-sleep", "0.5")
    state, restarts = finish(job, timeout=380)
    text = logs(tmp_path, job)
    assert (state, restarts) == ("COMPLETED", 1), text
    stop = _stop_step(text)  # the Trainer saved a checkpoint on the wrapper's signal ...
    assert 0 < stop < 200 and re.search(rf"start step={stop}\b", text) and "finished at step 200" in text
    # ... and exited by itself (140), before SLURM's limit killed anything (that would be -15/143)
    assert events(tmp_path, job) == [("started", None), ("timeout", True), ("started", None),
                                     ("completed", None)]
    first_stop = json.loads((tmp_path / "slurm_logs" / job / "distengine_events.jsonl").read_text()
                            .splitlines()[1])
    assert first_stop["exit_code"] == 140
    st = status(tmp_path, job)
    assert (st["timeouts"], st["preemptions"], st["restarts"]) == (1, 0, "1")
    assert "(timeout); requeueing job" in text and "1/2 time-limit requeues" in text


@pytest.mark.timeout(240)
def test_failing_script_is_not_requeued_and_its_traceback_is_in_the_logs(cluster, tmp_path):
    job = submit(tmp_path, "--cpus-per-node", "2", "--time", "5", str(SCRIPT), "--root", str(tmp_path / "run"),
                 "--out", str(tmp_path / "final.pt"), *TRAIN, "--fail-at", "3")
    state, restarts = finish(job, timeout=200)
    assert (state, restarts) == ("FAILED", 0)
    out = cli(tmp_path, "logs", job)
    assert out.returncode == 0
    assert "Traceback (most recent call last)" in out.stdout
    assert "RuntimeError: deliberate failure at step 3 on rank 0" in out.stdout
    assert "not requeued" in out.stdout
    assert events(tmp_path, job) == [("started", None), ("failed", None)]
    assert status(tmp_path, job)["state"] == "FAILED"


@pytest.mark.timeout(300)
def test_sbatch_template_requeues_itself_and_resumes_exactly(reference, tmp_path):
    ref_cwd, ref_out = reference
    assert ref_out.returncode == 0, "the reference run failed"
    # what a user does with the template on a CPU node: drop the GPU line
    script = tmp_path / "job.sbatch"
    script.write_text("".join(line for line in TEMPLATE.read_text().splitlines(keepends=True)
                              if "--gpus-per-node" not in line))
    env = _env() | {"DISTENGINE_ACCELERATOR": "cpu", "PYTHON": sys.executable, "SIGNAL_DELAY": "20"}
    out = subprocess.run(["sbatch", "--parsable", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=5",
                          "--signal=USR2@20", f"--output={tmp_path}/job-%j.out", str(script), str(SCRIPT),
                          "--root", str(tmp_path / "run"), "--out", str(tmp_path / "final.pt"), *TRAIN,
                          "--step-sleep", "0.3"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    log = tmp_path / f"job-{job}.out"
    wait_for_line(log, "step 3 epoch 0", timeout=150)
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    state, restarts = finish(job, timeout=200)
    text = log.read_text()
    assert (state, restarts) == ("COMPLETED", 1), text
    assert "distengine: preemption; requeueing job" in text
    stop = _stop_step(text)
    assert re.search(rf"start step={stop}\b", text) and "finished at step 16" in text
    assert _equal(tmp_path / "final.pt", ref_cwd / "final.pt")


@pytest.mark.timeout(240)
def test_lightning_cli_script_runs_as_a_job_with_its_arguments(cluster, tmp_path, monkeypatch):
    # tests/cli/train_cli.py is a plain Lightning CLI script: `submit ... script fit --config c.yaml`
    # passes the subcommand and the config through; each rank writes what it ended with
    config = tmp_path / "c.yaml"
    config.write_text(f"seed_everything: 3\ntrainer:\n  max_epochs: 2\n  enable_progress_bar: false\n"
                      f"  logger:\n    class_path: CSVLogger\n    init_args:\n      save_dir: {tmp_path / 'logs'}\n")
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests" / "conformance" / "shim"))  # `import pytorch_lightning`
    monkeypatch.setenv("CLI_TEST_OUT", str(tmp_path))
    out = cli(tmp_path, "submit", "--cpus-per-node", "2", "--time", "5", "--wait",
              str(REPO / "tests" / "cli" / "train_cli.py"), "fit", "--config", str(config), timeout=200)
    assert out.returncode == 0, out.stdout + out.stderr
    assert len(list((tmp_path / "logs").rglob("config.yaml"))) == 1
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert [(r["rank"], r["world_size"], r["global_step"], r["seed"]) for r in ranks] == [(0, 2, 8, 3), (1, 2, 8, 3)]
