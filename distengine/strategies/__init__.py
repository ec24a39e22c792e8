"""Strategies: how a rank holds the model (one device, DDP, FSDP2, TP x FSDP2). See ``base.py``.

``Trainer(strategy=...)`` takes a name from :data:`STRATEGIES` or a :class:`Strategy`
instance. A name maps to (module path, class name, constructor arguments) and is imported only
when used, so adding a strategy is one line here.
"""
from __future__ import annotations

import importlib
from typing import Any

from distengine.strategies.base import Strategy
from distengine.utilities.exceptions import ConfigError

STRATEGIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "single_device": ("distengine.strategies.single", "SingleDeviceStrategy", {}),
    "ddp": ("distengine.strategies.ddp", "DDPStrategy", {}),
    "ddp_find_unused_parameters_true": ("distengine.strategies.ddp", "DDPStrategy", {"find_unused_parameters": True}),
    # the ranks are started from this interpreter (distributed/processes.py): a notebook, `python -c`.
    # Inside a launched job they run as "ddp" (the launcher started the processes already).
    **{f"{name}{suffix}": ("distengine.strategies.ddp", "DDPStrategy", {"start_method": method, **unused})
       for name, method in (("ddp_spawn", "spawn"), ("ddp_fork", "fork"), ("ddp_notebook", "fork"))
       for suffix, unused in (("", {}), ("_find_unused_parameters_false", {}),
                              ("_find_unused_parameters_true", {"find_unused_parameters": True}))},
    "fsdp": ("distengine.strategies.fsdp", "FSDPStrategy", {}),
}

_LAZY = {"SingleDeviceStrategy": "distengine.strategies.single", "DDPStrategy": "distengine.strategies.ddp",
         "FSDPStrategy": "distengine.strategies.fsdp",
         "ModelParallelStrategy": "distengine.strategies.model_parallel"}

__all__ = ["Strategy", "STRATEGIES", "resolve_strategy", *_LAZY]


def resolve_strategy(strategy: Any, distributed: bool, find_unused_parameters: bool = False,
                     devices: int = 1) -> Strategy:
    """The Strategy for the Trainer's ``strategy`` flag. ``"auto"`` (or None) is DDP in a
    launched job of several ranks; with ``devices`` > 1 in an interactive session (a notebook,
    ``python -i``) it is ``"ddp_fork"``, as in Lightning 2.6.6; one device otherwise (a script
    then re-runs itself under ``distengine launch`` when ``fit`` starts)."""
    from distengine.distributed.env import interactive

    if isinstance(strategy, Strategy):
        if find_unused_parameters:
            if not hasattr(strategy, "find_unused_parameters"):
                raise ConfigError(f"Trainer(find_unused_parameters=True) is a DDP option, but strategy is "
                                  f"{type(strategy).__name__}; drop the flag")
            strategy.find_unused_parameters = True
        return strategy
    if strategy in ("auto", None):
        forks = not distributed and devices > 1 and interactive()
        strategy = "ddp" if distributed else "ddp_fork" if forks else "single_device"
        # the DDP flag means nothing in one process (as before strategies were explicit)
        find_unused_parameters = find_unused_parameters and (distributed or forks)
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ConfigError(f"strategy={strategy!r} is not supported; use 'auto', {', '.join(map(repr, STRATEGIES))} "
                          "or a distengine.strategies.Strategy instance")
    module, cls, kwargs = STRATEGIES[strategy]
    if find_unused_parameters and "DDP" in cls:
        kwargs = {**kwargs, "find_unused_parameters": True}
    elif find_unused_parameters:
        raise ConfigError(f"Trainer(find_unused_parameters=True) is a DDP option, but strategy={strategy!r}; "
                          "drop the flag")
    out = getattr(importlib.import_module(module), cls)(**kwargs)
    out.name = strategy
    return out


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distengine.strategies' has no attribute {name!r}")
