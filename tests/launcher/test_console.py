"""What the launcher's console and log files show (real `distengine launch` jobs): the failing
rank's error first, whole lines, logging that never stops a job, a killed rank's reason, one
line for an unreachable node 0, and a note for launcher flags after the script."""
from __future__ import annotations

import os
import resource
import signal
import subprocess

from tests.helpers import free_port
from tests.launcher.util import SCRIPTS, clean_env, finish

FAIL = str(SCRIPTS / "fail.py")
OUTPUT = str(SCRIPTS / "output.py")
UNEVEN = str(SCRIPTS / "uneven.py")


def _summary(err: str) -> str:
    return err[err.index("distengine: the job failed"):]


def test_the_failing_rank_comes_first_and_a_lost_peer_stays_in_its_log(tmp_path, launched):
    logs = tmp_path / "logs"
    proc = launched(["--cpus", "2", "--log-dir", str(logs), FAIL], env=clean_env(MODE="raise", OUT_DIR=str(tmp_path)))
    code, out, err = finish(proc, 100)
    assert code == 1, err
    # Rank 1's ValueError is the first error on the console; rank 0's "peer went away"
    # traceback (a consequence) is in its log only, and the report says so in one line.
    before = err[:err.index("distengine: the job failed")]
    assert "Traceback" not in before and "Connection" not in before, err
    summary = _summary(err)
    # rank 0 is stopped by the launcher, or fails on its own when rank 1's exit closes the
    # connection (a race under load): either way it comes after rank 1's error
    assert summary.index("ValueError: boom from rank 1") < summary.index("  rank 0 (")
    assert "Garbage-collecting" not in err and "<no Python frame>" not in err
    rank0 = [line for line in summary.splitlines() if line.startswith("    it had stopped with")]
    if rank0:  # rank 0 saw its peer go before the launcher stopped it (nearly always)
        assert len(rank0) == 1 and "by peer" in rank0[0] and rank0[0].endswith("(because rank 1 failed)"), summary
        assert "Traceback (most recent call last):" in (logs / "rank_0.log").read_text()
    else:
        assert 'was at: File "' in summary, summary


def test_stdout_and_stderr_never_splice_mid_line(tmp_path, launched):
    logs = tmp_path / "logs"
    # stdout and stderr of the launcher into one pipe, as on a terminal
    proc = launched(["--cpus", "1", "--log-dir", str(logs), OUTPUT], env=clean_env(MODE="splice"),
                    stderr=subprocess.STDOUT)
    code, out, _ = finish(proc, 60)
    assert code == 0, out
    for text in (out, (logs / "rank_0.log").read_text()):
        lines = text.splitlines()
        assert "starting fresh  | Name | Type | Params" in lines, text
        assert "a warning on stderr" in lines, text


def _file_size_limit(limit: int):
    def set_limit() -> None:  # in the launcher's process, before it starts (SIGXFSZ: Python ignores it)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_a_log_file_that_cannot_be_written_does_not_stop_the_job(tmp_path, launched):
    # Real write errors: rank 0's log is /dev/full (every write fails with ENOSPC, the first
    # one being the launcher's own attempt header); rank 1's log hits the launcher's file-size
    # limit after 64 KiB (EFBIG), in the thread that drains the ranks' pipes.
    logs = tmp_path / "logs"
    logs.mkdir()
    os.symlink("/dev/full", logs / "rank_0.log")
    proc = launched(["--cpus", "2", "--log-dir", str(logs), OUTPUT], env=clean_env(MODE="flood"),
                    preexec_fn=_file_size_limit(64 << 10))
    code, out, err = finish(proc, 40)  # before: the launcher crashed, or its ranks blocked in print for ever
    assert code == 0, err
    assert "done on rank 0" in out and out.count("x" * 1023) == 300  # the console got everything
    said = [line for line in err.splitlines() if "cannot write the log file" in line]
    assert len(said) == 2, err  # once per kind of error
    assert "rank_0.log: No space left on device (errno 28)" in said[0] and "the job goes on" in said[0]
    assert "rank_1.log: File too large" in said[1]
    assert 0 < (logs / "rank_1.log").stat().st_size <= 64 << 10


def test_a_rank_killed_by_an_abort_shows_its_reason_in_the_summary(tmp_path, launched):
    # Uneven IterableDataset shards: the ranks' collectives stop matching and gloo aborts one.
    proc = launched(["--cpus", "2", "--timeout", "20", "--log-dir", str(tmp_path / "logs"), UNEVEN],
                    env=clean_env())
    code, _, err = finish(proc, 100)
    assert code == 128 + signal.SIGABRT, err
    summary = _summary(err)
    assert "killed by signal SIGABRT" in summary.splitlines()[0]
    assert "collective mismatch" in summary and "terminate called after throwing" in summary, summary
    assert "| Fatal Python error: Aborted" in summary and "    at: File " in summary


def test_an_unreachable_node_0_is_one_line_without_cpp_frames(tmp_path, launched):
    port = free_port()
    logs = tmp_path / "logs"
    proc = launched(["--cpus", "1", "--nnodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1",
                     "--master-port", str(port), "--rdzv-timeout", "2", "--log-dir", str(logs), FAIL],
                    env=clean_env(MODE="raise"))
    code, _, err = finish(proc, 60)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"cannot reach the rendezvous store of node 0 at 127.0.0.1:{port} within 2s" in lines[0]
    assert "start node 0 (--node-rank 0) first" in lines[0] and str(logs / "launcher.log") in lines[0]
    assert "frame #" in (logs / "launcher.log").read_text()  # torch's C++ frames, kept there


def test_a_launcher_flag_after_the_script_of_a_one_rank_job_is_pointed_out(tmp_path, launched):
    script = tmp_path / "train.py"
    script.write_text("import sys\nprint('args', sys.argv[1:])\n")
    proc = launched(["--cpus", "1", str(script), "--gpus", "2", "--lr", "0.1"], env=clean_env())
    code, out, err = finish(proc, 60)
    assert code == 0, err
    assert "args ['--gpus', '2', '--lr', '0.1']" in out  # the script still gets it, as with torchrun
    note = [line for line in err.splitlines() if "note:" in line]
    assert len(note) == 1, err
    assert "'--gpus 2' comes after the script, so it was passed to" in note[0]
    assert f"launch --gpus 2 {script}" in note[0]
    # Two ranks: the flags are clearly the script's own; nothing is said.
    proc = launched(["--cpus", "2", str(script), "--gpus", "2"], env=clean_env())
    code, _, err = finish(proc, 60)
    assert code == 0 and "note:" not in err, err
