"""Log the learning rate (and optionally momentum and weight decay) of every optimizer.

Keys, as in Lightning 2.6.6: ``lr-<OptimizerClass>`` for an optimizer with one parameter group
and ``lr-<OptimizerClass>/pg<i>`` (i from 1) for several groups; a group with a ``"name"``
entry uses that name instead of ``pg<i>`` (``lr-SGD/encoder``), and a scheduler config with a
``name`` replaces ``lr-<OptimizerClass>``. The second optimizer of a class gets ``-1``, the
third ``-2`` (``lr-SGD``, ``lr-SGD-1``); ``-momentum`` and ``-weight_decay`` follow a key.
Every optimizer is logged, in automatic and in manual optimization, every
``log_every_n_steps`` batches that stepped (not optimizer steps: two optimizers stepping in
one batch are one logging step).
Values go straight to the loggers on global rank zero (no collective: every rank holds the
same learning rates); every rank keeps the history in :attr:`LearningRateMonitor.lrs`.

Example::

    from distengine.callbacks import LearningRateMonitor

    trainer = de.Trainer(logger=de.loggers.CSVLogger("logs"),
                         callbacks=[LearningRateMonitor(logging_interval="step")])
"""
from __future__ import annotations

import warnings
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
        self.last_momentum_values: dict[str, float | None] = {}
        self.last_weight_decay_values: dict[str, float | None] = {}
        self._last_step_logged: int | None = None

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        if not getattr(trainer, "loggers", None):
            raise ConfigError("LearningRateMonitor needs a logger, but the Trainer has none. Pass "
                               "logger=True (TensorBoard) or e.g. logger=CSVLogger('logs') to the Trainer, "
                               "or remove the callback.")

    def on_train_start(self, trainer: Any, module: Any) -> None:
        # the keys, known before the first value (Lightning fills lrs here too)
        self.lrs = {name: [] for opt, names in _named(trainer) for name in names}
        self.last_momentum_values = {f"{n}-momentum": None for n in self.lrs}
        self.last_weight_decay_values = {f"{n}-weight_decay": None for n in self.lrs}
        if self.log_momentum and not all("momentum" in opt.defaults or "betas" in opt.defaults
                                         for opt, _ in _named(trainer)):
            warnings.warn("You have set log_momentum=True, but some optimizers do not have momentum. "
                          "This will log a value 0 for the momentum.", RuntimeWarning, stacklevel=2)

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        if self.logging_interval == "epoch":
            return
        # Lightning's cadence and step index: batches that closed an optimizer step, not
        # global_step (which counts every optimizer's step in manual optimization)
        step = int(getattr(getattr(trainer, "progress", None), "batches_stepped", trainer.global_step))
        every = int(getattr(trainer, "log_every_n_steps", 1) or 0)
        # the learning rate seen here is the one the optimizer step about to run will use; log it
        # under that batch's index, where the Trainer logs the loss of the same step (Lightning)
        if not every or ((step + 1) % every != 0 and not getattr(trainer, "should_stop", False)) \
                or self._last_step_logged == step:
            return  # not a logging step, or a later micro-batch of an accumulated step
        self._last_step_logged = step
        self._log(trainer, "step" if self.logging_interval is None else "any", step)

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        if self.logging_interval == "step":
            return
        step = int(getattr(getattr(trainer, "progress", None), "batches_stepped", trainer.global_step))
        self._log(trainer, "epoch" if self.logging_interval is None else "any", step)

    # ------------------------------------------------------------------ collection
    def extract(self, trainer: Any, interval: str = "any") -> dict[str, float]:
        """The current values: optimizers with a scheduler of ``interval`` (all with ``"any"``),
        then those without one (always)."""
        intervals = {id(c.scheduler.optimizer): getattr(c, "interval", "epoch")
                     for c in list(getattr(trainer, "lr_scheduler_configs", None) or [])}
        stats: dict[str, float] = {}
        for opt, names in _named(trainer):
            sched_interval = intervals.get(id(opt))
            if sched_interval is not None and interval not in ("any", sched_interval):
                continue
            stats.update(self._optimizer_stats(opt, names))
        return stats

    def _optimizer_stats(self, opt: torch.optim.Optimizer, names: list[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        use_betas = "betas" in opt.defaults
        for group, key in zip(opt.param_groups, names):
            out[key] = _number(group["lr"])
            if self.log_momentum:
                momentum = group["betas"][0] if use_betas else group.get("momentum", 0)
                out[f"{key}-momentum"] = self.last_momentum_values[f"{key}-momentum"] = _number(momentum)
            if self.log_weight_decay:
                decay = _number(group.get("weight_decay", 0))
                out[f"{key}-weight_decay"] = self.last_weight_decay_values[f"{key}-weight_decay"] = decay
        return out

    def _remap_grown_groups(self, trainer: Any) -> None:
        """As Lightning: an optimizer that gained parameter groups (finetuning) moves its single
        key's history to ``<key>/pg1``, and each new key gets an empty history, at the end of ``lrs``."""
        for _, names in _named(trainer):
            for name in names:
                if name not in self.lrs:
                    old = name[:-len("/pg1")] if name.endswith("/pg1") else None
                    self.lrs[name] = self.lrs.pop(old) if old in self.lrs else []

    def _log(self, trainer: Any, interval: str, step: int) -> None:
        self._remap_grown_groups(trainer)
        stats = self.extract(trainer, interval)
        if not stats:
            return
        for key, value in stats.items():
            if not key.endswith(("-momentum", "-weight_decay")) or key in self.lrs:
                self.lrs.setdefault(key, []).append(value)
        record = getattr(trainer, "record_callback_metrics", None)
        if record is not None:  # as in Lightning, monitors and schedulers can read them
            record(stats)
        if getattr(trainer, "is_global_zero", True):
            for lg in getattr(trainer, "loggers", None) or []:
                lg.log_metrics(dict(stats), step=step)


def _number(value: Any) -> float:
    """A hyperparameter as Lightning logs it: the number itself (a tensor's value)."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else float(value)


def _named(trainer: Any) -> list[tuple[Any, list[str]]]:
    """Each optimizer with the key of each of its parameter groups, in Lightning's order and
    naming: optimizers with a scheduler first (the scheduler config's ``name``, else
    ``lr-<Class>``), then the others (``lr-<Class>``); the second optimizer of a class gets
    ``-1``, the third ``-2``; several groups get ``/<group name>`` or ``/pg<i>``."""
    configs = list(getattr(trainer, "lr_scheduler_configs", None) or [])
    seen_types: Counter[type] = Counter()
    out: list[tuple[Any, list[str]]] = []
    for opt, cname in [(c.scheduler.optimizer, getattr(c, "name", None)) for c in configs] + \
            [(o, None) for o in _plain_optimizers(trainer, configs)]:
        if cname is None:
            seen_types[type(opt)] += 1
        base = str(cname) if cname is not None else f"lr-{type(opt).__name__}"
        count = seen_types.get(type(opt), 0)
        if count > 1:
            base = f"{base}-{count - 1}"
        out.append((opt, _group_names(base, opt.param_groups)))
    return out


def _plain_optimizers(trainer: Any, configs: list[Any]) -> list[Any]:
    with_scheduler = {id(c.scheduler.optimizer) for c in configs}
    found = []
    for opt in list(getattr(trainer, "optimizers", None) or []):
        opt = getattr(opt, "optimizer", opt) if not isinstance(opt, torch.optim.Optimizer) else opt
        if id(opt) not in with_scheduler:
            found.append(opt)
    return found


def _group_names(base: str, groups: list[dict[str, Any]]) -> list[str]:
    names = [g.get("name", f"pg{i}") for i, g in enumerate(groups, start=1)]
    twice = sorted({str(n) for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"LearningRateMonitor: {base} has parameter groups with the same name {twice}; "
                         "give each parameter group of one optimizer its own 'name'")
    if len(groups) > 1:
        return [f"{base}/{n}" for n in names]
    return [f"{base}/{groups[0]['name']}" if groups[0].get("name") else base]
