"""Where this process sits in a job, read from the environment. Standard library only.

Sources, in order:

1. A launched job (``distengine launch``, torchrun, torch elastic): ``RANK``, ``LOCAL_RANK``,
   ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``.
2. A SLURM job with one task per device: ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NTASKS``,
   ``SLURM_NODEID``, ``SLURM_JOB_NODELIST`` (first host is the master), and a port derived
   from ``SLURM_JOB_ID``.
3. Nothing: a single process on one device (the debugging mode).
"""
from __future__ import annotations

import os
import re
import socket
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    source: str = "local"  # "launched", "slurm" or "local"
    restart_count: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int(env: dict, name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None or value == "":
        if default is None:
            raise RuntimeError(f"environment variable {name} is required in a distributed job but is unset")
        return default
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from None


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM host list such as ``gpu[01-03,07],cpu1`` into host names."""
    hosts: list[str] = []
    # split on commas that are not inside brackets
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        m = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for rng in ranges.split(","):
            if "-" in rng:
                lo, hi = rng.split("-", 1)
                width = len(lo)
                for i in range(int(lo), int(hi) + 1):
                    hosts.append(f"{prefix}{str(i).zfill(width)}{suffix}")
            else:
                hosts.append(f"{prefix}{rng}{suffix}")
    return hosts


def slurm_port(job_id: int) -> int:
    """A port in 20000-39999 derived from the SLURM job id, so every task computes the same one."""
    return 20000 + (job_id % 20000)


def _slurm_is_task_launch(env: dict) -> bool:
    # An interactive allocation (salloc + bash) has SLURM_NTASKS but runs one process by hand;
    # only trust SLURM when the step really started one task per rank.
    if "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
        return False
    if env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return False
    return _int(env, "SLURM_NTASKS", 1) > 1


def detect(environ: dict | None = None) -> ClusterEnv:
    """Return the :class:`ClusterEnv` for this process."""
    env = os.environ if environ is None else environ
    restart = _int(env, "TORCHELASTIC_RESTART_COUNT", 0)
    if "WORLD_SIZE" in env and "RANK" in env:
        world = _int(env, "WORLD_SIZE")
        return ClusterEnv(
            rank=_int(env, "RANK"),
            local_rank=_int(env, "LOCAL_RANK", 0),
            world_size=world,
            local_world_size=_int(env, "LOCAL_WORLD_SIZE", world),
            node_rank=_int(env, "GROUP_RANK", 0),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int(env, "MASTER_PORT", 0),
            source="launched",
            restart_count=restart,
        )
    if _slurm_is_task_launch(env):
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        ntasks = _int(env, "SLURM_NTASKS")
        nnodes = max(1, _int(env, "SLURM_NNODES", 1))
        return ClusterEnv(
            rank=_int(env, "SLURM_PROCID"),
            local_rank=_int(env, "SLURM_LOCALID", 0),
            world_size=ntasks,
            local_world_size=_int(env, "SLURM_NTASKS_PER_NODE", ntasks // nnodes)
            if env.get("SLURM_NTASKS_PER_NODE", "").isdigit() else ntasks // nnodes,
            node_rank=_int(env, "SLURM_NODEID", 0),
            master_addr=env.get("MASTER_ADDR") or expand_nodelist(nodelist)[0],
            master_port=_int(env, "MASTER_PORT", slurm_port(_int(env, "SLURM_JOB_ID", 0))),
            source="slurm",
            restart_count=_int(env, "SLURM_RESTART_COUNT", 0),
        )
    if "SLURM_JOB_ID" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        # A one-task SLURM job is a single process, but a requeued one must still resume from
        # its checkpoint, as a multi-task job does.
        restart = max(restart, _int(env, "SLURM_RESTART_COUNT", 0))
    return ClusterEnv(restart_count=restart)


def usable_cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask, as taskset, cgroups cpusets and
    SLURM set it), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity on this platform
        return os.cpu_count() or 1


OVERSUBSCRIBE_VAR = "DISTENGINE_OVERSUBSCRIBE"


def oversubscribe_allowed(environ: dict | None = None) -> bool:
    """Whether ``DISTENGINE_OVERSUBSCRIBE`` allows more CPU processes than cores (as Open MPI's
    ``--oversubscribe``). Raises ``ValueError`` when it is set to something that is not a boolean."""
    env = os.environ if environ is None else environ
    value = (env.get(OVERSUBSCRIBE_VAR) or "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"environment variable {OVERSUBSCRIBE_VAR}={env.get(OVERSUBSCRIBE_VAR)!r} is not a boolean "
                     "(use 1 or 0)")


def gloo_ifname_from_nccl(env: dict, interfaces: list[str] | None = None) -> str | None:
    """The ``GLOO_SOCKET_IFNAME`` to use when only ``NCCL_SOCKET_IFNAME`` is set, else None.

    gloo wants exact interface names (a comma list), while NCCL also takes prefixes
    (``eth`` matches ``eth0``) and exclusions (``^docker``); only a list of names that exist on
    this machine is copied. A value that cannot be copied is left to the user, as is any
    ``GLOO_SOCKET_IFNAME`` already set.
    """
    nccl = (env.get("NCCL_SOCKET_IFNAME") or "").strip()
    if not nccl or env.get("GLOO_SOCKET_IFNAME") or nccl.startswith(("^", "=")):
        return None
    names = [n.strip() for n in nccl.split(",") if n.strip()]
    if interfaces is None:
        try:
            interfaces = [name for _, name in socket.if_nameindex()]
        except OSError:
            return None
    if not names or any(n not in interfaces for n in names):
        return None
    return ",".join(names)


def interactive() -> bool:
    """An interactive session: a Jupyter/IPython kernel or shell, the ``python`` prompt, or
    ``python -i`` (Lightning's ``_IS_INTERACTIVE``). There is no script to re-run there."""
    return hasattr(sys, "ps1") or bool(sys.flags.interactive)
