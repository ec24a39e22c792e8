"""The environments of HPC schedulers: SLURM (``srun``), IBM LSF (``jsrun``) and MPI
(``mpirun``, through mpi4py), reading the same variables as pytorch-lightning 2.6.6."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
from typing import Any

from distengine.plugins.environments.base import ClusterEnvironment, _free_port, _ignored

__all__ = ["LSFEnvironment", "MPIEnvironment", "SLURMEnvironment"]


def _slurm_interactive() -> bool:
    return os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")


def _srun_used() -> bool:
    return "SLURM_NTASKS" in os.environ and not _slurm_interactive()


class SLURMEnvironment(ClusterEnvironment):
    """Tasks started by ``srun`` (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``,
    ``SLURM_NTASKS``, ``SLURM_NODELIST``, ``SLURM_JOB_ID``). ``auto_requeue`` and
    ``requeue_signal`` are kept for Lightning code; distengine's own SLURM support
    (``distengine slurm``) does the requeueing."""

    def __init__(self, auto_requeue: bool = True, requeue_signal: Any = None) -> None:
        super().__init__()
        self.auto_requeue = auto_requeue
        if requeue_signal is None and sys.platform != "win32":
            requeue_signal = signal.SIGUSR1
        self.requeue_signal = requeue_signal
        self._validate_srun_used()
        self._validate_srun_variables()

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        root = os.environ.get("MASTER_ADDR")
        if root is None:
            root = self.resolve_root_node_address(os.environ.get("SLURM_NODELIST", "127.0.0.1"))
            os.environ["MASTER_ADDR"] = root
        return root

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return int(os.environ["MASTER_PORT"])
        job_id = os.environ.get("SLURM_JOB_ID")
        port = int(job_id[-4:]) + 15000 if job_id is not None else 12910
        os.environ["MASTER_PORT"] = str(port)
        return port

    @staticmethod
    def detect() -> bool:
        SLURMEnvironment._validate_srun_used()
        return _srun_used()

    @staticmethod
    def job_name() -> str | None:
        return os.environ.get("SLURM_JOB_NAME")

    @staticmethod
    def job_id() -> int | None:
        job_id = os.environ.get("SLURM_JOB_ID")
        if _slurm_interactive() or job_id is None:
            return None
        try:
            return int(job_id)
        except ValueError:
            return None

    def world_size(self) -> int:
        return int(os.environ["SLURM_NTASKS"])

    def set_world_size(self, size: int) -> None:
        _ignored("SLURMEnvironment", "set_world_size")

    def global_rank(self) -> int:
        return int(os.environ["SLURM_PROCID"])

    def set_global_rank(self, rank: int) -> None:
        _ignored("SLURMEnvironment", "set_global_rank")

    def local_rank(self) -> int:
        return int(os.environ["SLURM_LOCALID"])

    def node_rank(self) -> int:
        return int(os.environ["SLURM_NODEID"])

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        if _slurm_interactive():
            return
        per_node, nodes = os.environ.get("SLURM_NTASKS_PER_NODE"), os.environ.get("SLURM_NNODES")
        if per_node is not None and per_node.isdigit() and int(per_node) != num_devices:
            raise ValueError(f"Trainer(devices={num_devices}) but SLURM runs --ntasks-per-node={per_node}; "
                             f"set devices={per_node}")
        if nodes is not None and nodes.isdigit() and int(nodes) != num_nodes:
            raise ValueError(f"Trainer(num_nodes={num_nodes}) but SLURM runs --nodes={nodes}; set num_nodes={nodes}")

    @staticmethod
    def resolve_root_node_address(nodes: str) -> str:
        """The first host of a SLURM node list (``gpu[03-05],cpu1`` -> ``gpu03``)."""
        from distengine.distributed.env import expand_nodelist

        first = nodes.split(" ")[0]
        hosts = expand_nodelist(first)
        return hosts[0] if hosts else first

    @staticmethod
    def _validate_srun_used() -> None:
        if sys.platform == "win32" or shutil.which("srun") is None or _srun_used():
            return
        hint = " ".join(["srun", os.path.basename(sys.executable), *sys.argv])[:64]
        from distengine.distributed.rank_zero import rank_zero_warn
        from distengine.utilities.warnings import PossibleUserWarning

        rank_zero_warn("The `srun` command is available on your system but is not used. HINT: If your intention is "
                       f"to run on SLURM, prepend your python command with `srun` like so: {hint} ...",
                       category=PossibleUserWarning)

    @staticmethod
    def _validate_srun_variables() -> None:
        ntasks = int(os.environ.get("SLURM_NTASKS", "1"))
        if ntasks > 1 and "SLURM_NTASKS_PER_NODE" not in os.environ:
            raise RuntimeError(f"the SLURM job was submitted with --ntasks={ntasks}, which does not say how many "
                               f"tasks run per node; use --ntasks-per-node={ntasks} instead")


class LSFEnvironment(ClusterEnvironment):
    """An IBM LSF job started by ``jsrun``: ``JSM_NAMESPACE_RANK``, ``JSM_NAMESPACE_SIZE``,
    ``JSM_NAMESPACE_LOCAL_RANK``, ``LSB_JOBID`` (the port, unless ``MASTER_PORT``) and the
    host rank file ``LSB_DJOB_RANKFILE`` (main address and node rank). Sets ``MASTER_ADDR`` and
    ``MASTER_PORT`` when built."""

    def __init__(self) -> None:
        super().__init__()
        hosts = self._read_hosts()
        self._main_address = hosts[0]
        self._main_port = self._get_main_port()
        self._node_rank = list(dict.fromkeys(hosts)).index(socket.gethostname())
        os.environ["MASTER_ADDR"] = str(self._main_address)
        os.environ["MASTER_PORT"] = str(self._main_port)

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return self._main_address

    @property
    def main_port(self) -> int:
        return self._main_port

    @staticmethod
    def detect() -> bool:
        needed = {"LSB_JOBID", "LSB_DJOB_RANKFILE", "JSM_NAMESPACE_LOCAL_RANK", "JSM_NAMESPACE_SIZE"}
        return needed.issubset(os.environ)

    @staticmethod
    def _jsm(name: str, what: str) -> int:
        value = os.environ.get(name)
        if value is None:
            raise ValueError(f"Cannot determine {what}. Environment variable `{name}` not found. "
                             "Make sure you run your executable with `jsrun`.")
        return int(value)

    def world_size(self) -> int:
        return self._jsm("JSM_NAMESPACE_SIZE", "world size")

    def set_world_size(self, size: int) -> None:
        _ignored("LSFEnvironment", "set_world_size")

    def global_rank(self) -> int:
        return self._jsm("JSM_NAMESPACE_RANK", "global rank")

    def set_global_rank(self, rank: int) -> None:
        _ignored("LSFEnvironment", "set_global_rank")

    def local_rank(self) -> int:
        return self._jsm("JSM_NAMESPACE_LOCAL_RANK", "local rank")

    def node_rank(self) -> int:
        return self._node_rank

    @staticmethod
    def _read_hosts() -> list[str]:
        path = os.environ.get("LSB_DJOB_RANKFILE")
        if path is None:
            raise ValueError("Did not find the environment variable `LSB_DJOB_RANKFILE`")
        if not path:
            raise ValueError("The environment variable `LSB_DJOB_RANKFILE` is empty")
        with open(path) as f:
            lines = [line.strip() for line in f]
        return lines[1:]  # the first line is the launch node, which runs no task

    @staticmethod
    def _get_main_port() -> int:
        if "MASTER_PORT" in os.environ:
            return int(os.environ["MASTER_PORT"])
        if "LSB_JOBID" in os.environ:
            return int(os.environ["LSB_JOBID"]) % 1000 + 10000
        raise ValueError("Could not find job id in environment variable LSB_JOBID")


class MPIEnvironment(ClusterEnvironment):
    """Ranks started by ``mpirun``; needs ``mpi4py`` (a ``ModuleNotFoundError`` says how to
    install it, as in Lightning). Rank, size and nodes come from ``MPI.COMM_WORLD``."""

    def __init__(self) -> None:
        try:
            from mpi4py import MPI
        except ImportError:
            raise ModuleNotFoundError("Requirement 'mpi4py' not met. HINT: Try running `pip install -U 'mpi4py'`") \
                from None
        self._comm_world = MPI.COMM_WORLD
        self._comm_local: Any = None
        self._node_rank: int | None = None
        self._main_address: str | None = None
        self._main_port: int | None = None

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        if self._main_address is None:
            self._main_address = self._comm_world.bcast(socket.gethostname(), root=0)
        return self._main_address

    @property
    def main_port(self) -> int:
        if self._main_port is None:
            self._main_port = self._comm_world.bcast(_free_port(), root=0)
        return self._main_port

    @staticmethod
    def detect() -> bool:
        try:
            from mpi4py import MPI
        except ImportError:
            return False
        return MPI.COMM_WORLD.Get_size() > 1

    def world_size(self) -> int:
        return self._comm_world.Get_size()

    def set_world_size(self, size: int) -> None:
        _ignored("MPIEnvironment", "set_world_size")

    def global_rank(self) -> int:
        return self._comm_world.Get_rank()

    def set_global_rank(self, rank: int) -> None:
        _ignored("MPIEnvironment", "set_global_rank")

    def local_rank(self) -> int:
        self._init_local()
        return self._comm_local.Get_rank()

    def node_rank(self) -> int:
        self._init_local()
        return self._node_rank  # type: ignore[return-value]

    def _init_local(self) -> None:
        if self._comm_local is not None:
            return
        host = socket.gethostname()
        hosts = self._comm_world.gather(host, root=0)
        hosts = self._comm_world.bcast(sorted(set(hosts)) if hosts is not None else [], root=0)
        self._node_rank = hosts.index(host)
        self._comm_local = self._comm_world.Split(color=self._node_rank)
