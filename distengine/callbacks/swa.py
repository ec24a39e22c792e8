"""``StochasticWeightAveraging`` on ``torch.optim.swa_utils``.

From ``swa_epoch_start`` on, the learning rate follows ``SWALR`` (annealed to ``swa_lrs``)
and the weights at the start of each epoch are averaged into an ``AveragedModel``. When the
last epoch ends, the averaged weights replace the model's; if the model has BatchNorm
layers, their statistics are then recomputed for those weights with ``update_bn`` over the
training data::

    Trainer(max_epochs=20, callbacks=[StochasticWeightAveraging(swa_lrs=1e-2)])

The averaged model, its count and the SWA schedule are saved in checkpoints, so a resumed
run averages exactly what the interrupted one would have.

Choices, and where they differ from Lightning: the BatchNorm statistics are recomputed by
``update_bn`` after the last epoch (the module's ``forward`` on each training batch's first
element), not in an extra training epoch, so ``global_step`` and the logged epochs are those
of the run itself. Under DDP each rank recomputes them on its shard of the data and the ranks
then average them, so every rank ends with the same weights. A fit that stops early (for
example EarlyStopping) keeps its own weights, as in Lightning. With ``max_epochs=-1`` (a fit
that ``max_steps`` or ``max_time`` ends) every epoch from ``swa_epoch_start`` on is averaged and
the average replaces the model's weights when training ends. ``n_averaged`` counts the epochs
averaged so far.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch

from distengine import torch_private
from distengine.callbacks.base import Callback
from distengine.distributed import collectives
from distengine.distributed.rank_zero import rank_zero_only, rank_zero_warn
from distengine.utilities.exceptions import ConfigError


class StochasticWeightAveraging(Callback):
    """``swa_lrs``: the SWA learning rate (one float, or one per parameter group).
    ``swa_epoch_start``: the first averaged epoch, an int, or a float fraction of
    ``max_epochs``. ``annealing_epochs``/``annealing_strategy`` ("cos" or "linear"): how the
    rate moves to ``swa_lrs``. ``avg_fn``: ``AveragedModel``'s averaging function.
    ``device``: where the averaged copy lives (default CPU, to spare GPU memory; ``None``: the
    model's device)."""

    def __init__(self, swa_lrs: float | list[float], swa_epoch_start: int | float = 0.8,
                 annealing_epochs: int = 10, annealing_strategy: str = "cos",
                 avg_fn: Callable[..., torch.Tensor] | None = None,
                 device: torch.device | str | None = "cpu") -> None:
        if isinstance(swa_epoch_start, bool) or not (
                (isinstance(swa_epoch_start, int) and swa_epoch_start >= 1)
                or (isinstance(swa_epoch_start, float) and 0 < swa_epoch_start <= 1)):
            raise ConfigError(f"StochasticWeightAveraging(swa_epoch_start={swa_epoch_start!r}): use an epoch >= 1 "
                             "or a fraction of max_epochs in (0, 1]")
        lrs = swa_lrs if isinstance(swa_lrs, (list, tuple)) else [swa_lrs]
        if not lrs or any(isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0 for lr in lrs):
            raise ConfigError(f"StochasticWeightAveraging(swa_lrs={swa_lrs!r}): use a learning rate > 0 or a list "
                             "of them, one per parameter group")
        if not isinstance(annealing_epochs, int) or annealing_epochs < 1:
            raise ConfigError(f"StochasticWeightAveraging(annealing_epochs={annealing_epochs!r}): use an integer >= 1")
        if annealing_strategy not in ("cos", "linear"):
            raise ConfigError(f"StochasticWeightAveraging(annealing_strategy={annealing_strategy!r}): "
                             "use 'cos' or 'linear'")
        self._swa_lrs = swa_lrs
        self._swa_epoch_start = swa_epoch_start
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = annealing_strategy
        self._avg_fn = avg_fn
        self._device = device
        self._average_model: Any = None
        self._swa_scheduler: Any = None
        self._latest_update_epoch = -1
        self._pending: dict[str, Any] | None = None  # checkpoint state, applied at on_fit_start
        self._max_epochs = -1

    @property
    def swa_start(self) -> int:
        return max(int(self._start) - 1, 0)  # 0-based

    @property
    def swa_end(self) -> int | float:
        """The last averaged epoch (0-based); ``inf`` with ``max_epochs=-1``: every epoch from
        ``swa_start`` on, and the averaged weights are put into the model when training ends."""
        return math.inf if self._max_epochs == -1 else self._max_epochs - 1

    @property
    def n_averaged(self) -> torch.Tensor | None:
        """How many epochs' weights the average holds (a tensor, restored on resume); None before
        the first."""
        count = None if self._average_model is None else self._average_model.n_averaged
        return count if count is not None and int(count) > 0 else None

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if isinstance(self._swa_epoch_start, float) and trainer.max_epochs < 0:
            raise ConfigError("StochasticWeightAveraging(swa_epoch_start=<fraction>) needs Trainer(max_epochs=N); "
                             "pass swa_epoch_start as an epoch number instead")
        self._max_epochs = trainer.max_epochs
        self._start = int(trainer.max_epochs * self._swa_epoch_start) if isinstance(self._swa_epoch_start, float) \
            else self._swa_epoch_start

    def on_fit_start(self, trainer: Any, module: Any) -> None:
        from torch.optim.swa_utils import AveragedModel

        if len(trainer.optimizers) != 1:
            raise ConfigError(f"StochasticWeightAveraging works with one optimizer; configure_optimizers returned "
                             f"{len(trainer.optimizers)}")
        if len(trainer.lr_scheduler_configs) > 1:
            raise ConfigError("StochasticWeightAveraging replaces the learning-rate scheduler and supports at most "
                             f"one; configure_optimizers returned {len(trainer.lr_scheduler_configs)}")
        self._average_model = AveragedModel(module, device=self._device or module.device, avg_fn=self._avg_fn)
        self._swa_scheduler = None
        pending, self._pending = self._pending, None
        if pending is not None:
            self._latest_update_epoch = pending["latest_update_epoch"]
            if pending.get("average_model_state") is not None:
                self._average_model.load_state_dict(pending["average_model_state"])
            if pending.get("scheduler_state") is not None:
                # the SWA schedule had replaced the user's: rebuild it at the next epoch start
                self._scheduler_state = pending["scheduler_state"]
                trainer.lr_scheduler_configs.clear()
                self._make_scheduler(trainer)
        else:
            self._latest_update_epoch = -1

    def _make_scheduler(self, trainer: Any) -> None:
        from torch.optim.swa_utils import SWALR

        from distengine.optim import LRSchedulerConfig

        optimizer = trainer.optimizers[0]
        lrs = self._swa_lrs if isinstance(self._swa_lrs, (list, tuple)) else [self._swa_lrs] * len(
            optimizer.param_groups)
        if len(lrs) != len(optimizer.param_groups):
            raise ConfigError(f"StochasticWeightAveraging got {len(lrs)} swa_lrs for {len(optimizer.param_groups)} "
                             "parameter groups; pass one float or one per group")
        for lr, group in zip(lrs, optimizer.param_groups):
            group["initial_lr"] = lr
        # (Lightning's arguments, so the learning rates match it epoch for epoch)
        self._swa_scheduler = SWALR(optimizer, swa_lr=list(lrs), anneal_epochs=self._annealing_epochs,
                                    anneal_strategy=self._annealing_strategy,
                                    last_epoch=self._max_epochs if self._annealing_strategy == "cos" else -1)
        state = getattr(self, "_scheduler_state", None)
        if state is not None:
            self._swa_scheduler.load_state_dict(state)
            self._scheduler_state = None
        config = LRSchedulerConfig(self._swa_scheduler)  # stepped once per epoch
        if trainer.lr_scheduler_configs:
            self._announce_swap(trainer.lr_scheduler_configs[0])
            trainer.lr_scheduler_configs[0] = config
        else:
            trainer.lr_scheduler_configs.append(config)

    def _announce_swap(self, old: Any) -> None:
        if old.interval != "epoch" or old.frequency != 1:
            rank_zero_warn(f"StochasticWeightAveraging steps its SWALR schedule once per epoch; the scheduler it "
                           f"replaces stepped with interval={old.interval!r}, frequency={old.frequency}",
                           UserWarning)
        if rank_zero_only.rank == 0:  # a log record, as Lightning's (caplog and logging handlers see it)
            name = type(old.scheduler).__name__
            logging.getLogger("distengine").info(f"StochasticWeightAveraging: Swapping scheduler `{name}` for `SWALR` "
                                                 "from this epoch on")

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        epoch = trainer.current_epoch
        if not self.swa_start <= epoch <= self.swa_end:
            return
        if self._swa_scheduler is None:
            self._make_scheduler(trainer)
        if epoch > self._latest_update_epoch:
            self._average_model.update_parameters(module)
            self._latest_update_epoch = epoch

    def on_train_end(self, trainer: Any, module: Any) -> None:
        endless = self._max_epochs == -1 and self.n_averaged is not None  # stopped by max_steps/max_time
        if self._average_model is None or not (endless or trainer.current_epoch - 1 == self.swa_end):
            return  # stopped before the last epoch: the model keeps its own weights
        with torch.no_grad():
            for avg, own in zip(self._average_model.module.parameters(), module.parameters()):
                own.copy_(avg.to(own.device))
        if any(torch_private.is_batchnorm(m) for m in module.modules()):
            self._update_batch_norm(trainer, module)

    @staticmethod
    def _update_batch_norm(trainer: Any, module: Any) -> None:
        from torch.optim.swa_utils import update_bn

        update_bn(trainer.train_dataloader, module, device=module.device)
        norms = [m for m in module.modules() if torch_private.is_batchnorm(m)]
        stats = [t for m in norms for t in (m.running_mean, m.running_var) if t is not None]
        if collectives.is_distributed() and stats:  # each rank saw its shard: agree on the mean
            reduced = collectives.reduce_tensors([t.detach() for t in stats], "sum")
            for t, r in zip(stats, reduced):
                t.copy_(r / collectives.world_size())

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        if self._pending is not None:  # restored but not started yet: keep what was loaded
            return dict(self._pending)
        return {
            "latest_update_epoch": self._latest_update_epoch,
            "scheduler_state": None if self._swa_scheduler is None else self._swa_scheduler.state_dict(),
            "average_model_state": None if self._average_model is None else self._average_model.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)
