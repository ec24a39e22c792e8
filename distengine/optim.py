"""Turn whatever ``configure_optimizers`` returns into optimizers and scheduler configs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distengine.utilities.exceptions import ConfigError


@dataclass
class LRSchedulerConfig:
    scheduler: Any
    interval: str = "epoch"      # "epoch" or "step"
    frequency: int = 1
    monitor: str | None = None
    strict: bool = True
    name: str | None = None

    @property
    def reduce_on_plateau(self) -> bool:
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


_HELP = ("configure_optimizers must return an optimizer, a list of optimizers, a tuple "
         "(optimizers, schedulers), or a dict with 'optimizer' and optionally 'lr_scheduler'")


def _scheduler_config(item: Any, manual: bool = False) -> LRSchedulerConfig:
    """One scheduler's config. Under manual optimization the user steps it (any object; as in
    Lightning, no monitor needed, and the keys that only the automatic loop reads are ignored,
    with a RuntimeWarning)."""
    if isinstance(item, dict):
        if "scheduler" not in item:
            raise ConfigError(f"an lr_scheduler dict needs a 'scheduler' key, got keys {sorted(item)}")
        unknown = set(item) - {"scheduler", "interval", "frequency", "monitor", "strict", "name",
                               "reduce_on_plateau"}
        if unknown:
            raise ConfigError(f"unknown lr_scheduler keys {sorted(unknown)}")
        cfg = LRSchedulerConfig(item["scheduler"], item.get("interval", "epoch"), int(item.get("frequency", 1)),
                                item.get("monitor"), item.get("strict", True), item.get("name"))
    else:
        cfg = LRSchedulerConfig(item)
    if cfg.interval not in ("epoch", "step"):
        raise ConfigError(f"lr_scheduler interval must be 'epoch' or 'step', got {cfg.interval!r}")
    if manual:
        ignored = sorted(set(item) & {"monitor", "strict", "reduce_on_plateau"}) if isinstance(item, dict) else []
        if ignored:
            from distengine.distributed.rank_zero import rank_zero_warn

            rank_zero_warn(f"lr_scheduler dict keys {ignored} have no effect under manual optimization (the "
                           "Trainer never steps the scheduler there); call its step() yourself",
                           category=RuntimeWarning)
        return cfg
    if not hasattr(cfg.scheduler, "step"):
        raise ConfigError(f"lr_scheduler {type(cfg.scheduler).__name__} has no step() method")
    if cfg.reduce_on_plateau and cfg.monitor is None:
        raise ConfigError("ReduceLROnPlateau needs a metric: return "
                          "{'optimizer': opt, 'lr_scheduler': {'scheduler': sched, 'monitor': 'val_loss'}}")
    return cfg


def parse_optimizers(returned: Any, manual: bool = False) -> tuple[list[torch.optim.Optimizer],
                                                                   list[LRSchedulerConfig]]:
    optimizers: list[Any] = []
    schedulers: list[Any] = []
    if returned is None:
        raise ConfigError("configure_optimizers returned None; " + _HELP)
    if isinstance(returned, torch.optim.Optimizer):
        optimizers = [returned]
    elif isinstance(returned, dict):
        if "optimizer" not in returned:
            raise ConfigError(f"configure_optimizers returned a dict without 'optimizer' "
                              f"(keys: {sorted(returned)}); " + _HELP)
        optimizers = [returned["optimizer"]]
        if returned.get("lr_scheduler") is not None:
            sched = returned["lr_scheduler"]
            if isinstance(sched, dict) and "monitor" not in sched and "monitor" in returned:
                sched = {**sched, "monitor": returned["monitor"]}
            elif not isinstance(sched, dict):
                sched = {"scheduler": sched, "monitor": returned.get("monitor")}
            schedulers = [sched]
    elif (isinstance(returned, (list, tuple)) and len(returned) == 2
          and isinstance(returned[0], (list, tuple)) and isinstance(returned[1], (list, tuple))):
        optimizers, schedulers = list(returned[0]), list(returned[1])
    elif isinstance(returned, (list, tuple)):
        for item in returned:
            if isinstance(item, dict):
                o, s = parse_optimizers(item)
                optimizers += o
                schedulers += [{"scheduler": c.scheduler, "interval": c.interval, "frequency": c.frequency,
                                "monitor": c.monitor} for c in s]
            else:
                optimizers.append(item)
    else:
        raise ConfigError(f"configure_optimizers returned {type(returned).__name__}; " + _HELP)
    if not optimizers:
        raise ConfigError("configure_optimizers returned no optimizer; " + _HELP)
    for opt in optimizers:
        if not isinstance(opt, torch.optim.Optimizer):
            raise ConfigError(f"configure_optimizers returned {type(opt).__name__}, which is not a "
                              "torch.optim.Optimizer; " + _HELP)
    return optimizers, [_scheduler_config(s, manual) for s in schedulers]
