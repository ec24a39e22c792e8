"""``ThroughputMonitor``: log batches, samples, items and FLOPs per second, and MFU.

Lightning's callback (``pytorch_lightning.callbacks.ThroughputMonitor``), with its metric names,
steps and hooks. Global rank zero measures and writes; other ranks do nothing (no collective):
the global rates are rank zero's times the world size (see :mod:`distengine.utilities.throughput`).

* training: each batch that closes an optimizer step updates the totals; every
  ``log_every_n_steps`` steps ``train/time``, ``train/batches``, ``train/samples``
  (``train/lengths``) and, once ``window_size`` updates were seen, ``train/device/batches_per_sec``,
  ``train/device/samples_per_sec``, ``train/device/items_per_sec``, ``train/device/flops_per_sec``,
  ``train/device/mfu`` (and ``train/batches_per_sec``... on several ranks) are written at the
  step index of the Trainer's own step values. Time spent validating is not counted.
* validation (not the sanity check), test and predict: prefixes ``validate/``, ``test/``,
  ``predict/``, written every ``log_every_n_steps`` batches at the batch count as the step.

FLOPs come from ``module.flops_per_batch`` (set it, e.g. with :func:`measure_flops`); MFU needs
the device's peak FLOPs (:func:`~distengine.utilities.throughput.get_available_flops`: known
GPUs only; none on a CPU, as in Lightning).

Example::

    model.flops_per_batch = measure_flops(meta_model, lambda: meta_model(x), lambda y: y.sum())
    trainer = Trainer(callbacks=[ThroughputMonitor(batch_size_fn=lambda batch: batch[0].size(0))])
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from distengine.callbacks.base import Callback
from distengine.distributed.rank_zero import rank_zero_warn
from distengine.utilities.throughput import Throughput, get_available_flops

_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16,
           "16-true": torch.float16, "64-true": torch.float64}
_RUNS = {"fit": ("train", "validate")}  # the stages a Trainer call runs, by the call (setup's stage)


class ThroughputMonitor(Callback):
    """Compute and log throughput (see the module docstring).

    Args:
        batch_size_fn: batch -> number of samples in it.
        length_fn: batch -> number of items (e.g. tokens) in it; adds ``lengths`` and ``items_per_sec``.
        **kwargs: for :class:`~distengine.utilities.throughput.Throughput` (``window_size``, ``separator``).
    """

    def __init__(self, batch_size_fn: Callable[[Any], int], length_fn: Callable[[Any], int] | None = None,
                 **kwargs: Any) -> None:
        if not callable(batch_size_fn):
            raise TypeError("ThroughputMonitor(batch_size_fn=...) needs a function batch -> number of samples")
        Throughput(**kwargs)  # a bad window_size or separator fails here, not at the first batch
        self.batch_size_fn, self.length_fn, self.kwargs = batch_size_fn, length_fn, kwargs
        self.available_flops: int | None = None
        self._world_size = 1
        self._throughputs: dict[str, Throughput] = {}
        self._t0: dict[str, float] = {}
        self._totals: dict[str, list[int]] = {}   # stage -> [batches, samples, lengths]
        self._run_batches: dict[str, int] = {}    # eval stages: batches of the current run
        self._has_flops: bool | None = None
        self._stepped = 0

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        plugin = getattr(trainer, "precision_plugin", None)
        precision = getattr(plugin, "precision", None) or str(getattr(trainer.config, "precision", "32-true"))
        device = trainer.strategy.root_device
        self.available_flops = get_available_flops(device, _DTYPES.get(precision, torch.float32)) \
            if trainer.is_global_zero else None
        self._world_size = trainer.world_size
        # each fit/validate/test/predict call measures with fresh windows (a later test or predict
        # call still adds to the previous call's totals, as in Lightning)
        for name in _RUNS.get(stage, (stage,)):
            self._throughputs.pop(name, None)

    # ------------------------------------------------------------------ the measurements
    def _start(self, trainer: Any, stage: str) -> None:
        if stage not in self._throughputs:
            self._throughputs[stage] = Throughput(available_flops=self.available_flops,
                                                  world_size=self._world_size, **self.kwargs)
        # within fit every run starts afresh (Lightning); a later test/predict call adds to the last
        if trainer.state.fn == "fit" or stage not in self._totals:
            self._throughputs[stage].reset()
            self._totals[stage] = [0, 0, 0]
        self._run_batches[stage] = 0
        self._t0[stage] = time.perf_counter()

    @torch.inference_mode()  # batch_size_fn / length_fn may compute on tensors
    def _update(self, trainer: Any, module: Any, stage: str, batch: Any) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # the batch's kernels are done before its time is taken
        elapsed = time.perf_counter() - self._t0[stage]
        totals = self._totals[stage]
        if self.length_fn is not None:
            totals[2] += self.length_fn(batch)
        if self._has_flops is None:
            self._has_flops = hasattr(module, "flops_per_batch")
            if not self._has_flops:
                rank_zero_warn(f"ThroughputMonitor: set a `flops_per_batch` attribute or property on "
                               f"{type(module).__name__} to log FLOPs per second and MFU")
        totals[0] += 1
        totals[1] += self.batch_size_fn(batch)
        self._throughputs[stage].update(time=elapsed, batches=totals[0], samples=totals[1],
                                        lengths=None if self.length_fn is None else totals[2],
                                        flops=module.flops_per_batch if self._has_flops else None)

    def _log(self, trainer: Any, stage: str, count: int, step: int | None) -> None:
        every = trainer.log_every_n_steps
        if not every or (count % every and not trainer.should_stop):
            return
        throughput = self._throughputs[stage]
        metrics = {f"{stage}{throughput.separator}{k}": v for k, v in throughput.compute().items()}
        trainer.log_metrics(metrics, step=step)

    def _eval_batch(self, trainer: Any, module: Any, stage: str, batch: Any) -> None:
        self._update(trainer, module, stage, batch)
        self._run_batches[stage] += 1
        self._log(trainer, stage, self._run_batches[stage], self._totals[stage][0])

    # ------------------------------------------------------------------ hooks (global rank zero)
    def on_train_start(self, trainer: Any, module: Any) -> None:
        if trainer.is_global_zero:
            self._start(trainer, "train")
            self._stepped = trainer.progress.batches_stepped

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        self._update(trainer, module, "train", batch)
        stepped = trainer.progress.batches_stepped
        if stepped != self._stepped:  # this batch closed an accumulation window
            self._stepped = stepped
            self._log(trainer, "train", stepped, None)

    def on_validation_start(self, trainer: Any, module: Any) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self._start(trainer, "validate")

    def on_validation_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self._eval_batch(trainer, module, "validate", batch)

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if "train" not in self._t0:
            return
        # leave the time from the last training update to the end of validation out of training's clock
        train, val = self._throughputs["train"]._time, self._throughputs["validate"]._time
        train_end = self._t0["train"] + (train[-1] if train else 0.0)
        self._t0["train"] += self._t0["validate"] - train_end + (val[-1] if val else 0.0)

    def on_test_start(self, trainer: Any, module: Any) -> None:
        if trainer.is_global_zero:
            self._start(trainer, "test")

    def on_test_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        if trainer.is_global_zero:
            self._eval_batch(trainer, module, "test", batch)

    def on_predict_start(self, trainer: Any, module: Any) -> None:
        if trainer.is_global_zero:
            self._start(trainer, "predict")

    def on_predict_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        if trainer.is_global_zero:
            self._eval_batch(trainer, module, "predict", batch)
