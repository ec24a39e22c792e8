"""What ``self.log`` records, and how it is reduced across ranks.

Per step, ``log`` only stores a detached reference (no GPU->CPU copy, no collective). Values
become Python floats when they are written: every ``log_every_n_steps`` for step values,
and at each epoch end for epoch values. At such a sync point, ALL values that need a reduce
go in one fused ``all_reduce`` (float64, sums and sample counts side by side), preceded by a
fixed-size check that every rank logged the same names: a mismatch raises an error naming
the keys instead of hanging, or instead of each rank silently keeping values of its own. The
check covers every name, synced or not: the step names written at a step log point, and at an
epoch end the epoch names plus (in training) every step name, so a run too short to reach
``log_every_n_steps`` is checked too. At a step log point the check and the values share
ONE all-reduce: the ranks remember the names they last agreed on, and the values ride along
the hashes in that agreed layout (a rank whose names changed sends zeros of the same size); a
second all-reduce follows only when every rank's names changed alike (the first log point,
a new name). A rank that ran no batch of the stage (an uneven
validation shard) may have logged nothing; a rank that ran batches may not. Values logged
with ``rank_zero_only=True`` are left out of the check and of every reduce.

A ``torchmetrics.Metric`` logged by name is read, computed and reset as Lightning does, and
synchronised by torchmetrics itself (metric_objects.py); its name joins the names check.

Epoch values are means weighted by batch size (or sum/max/min via ``reduce_fx``), and they
are ALWAYS reduced across ranks with per-rank sample counts, so a validation metric on N
ranks equals the single-process value. ``sync_dist=True`` additionally averages step values.
"""
from __future__ import annotations

import zlib
from typing import Any

import torch

from distengine import metric_objects
from distengine.distributed import collectives
from distengine.metric_writer import forked_name
from distengine.utilities.exceptions import ConfigError

_REDUCE = ("mean", "sum", "max", "min")


class _Entry:
    __slots__ = ("name", "prog_bar", "logger", "on_step", "on_epoch", "reduce_fx", "sync_dist",
                 "rank_zero_only", "step_value", "fresh", "total", "count", "metric", "attr")

    def __init__(self, name, prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, rank_zero_only=False):
        self.name, self.prog_bar, self.logger = name, prog_bar, logger
        self.on_step, self.on_epoch, self.reduce_fx, self.sync_dist = on_step, on_epoch, reduce_fx, sync_dist
        self.rank_zero_only = rank_zero_only
        self.step_value: Any = None
        self.fresh = False
        self.total: Any = None
        self.count = 0
        self.metric: Any = None  # a torchmetrics.Metric (metric_objects.py), found at ``attr`` in the module
        self.attr: str | None = None


def _as_float_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64).reshape(())
    return torch.tensor(float(value), dtype=torch.float64)


def _names_differ(names: list[str]) -> bool:
    """True on every rank when ranks logged different metric names (2 numbers, one collective)."""
    if not collectives.is_distributed():
        return False
    h = _names_hash(names)
    summed = collectives.reduce_tensors([torch.tensor([h, h * h], dtype=torch.float64)], "sum")[0].tolist()
    return _hashes_differ(summed[0], summed[1])


def _names_hash(keys: list[str]) -> float:
    return float(zlib.crc32("\0".join(keys).encode()) & 0xFFFFF)  # 20 bits: float64 sums stay exact


def _hashes_differ(summed0: float, summed1: float) -> bool:
    """From the rank sums of ``h`` and ``h*h``: all hashes are equal exactly when their
    variance is zero."""
    return summed1 * collectives.world_size() != summed0 ** 2


def _step_values(layout: Any, names: list[str], synced: list[_Entry]) -> dict[str, float]:
    """Reduced step values of ``synced`` (by name) and the names check, in one all-reduce
    when ``layout`` (the ``(names, synced names)`` the ranks last agreed on) still holds;
    returns the values and the layout now agreed. Raises on every rank when names differ."""
    key = (tuple(names), tuple(e.name for e in synced))
    h = _names_hash(names + ["sync:" + n for n in key[1]])  # sync_dist flags agree too
    parts = [torch.tensor([h, h * h], dtype=torch.float64)]
    if layout is not None and layout[1]:  # the values go in the agreed layout's slots
        parts += ([_as_float_tensor(e.step_value) for e in synced] if key == layout
                  else [torch.zeros(len(layout[1]), dtype=torch.float64)])
    flat = collectives.pack_float64(parts, collectives._comm_device())
    red = collectives.reduce_tensors([flat], "sum")[0].tolist()  # one collective, one host read
    if _hashes_differ(red[0], red[1]):
        raise _mismatch_error("training steps", names)
    if key != layout:  # every rank's names changed alike: the values need their own reduce
        red = [0.0, 0.0] + [float(t) for t in collectives.reduce_tensors(
            [_as_float_tensor(e.step_value) for e in synced], "sum")]
    return dict(zip(key[1], red[2:])), key


def _mismatch_error(where: str, names: list[str]) -> RuntimeError:
    """Gather every rank's names (a collective: all ranks call it) into a one-line error."""
    return _mismatch_message(where, collectives.all_gather_object(sorted(names)))


def _mismatch_message(where: str, per_rank: list[list[str]]) -> RuntimeError:
    detail = "; ".join(f"rank {r}: {k}" for r, k in enumerate(per_rank))
    odd = set().union(*per_rank) - set.intersection(*map(set, per_rank))  # names some ranks lack
    if odd and all(n.startswith("metric:") for n in odd):  # rank_zero_only would not help these
        hint = "a torchmetrics Metric is computed on every rank: log it on every rank"
    else:
        hint = "a value that only rank 0 logs needs self.log(..., rank_zero_only=True)"
    return RuntimeError(f"ranks logged different metric names in {where}: {detail}. Log the same names on "
                        f"every rank ({hint}).")


def _reduce(entries: list[_Entry]) -> list[float]:
    """Epoch values of ``entries`` across ranks: one collective per reduce op, sums and sample
    counts side by side (a mean is weighted by every rank's samples)."""
    sums = [(e.total if e.total is not None else torch.zeros((), dtype=torch.float64)) for e in entries]
    counts = [torch.tensor(float(e.count), dtype=torch.float64) for e in entries]
    by_op: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        by_op.setdefault("sum" if e.reduce_fx in ("mean", "sum") else e.reduce_fx, []).append(i)
    reduced_sum = list(sums)
    for op, idx in by_op.items():
        tensors = [sums[i] for i in idx] + ([counts[i] for i in idx] if op == "sum" else [])
        red = collectives.reduce_tensors(tensors, op)
        for j, i in enumerate(idx):
            reduced_sum[i] = red[j]
            if op == "sum":
                counts[i] = red[len(idx) + j]
    return [float(s / c) if e.reduce_fx == "mean" and float(c) > 0 else float(s)
            for e, s, c in zip(entries, reduced_sum, counts)]


class Results:
    """Store of logged values for the current stage ("train", "validate", "test", "predict")."""

    def __init__(self) -> None:
        self.stage = "train"
        self.in_step = True  # False inside *_epoch_* hooks: defaults switch to on_epoch
        self.batch: Any = None
        self._batch_size: int | None = None
        self.entries: dict[str, dict[str, _Entry]] = {"train": {}, "validate": {}, "test": {}, "predict": {}}
        self.epoch_values: dict[str, torch.Tensor] = {}  # reduced epoch values -> callback_metrics
        self.prog_bar_epoch: dict[str, float] = {}
        self.dataloader_suffix = ""
        self.loader_of: dict[str, int] = {}  # add_dataloader_idx=False names: the dataloader that logged them
        # batches this rank ran per stage since its last epoch reduce: a rank that ran none may
        # have logged nothing (uneven validation shards), a rank that ran some may not
        self.batches_run = dict.fromkeys(self.entries, 0)
        self.module: Any = None  # the running module: where logged metric objects live
        self._step_layout: Any = None  # (names, synced names) the ranks last agreed on at a step log
        self.no_log_hook: str | None = None  # the running hook where Lightning refuses self.log (stage_hooks.py)

    # ---------------------------------------------------------------- hot path
    def set_batch(self, batch: Any) -> None:
        self.batch = batch
        self._batch_size = None
        self.batches_run[self.stage] += 1

    def log(self, name, value, prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, batch_size,
            rank_zero_only=False, add_dataloader_idx=True, metric_attribute=None) -> None:
        table = self.entries[self.stage]
        key = name + self.dataloader_suffix if add_dataloader_idx else name
        entry = table.get(key)
        if entry is None:
            entry = table[key] = self._new_entry(key, value, prog_bar, logger, on_step, on_epoch,
                                                 reduce_fx, sync_dist, rank_zero_only, metric_attribute)
            if self.dataloader_suffix and not add_dataloader_idx:  # in that dataloader's results only
                self.loader_of[key] = int(self.dataloader_suffix.rpartition("_")[2])
        if entry.metric is not None or not isinstance(value, (torch.Tensor, int, float)):
            metric_objects.record(entry, value)  # a torchmetrics object keeps its own state
            return
        if isinstance(value, torch.Tensor):
            value = value.detach()
        if entry.on_step:
            entry.step_value = value
            entry.fresh = True
        if entry.on_epoch:
            if batch_size is None:
                batch_size = self._batch_size
                if batch_size is None:
                    from distengine.data import batch_size_of

                    batch_size = self._batch_size = batch_size_of(self.batch) if self.in_step else 1
            v = _as_float_tensor(value)
            fx = entry.reduce_fx
            if entry.total is None:
                entry.total = v * batch_size if fx == "mean" else v
            elif fx == "mean":
                entry.total = entry.total + v * batch_size
            elif fx == "sum":
                entry.total = entry.total + v
            elif fx == "max":
                entry.total = torch.maximum(entry.total, v)
            else:
                entry.total = torch.minimum(entry.total, v)
            entry.count += batch_size

    def _new_entry(self, key, value, prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist,
                   rank_zero_only=False, metric_attribute=None) -> _Entry:
        if isinstance(value, torch.Tensor) and value.numel() != 1:
            raise ValueError(f"self.log({key!r}, ...) needs a scalar, got a tensor of shape "
                             f"{tuple(value.shape)}; log a reduced value such as tensor.mean()")
        attr = None
        if not isinstance(value, (torch.Tensor, int, float)):  # a torchmetrics Metric, or an error
            attr = metric_objects.resolve(self.module, key, value, reduce_fx, metric_attribute)
            fx, sync_dist, rank_zero_only = "mean", False, False  # torchmetrics reduces and syncs it
        else:
            # (a name in any case, as Lightning: "SUM" is "sum")
            fx = reduce_fx.lower() if isinstance(reduce_fx, str) else getattr(reduce_fx, "__name__", str(reduce_fx))
            fx = {"avg": "mean", "amax": "max", "amin": "min"}.get(fx, fx)
        if fx not in _REDUCE:
            raise ConfigError(f"self.log({key!r}, reduce_fx={reduce_fx!r}) is not supported; "
                              f"use one of {_REDUCE}")
        per_step_default = self.stage == "train" and self.in_step
        on_step = per_step_default if on_step is None else bool(on_step)
        on_epoch = (not per_step_default) if on_epoch is None else bool(on_epoch)
        if self.stage != "train" and on_step and self.in_step is False:
            on_step = False
        if not on_step and not on_epoch:
            raise ConfigError(f"self.log({key!r}, on_step=False, on_epoch=False) records nothing; "
                              "set one of them to True")
        entry = _Entry(key, prog_bar, logger, on_step, on_epoch, fx, sync_dist and not rank_zero_only,
                       bool(rank_zero_only))
        if attr is not None:
            entry.metric, entry.attr = value, attr
        return entry

    # ---------------------------------------------------------------- sync points
    def collect_step(self) -> tuple[dict[str, float], dict[str, float]]:
        """Return (logger metrics, progress-bar metrics) from the fresh step values of training."""
        fresh = [e for e in self.entries["train"].values() if e.fresh]
        synced = sorted((e for e in fresh if e.sync_dist), key=lambda e: e.name)
        values: dict[str, float] = {}
        if collectives.is_distributed():
            # Every rank reaches this point at the same step. ALL fresh names are compared, not
            # only the synced ones: a value each rank keeps for itself under a name the others
            # never log is as much a bug, and would otherwise pass silently.
            names = sorted(e.name for e in fresh if not e.rank_zero_only)
            summed, self._step_layout = _step_values(self._step_layout, names, synced)
            w = collectives.world_size()
            for e in synced:
                values[e.name] = summed[e.name] / w if e.reduce_fx == "mean" else summed[e.name]
        log: dict[str, float] = {}
        bar: dict[str, float] = {}
        for e in fresh:
            v = values[e.name] if e.name in values else float(e.step_value)
            name = forked_name(e.name, "_step") if e.on_epoch else e.name
            if e.logger:
                log[name] = v
            if e.prog_bar:
                bar[name] = v
            e.fresh = False
        return log, bar

    def collect_eval_step(self, stage: str) -> dict[str, float]:
        """The logger values an evaluation batch just logged with ``on_step=True`` (this rank's
        own values: Lightning writes them unreduced too)."""
        log: dict[str, float] = {}
        for e in self.entries[stage].values():
            if e.fresh:
                if e.logger:
                    log[forked_name(e.name, "_step") if e.on_epoch else e.name] = float(e.step_value)
                e.fresh = False
        return log

    def step_metrics_now(self) -> dict[str, torch.Tensor]:
        """Latest local step values (for callback_metrics), converted without a reduce."""
        out = {}
        for e in self.entries["train"].values():
            if e.on_step and e.step_value is not None:
                out[forked_name(e.name, "_step") if e.on_epoch else e.name] = _as_float_tensor(e.step_value).float()
                if not e.on_epoch:
                    out[e.name] = out[e.name]
        return out

    def callback_metrics(self) -> dict[str, torch.Tensor]:
        """Latest values of everything logged: local step values and rank-reduced epoch values
        (``Trainer.callback_metrics``)."""
        out = self.step_metrics_now()
        out.update(self.epoch_values)
        # as in Lightning, while a training epoch runs the bare name of an on_step + on_epoch
        # value is its latest step value; its epoch reduce (count back to 0) replaces it
        for e in self.entries["train"].values():
            if e.on_step and e.on_epoch and e.count and e.step_value is not None:
                out[e.name] = _as_float_tensor(e.step_value).float()
        return out

    def prog_bar_now(self) -> dict[str, float]:
        out = dict(self.prog_bar_epoch)
        out.update(self.prog_bar_steps())
        return out

    def prog_bar_steps(self) -> dict[str, float]:
        """The ``prog_bar`` values the latest training step logged (``on_step``)."""
        return {forked_name(e.name, "_step") if e.on_epoch else e.name: float(e.step_value)
                for e in self.entries["train"].values() if e.prog_bar and e.on_step and e.step_value is not None}

    def collect_epoch(self, stage: str) -> tuple[dict[str, float], dict[str, float]]:
        """Reduce the epoch values of ``stage`` across ranks; reset them; return
        (logger metrics, all metrics). Every rank must call this at the same point."""
        table = self.entries[stage]
        ran = self.batches_run[stage] > 0
        self.batches_run[stage] = 0
        local = [e for e in table.values() if e.on_epoch and e.rank_zero_only]
        # a name logged in an earlier epoch only is not reduced again: its last value stays (Lightning)
        entries = sorted((e for e in table.values()
                          if e.on_epoch and not e.rank_zero_only and e.metric is None and e.total is not None),
                         key=lambda e: e.name)
        # torchmetrics objects logged in this epoch: each rank computes them in this order
        objs = sorted((e for e in table.values() if e.metric is not None and e.on_epoch and e.count),
                      key=lambda e: e.name)
        names = [e.name for e in entries] + ["metric:" + e.name for e in objs]
        if stage == "train":
            # step names too: a run shorter than log_every_n_steps never reached a step check
            names += sorted("step:" + e.name for e in table.values()
                            if e.on_step and not e.on_epoch and not e.rank_zero_only)
        if collectives.is_distributed() and _names_differ(names):
            entries, objs = self._agree(stage, names, ran, entries + objs)
        out: dict[str, float] = {}
        log: dict[str, float] = {}
        if entries:
            for e, value in zip(entries, _reduce(entries)):
                self._publish(e, value, out, log)
                e.total, e.count = None, 0
        for e in objs:  # compute() synchronises the metric's states across ranks (torchmetrics)
            self._publish(e, metric_objects.compute(e), out, log)
        vars(self).setdefault("_computed", {})[stage] = {e.name: e.count for e in objs}  # (collect_late)
        for e in local:  # rank_zero_only: this rank's own value, never reduced
            if e.total is None:
                continue
            value = float(e.total / e.count) if e.reduce_fx == "mean" and e.count > 0 else float(e.total)
            self._publish(e, value, out, log)
            e.total, e.count = None, 0
        return log, out

    def collect_late(self, stage: str) -> tuple[dict[str, float], dict[str, float]]:
        """The epoch values logged after :meth:`collect_epoch`, by the callbacks' epoch-end hooks
        (Lightning lets callbacks log there): reduced the same way. Every rank calls it."""
        table = self.entries[stage]
        # a torchmetrics object keeps its count after collect_epoch computed it: late when logged since
        computed = vars(self).get("_computed", {}).get(stage, {})
        late = {k: e for k, e in table.items() if e.on_epoch and (
            (e.total is not None or e.count) if e.metric is None else e.count and e.count != computed.get(e.name))}
        if not late and not collectives.is_distributed():
            return {}, {}  # distributed: every rank takes part, whatever it logged
        self.entries[stage], self.batches_run[stage] = late, 1
        try:
            return self.collect_epoch(stage)
        finally:
            self.entries[stage], self.batches_run[stage] = table, 0

    def _agree(self, stage: str, names: list[str], ran: bool, mine: list[_Entry]) -> tuple[list, list]:
        """Ranks logged different names. A rank that ran no batch at all (an uneven validation
        shard) may have logged nothing: it takes the entries of a rank that ran some, contributes
        zero samples and computes the same metric objects. Any other difference is a bug in the
        user's code: a one-line error on every rank."""
        all_names = collectives.all_gather_object(names)
        all_ran = collectives.all_gather_object(ran)
        union = sorted(set().union(*map(set, all_names)))
        if any(did and sorted(n) != union for n, did in zip(all_names, all_ran)) or not any(all_ran):
            where = {"train": "the training epoch", "validate": "validation"}.get(stage, stage)
            raise _mismatch_message(where, all_names)
        meta = collectives.broadcast_object(
            [(e.name, e.reduce_fx, e.on_step, e.logger, e.prog_bar, e.attr) for e in mine], src=all_ran.index(True))
        table = self.entries[stage]
        entries, objs = [], []
        for n, fx, st, lg, bar, attr in meta:
            e = table.get(n)
            if e is None:
                e = _Entry(n, bar, lg, st, True, fx, False)
                if attr is not None:  # kept in the table: reset_metric_objects resets it too
                    e.metric, e.attr = self.module.get_submodule(attr), attr
                    table[n] = e
            (entries if attr is None else objs).append(e)
        return entries, objs

    def _publish(self, e: _Entry, value: float, out: dict[str, float], log: dict[str, float]) -> None:
        """Record the epoch value of ``e``: return value, callback_metrics, loggers, progress bar."""
        name = forked_name(e.name, "_epoch") if e.on_step else e.name
        if e.logger:  # the results of validate/test: the logger=True values, *_epoch for on_step too (Lightning)
            out[name] = value
        self.epoch_values[e.name] = torch.tensor(value)
        if e.on_step:
            self.epoch_values[name] = torch.tensor(value)
        if e.logger:
            log[name] = value
        if e.prog_bar:
            self.prog_bar_epoch[name] = value

    def reset_metric_objects(self, stage: str) -> None:
        """Reset every torchmetrics object ``stage`` logged. Called where Lightning does: after the
        epoch-end hooks (and ``on_validation_end``), so callbacks there still see their state."""
        metric_objects.reset(e for e in self.entries[stage].values() if e.metric is not None)

    def reset_all(self) -> None:
        """Forget every logged value: each fit/validate/test/predict call starts with empty
        ``callback_metrics``, as in Lightning (after ``test()`` they hold the test metrics only)."""
        for stage in self.entries:
            self.reset_stage(stage)
        self.epoch_values.clear()
        self.prog_bar_epoch.clear()
        self.loader_of.clear()

    def reset_stage(self, stage: str) -> None:
        self.entries[stage] = {}
        self.batches_run[stage] = 0
