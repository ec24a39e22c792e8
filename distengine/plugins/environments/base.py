"""The ClusterEnvironment base and the environments of launched jobs (Lightning's default,
torch elastic, Kubeflow), reading the same variables as pytorch-lightning 2.6.6.

``Trainer(plugins=[env])`` takes this process's rank, world size, node and main address from
``env`` instead of distengine's own detection (:func:`cluster_env_from_plugin`), so a cluster
that sets its own variables works with a small subclass of :class:`ClusterEnvironment`::

    class MyCluster(ClusterEnvironment):
        creates_processes_externally = True
        main_address = property(lambda self: os.environ["HEAD"])
        ...
    trainer = Trainer(plugins=[MyCluster()])
"""
from __future__ import annotations

import logging
import os
import socket
from abc import ABC, abstractmethod

log = logging.getLogger("distengine")

__all__ = ["ClusterEnvironment", "KubeflowEnvironment", "LightningEnvironment", "TorchElasticEnvironment"]


class ClusterEnvironment(ABC):
    """Where this process sits in a job: subclass it and implement the abstract members."""

    @property
    @abstractmethod
    def creates_processes_externally(self) -> bool:
        """True when something outside the Trainer (a launcher, the scheduler) started every rank."""

    @property
    @abstractmethod
    def main_address(self) -> str:
        """Host name or address of the rank-0 node."""

    @property
    @abstractmethod
    def main_port(self) -> int:
        """The port on the main node through which the ranks meet."""

    @staticmethod
    @abstractmethod
    def detect() -> bool:
        """Whether this process runs in this kind of environment."""

    @abstractmethod
    def world_size(self) -> int:
        """Number of processes in the job."""

    @abstractmethod
    def set_world_size(self, size: int) -> None:
        """Tell the environment the world size (environments that read it ignore this)."""

    @abstractmethod
    def global_rank(self) -> int:
        """This process's index among all processes."""

    @abstractmethod
    def set_global_rank(self, rank: int) -> None:
        """Tell the environment the global rank (environments that read it ignore this)."""

    @abstractmethod
    def local_rank(self) -> int:
        """This process's index on its node."""

    @abstractmethod
    def node_rank(self) -> int:
        """The index of this process's node."""

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        """Raise when the Trainer's ``devices``/``num_nodes`` contradict the environment."""
        return None  # optional: nothing to check by default

    def teardown(self) -> None:
        """Undo what the environment set when the run ends."""
        return None  # optional: nothing to undo by default


def _free_port() -> int:
    if "STANDALONE_PORT" in os.environ:
        return int(os.environ["STANDALONE_PORT"])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _ignored(cls: str, what: str) -> None:
    log.debug("%s.%s was called, but this environment reads it from the environment; ignored", cls, what)


class LightningEnvironment(ClusterEnvironment):
    """The default environment: one process, or ranks started by ``torchrun``/``distengine
    launch`` (``LOCAL_RANK``, ``NODE_RANK``/``GROUP_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
    World size and global rank are what the Trainer sets (from ``devices`` and ``num_nodes``)."""

    def __init__(self) -> None:
        super().__init__()
        self._main_port = -1
        self._global_rank = 0
        self._world_size = 1

    @property
    def creates_processes_externally(self) -> bool:
        return "LOCAL_RANK" in os.environ

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        if self._main_port == -1:
            self._main_port = int(os.environ["MASTER_PORT"]) if "MASTER_PORT" in os.environ else _free_port()
        return self._main_port

    @staticmethod
    def detect() -> bool:
        return True

    def world_size(self) -> int:
        return self._world_size

    def set_world_size(self, size: int) -> None:
        self._world_size = size

    def global_rank(self) -> int:
        return self._global_rank

    def set_global_rank(self, rank: int) -> None:
        from distengine.distributed.rank_zero import rank_zero_only

        self._global_rank = rank
        rank_zero_only.rank = rank

    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", 0))

    def node_rank(self) -> int:
        return int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))

    def teardown(self) -> None:
        os.environ.pop("WORLD_SIZE", None)


def _warn(msg: str) -> None:
    from distengine.distributed.rank_zero import rank_zero_warn

    rank_zero_warn(msg)



class TorchElasticEnvironment(ClusterEnvironment):
    """Ranks started by torch elastic (``torchrun``, ``distengine launch``): ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``GROUP_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``."""

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        if "MASTER_ADDR" not in os.environ:
            _warn("MASTER_ADDR environment variable is not defined. Set as localhost")
            os.environ["MASTER_ADDR"] = "127.0.0.1"
        return os.environ["MASTER_ADDR"]

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" not in os.environ:
            _warn("MASTER_PORT environment variable is not defined. Set as 12910")
            os.environ["MASTER_PORT"] = "12910"
        return int(os.environ["MASTER_PORT"])

    @staticmethod
    def detect() -> bool:
        import torch.distributed as dist

        return dist.is_available() and dist.is_torchelastic_launched()

    def world_size(self) -> int:
        return int(os.environ["WORLD_SIZE"])

    def set_world_size(self, size: int) -> None:
        _ignored("TorchElasticEnvironment", "set_world_size")

    def global_rank(self) -> int:
        return int(os.environ["RANK"])

    def set_global_rank(self, rank: int) -> None:
        _ignored("TorchElasticEnvironment", "set_global_rank")

    def local_rank(self) -> int:
        return int(os.environ["LOCAL_RANK"])

    def node_rank(self) -> int:
        return int(os.environ.get("GROUP_RANK", 0))

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        if num_devices * num_nodes != self.world_size():
            raise ValueError(f"Trainer(devices={num_devices}, num_nodes={num_nodes}) makes {num_devices * num_nodes} "
                             f"processes but torch elastic started WORLD_SIZE={self.world_size()}; make them agree")


class KubeflowEnvironment(ClusterEnvironment):
    """A Kubeflow ``PyTorchJob``: one process per pod, ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``. It cannot be detected; pass it with ``plugins=``."""

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return os.environ["MASTER_ADDR"]

    @property
    def main_port(self) -> int:
        return int(os.environ["MASTER_PORT"])

    @staticmethod
    def detect() -> bool:
        raise NotImplementedError("The Kubeflow environment can't be detected automatically.")

    def world_size(self) -> int:
        return int(os.environ["WORLD_SIZE"])

    def set_world_size(self, size: int) -> None:
        _ignored("KubeflowEnvironment", "set_world_size")

    def global_rank(self) -> int:
        return int(os.environ["RANK"])

    def set_global_rank(self, rank: int) -> None:
        _ignored("KubeflowEnvironment", "set_global_rank")

    def local_rank(self) -> int:
        return 0

    def node_rank(self) -> int:
        return self.global_rank()


