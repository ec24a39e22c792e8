"""Log the learning rate (and optionally momentum and weight decay) of every optimizer.

Keys are ``lr-<OptimizerClass>`` for an optimizer with one parameter group and
``lr-<OptimizerClass>-pg<i>`` (i from 1) for several groups; a group with a ``"name"`` entry
uses that name instead of ``pg<i>``, and a scheduler config with a ``name`` replaces
``lr-<OptimizerClass>``. Two optimizers of the same class get ``-1``, ``-2``... suffixes.
Values go straight to the loggers on global rank zero (no collective: every rank holds the
same learning rates); every rank keeps the history in :attr:`LearningRateMonitor.lrs`.

Example::

    from distengine.callbacks import LearningRateMonitor

    trainer = de.Trainer(logger=de.loggers.CSVLogger("logs"),
                         callbacks=[LearningRateMonitor(logging_interval="step")])
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from distengine.callbacks.base import Callback
from distengine.utilities.exceptions import ConfigError


class LearningRateMonitor(Callback):
    """Send the optimizers' learning rates to the loggers.

    Args:
        logging_interval: ``"step"`` logs every ``trainer.log_every_n_steps`` optimizer steps,
            ``"epoch"`` at the start of every epoch, ``None`` follows each scheduler's own
            interval (optimizers without a scheduler are logged at both).
        log_momentum: also log ``<key>-momentum`` (``momentum`` or Adam's ``beta1``).
        log_weight_decay: also log ``<key>-weight_decay``.
    """

    def __init__(self, logging_interval: str | None = None, log_momentum: bool = False,
                 log_weight_decay: bool = False) -> None:
        if logging_interval not in (None, "step", "epoch"):
            raise ConfigError(f"LearningRateMonitor(logging_interval={logging_interval!r}): use "
                              "'step', 'epoch' or None")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}
        self._last_step_logged: int | None = None

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        if not getattr(trainer, "loggers", None):
            raise RuntimeError("LearningRateMonitor needs a logger, but the Trainer has none. Pass "
                               "logger=True (TensorBoard) or e.g. logger=CSVLogger('logs') to the Trainer, "
                               "or remove the callback.")

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if self.logging_interval == "epoch":
            return
        step = int(trainer.global_step)
        every = max(1, int(getattr(trainer, "log_every_n_steps", 1) or 1))
        # the learning rate seen here is the one the optimizer step about to run will use; log it
        # under that batch's index, where the Trainer logs the loss of the same step (Lightning)
        if (step + 1) % every != 0 or self._last_step_logged == step:
            return  # not a logging step, or a later micro-batch of an accumulated step
        self._last_step_logged = step
        self._log(trainer, "step" if self.logging_interval is None else "any", step)

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        if self.logging_interval == "step":
            return
        self._log(trainer, "epoch" if self.logging_interval is None else "any", int(trainer.global_step))

    # ------------------------------------------------------------------ collection
    def extract(self, trainer: Any, interval: str = "any") -> dict[str, float]:
        """The current values for schedulers with ``interval`` (or all with ``"any"``)."""
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        configs = list(getattr(trainer, "lr_scheduler_configs", None) or [])
        names = _names(optimizers, configs)
        with_scheduler: dict[int, str] = {}
        for config in configs:
            opt = getattr(config.scheduler, "optimizer", None)
            if opt is not None:
                with_scheduler[id(opt)] = getattr(config, "interval", "epoch")
        stats: dict[str, float] = {}
        for opt, name in zip(optimizers, names):
            sched_interval = with_scheduler.get(id(opt))
            if sched_interval is not None and interval not in ("any", sched_interval):
                continue
            stats.update(self._optimizer_stats(opt, name))
        return stats

    def _optimizer_stats(self, opt: torch.optim.Optimizer, name: str) -> dict[str, float]:
        groups = opt.param_groups
        out: dict[str, float] = {}
        for i, group in enumerate(groups):
            key = name
            if len(groups) > 1:
                key = f"{name}-{group['name']}" if isinstance(group.get("name"), str) else f"{name}-pg{i + 1}"
            out[key] = float(group["lr"])
            if self.log_momentum:
                if "betas" in group:
                    out[f"{key}-momentum"] = float(group["betas"][0])
                else:
                    out[f"{key}-momentum"] = float(group.get("momentum", 0.0))
            if self.log_weight_decay:
                out[f"{key}-weight_decay"] = float(group.get("weight_decay", 0.0))
        return out

    def _log(self, trainer: Any, interval: str, step: int) -> None:
        stats = self.extract(trainer, interval)
        if not stats:
            return
        for key, value in stats.items():
            self.lrs.setdefault(key, []).append(value)
        record = getattr(trainer, "record_callback_metrics", None)
        if record is not None:  # as in Lightning, monitors and schedulers can read them
            record(stats)
        if getattr(trainer, "is_global_zero", True):
            for lg in getattr(trainer, "loggers", None) or []:
                lg.log_metrics(dict(stats), step=step)


def _names(optimizers: list[Any], configs: list[Any]) -> list[str]:
    """One base key per optimizer: a scheduler's ``name`` or ``lr-<Class>``, made unique."""
    custom = {}
    for config in configs:
        opt = getattr(config.scheduler, "optimizer", None)
        cname = getattr(config, "name", None)
        if opt is not None and cname:
            custom[id(opt)] = str(cname)
    bases = [custom.get(id(opt), f"lr-{type(opt).__name__}") for opt in optimizers]
    total = Counter(bases)
    seen: Counter[str] = Counter()
    names = []
    for base in bases:
        if total[base] > 1:
            names.append(base if seen[base] == 0 else f"{base}-{seen[base]}")
            seen[base] += 1
        else:
            names.append(base)
    return names
