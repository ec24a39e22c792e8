"""Helpers for the launcher tests: run `distengine launch` as a real subprocess and watch it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
LAUNCH = [sys.executable, "-m", "distengine.launch"]
CONSOLE = [str(Path(sys.executable).parent / "distengine")]


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without job or launcher variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DISTENGINE_", "TORCHELASTIC_", "SLURM_"))
           and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                         "MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME", "OMP_NUM_THREADS")}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def start(args: list[str], env: dict[str, str], cwd: Path = ROOT, cmd: list[str] = LAUNCH,
          **popen) -> subprocess.Popen:
    # Own session: the test can always clean up everything the launcher left, even on failure.
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen(cmd + args, env=env, cwd=cwd, text=True, start_new_session=True, **popen)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"launcher exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        out, err = proc.communicate()
        raise AssertionError(f"launcher did not exit within {timeout}s:\n{out}\n{err}") from None
    return proc.returncode, out, err


def kill_session(proc: subprocess.Popen) -> None:
    """Test cleanup: SIGKILL the launcher and, by session, the ranks it started."""
    pids = [proc.pid] + [c.pid for c in _children(proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            pass
    return out


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def listening_sockets(pid: int) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every listening TCP socket of ``pid`` and all its descendants."""
    found = []
    for proc in [psutil.Process(pid)] + _children(pid):
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.pid, conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found
