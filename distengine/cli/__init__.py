"""``LightningCLI``: a config-driven command line for a Module and a DataModule.

The arguments come from the classes' ``__init__`` type hints and from ``Trainer.__init__``;
values come from YAML files (``--config``, several allowed, later wins) and the command
line. Built on jsonargparse (``pip install 'distengine[cli]'``), which is imported only when
this module's names are first used, so ``import distengine`` stays light.

Example (``train.py``)::

    from distengine.cli import LightningCLI

    class Regressor(distengine.Module):
        def __init__(self, hidden_dim: int = 32, lr: float = 0.1): ...

    class Data(distengine.DataModule):
        def __init__(self, batch_size: int = 16): ...

    if __name__ == "__main__":
        LightningCLI(Regressor, Data)

    # python train.py fit --config base.yaml --config small.yaml --trainer.max_epochs 3
    # python train.py fit --print_config > config.yaml
    # distengine launch --cpus 2 train.py fit --config config.yaml

``from pytorch_lightning.cli import LightningCLI`` resolves here under the Lightning import
shim, so Lightning CLI scripts run unchanged.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LightningCLI": "distengine.cli.core",
    "SaveConfigCallback": "distengine.cli.save_config",
    "LightningArgumentParser": "distengine.cli.parser",
    "ReduceLROnPlateau": "distengine.cli.parser",
    "instantiate_class": "distengine.cli.core",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'distengine.cli' has no attribute {name!r}")
    try:
        import jsonargparse  # noqa: F401 - only to name the missing extra in one line
    except ImportError:
        raise ImportError(f"{name} needs jsonargparse: pip install 'distengine[cli]'") from None
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
