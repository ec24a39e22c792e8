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
    if returned is None:  # as Lightning: train without updates (forward, backward and the hooks still run)
        from distengine.distributed.rank_zero import rank_zero_warn

        rank_zero_warn("configure_optimizers returned None: this fit runs every training step but updates no "
                       "weights; return an optimizer to train")
        return [NoOptimizer()], []
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


class NoOptimizer(torch.optim.Optimizer):
    """What ``trainer.optimizers`` holds when ``configure_optimizers`` returned None: ``step``
    runs the closure (the training step and backward) and changes nothing; ``zero_grad`` does nothing."""

    def __init__(self) -> None:
        super().__init__([torch.zeros(1)], {})

    def step(self, closure: Any = None) -> Any:
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def __repr__(self) -> str:
        return "NoOptimizer"


# ------------------------------------------------------------------ the wrapped optimizer
_WRAPPED_CLASSES: dict[tuple[type, type], type] = {}


class LightningOptimizer:
    """An optimizer as ``Module.optimizers()`` returns it (Lightning's ``LightningOptimizer``).

    It is an instance of the wrapped optimizer's class too (``isinstance(opt, torch.optim.SGD)``
    holds); ``state``, ``param_groups`` and ``defaults`` are the wrapped optimizer's own objects
    (reading or assigning them reads or assigns the wrapped ones), ``optimizer`` is the wrapped
    optimizer, and ``step`` / ``zero_grad`` / ``state_dict`` / ``load_state_dict`` /
    ``add_param_group`` call it, returning what it returns. Under manual optimization
    ``opt.step()`` is the wrapped optimizer's step, with the Trainer's step hooks on it.

    Example::

        opt = self.optimizers()                  # in training_step, manual optimization
        opt.zero_grad(); self.manual_backward(loss); opt.step()
        raw = self.optimizers(use_pl_optimizer=False)   # the torch optimizer itself
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer.optimizer
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"LightningOptimizer wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.__dict__["_optimizer"] = optimizer
        key = (type(self), type(optimizer))
        if key not in _WRAPPED_CLASSES:  # a class per (wrapper, optimizer) pair, made once
            _WRAPPED_CLASSES[key] = type(f"Lightning{type(optimizer).__name__}", key, {})
        self.__class__ = _WRAPPED_CLASSES[key]

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.__dict__["_optimizer"]

    state = property(lambda self: self.optimizer.state, lambda self, v: setattr(self.optimizer, "state", v))
    param_groups = property(lambda self: self.optimizer.param_groups,
                            lambda self, v: setattr(self.optimizer, "param_groups", v))
    defaults = property(lambda self: self.optimizer.defaults, lambda self, v: setattr(self.optimizer, "defaults", v))

    def step(self, closure: Any = None, **kwargs: Any) -> Any:
        counter = self.__dict__.get("_step_counter")  # manual optimization: the run's step counter
        seen = counter.seen if counter is not None else 0
        if closure is None:
            out = self.optimizer.step(**kwargs)
        else:
            out = self.optimizer.step(closure=closure, **kwargs)
        if counter is not None and counter.seen == seen:
            counter.count()  # the optimizer's step hooks did not run (its step was replaced): still a step
        return out

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("_optimizer")
        if inner is None:  # not set yet (a copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(inner, name)

    def __reduce__(self) -> Any:  # copy / pickle: a wrapper of the copied optimizer
        return LightningOptimizer, (self.optimizer,)

    def __repr__(self) -> str:
        return f"Lightning{self.optimizer!r}"


class ManualStepCounter:
    """Manual optimization's ``global_step``: one per ``optimizer.step()``, counted by the
    optimizers' step post-hook (:meth:`hook`), or by :meth:`LightningOptimizer.step` itself when
    that hook did not run (a step method replaced on the optimizer's class). ``remove()`` detaches
    it at the end of the run, as the hook handles it is kept with."""

    def __init__(self, progress: Any, wrapped: list[LightningOptimizer]) -> None:
        self.progress, self.seen, self._wrapped = progress, 0, wrapped
        for w in wrapped:
            w.__dict__["_step_counter"] = self

    def hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.count()

    def count(self) -> None:
        self.progress.global_step += 1
        self.seen += 1

    def remove(self) -> None:
        for w in self._wrapped:
            if w.__dict__.get("_step_counter") is self:
                del w.__dict__["_step_counter"]


def wrap_optimizers(trainer: Any, optimizers: list[torch.optim.Optimizer]) -> list[LightningOptimizer]:
    """The :class:`LightningOptimizer` of each optimizer, the same object on every call while the
    optimizer is the same (kept on the Trainer, made anew when ``configure_optimizers`` runs again)."""
    cache = vars(trainer).get("_lightning_optimizers", {})
    kept = {}  # only the current optimizers: an earlier fit's (and their state) are not held on to
    for opt in optimizers:
        w = cache.get(id(opt))
        kept[id(opt)] = w if w is not None and w.optimizer is opt else LightningOptimizer(opt)
    vars(trainer)["_lightning_optimizers"] = kept
    return [kept[id(opt)] for opt in optimizers]
