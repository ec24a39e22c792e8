"""torchmetrics objects in ``self.log`` / ``self.log_dict``, with Lightning 2.x's semantics.

A ``torchmetrics.Metric`` logged by name keeps its own state; distengine only decides when to
read it (metrics.py stores it in the entry of that name):

* step value (``on_step=True``): the metric's ``forward`` result on the current batch, read at
  the ``self.log`` call (torchmetrics keeps it as ``_forward_cache``). A metric fed only with
  ``update()`` has no step value, and none is written (as in Lightning).
* epoch value (``on_epoch=True``): ``compute()`` at the epoch end (before the callbacks'
  epoch-end hooks, which read ``callback_metrics``), which synchronises the metric's states
  across ranks through torchmetrics' own collectives (no reduce of ours). A metric logged in an
  epoch without any ``update`` is still computed: torchmetrics warns and returns the value of
  its empty state.
* ``reset()`` where Lightning resets: after the epoch-end hooks (``on_train_epoch_end``;
  ``on_validation_end``/``on_test_end``), so callbacks and checkpoints there still see the
  epoch's state. Every metric object a stage logged is reset, the step-only ones too.
* ``sync_dist``, ``rank_zero_only`` and ``batch_size`` have no effect on a metric object: its
  ``compute()`` already is the all-rank value, so every rank must log it. ``reduce_fx`` other
  than "mean" has no effect either, and says so in a warning.

Every rank computes the same metrics in the same order (sorted by name): their names take part
in the names check of metrics.py as ``metric:<name>``, and a rank that ran no batch of an uneven
validation shard computes the metric found under the attribute path another rank sent. So the
metric must be an attribute of the module (``self.acc = Accuracy(...)``), as Lightning requires;
that also moves it with the module's device and keeps it in ``state_dict`` (its states are saved
in checkpoints only when the metric is made persistent: ``metric.persistent(True)``).

``import distengine`` does not import torchmetrics: a value can only be a Metric if the user
has imported torchmetrics already, so :func:`kind` looks in ``sys.modules``.
"""
from __future__ import annotations

import sys
import warnings
from typing import Any, Iterable

import torch

from distengine.utilities.exceptions import ConfigError


def kind(value: Any) -> str | None:
    """"metric", "collection", or None for anything that is not a torchmetrics object."""
    tm = sys.modules.get("torchmetrics")
    if tm is None:
        return None
    if isinstance(value, tm.Metric):
        return "metric"
    if isinstance(value, tm.MetricCollection):
        return "collection"
    return None


def dict_items(dictionary: Any) -> Iterable[tuple[str, Any]]:
    """What ``self.log_dict`` logs: a MetricCollection's metrics under their keys with the
    collection's prefix/postfix, or a mapping's items."""
    if kind(dictionary) == "collection":
        # members of one compute group share their state by reference (only the first one is
        # updated by collection.update); copying it at every log call would cost a deep copy
        return dictionary.items(keep_base=False, copy_state=not dictionary._enable_compute_groups)
    return dictionary.items()


def resolve(module: Any, key: str, value: Any, reduce_fx: Any, attribute: str | None = None) -> str:
    """The attribute path of the metric ``value`` logged as ``key`` (checked once per entry;
    ``attribute``: the path ``self.log(..., metric_attribute=)`` gave); a one-line error for
    anything that is neither a number nor a Metric."""
    what = kind(value)
    if what == "collection":
        raise ConfigError(f"self.log({key!r}, <MetricCollection>) logs one value; log a MetricCollection "
                          "with self.log_dict(collection) (each metric under its own key)")
    if what is None:
        shown = repr(value) if len(repr(value)) <= 60 else f"<{type(value).__name__}>"
        raise ValueError(f"self.log({key!r}, {shown}) needs a number, a one-element tensor or a torchmetrics "
                         f"Metric, got {type(value).__name__}")
    if attribute is not None:
        if module is None or _submodule(module, attribute) is None:
            raise ConfigError(f"self.log({key!r}, ..., metric_attribute={attribute!r}): the module has no metric "
                              f"attribute {attribute!r}; pass the name of the attribute that holds the metric")
        return attribute
    path = next((name for name, sub in module.named_modules() if sub is value), None) if module else None
    if path is None:
        names = [n for n, sub in module.named_modules() if n and kind(sub) == "metric"] if module else []
        if names:
            raise ConfigError(f"self.log({key!r}, <{type(value).__name__}>): this metric object is not an attribute "
                              f"of the module; log an attribute or pass metric_attribute=<one of {names}>")
        raise ConfigError(f"self.log({key!r}, <{type(value).__name__}>): the metric is not an attribute of "
                          f"the module; set it in __init__ (self.metric = {type(value).__name__}(...)) so it "
                          "moves with the module and every rank can compute it")
    fx = reduce_fx if isinstance(reduce_fx, str) else getattr(reduce_fx, "__name__", str(reduce_fx))
    if fx not in ("mean", "avg"):
        warnings.warn(f"self.log({key!r}, <{type(value).__name__}>, reduce_fx={fx!r}): reduce_fx has no "
                      "effect on a torchmetrics Metric; its epoch value is metric.compute()", stacklevel=5)
    return path


def _submodule(module: Any, path: str) -> Any:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def record(entry: Any, value: Any) -> None:
    """One ``self.log`` call of a metric object: keep its forward value as the step value."""
    if value is not entry.metric:
        was = f"the metric {entry.attr!r}" if entry.metric is not None else "numbers"
        raise ValueError(f"self.log({entry.name!r}, ...) got {type(value).__name__} where earlier calls logged "
                         f"{was}; log each value under its own name")
    entry.count += 1  # logged in this epoch: computed at its end
    if entry.on_step:
        cache = value._forward_cache  # None until forward() ran since the last reset()
        if isinstance(cache, torch.Tensor):
            entry.step_value = _scalar(entry.name, cache.detach(), "forward")
            entry.fresh = True


def compute(entry: Any) -> float:
    """The epoch value of a metric entry: ``compute()`` (a collective under several ranks)."""
    return float(_scalar(entry.name, entry.metric.compute(), "compute"))


def reset(entries: Iterable[Any]) -> None:
    """Reset the metrics of ``entries`` and forget that they were logged in this epoch."""
    for e in entries:
        e.metric.reset()
        e.count = 0


def _scalar(name: str, value: Any, method: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"self.log({name!r}, metric): the metric's {method}() returned {got}; only metrics "
                         "with a scalar value can be logged (log the elements yourself)")
    return value
