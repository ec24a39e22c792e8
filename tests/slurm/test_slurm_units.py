"""SLURM submission without a cluster: argument checks, and the requeue decision of the task
wrapper against a fake ``scontrol``/``squeue`` (the real cluster runs are in test_slurm_cluster.py)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from distengine.slurm import jobs, task
from distengine.slurm.cli import main
from distengine.slurm.config import ConfigError, SubmitConfig, backstop_signal_delay, parse_time


# ------------------------------------------------------------------ arguments
@pytest.mark.parametrize("text,seconds", [("90", 5400), ("5:30", 330), ("1:30:00", 5400), ("2-00", 172800),
                                          ("1-02:03", 93780), ("0-00:00:45", 45)])
def test_parse_time_accepts_sbatch_formats(text, seconds):
    assert parse_time(text) == seconds


def _cfg(tmp_path, **kw):
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    base = dict(script=str(script), cpus_per_node=2, time="10", log_dir=str(tmp_path / "logs"))
    base.update(kw)
    return SubmitConfig(**base)


@pytest.mark.parametrize("overrides,message", [
    ({"time": "ten minutes"}, "is not a SLURM time"),
    ({"time": ""}, "--time is required"),
    ({"time": "1", "signal_delay": 60}, "must be shorter than --time"),
    ({"gpus_per_node": 4}, "not both"),
    ({"cpus_per_node": None}, "--gpus-per-node N (GPU) or --cpus-per-node N"),
    ({"nodes": 0}, "--nodes must be at least 1"),
    ({"max_requeues": -1}, "--max-requeues must be 0 or more"),
    ({"mem": "lots"}, "is not a SLURM size"),
    ({"partition": "gpu queue"}, "--partition 'gpu queue' has spaces"),
    ({"job_name": "bash"}, "reserved for interactive shells"),
    ({"script": "does_not_exist.py"}, "not found"),
])
def test_bad_arguments_fail_before_submitting(tmp_path, overrides, message):
    cfg = _cfg(tmp_path, **overrides)
    with pytest.raises(ConfigError, match=None) as err:
        cfg.validate()
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_good_arguments_become_sbatch_parameters(tmp_path):
    cfg = _cfg(tmp_path, nodes=2, cpus_per_node=None, gpus_per_node=4, time="04:00:00", partition="gpu",
               mem="64G", max_requeues=5, signal_delay=120)
    cfg.validate()
    p = cfg.submitit_parameters()
    assert (p["nodes"], p["ntasks_per_node"], p["gpus_per_node"], p["time"]) == (2, 4, 4, 240)
    assert p["partition"] == "gpu" and p["additional_parameters"] == {"requeue": True, "mem": "64G"}
    assert p["signal_delay_s"] == 90 == backstop_signal_delay(120)
    assert cfg.num_tasks == 8 and cfg.accelerator == "gpu" and cfg.name == "train"


def test_cli_reports_one_line_error_and_status_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["submit", "--cpus-per-node", "2", "--time", "5", "missing.py"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distengine slurm submit: error: script 'missing.py' not found")
    assert len(err.splitlines()) == 1
    assert main(["status", "12x"]) == 2
    assert "is not a number" in capsys.readouterr().err


def test_module_entry_point_prints_help():
    out = subprocess.run([sys.executable, "-m", "distengine.slurm", "submit", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--max-requeues" in out.stdout and "--signal-delay" in out.stdout


# ------------------------------------------------------------------ the requeue decision
class FakeSlurm:
    """Stands in for scontrol/squeue: a job state, a reason, time left; records requeues."""

    def __init__(self, monkeypatch, state="RUNNING", reason="None", left=3000):
        self.state, self.reason, self.left, self.requeued = state, reason, left, []
        monkeypatch.setattr(jobs, "query_job", lambda job_id: {"JobState": self.state, "Reason": self.reason})
        monkeypatch.setattr(jobs, "time_left_s", lambda job_id: self.left)
        real_run = subprocess.run

        def run(cmd, *a, **kw):
            if cmd[:2] == ["scontrol", "requeue"]:
                self.requeued.append(cmd[2])
                return subprocess.CompletedProcess(cmd, 0, "", "")
            return real_run(cmd, *a, **kw)

        monkeypatch.setattr(task.subprocess, "run", run)


def _conclude(tmp_path, rc, rank=0, timer_fired=False, max_requeues=2):
    t = task.ScriptTask(script="train.py", signal_delay=60, max_requeues=max_requeues)
    try:
        return t._conclude(rc, timer_fired, job_id=7, rank=rank, restart=0, folder=str(tmp_path))
    except SystemExit as stop:
        return f"exit {stop.code}"


def _events(tmp_path):
    return [(e["event"], e.get("requeued")) for e in jobs.read_events(str(tmp_path))]


def test_completed_script_is_not_requeued(tmp_path, monkeypatch):
    fake = FakeSlurm(monkeypatch)
    assert _conclude(tmp_path, 0) == 0
    assert fake.requeued == [] and _events(tmp_path) == [("completed", None)]


def test_preemption_requeues_without_using_the_budget(tmp_path, monkeypatch):
    fake = FakeSlurm(monkeypatch, left=3000)
    for _ in range(4):  # more preemptions than --max-requeues: all requeued
        assert _conclude(tmp_path, 128 + signal.SIGUSR2) == f"exit {128 + signal.SIGUSR2}"
    assert fake.requeued == ["7"] * 4
    assert jobs.read_state(str(tmp_path))["preemptions"] == 4
    assert jobs.read_state(str(tmp_path))["timeouts"] == 0


def test_timeouts_count_until_max_requeues(tmp_path, monkeypatch):
    fake = FakeSlurm(monkeypatch, left=3000)
    assert _conclude(tmp_path, 140, timer_fired=True) == "exit 140"
    fake.left = 50  # SLURM's own warning close to the limit is a timeout too
    assert _conclude(tmp_path, 140) == "exit 140"
    assert _conclude(tmp_path, 140, timer_fired=True) == "exit 140"  # budget of 2 used up
    assert fake.requeued == ["7", "7"]
    assert _events(tmp_path) == [("timeout", True), ("timeout", True), ("timeout", False)]


def test_sigterm_requeues_only_a_running_or_timed_out_job(tmp_path, monkeypatch):
    fake = FakeSlurm(monkeypatch, state="COMPLETING", reason="None")  # scancel
    assert _conclude(tmp_path, 128 + signal.SIGTERM) == "exit 143"
    assert fake.requeued == []
    fake.state, fake.reason = "COMPLETING", "TimeLimit"  # killed at the limit after saving
    assert _conclude(tmp_path, -signal.SIGTERM) == "exit 143"
    fake.state, fake.reason = "PENDING", "BeginTime"  # SLURM requeued it already
    assert _conclude(tmp_path, 143) == "exit 143"
    fake.state, fake.reason = "RUNNING", "None"  # scancel --signal=TERM: a preemption
    assert _conclude(tmp_path, 143) == "exit 143"
    assert fake.requeued == ["7", "7"]
    assert _events(tmp_path) == [("cancelled", None), ("timeout", True), ("cancelled", None),
                                 ("preemption", True)]


def test_failure_is_never_requeued_and_keeps_the_status(tmp_path, monkeypatch, capsys):
    fake = FakeSlurm(monkeypatch)
    assert _conclude(tmp_path, 1) == "exit 1"
    assert _conclude(tmp_path, -signal.SIGKILL) == "exit 137"  # e.g. the OOM killer
    assert _conclude(tmp_path, 1, rank=1) == "exit 1"
    assert fake.requeued == []
    assert "exited with status 1 on rank 0; not requeued" in capsys.readouterr().err
    assert [e for e, _ in _events(tmp_path)] == ["failed", "failed"]  # rank 0 writes events


def test_only_rank_zero_requeues(tmp_path, monkeypatch):
    fake = FakeSlurm(monkeypatch)
    assert _conclude(tmp_path, 140, rank=1) == "exit 140"
    assert fake.requeued == [] and _events(tmp_path) == []


def test_exit_signal_and_port():
    assert task.exit_signal(140) == signal.SIGUSR2 and task.exit_signal(-15) == 15
    assert task.exit_signal(1) is None and task.exit_signal(0) is None
    ports = {task.master_port(1234, r) for r in range(5)}
    assert len(ports) == 5 and all(20000 <= p < 40000 for p in ports)


def test_events_survive_a_reader(tmp_path):
    jobs.record_event(str(tmp_path), "started", restart=0)
    jobs.record_event(str(tmp_path), "timeout", restart=0, requeued=True)
    lines = (tmp_path / jobs.EVENTS_FILE).read_text().splitlines()
    assert [json.loads(x)["event"] for x in lines] == ["started", "timeout"]
    assert jobs.parse_duration("1-02:03:04") == 93784 and jobs.parse_duration("UNLIMITED") is None
