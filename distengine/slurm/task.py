"""The callable submitit runs in every SLURM task: run the user's script, then decide on requeue.

One SLURM task per rank. Each task runs ``python train.py args`` as a child process (so the
Trainer owns the process exactly as under ``python train.py``), and stays alive to read the
child's exit status:

* ``0``: done.
* ``128 + SIGUSR2`` (or ``SIGUSR1``), the Trainer's "stopped on a signal after saving a
  checkpoint": rank 0 requeues the job with ``scontrol requeue``. It was a *timeout* when the
  wrapper's own timer sent the signal (``--signal-delay`` seconds before the limit) or little
  time was left, and those count against ``--max-requeues``; otherwise a *preemption*, which
  does not count.
* ``128 + SIGTERM``: requeued as a preemption only while SLURM still has the job RUNNING (a
  bare ``scancel --signal=TERM``); after ``scancel`` (CANCELLED) or at the time limit it is not.
* anything else: the script failed; never requeued (its traceback is in the task's log).

Why the wrapper keeps its own timer: SLURM checks ``--signal`` only every 30 s, so its warning
lands anywhere up to 30 s early; the wrapper signals the child at exactly ``--signal-delay``
seconds before the end and SLURM's warning is only a backstop (see
:func:`distengine.slurm.config.backstop_signal_delay`).

Why the child starts with SIGUSR1/SIGUSR2 ignored and the wrapper re-sends a pending stop
signal every few seconds: the Trainer only listens during ``fit``. A signal that arrives while
the script is still importing torch would otherwise kill it before anything is saved; this way
it takes effect as soon as ``fit`` runs, and is harmless after ``fit`` has returned.

Example (what ``distengine slurm submit`` hands to submitit)::

    task = ScriptTask("train.py", ["--lr", "0.1"], time_limit_s=3600, signal_delay=90,
                      max_requeues=3, accelerator="cpu", cwd="/home/me/project")
    executor.submit(task)
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from distengine.distributed.env import expand_nodelist
from distengine.slurm import jobs
from distengine.slurm.config import END_ENV, START_ENV, WARNING_SIGNAL

_STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)
_LAUNCHER_VARS = frozenset({"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                            "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"})
#: Export this before submitting to choose the rendezvous port yourself.
PORT_ENV = "DISTENGINE_MASTER_PORT"
_RESEND_EVERY_S = 3.0
#: A stop signal with at most this much more than ``--signal-delay`` left counts as a timeout
#: (SLURM's backstop warning is up to 30 s early, plus slack for a slow step).
_TIMEOUT_SLACK_S = 45


def master_port(job_id: int, restart: int) -> int:
    """The rendezvous port: derived from the job id, and different after each requeue so a
    restarted job never meets a socket of its previous run still in TIME_WAIT."""
    return 20000 + (job_id + 7919 * restart) % 20000


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def job_end_time(time_limit_s: int) -> float:
    """When SLURM ends this run: its EndTime (exported by the batch script), else the batch
    script's start plus the limit, else now plus the limit."""
    end = os.environ.get(END_ENV, "")
    if end.isdigit():
        return float(end)
    start = os.environ.get(START_ENV, "")
    return (float(start) if start.isdigit() else time.time()) + time_limit_s


def exit_signal(returncode: int) -> int | None:
    """The signal behind an exit status: ``-N`` (killed by N) or ``128 + N`` (stopped on N)."""
    if returncode < 0:
        return -returncode
    if 128 < returncode < 128 + 65:
        return returncode - 128
    return None


class TaskFailed(RuntimeError):
    """The job cannot go on (busy rendezvous port, ``scontrol requeue`` refused); submitit
    records the message and the job ends FAILED."""


@dataclass
class ScriptTask:
    """Runs ``python script args`` in one SLURM task and requeues the job when it should."""

    script: str
    args: list[str] = field(default_factory=list)
    time_limit_s: int = 3600
    signal_delay: int = 90
    max_requeues: int = 3
    accelerator: str = "gpu"
    cwd: str = "."
    python: str = sys.executable

    # ------------------------------------------------------------------ submitit entry points
    def __call__(self) -> int:
        job_id = int(os.environ["SLURM_JOB_ID"])
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        folder = jobs.job_folder_from_env()
        received: list[int] = []
        for s in (*_STOP_SIGNALS, signal.SIGTERM, signal.SIGINT):
            # Record only: the child does the stopping; this process must live to read its status.
            signal.signal(s, lambda signum, frame: received.append(signum))

        deadline = job_end_time(self.time_limit_s) - self.signal_delay
        env = self._child_env(job_id, restart)
        if rank == 0:
            port = int(env["MASTER_PORT"])
            if env["MASTER_ADDR"] in (socket.gethostname(), socket.gethostname().split(".")[0]) \
                    and not port_is_free(port):
                jobs.record_event(folder, "failed", restart=restart, detail=f"port {port} in use")
                raise TaskFailed(f"rendezvous port {port} (from job id {job_id}) is in use on "
                                 f"{env['MASTER_ADDR']}; submit with {PORT_ENV}=<free port> exported")
            jobs.record_event(folder, "started", restart=restart, master=f"{env['MASTER_ADDR']}:{port}",
                              tasks=int(os.environ.get("SLURM_NTASKS", "1")))
            _say(f"job {job_id} (restart {restart}): {os.environ.get('SLURM_NTASKS', '1')} tasks, "
                 f"master {env['MASTER_ADDR']}:{port}; checkpoint signal at "
                 f"{max(0, deadline - time.time()):.0f}s from now")

        # Through the rank entry point, as under `distengine launch`: a finished script exits with
        # its own status instead of risking torch's abort at interpreter shutdown (exit 134), and
        # the rank dies with this task process if that is killed.
        child = subprocess.Popen([self.python, "-m", "distengine.launch.rank", self.script, *self.args],
                                 cwd=self.cwd, env=env,
                                 stdin=subprocess.DEVNULL, preexec_fn=_ignore_stop_signals)
        timer_fired = False
        pending: int | None = None
        last_sent = 0.0
        while True:
            if pending is None:
                pending = next((s for s in received if s in _STOP_SIGNALS), None)
            # Popen.wait polls internally anyway; a 1 s cap lets a recorded signal act promptly.
            try:
                rc = child.wait(timeout=min(1.0, max(0.05, deadline - time.time())))
                break
            except subprocess.TimeoutExpired:
                pass
            if not pending and time.time() >= deadline:
                left = jobs.time_left_s(job_id)
                if left is not None and left > self.signal_delay + 60:
                    deadline = time.time() + left - self.signal_delay  # the limit was extended
                    continue
                timer_fired, pending = True, signal.Signals[f"SIG{WARNING_SIGNAL}"]
            if pending and time.time() >= last_sent + _RESEND_EVERY_S:
                _signal(child, pending)
                last_sent = time.time()
        return self._conclude(rc, timer_fired, job_id, rank, restart, folder)

    def checkpoint(self, *args: object, **kwargs: object):
        """submitit's hook for a signal that lands before ``__call__`` took over the handlers:
        requeue the same task unchanged (all progress lives in the Trainer's checkpoints)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)

    # ------------------------------------------------------------------ helpers
    def _child_env(self, job_id: int, restart: int) -> dict[str, str]:
        # sbatch exports the submitting shell's environment: launcher variables from there
        # (a local torchrun, a MASTER_ADDR of 127.0.0.1) would be wrong here, so they go.
        env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or socket.gethostname()
        # The Trainer's environment detection honours MASTER_ADDR/MASTER_PORT; setting them here
        # gives every rank the same restart-aware port.
        env["MASTER_ADDR"] = expand_nodelist(nodelist)[0]
        env["MASTER_PORT"] = env.get(PORT_ENV) or str(master_port(job_id, restart))
        env["PYTHONUNBUFFERED"] = "1"
        env["DISTENGINE_LAUNCHER_PID"] = str(os.getpid())  # see launch/rank.py: dies with this task
        if self.accelerator == "cpu":
            env["DISTENGINE_ACCELERATOR"] = "cpu"
        return env

    def _conclude(self, rc: int, timer_fired: bool, job_id: int, rank: int, restart: int,
                  folder: str | None) -> int:
        sig = exit_signal(rc)
        name = os.path.basename(self.script)
        if rc == 0:
            if rank == 0:
                jobs.record_event(folder, "completed", restart=restart)
            return 0
        if sig == signal.SIGINT:
            if rank == 0:
                jobs.record_event(folder, "interrupted", restart=restart, exit_code=rc)
                _say(f"{name} stopped on SIGINT; not requeued")
            raise SystemExit(rc if rc > 0 else 128 + sig)
        if sig not in (*_STOP_SIGNALS, signal.SIGTERM):
            if rank == 0:
                jobs.record_event(folder, "failed", restart=restart, exit_code=rc)
            # A one-line note and the script's own status: the script's traceback above stays the
            # last one in the log (an exception here would print the wrapper's traceback after it).
            _say(f"{name} exited with status {rc} on rank {rank}; not requeued "
                 f"(`distengine slurm logs {job_id} --rank {rank}` shows this rank's log)")
            raise SystemExit(rc if rc > 0 else 128 - rc)
        if rank != 0:  # rank 0 alone decides and requeues; the others just end
            raise SystemExit(128 + sig)
        kind = self._classify(timer_fired, job_id)
        sig_name = signal.Signals(sig).name
        if kind is None:
            jobs.record_event(folder, "cancelled", restart=restart, exit_code=rc)
            _say(f"{name} stopped on {sig_name}; the job was cancelled or already requeued by SLURM, "
                 "so it is not requeued here")
            raise SystemExit(128 + sig)
        used = int(jobs.read_state(folder)["timeouts"])
        if kind == "timeout" and used >= self.max_requeues:
            jobs.record_event(folder, "timeout", restart=restart, exit_code=rc, requeued=False)
            _say(f"{name} reached the time limit and --max-requeues {self.max_requeues} is used up; "
                 "not requeued (the last checkpoint is kept: resubmit to continue)")
            raise SystemExit(128 + sig)
        jobs.record_event(folder, kind, restart=restart, exit_code=rc, requeued=True)
        counted = f", {used + 1}/{self.max_requeues} time-limit requeues" if kind == "timeout" else \
            " (not counted against --max-requeues)"
        _say(f"{name} stopped on {sig_name} ({kind}); requeueing job {job_id}{counted}")
        try:
            subprocess.run(["scontrol", "requeue", str(job_id)], check=True, timeout=60,
                           capture_output=True, text=True)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
            detail = getattr(err, "stderr", "") or str(err)
            raise TaskFailed(f"scontrol requeue {job_id} failed: {detail.strip()}") from None
        # Like submitit after its own requeue: end without a result file; the job is PENDING again.
        raise SystemExit(128 + sig)

    def _classify(self, timer_fired: bool, job_id: int) -> str | None:
        """Why the script stopped on a signal: 'timeout', 'preemption', or None when the job was
        cancelled (scancel) or SLURM itself already requeued it."""
        info = jobs.query_job(job_id) or {}
        state, reason = info.get("JobState", ""), info.get("Reason", "")
        if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CANCELLED"):
            return None
        # While the tasks are being killed the state reads COMPLETING; the reason tells a time
        # limit (requeue, counted) from a preemption (requeue) from an scancel (stop).
        if "TimeLimit" in reason:
            return "timeout"
        if "Preempt" in reason:
            return "preemption"
        if state != "RUNNING":
            return None
        if timer_fired:
            return "timeout"
        left = jobs.time_left_s(job_id)
        if left is not None and left <= self.signal_delay + _TIMEOUT_SLACK_S:
            return "timeout"  # SLURM's own --signal warning (the backstop)
        return "preemption"


def _ignore_stop_signals() -> None:  # runs in the child between fork and exec
    for s in _STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def _signal(child: subprocess.Popen, signum: int) -> None:
    try:
        child.send_signal(signum)
    except ProcessLookupError:
        pass


def _say(message: str) -> None:
    print(f"distengine.slurm: {message}", file=sys.stderr, flush=True)
