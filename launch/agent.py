"""Run a validated job under torch's elastic agent, with distengine's supervision on top.

torch's ``LocalElasticAgent`` does the rendezvous, starts the ranks with their environment
(RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR/PORT,
TORCHELASTIC_RESTART_COUNT), watches them and restarts the group up to ``--max-restarts``
times. :class:`JobAgent` changes what happens when things go wrong:

* A rank fails (raises, is killed): the launcher notes which rank(s) failed *first* (the
  root cause), mutes the console, sends SIGABRT to the surviving ranks so each writes all
  its thread stacks to its log (``PYTHONFAULTHANDLER=1``), then SIGKILLs every rank and
  every process left in their sessions (dataloader workers, helpers). torch's agent alone
  would send SIGTERM and wait up to 30 s, and SIGTERM to a rank's process group also
  reaches the dataloader workers.
* The launcher gets SIGTERM/SIGINT: the signal is forwarded to the rank processes (not
  their workers), which stop at a step boundary (the Trainer saves a checkpoint); after
  ``--grace-period`` seconds whatever is left is killed. A second signal kills at once.
  The launcher exits with 128 + the signal number.
* The job ends: a summary names the failed rank, its exit or signal, and the first lines of
  its traceback (from the rank's error file if it used ``@record``, else from its log).

Example::

    opts = parse_launch_args(["--cpus", "2", "train.py"]); sock = validate(opts)
    status = run_job(opts, sock)
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import time

from distengine.launch import procs
from distengine.launch.config import LaunchOptions, rank_environment
from distengine.launch.logs import RankLogs
from distengine.launch.rendezvous import make_rendezvous
from distengine.launch.report import RankOutcome, describe_exit, format_summary
from torch.distributed import DistError
from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup, WorkerSpec, WorkerState
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
from torch.distributed.elastic.rendezvous.api import RendezvousError

# Time a torn-down rank gets to write its stacks after SIGABRT before it is killed.
_ABORT_GRACE_S = 3.0
_FORWARDED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")


def _say(message: str) -> None:
    print(f"distengine: {message}", file=sys.stderr, flush=True)


class JobAgent(LocalElasticAgent):
    """``LocalElasticAgent`` with first-failure tracking, stack-dumping teardown and signal forwarding."""

    def __init__(self, spec: WorkerSpec, logs: RankLogs, grace_period: float) -> None:
        # No shutdown_timeout: _shutdown below waits self._grace itself, and torch 2.11's agent
        # does not take that argument.
        super().__init__(spec, logs_specs=logs, start_method="spawn", exit_barrier_timeout=300)
        self._logs = logs
        self._grace = grace_period
        self.root_causes: dict[int, int] = {}     # global rank -> exit code, this attempt
        self.early_exits: dict[int, float] = {}   # global rank -> s into the attempt it exited 0 alone
        self._attempt_start = time.monotonic()
        self.attempts = 0
        self.signal: signal.Signals | None = None
        self.signal_count = 0
        self._forwarded = False

    # -- helpers ---------------------------------------------------------------------------
    def _procs(self) -> dict[int, object]:
        """local rank -> Popen of the current attempt."""
        pc = self._pcontext
        handlers = getattr(pc, "subprocess_handlers", None) or {}
        return {lr: h.proc for lr, h in handlers.items()}

    def _global_rank(self, local_rank: int) -> int:
        return self._worker_group.workers[local_rank].global_rank

    # -- overrides -------------------------------------------------------------------------
    def on_signal(self, signum: int, frame) -> None:  # noqa: ARG002
        """Signal handler: remember the signal, then unwind the agent like torch's own handler."""
        self.signal_count += 1
        self.signal = signal.Signals(signum)
        raise SignalException(f"got {self.signal.name}", sigval=self.signal)

    def install_signal_handlers(self) -> None:
        for name in _FORWARDED:
            signal.signal(getattr(signal, name), self.on_signal)

    def _start_workers(self, worker_group: WorkerGroup):
        self.root_causes, self.early_exits = {}, {}
        self._attempt_start = time.monotonic()
        self.attempts += 1
        pids = super()._start_workers(worker_group)
        # Starting the processes installed torch's handlers; ours also record the signal.
        self.install_signal_handlers()
        return pids

    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        running = self._procs()
        codes = {lr: p.poll() for lr, p in running.items()}
        failed = {lr: code for lr, code in codes.items() if code not in (None, 0)}
        if not self.root_causes and any(code is None for code in codes.values()):
            # A rank that exits 0 while others still run leaves them without a peer: if the job
            # then fails, it is named as the likely cause (a finished job never reports it).
            for lr, code in codes.items():
                if code == 0 and self._global_rank(lr) not in self.early_exits:
                    self.early_exits[self._global_rank(lr)] = time.monotonic() - self._attempt_start
        if failed:
            if not self.root_causes:
                # Every rank that has failed on its own by this poll is a root cause; the
                # ones that fail during the teardown below were stopped by us.
                self.root_causes = {self._global_rank(lr): code for lr, code in failed.items()}
            survivors = [lr for lr, code in codes.items() if code is None]
            if survivors:
                self._logs.set_console(False)
                first = min(self.root_causes)
                for lr in survivors:
                    self._logs.note(self._global_rank(lr),
                                    f"rank {first} {describe_exit(self.root_causes[first])}; "
                                    "stopping this rank with SIGABRT (stack dump follows)")
                procs.stop_ranks(list(running.values()), signal.SIGABRT, _ABORT_GRACE_S)
        elif any(code is None for code in codes.values()):
            return RunResult(state=WorkerState.HEALTHY)
        # Every rank has ended now, so torch's bookkeeping below signals nobody (left to
        # itself it would SIGTERM the survivors of a failure and wait up to 30 s).
        result = super()._monitor_workers(worker_group)
        if result.state in (WorkerState.FAILED, WorkerState.UNHEALTHY) and self._remaining_restarts > 0:
            self._announce_restart(result)
        return result

    def _announce_restart(self, result: RunResult) -> None:
        restart = self._worker_group.spec.max_restarts - self._remaining_restarts + 1
        causes = self.root_causes or {r: f.exitcode for r, f in result.failures.items()}
        what = ", ".join(f"rank {r} {describe_exit(c)}" for r, c in sorted(causes.items()))
        _say(f"{what}; restarting all ranks (restart {restart} of {self._worker_group.spec.max_restarts})")

    def _shutdown(self, death_sig: signal.Signals = signal.SIGTERM, timeout: int = 30) -> None:
        running = list(self._procs().values())
        alive = sum(p.poll() is None for p in running)
        # Forward only the first signal the launcher got, and only once; any other shutdown
        # (after success, after a failure, before a restart) finds the ranks gone or kills them.
        forward = self.signal if (self.signal is not None and not self._forwarded and alive) else None
        if forward is not None:
            self._forwarded = True
            _say(f"forwarded {forward.name} to {alive} rank{'s' if alive != 1 else ''}; waiting up to "
                 f"{self._grace:g}s for them to stop (send it again to kill them now)")
        try:
            procs.stop_ranks(running, forward, self._grace)
        except SignalException:
            procs.stop_ranks(running, None, 0)  # a second signal: no more waiting
            raise
        finally:
            self._logs.end_attempt()
            # torch's own cleanup (watchdog, health check, closing the process context); the
            # ranks are gone by now, so nothing is signalled again.
            super()._shutdown(signal.SIGKILL)  # no timeout argument: torch 2.11 has none


def _quiet_torch_logs() -> None:
    # The elastic agent logs every step of its life at WARNING; the launcher reports the
    # important parts itself. LOGLEVEL=INFO (torchrun's variable) brings them back.
    if "LOGLEVEL" not in os.environ:
        logging.getLogger("torch.distributed.elastic").addHandler(logging.NullHandler())
        logging.getLogger("torch.distributed.elastic").propagate = False


def _outcomes(agent: JobAgent, result: RunResult, logs: RankLogs) -> list[RankOutcome]:
    out = []
    for rank, failure in sorted(result.failures.items()):
        assert isinstance(failure, ProcessFailure)
        out.append(RankOutcome(rank=rank, exitcode=failure.exitcode, pid=failure.pid,
                               local_rank=failure.local_rank,
                               root_cause=rank in agent.root_causes,
                               log_path=logs.rank_logs.get(rank),
                               error_file_data=failure.error_file_data or None))
    for rank, after in sorted(agent.early_exits.items()):
        if rank not in result.failures:
            out.append(RankOutcome(rank=rank, exitcode=0, root_cause=True, log_path=logs.rank_logs.get(rank),
                                   left_early_s=after))
    return out


def _exit_status(outcomes: list[RankOutcome]) -> int:
    # the status is the first failed rank's; a rank that left early with 0 only explains it
    roots = [o for o in outcomes if o.root_cause and o.exitcode != 0] or outcomes
    code = roots[0].exitcode if roots else 1
    if code < 0:
        return 128 - code  # killed by signal N -> 128 + N, as a shell reports it
    return code or 1


def run_job(opts: LaunchOptions, store_socket) -> int:
    """Start ``opts.nproc`` ranks on this node, supervise them; return the launcher's exit status."""
    _quiet_torch_logs()
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = ",".join(_FORWARDED)
    os.environ.update(rank_environment(opts))
    log_dir = opts.log_dir or tempfile.mkdtemp(prefix="distengine-logs-")
    runtime_dir = tempfile.mkdtemp(prefix="distengine-run-")
    console = "all" if opts.all_ranks_console else "rank0"
    logs = RankLogs(log_dir, runtime_dir, console=console)
    run_id = opts.run_id()
    rdzv = None
    agent = None
    status = 1
    try:
        rdzv = make_rendezvous(opts, run_id, store_socket)
        # Each rank runs the script through launch/rank.py, which ends a finished script with
        # its exit status via os._exit: torch's gloo threads can otherwise abort the process
        # during interpreter shutdown (exit 134 after a successful run; see that module).
        target = ["-m", opts.script] if opts.module else [opts.script]
        entry = ["-u", "-m", "distengine.launch.rank", *target]
        spec = WorkerSpec(role="rank", local_world_size=opts.nproc, entrypoint=sys.executable,
                          args=tuple(entry + opts.script_args), rdzv_handler=rdzv,
                          max_restarts=opts.max_restarts, monitor_interval=0.1,
                          local_addr=opts.local_addr)
        agent = JobAgent(spec, logs, opts.grace_period)
        agent.install_signal_handlers()
        started = time.monotonic()
        try:
            result = agent.run()
        except SignalException as exc:
            status = 128 + int(exc.sigval)
            _say(f"stopped by {exc.sigval.name} after {time.monotonic() - started:.1f}s; "
                 f"exit status {status}")
            return status
        if result is None or not result.is_failed():
            status = 0
            return status
        outcomes = _outcomes(agent, result, logs)
        status = _exit_status(outcomes)
        print(format_summary(outcomes, attempts=agent.attempts, log_dir=log_dir), file=sys.stderr,
              flush=True)
        return status
    except (RendezvousError, DistError) as exc:
        # e.g. node 0 went away, or nobody joined within --rdzv-timeout: one line, not a C++ trace.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        _say(f"lost the rendezvous ({type(exc).__name__}): {first}")
        return 1
    finally:
        if rdzv is not None:
            rdzv.shutdown()
        logs.close()
        shutil.rmtree(runtime_dir, ignore_errors=True)
        if status == 0 and not opts.log_dir:
            shutil.rmtree(log_dir, ignore_errors=True)  # nothing went wrong: nothing worth keeping
