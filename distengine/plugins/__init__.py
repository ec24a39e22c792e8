"""``pytorch_lightning.plugins`` for distengine: what ``Trainer(plugins=[...])`` accepts.

- a :class:`~distengine.plugins.environments.ClusterEnvironment` (``LightningEnvironment``,
  ``SLURMEnvironment``, ``TorchElasticEnvironment``, ``KubeflowEnvironment``, ``LSFEnvironment``,
  ``MPIEnvironment`` or your subclass): the Trainer's rank, world size, node and main address
  come from it instead of distengine's own detection;
- a precision plugin (``MixedPrecision``, ``HalfPrecision("bf16-true")``, ``DoublePrecision``):
  the same as the ``precision`` flag.

Anything else (checkpoint IO, layer sync, other precision plugins) is a one-line error.
"""
from __future__ import annotations

import os
from typing import Any

from distengine.plugins import environments
from distengine.plugins.environments import ClusterEnvironment
from distengine.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from distengine.utilities.exceptions import ConfigError

__all__ = ["ClusterEnvironment", "DoublePrecision", "HalfPrecision", "MixedPrecision", "Precision", "environments",
           "resolve_plugins"]


def resolve_plugins(plugins: Any) -> tuple[ClusterEnvironment | None, str | None]:
    """Split ``Trainer(plugins=...)`` into (cluster environment, precision flag value)."""
    if plugins is None:
        return None, None
    env: ClusterEnvironment | None = None
    precision: str | None = None
    for p in plugins if isinstance(plugins, (list, tuple)) else [plugins]:
        if isinstance(p, ClusterEnvironment):
            if env is not None:
                raise ConfigError(f"Trainer(plugins=...) has two cluster environments, {type(env).__name__} and "
                                  f"{type(p).__name__}; pass one")
            env = p
        elif isinstance(p, Precision):
            if precision is not None:
                raise ConfigError("Trainer(plugins=...) has two precision plugins; pass one")
            precision = p.precision
        else:
            raise ConfigError(f"Trainer(plugins=[{type(p).__name__}]) is not supported by distengine: it takes a "
                              "ClusterEnvironment (distengine.plugins.environments) or MixedPrecision/HalfPrecision/"
                              "DoublePrecision; remove it")
    return env, precision


def cluster_env_from_plugin(plugin: ClusterEnvironment, devices: Any, num_nodes: int) -> Any:
    """The :class:`~distengine.distributed.env.ClusterEnv` that ``plugin`` describes. An environment
    that did not start the processes (``creates_processes_externally`` False: a plain
    ``python train.py``) is one local process, which ``fit`` launches from as usual."""
    try:
        return _cluster_env(plugin, devices, num_nodes)
    except KeyError as exc:  # an environment read outside its cluster: the variable is unset
        name = type(plugin).__name__
        raise ConfigError(f"Trainer(plugins=[{name}()]): {name} reads the environment variable {exc.args[0]}, which "
                          f"is not set; start the script under that cluster's launcher, or drop the plugin") from None


def _cluster_env(plugin: ClusterEnvironment, devices: Any, num_nodes: int) -> Any:
    from distengine.distributed.env import ClusterEnv, detect

    restart = detect().restart_count
    if not plugin.creates_processes_externally:
        return ClusterEnv(restart_count=restart)
    if isinstance(plugin, environments.LightningEnvironment):
        # world size and rank are the Trainer's to set, from devices and num_nodes (as Lightning's strategies do)
        per_node = _per_node(devices) or int(os.environ.get("LOCAL_WORLD_SIZE")
                                             or int(os.environ.get("WORLD_SIZE", 1)) // max(num_nodes, 1) or 1)
        plugin.set_world_size(per_node * num_nodes)
        plugin.set_global_rank(plugin.node_rank() * per_node + plugin.local_rank())
    world = int(plugin.world_size())
    if world <= 1:
        return ClusterEnv(restart_count=restart)
    local_world = _per_node(devices) or int(os.environ.get("LOCAL_WORLD_SIZE") or max(world // max(num_nodes, 1), 1))
    from distengine.distributed.rank_zero import rank_zero_only

    rank = int(plugin.global_rank())
    rank_zero_only.rank = rank  # rank_zero_* helpers agree before the process group starts
    return ClusterEnv(rank=rank, local_rank=int(plugin.local_rank()), world_size=world, local_world_size=local_world,
                      node_rank=int(plugin.node_rank()), master_addr=str(plugin.main_address),
                      master_port=int(plugin.main_port), source="plugin", restart_count=restart)


def _per_node(devices: Any) -> int:
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    return 0
