"""``distengine slurm submit|status|cancel|logs``: one command from a script to a SLURM job.

Examples::

    distengine slurm submit --nodes 2 --gpus-per-node 4 --time 04:00:00 --partition gpu train.py --lr 0.1
    distengine slurm submit --cpus-per-node 2 --time 10 --wait train.py      # CPU ranks, gloo
    distengine slurm status 1234
    distengine slurm logs 1234 [--rank 1 | --all] [--follow]
    distengine slurm cancel 1234

``main(argv)`` returns the process exit status; the top-level ``distengine`` command calls it
with the arguments after ``slurm``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Sequence

from distengine.slurm import jobs
from distengine.slurm.config import (
    DEFAULT_LOG_DIR,
    DEFAULT_MAX_REQUEUES,
    DEFAULT_SIGNAL_DELAY_S,
    ConfigError,
    SubmitConfig,
)

PROG = "distengine slurm"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Run a distengine script as a SLURM job "
                                "(one task per rank), requeued on preemption and time limits.")
    sub = p.add_subparsers(dest="command", metavar="{submit,status,cancel,logs}")
    sub.required = True

    s = sub.add_parser("submit", help="submit a training script",
                       description="Submit SCRIPT as a SLURM job with one task per GPU (or CPU rank). "
                       "distengine flags go before the script; everything after it is the script's.")
    s.add_argument("--nodes", type=int, default=1, help="number of nodes (sbatch --nodes; default 1)")
    ranks = s.add_mutually_exclusive_group()
    ranks.add_argument("--gpus-per-node", type=int, help="GPUs per node; one task (rank) per GPU, NCCL")
    ranks.add_argument("--cpus-per-node", type=int, help="CPU ranks per node (gloo); for CPU clusters and tests")
    s.add_argument("--time", default="", help="time limit, e.g. 04:00:00 or 90 (minutes); required")
    s.add_argument("--partition", help="sbatch --partition")
    s.add_argument("--account", help="sbatch --account")
    s.add_argument("--qos", help="sbatch --qos")
    s.add_argument("--mem", help="memory per node, e.g. 64G (sbatch --mem)")
    s.add_argument("--cpus-per-task", type=int, help="CPU cores per rank, e.g. for dataloader workers")
    s.add_argument("--constraint", help="node features (sbatch --constraint)")
    s.add_argument("--job-name", help="job name (default: the script's name)")
    s.add_argument("--max-requeues", type=int, default=DEFAULT_MAX_REQUEUES,
                   help=f"requeues allowed after reaching the time limit (default {DEFAULT_MAX_REQUEUES}); "
                   "preemptions are not counted")
    s.add_argument("--signal-delay", type=int, default=DEFAULT_SIGNAL_DELAY_S,
                   help=f"seconds before the time limit to checkpoint (default {DEFAULT_SIGNAL_DELAY_S})")
    s.add_argument("--log-dir", default=DEFAULT_LOG_DIR,
                   help=f"where job logs go, one folder per job (default ./{DEFAULT_LOG_DIR})")
    s.add_argument("--wait", action="store_true", help="follow the job and stream rank 0's output until it ends")
    s.add_argument("script", nargs="?", default="", help="the training script")
    s.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script")

    for name, text in (("status", "show a job's state, restarts and log folder"),
                       ("cancel", "cancel a job (scancel)"),
                       ("logs", "print a job's logs (rank 0 by default)")):
        c = sub.add_parser(name, help=text, description=text)
        c.add_argument("job_id", help="the SLURM job id printed by submit")
        c.add_argument("--log-dir", default=DEFAULT_LOG_DIR, help="the --log-dir the job was submitted with")
        if name == "status":
            c.add_argument("--json", action="store_true", help="print the status as JSON")
        if name == "logs":
            which = c.add_mutually_exclusive_group()
            which.add_argument("--rank", type=int, default=0, help="whose logs (default 0)")
            which.add_argument("--all", action="store_true", help="every rank's logs")
            c.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``distengine slurm ...``; returns the exit status (0 on success)."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "submit":
            return _submit(args)
        if not args.job_id.isdigit():
            raise ConfigError(f"job id {args.job_id!r} is not a number; use the id printed by submit")
        return {"status": _status, "cancel": _cancel, "logs": _logs}[args.command](args)
    except ConfigError as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------ submit
def _submit(args: argparse.Namespace) -> int:
    cfg = SubmitConfig(script=args.script, script_args=list(args.script_args), nodes=args.nodes,
                       gpus_per_node=args.gpus_per_node, cpus_per_node=args.cpus_per_node, time=args.time,
                       partition=args.partition, account=args.account, qos=args.qos, mem=args.mem,
                       cpus_per_task=args.cpus_per_task, constraint=args.constraint, job_name=args.job_name,
                       max_requeues=args.max_requeues, signal_delay=args.signal_delay, log_dir=args.log_dir)
    cfg.validate()
    job_id, folder = submit(cfg)
    kind = f"{cfg.gpus_per_node} GPU" if cfg.gpus_per_node else f"{cfg.cpus_per_node} CPU"
    print(f"Submitted job {job_id}: {cfg.num_tasks} tasks ({cfg.nodes} node(s) x {kind} ranks), "
          f"time limit {cfg.time_limit_min} min, up to {cfg.max_requeues} time-limit requeues")
    print(f"Logs: {folder} (rank 0: {job_id}_0_log.out, {job_id}_0_log.err)")
    print(f"Check: {PROG} status {job_id} | {PROG} logs {job_id} | {PROG} cancel {job_id}", flush=True)
    if not args.wait:
        return 0
    return follow(job_id, folder, ranks=[0])


def submit(cfg: SubmitConfig) -> tuple[str, str]:
    """Submit a validated config through submitit; returns ``(job_id, log_folder)``.

    Example::

        cfg = SubmitConfig(script="train.py", cpus_per_node=2, time="10")
        cfg.validate()
        job_id, folder = submit(cfg)
    """
    import submitit  # imported here: --help and argument errors should not pay for it

    from distengine.slurm.task import ScriptTask

    if shutil.which("sbatch") is None:
        raise ConfigError("sbatch not found: run this on a SLURM login node (or start a local test "
                          "cluster with distengine/slurm/testing/start-local-cluster.sh)")
    os.makedirs(cfg.log_dir, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=os.path.join(os.path.abspath(cfg.log_dir), "%j"),
                                      max_num_timeout=cfg.max_requeues)
    executor.update_parameters(**cfg.submitit_parameters())
    task = ScriptTask(script=os.path.abspath(cfg.script), args=cfg.script_args,
                      time_limit_s=cfg.time_limit_min * 60, signal_delay=cfg.signal_delay,
                      max_requeues=cfg.max_requeues, accelerator=cfg.accelerator, cwd=os.getcwd(),
                      python=sys.executable)
    try:
        job = executor.submit(task)
    except Exception as err:  # noqa: BLE001 - sbatch's own message is what the user needs
        raise ConfigError(f"sbatch refused the job: {str(err).strip().splitlines()[-1]}") from None
    folder = str(job.paths.folder)
    jobs.write_submit(folder, {"job_id": job.job_id, "script": cfg.script, "args": cfg.script_args,
                               "cwd": os.getcwd(), "nodes": cfg.nodes, "tasks": cfg.num_tasks,
                               "accelerator": cfg.accelerator, "time_limit_min": cfg.time_limit_min,
                               "signal_delay": cfg.signal_delay, "max_requeues": cfg.max_requeues})
    jobs.remember_folder(job.job_id, folder)
    return job.job_id, folder


# ------------------------------------------------------------------ status / cancel / logs
def _folder(args: argparse.Namespace) -> str | None:
    return jobs.find_folder(args.job_id, args.log_dir)


def _status(args: argparse.Namespace) -> int:
    info = jobs.summary(args.job_id, _folder(args))
    if args.json:
        print(json.dumps(info))
        return 0
    if info["state"] == "UNKNOWN" and not info["folder"]:
        raise ConfigError(f"job {args.job_id} is unknown to SLURM and has no log folder under "
                          f"{args.log_dir!r}; pass the --log-dir it was submitted with")
    limit = info["submit"].get("max_requeues", "?")
    reason = f" ({info['reason']})" if info["reason"] not in (None, "None") else ""
    print(f"job {info['job_id']}: {info['state']}{reason}")
    print(f"  restarts: {info['restarts']} (time-limit requeues {info['timeouts']}/{limit}, "
          f"preemptions {info['preemptions']})")
    if info["nodes"]:
        print(f"  nodes: {info['nodes']}  run time: {info['run_time']} of {info['time_limit']}")
    print(f"  logs: {info['folder'] or '(not found)'}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    out = subprocess.run(["scancel", args.job_id], capture_output=True, text=True)
    if out.returncode != 0:
        raise ConfigError(f"scancel {args.job_id} failed: {(out.stderr or out.stdout).strip()}")
    print(f"cancelled job {args.job_id}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    folder = _folder(args)
    if folder is None:
        raise ConfigError(f"no log folder for job {args.job_id}; pass the --log-dir it was submitted with")
    if args.all:
        ranks = sorted({int(n.split("_")[1]) for n in os.listdir(folder)
                        if n.startswith(f"{args.job_id}_") and n.endswith(("_log.out", "_log.err"))})
    else:
        ranks = [args.rank]
    if args.follow:
        return follow(args.job_id, folder, ranks=ranks)
    for rank in ranks:
        for path in jobs.log_paths(folder, args.job_id, rank):
            print(f"==> {path} <==")
            try:
                with open(path, errors="replace") as f:
                    sys.stdout.write(f.read())
            except FileNotFoundError:
                print("(no such file yet: the job may still be pending)")
    return 0


def follow(job_id: str, folder: str, ranks: Sequence[int] = (0,), poll_s: float = 1.0) -> int:
    """Stream the given ranks' logs until the job finishes; 0 when it ended COMPLETED.

    Requeued runs append to the same files, so one follow spans every restart.
    """
    offsets: dict[str, int] = {}
    last_state = None

    def pump() -> None:
        for rank in ranks:
            for path in jobs.log_paths(folder, job_id, rank):
                try:
                    with open(path, "rb") as f:
                        f.seek(offsets.get(path, 0))
                        data = f.read()
                except FileNotFoundError:
                    continue
                if data:
                    offsets[path] = offsets.get(path, 0) + len(data)
                    out = sys.stderr if path.endswith(".err") else sys.stdout
                    out.write(data.decode(errors="replace"))
                    out.flush()

    while True:
        pump()
        state = jobs.summary(job_id, folder)["state"]
        if state != last_state:
            print(f"[{PROG}] job {job_id}: {state}", file=sys.stderr, flush=True)
            last_state = state
        if state in jobs.FINISHED_STATES or state == "UNKNOWN":
            pump()
            return 0 if state == "COMPLETED" else 1
        time.sleep(poll_s)  # polling SLURM and the log files; nothing here synchronises ranks
