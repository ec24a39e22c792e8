"""Run a validated job under torch's elastic agent, with distengine's supervision on top.

torch's ``LocalElasticAgent`` does the rendezvous, starts the ranks with their environment
(RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR/PORT,
TORCHELASTIC_RESTART_COUNT), watches them and restarts the group up to ``--max-restarts``
times. :class:`JobAgent` changes what happens when things go wrong, through the public hooks
of ``elastic_private.SupervisedAgent`` (the one module that touches torch's private agent
methods; here only torch elastic's public API is used):

* A rank fails (raises, is killed): the launcher notes which rank(s) failed *first* (the
  root cause), mutes the console, sends SIGABRT to the surviving ranks so each writes all
  its thread stacks to its log (``PYTHONFAULTHANDLER=1``), then SIGKILLs every rank and
  every process left in their sessions (dataloader workers, helpers) or re-parented to the
  launcher (a process a rank started in a session of its own; see ``procs``). torch's agent alone
  would send SIGTERM and wait up to 30 s, and SIGTERM to a rank's process group also
  reaches the dataloader workers.
* The launcher gets SIGTERM/SIGINT: the signal is forwarded to the rank processes (not
  their workers), which stop at a step boundary (the Trainer saves a checkpoint); after
  ``--grace-period`` seconds whatever is left is killed. A second signal kills at once, unless
  it comes within 1 s of the first: then it is the same Ctrl-C delivered twice, and ignored.
  The launcher exits with 128 + the signal number.
* The job ends: a summary names the failed rank, its exit or signal, and the first lines of
  its traceback (from the rank's error file if it used ``@record``, else from its log), or,
  for a rank killed by a signal (a C++ abort), its own last lines of output.

Example::

    opts = parse_launch_args(["--cpus", "2", "train.py"]); sock = validate(opts)
    status = run_job(opts, sock)
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time

from torch.distributed import DistError
from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup, WorkerSpec, WorkerState
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure
from torch.distributed.elastic.rendezvous.api import RendezvousError

from distengine.launch import procs
from distengine.launch.config import LaunchOptions, rank_environment
from distengine.launch.elastic_private import SupervisedAgent
from distengine.launch.logs import RankLogs
from distengine.launch.rendezvous import StoreUnreachable, make_rendezvous
from distengine.launch.report import RankOutcome, describe_exit, error_from_file, format_summary, looks_like_consequence

# Time a torn-down rank gets to write its stacks after SIGABRT before it is killed.
_ABORT_GRACE_S = 3.0
#: how long a rank that has raised (its error file written) gets to exit before it is stopped
_EXITING_GRACE_S = 5.0
_FORWARDED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
# Signals within this many seconds of the first count as that one (see JobAgent.on_signal).
SIGNAL_COALESCE_S = 1.0


def _say(message: str) -> None:
    print(f"distengine: {message}", file=sys.stderr, flush=True)


class JobAgent(SupervisedAgent):
    """torch's ``LocalElasticAgent`` with first-failure tracking, stack-dumping teardown and
    signal forwarding, written against the public hooks of :class:`SupervisedAgent` (the
    launcher's only contact with torch's private agent methods is in ``elastic_private``).

    Its own state has no leading underscore: a private attribute of a torch subclass would
    share torch's namespace (and could silently replace one a newer torch adds)."""

    def __init__(self, spec: WorkerSpec, logs: RankLogs, grace_period: float) -> None:
        super().__init__(spec, logs, start_method="spawn", exit_barrier_timeout=300)
        self.logs = logs
        self.grace = grace_period
        self.root_causes: dict[int, int] = {}     # global rank -> exit code, this attempt
        self.early_exits: dict[int, float] = {}   # global rank -> s into the attempt it exited 0 alone
        self.incomplete_error_files: dict[int, str] = {}  # global rank -> its error file, set aside
        self.attempt_start = time.monotonic()
        self.attempts = 0
        self.announced_restarts = 0
        self.signal: signal.Signals | None = None
        self.signal_count = 0
        self.first_signal_at = 0.0
        self.forwarded = False

    # -- signals ---------------------------------------------------------------------------
    def on_signal(self, signum: int, frame) -> None:  # noqa: ARG002
        """Signal handler: remember the signal, then unwind the agent like torch's own handler.

        A signal within ``SIGNAL_COALESCE_S`` of the first is the same one delivered twice (one
        Ctrl-C reaches the terminal's process group *and* is forwarded by a wrapper such as
        ``timeout --foreground`` or a re-launching Trainer): ignored, so it cannot kill the
        ranks during their graceful stop. A signal after that window kills at once."""
        now = time.monotonic()
        if self.signal is not None and now - self.first_signal_at < SIGNAL_COALESCE_S:
            return
        if self.signal is None:
            self.first_signal_at = now
        self.signal_count += 1
        self.signal = signal.Signals(signum)
        raise SignalException(f"got {self.signal.name}", sigval=self.signal)

    def install_signal_handlers(self) -> None:
        for name in _FORWARDED:
            signal.signal(getattr(signal, name), self.on_signal)

    # -- hooks -----------------------------------------------------------------------------
    def attempt_starting(self, worker_group: WorkerGroup) -> None:
        if self.failed_attempts > self.announced_restarts:
            # torch restarts the group after a failure only while restarts are left.
            self.announced_restarts = self.failed_attempts
            self.announce_restart(worker_group.spec.max_restarts)
        self.root_causes, self.early_exits, self.incomplete_error_files = {}, {}, {}
        self.attempt_start = time.monotonic()
        self.attempts += 1

    def attempt_started(self, worker_group: WorkerGroup, pids: dict[int, int]) -> None:
        # Starting the processes installed torch's handlers; ours also record the signal.
        self.install_signal_handlers()

    def check_workers(self, worker_group: WorkerGroup) -> RunResult | None:
        pids = self.rank_pids
        codes = {lr: procs.exit_status(pid) for lr, pid in pids.items()}
        if not self.root_causes and any(c not in (None, 0, procs.GONE) for c in codes.values()):
            codes = self.let_raised_ranks_exit(worker_group, codes)
        ended = {lr: code for lr, code in codes.items() if code is not None and code is not procs.GONE}

        def global_rank(lr: int) -> int:
            return worker_group.workers[lr].global_rank

        failed = {lr: code for lr, code in ended.items() if code != 0}
        still = [lr for lr, code in codes.items() if code is None]
        if not self.root_causes and still:
            # A rank that exits 0 while others still run leaves them without a peer: if the job
            # then fails, it is named as the likely cause (a finished job never reports it).
            for lr, code in ended.items():
                if code == 0 and global_rank(lr) not in self.early_exits:
                    self.early_exits[global_rank(lr)] = time.monotonic() - self.attempt_start
        if failed:
            if not self.root_causes:
                # Every rank that has failed on its own by this poll is a root cause; the
                # ones that fail during the teardown below were stopped by us.
                self.root_causes = {global_rank(lr): code for lr, code in failed.items()}
            if still:
                self.logs.set_console(False)
                first = min(self.root_causes)
                for lr in still:
                    self.logs.note(global_rank(lr),
                                   f"rank {first} {describe_exit(self.root_causes[first])}; "
                                   "stopping this rank with SIGABRT (stack dump follows)")
                procs.stop_ranks(list(pids.values()), signal.SIGABRT, _ABORT_GRACE_S)
        elif still:
            return RunResult(state=WorkerState.HEALTHY)
        # Every rank has ended now, so torch's own monitor (which reaps them and reads their
        # error files) signals nobody: left to itself it would SIGTERM the survivors of a
        # failure and wait up to 30 s. A half-written error file would make it raise.
        self.incomplete_error_files.update(self.logs.set_aside_incomplete_error_files())
        return None

    def let_raised_ranks_exit(self, worker_group: WorkerGroup, codes: dict) -> dict:
        """A rank still running whose error file is written has raised and is on its way out
        (its peers' "connection closed" errors can end them before it has exited): unless its own
        error is such a lost-peer error (then it is stopped, its stack dumped, as before), it gets up to
        ``_EXITING_GRACE_S`` to exit on its own, so it counts as a failure of its own and is not
        stopped, and named, as a consequence (seen under load)."""
        raised = [lr for lr, code in codes.items() if code is None
                  and _raised_on_its_own(self.logs.error_files.get(worker_group.workers[lr].global_rank))]
        deadline = time.monotonic() + _EXITING_GRACE_S
        while raised and time.monotonic() < deadline:
            time.sleep(0.05)
            raised = [lr for lr in raised if procs.exit_status(self.rank_pids[lr]) is None]
        return {lr: procs.exit_status(pid) for lr, pid in self.rank_pids.items()}

    def announce_restart(self, max_restarts: int) -> None:
        failures = self.last_result.failures if self.last_result is not None else {}
        causes = self.root_causes or {r: f.exitcode for r, f in failures.items()}
        what = ", ".join(f"rank {r} {describe_exit(c)}" for r, c in sorted(causes.items()))
        _say(f"{what}; restarting all ranks (restart {self.announced_restarts} of {max_restarts})")

    def stop_workers(self, death_sig: signal.Signals) -> None:
        pids = list(self.rank_pids.values())
        alive = sum(procs.running(pid) for pid in pids)
        # Forward only the first signal the launcher got, and only once; any other shutdown
        # (after success, after a failure, before a restart) finds the ranks gone or kills them.
        forward = self.signal if (self.signal is not None and not self.forwarded and alive) else None
        if forward is not None:
            self.forwarded = True
            _say(f"forwarded {forward.name} to {alive} rank{'s' if alive != 1 else ''}; waiting up to "
                 f"{self.grace:g}s for them to stop (send it again a second or more later to kill them now)")
        try:
            procs.stop_ranks(pids, forward, self.grace)
        except SignalException:
            procs.stop_ranks(pids, None, 0)  # a second signal: no more waiting
            raise
        finally:
            # The ranks are gone (torch's cleanup that follows signals nobody again).
            self.logs.end_attempt()


def _quiet_torch_logs() -> None:
    # The elastic agent logs every step of its life at WARNING; the launcher reports the
    # important parts itself. LOGLEVEL=INFO (torchrun's variable) brings them back.
    if "LOGLEVEL" not in os.environ:
        logging.getLogger("torch.distributed.elastic").addHandler(logging.NullHandler())
        logging.getLogger("torch.distributed.elastic").propagate = False


def _raised_on_its_own(error_file: str | None) -> bool:
    """The rank wrote its error file, and the error is not a lost peer's consequence."""
    if not error_file:
        return False
    try:
        with open(error_file) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return not looks_like_consequence(error_from_file(data)[0])


def _written_at(path: str | None) -> float | None:
    try:
        return os.stat(path).st_mtime if path else None
    except OSError:
        return None


def _outcomes(agent: JobAgent, result: RunResult, logs: RankLogs) -> list[RankOutcome]:
    out = []
    for rank, failure in sorted(result.failures.items()):
        assert isinstance(failure, ProcessFailure)
        out.append(RankOutcome(rank=rank, exitcode=failure.exitcode, pid=failure.pid,
                               local_rank=failure.local_rank,
                               root_cause=rank in agent.root_causes,
                               log_path=logs.rank_logs.get(rank),
                               error_file_data=failure.error_file_data or None,
                               error_file_incomplete=agent.incomplete_error_files.get(rank),
                               error_written=_written_at(failure.error_file)))
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


def _keep_details(log_dir: str | None, text: str) -> str | None:
    """Keep torch's own output about a launcher error in ``<log dir>/launcher.log``; its path."""
    if not log_dir or not text:
        return None
    path = os.path.join(log_dir, "launcher.log")
    try:
        with open(path, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")
    except OSError:
        return None
    return path


def run_job(opts: LaunchOptions, store_socket) -> int:
    """Start ``opts.nproc`` ranks on this node, supervise them; return the launcher's exit status."""
    _quiet_torch_logs()
    procs.become_subreaper()  # what a rank started in a session of its own comes back to us when the rank dies
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
    except StoreUnreachable as exc:
        kept = _keep_details(opts.log_dir, exc.details)
        _say(f"{exc}{f' (torch: {kept})' if kept else ''}")
        return 1
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
