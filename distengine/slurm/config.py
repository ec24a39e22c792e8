"""What a ``distengine slurm submit`` asks SLURM for, validated before anything is submitted.

Standard library only, so the command line answers ``--help`` and argument errors instantly.

Example::

    cfg = SubmitConfig(script="train.py", nodes=2, gpus_per_node=4, time="04:00:00")
    cfg.validate()                      # raises ConfigError("...") with a one-line message
    cfg.time_limit_s                    # 14400
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

#: The signal SLURM (and the task wrapper) sends before the time limit. The Trainer stops on
#: SIGUSR2 as on SIGTERM; submitit listens to the same one (its ``SUBMITIT_PREEMPT_SIGNAL``).
WARNING_SIGNAL = "USR2"
DEFAULT_LOG_DIR = "slurm_logs"
DEFAULT_SIGNAL_DELAY_S = 90
DEFAULT_MAX_REQUEUES = 3
#: Set by the batch script to the job's start (epoch seconds); read by the task wrapper.
START_ENV = "DISTENGINE_SLURM_JOB_START"
#: Set by the batch script to the job's end (StartTime + TimeLimit, from squeue; epoch seconds).
END_ENV = "DISTENGINE_SLURM_JOB_END"

_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MEM_RE = re.compile(r"^\d+(?:\.\d+)?[KMGT]?B?$", re.IGNORECASE)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:,&|!()\-+=@/]+$")
# The environment detector ignores SLURM variables in jobs named like an interactive shell
# (``salloc`` + bash); a job of that name would silently run N independent single processes.
_RESERVED_JOB_NAMES = ("bash", "interactive")


class ConfigError(ValueError):
    """A bad ``submit`` argument; the message is one line saying what to change."""


def parse_time(value: str) -> int:
    """Seconds in a SLURM time limit: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
    ``D-HH:MM:SS`` (the formats ``sbatch --time`` accepts).

    >>> parse_time("90"), parse_time("1:30:00"), parse_time("2-00")
    (5400, 5400, 172800)
    """
    m = _TIME_RE.match(value.strip())
    if not m:
        raise ConfigError(f"--time {value!r} is not a SLURM time; use minutes (90), HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        hms = nums + [0] * (3 - len(nums))
        return int(days) * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
    if len(nums) == 1:  # MM
        return nums[0] * 60
    if len(nums) == 2:  # MM:SS
        return nums[0] * 60 + nums[1]
    return nums[0] * 3600 + nums[1] * 60 + nums[2]


@dataclass
class SubmitConfig:
    """One ``distengine slurm submit``: resources, requeue policy and the script to run.

    Exactly one of ``gpus_per_node`` (one task per GPU, NCCL) and ``cpus_per_node`` (that many
    CPU tasks per node, gloo) is set. ``time`` is any ``sbatch --time`` string.
    """

    script: str
    script_args: list[str] = field(default_factory=list)
    nodes: int = 1
    gpus_per_node: int | None = None
    cpus_per_node: int | None = None
    time: str = ""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    mem: str | None = None
    cpus_per_task: int | None = None
    constraint: str | None = None
    job_name: str | None = None
    max_requeues: int = DEFAULT_MAX_REQUEUES
    signal_delay: int = DEFAULT_SIGNAL_DELAY_S
    log_dir: str = DEFAULT_LOG_DIR

    # ------------------------------------------------------------------ derived values
    @property
    def tasks_per_node(self) -> int:
        return int(self.gpus_per_node or self.cpus_per_node or 1)

    @property
    def num_tasks(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def accelerator(self) -> str:
        return "gpu" if self.gpus_per_node else "cpu"

    @property
    def time_limit_s(self) -> int:
        return parse_time(self.time)

    @property
    def time_limit_min(self) -> int:
        # SLURM keeps limits in whole minutes; a limit with seconds is rounded up, as sbatch does.
        return max(1, math.ceil(self.time_limit_s / 60))

    @property
    def name(self) -> str:
        return self.job_name or os.path.splitext(os.path.basename(self.script))[0] or "distengine"

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise :class:`ConfigError` (one line) for the first bad argument, before submitting."""
        if not self.script:
            raise ConfigError("no script given; usage: distengine slurm submit [flags] train.py [args...]")
        if not os.path.isfile(self.script):
            raise ConfigError(f"script {self.script!r} not found (paths are relative to {os.getcwd()})")
        if self.gpus_per_node is not None and self.cpus_per_node is not None:
            raise ConfigError("give --gpus-per-node (one task per GPU) or --cpus-per-node (CPU tasks), not both")
        if self.gpus_per_node is None and self.cpus_per_node is None:
            raise ConfigError("say how many ranks per node: --gpus-per-node N (GPU) or --cpus-per-node N (CPU)")
        for flag, value in (("--nodes", self.nodes), ("--gpus-per-node", self.gpus_per_node),
                            ("--cpus-per-node", self.cpus_per_node), ("--cpus-per-task", self.cpus_per_task)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}")
        if not self.time:
            raise ConfigError("--time is required (e.g. --time 04:00:00); the job checkpoints "
                              "--signal-delay seconds before it")
        limit = self.time_limit_s  # raises for a malformed --time
        if limit <= 0:
            raise ConfigError(f"--time {self.time!r} is zero; give the job at least one minute")
        if self.max_requeues < 0:
            raise ConfigError(f"--max-requeues must be 0 or more, got {self.max_requeues}")
        if self.signal_delay < 0:
            raise ConfigError(f"--signal-delay must be 0 or more seconds, got {self.signal_delay}")
        if self.signal_delay >= self.time_limit_min * 60:
            raise ConfigError(f"--signal-delay {self.signal_delay}s must be shorter than --time {self.time} "
                              f"({self.time_limit_min * 60}s); lower it or raise --time")
        if self.mem is not None and not _MEM_RE.match(self.mem):
            raise ConfigError(f"--mem {self.mem!r} is not a SLURM size; use e.g. 16G, 4000M or 0 (all memory)")
        for flag, value in (("--partition", self.partition), ("--account", self.account),
                            ("--qos", self.qos), ("--constraint", self.constraint),
                            ("--job-name", self.job_name)):
            if value is not None and not _NAME_RE.match(value):
                raise ConfigError(f"{flag} {value!r} has spaces or characters SLURM does not accept")
        if self.name in _RESERVED_JOB_NAMES:
            raise ConfigError(f"--job-name {self.name!r} is reserved for interactive shells (the ranks would "
                              "not see the SLURM job); choose another name")
        parent = os.path.abspath(self.log_dir)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise ConfigError(f"--log-dir {self.log_dir!r} cannot be created ({parent} is not a writable folder)")

    def submitit_parameters(self) -> dict:
        """Parameters for ``submitit.SlurmExecutor.update_parameters`` (each becomes one
        ``#SBATCH`` line; see docs/slurm.md for the table)."""
        params: dict = {"nodes": self.nodes, "ntasks_per_node": self.tasks_per_node,
                        "time": self.time_limit_min, "job_name": self.name,
                        "signal_delay_s": backstop_signal_delay(self.signal_delay),
                        # the task wrapper times its checkpoint signal from the job's real end
                        # (asked once per run here, not by every rank)
                        "setup": [f"export {START_ENV}=$(date +%s)",
                                  f'export {END_ENV}=$(date -d "$(squeue -h -j "$SLURM_JOB_ID" -o %e '
                                  f'2>/dev/null)" +%s 2>/dev/null)'],
                        "additional_parameters": {"requeue": True}}
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        for key in ("partition", "account", "qos", "cpus_per_task", "constraint"):
            if getattr(self, key) is not None:
                params[key] = getattr(self, key)
        if self.mem is not None:  # passed verbatim: submitit's own "mem" expects gigabytes
            params["additional_parameters"]["mem"] = self.mem
        return params


def backstop_signal_delay(signal_delay: int) -> int:
    """The lead for SLURM's own ``--signal``, which is only a backstop for the task wrapper's timer.

    SLURM checks time limits every 30 s, so its warning arrives up to 30 s EARLY. Asking for it
    30 s later than ``--signal-delay`` means it never beats the wrapper's exact timer, yet still
    arrives before the limit if the wrapper's clock is wrong (for example after an admin shortened
    the limit).
    """
    return max(0, signal_delay - 30)
