"""``pytorch_lightning.plugins.environments`` for distengine: the cluster environments a
``Trainer(plugins=[...])`` takes its rank and world size from.

Example::

    from distengine.plugins.environments import SLURMEnvironment
    trainer = distengine.Trainer(plugins=[SLURMEnvironment(auto_requeue=False)])
"""
from distengine.plugins.environments.base import (
    ClusterEnvironment,
    KubeflowEnvironment,
    LightningEnvironment,
    TorchElasticEnvironment,
)
from distengine.plugins.environments.schedulers import LSFEnvironment, MPIEnvironment, SLURMEnvironment

__all__ = ["ClusterEnvironment", "KubeflowEnvironment", "LSFEnvironment", "LightningEnvironment", "MPIEnvironment",
           "SLURMEnvironment", "TorchElasticEnvironment"]
