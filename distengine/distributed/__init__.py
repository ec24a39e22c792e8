"""Distributed helpers: environment detection, process-group setup, collectives, rank-zero tools."""
from distengine.distributed.env import ClusterEnv, detect

__all__ = ["ClusterEnv", "detect"]
