"""One Ctrl-C delivered twice is one graceful stop; a later second Ctrl-C still interrupts.

A terminal sends Ctrl-C's SIGINT to its whole foreground process group, and a wrapper in that
group (``timeout --foreground``, or the parent of a ``Trainer(devices=2)`` that re-launched
itself) may forward it as well: the launcher, or a single-process Trainer, then gets it twice
within milliseconds. Both count signals within 1 s of the first as that one.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.launcher.util import ROOT, SCRIPTS, alive, clean_env, finish, read_json, start, wait_for

TRAIN = str(SCRIPTS / "train.py")


def _stop_checkpoints(tmp_path) -> list:
    return sorted((tmp_path / "root" / "checkpoints").glob("*signal_2*.ckpt"))


def test_one_ctrl_c_delivered_twice_to_the_launcher_stops_gracefully(tmp_path, launched):
    logs = tmp_path / "logs"
    proc = launched(["--cpus", "2", "--log-dir", str(logs), TRAIN],
                    env=clean_env(OUT_DIR=str(tmp_path), EPOCHS="100000", READY_AT_STEP="2", STEP_SLEEP="0.2"))
    wait_for(lambda: (tmp_path / "ready").exists(), 90, "training to run", proc)
    pids = [read_json(tmp_path / f"start_{r}_0.json")["pid"] for r in (0, 1)]
    os.killpg(proc.pid, signal.SIGINT)   # the terminal's process group (the launcher leads it here)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)      # ... and the wrapper that forwards the same Ctrl-C
    code, _, err = finish(proc, 40)
    assert code == 130, err
    assert err.count("forwarded SIGINT to 2 ranks") == 1, err
    assert not alive(pids)
    assert _stop_checkpoints(tmp_path), "the graceful stop writes its checkpoint"
    for r in (0, 1):
        text = (logs / f"rank_{r}.log").read_text()
        assert "KeyboardInterrupt" not in text and "SIGKILL" not in text, text[-2000:]
    assert "stopped by signal SIGINT at step" in (logs / "rank_0.log").read_text()


def test_ctrl_c_to_a_script_that_relaunched_itself_stops_gracefully(tmp_path):
    # `python train.py` with Trainer(devices=2) runs `distengine launch` as its child, in its
    # process group: Ctrl-C reaches both, and the parent passes it on to the launcher too.
    proc = start([TRAIN], env=clean_env(OUT_DIR=str(tmp_path), EPOCHS="100000", READY_AT_STEP="2",
                                        STEP_SLEEP="0.2", DEVICES="2"), cmd=[sys.executable])
    try:
        wait_for(lambda: (tmp_path / "ready").exists(), 90, "training to run", proc)
        os.killpg(proc.pid, signal.SIGINT)
        code, _, err = finish(proc, 40)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 130, err
    assert _stop_checkpoints(tmp_path), err[-3000:]
    assert "KeyboardInterrupt" not in err and "stopped by signal SIGINT at step" in err, err[-3000:]


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# "ignored": started as a background job of a non-interactive shell is, with SIGINT ignored
# (inherited through exec); the Trainer's handler still acts, and a later second Ctrl-C must still
# interrupt (it restored SIG_IGN and re-raised into nothing before: the torch-range run of CI found it)
@pytest.mark.parametrize("gap, graceful, ignored", [(0.05, True, False), (3.0, False, False), (3.0, False, True)])
def test_one_process_coalesces_a_double_ctrl_c_and_a_later_one_interrupts(tmp_path, gap, graceful, ignored):
    proc = subprocess.Popen([sys.executable, TRAIN], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=clean_env(OUT_DIR=str(tmp_path), EPOCHS="100000", READY_AT_STEP="2",
                                                     STEP_SLEEP="0.2" if graceful else "10"),
                            preexec_fn=_ignore_sigint if ignored else None)
    try:
        wait_for(lambda: (tmp_path / "ready").exists(), 60, "training to run", proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    if graceful:
        assert proc.returncode == 130 and "KeyboardInterrupt" not in err, err
        assert "stopped by signal SIGINT at step" in err and _stop_checkpoints(tmp_path), err
    else:  # a second Ctrl-C 3 s later (the 1 s window is measured when each handler runs, which a
        # loaded machine can delay by a second: 1.5 s was coalesced once at load 10), inside a 10 s
        # step (no step boundary between the two signals): interrupted, no stop checkpoint
        assert "KeyboardInterrupt" in err and not _stop_checkpoints(tmp_path), err
