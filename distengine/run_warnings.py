"""The warnings Lightning gives at the start of a run for set-ups that are often, not always, a
mistake. Each is a :class:`~distengine.utilities.warnings.PossibleUserWarning` (a ``UserWarning``)
from global rank zero, with Lightning's text, so ``disable_possible_user_warnings()`` and
``warnings.filterwarnings`` written for Lightning silence them here too.

- ``max_epochs`` not set (and neither ``max_steps`` nor a time limit): the fit stops after 1000 epochs.
- a DataLoader with fewer than 2 workers where this machine has cores for more.
- fewer training batches per epoch than ``log_every_n_steps`` (with a logger): no step is logged.
- validation data without a ``validation_step`` (a plain ``UserWarning``, as in Lightning), or a
  ``validation_step`` without validation data: no validation runs.

Lightning's advice to pass ``sync_dist=True`` for epoch-level values in a distributed run is
not given: distengine always reduces epoch values across ranks.
"""
from __future__ import annotations

from typing import Any

from distengine.distributed.rank_zero import rank_zero_warn
from distengine.utilities.warnings import PossibleUserWarning


def warn_val_loop(has_val_loader: bool, has_val_step: bool) -> None:
    """Validation data without ``validation_step``, or the other way round: no validation runs."""
    if has_val_loader and not has_val_step:  # a plain UserWarning in Lightning
        rank_zero_warn("You passed in a `val_dataloader` but have no `validation_step`. Skipping val loop.")
    if has_val_step and not has_val_loader:
        rank_zero_warn("You defined a `validation_step` but have no `val_dataloader`. Skipping val loop.",
                       category=PossibleUserWarning)


def warn_fit_start(trainer: Any) -> None:
    """``max_epochs`` left to its default of 1000 (the Trainer noted it: see config.py)."""
    if getattr(getattr(trainer, "settings", None), "max_epochs_defaulted", False) and trainer.max_epochs == 1000:
        from distengine.callbacks.timer import Timer

        if not any(isinstance(cb, Timer) for cb in trainer.callbacks):
            rank_zero_warn("`max_epochs` was not set. Setting it to 1000 epochs. To train without an epoch limit,"
                           " set `max_epochs=-1`.", category=PossibleUserWarning)


def warn_few_workers(trainer: Any, loaders: list[Any], kind: str) -> None:
    """Lightning's "does not have many workers" for each plain DataLoader of ``kind``."""
    from torch.utils.data import DataLoader

    from distengine.utilities.data import suggested_max_num_workers

    upper = suggested_max_num_workers(max(1, trainer.num_devices))
    name = f"{kind}_dataloader"
    for loader in loaders:
        if isinstance(loader, DataLoader) and loader.num_workers < 2 and upper > 1:
            rank_zero_warn(f"The '{name}' does not have many workers which may be a bottleneck. Consider increasing "
                           f"the value of the `num_workers` argument` to `num_workers={upper}` in the `DataLoader` to"
                           " improve performance.", category=PossibleUserWarning)


def warn_log_interval(trainer: Any, num_batches: int | float) -> None:
    """No training step would be logged: the epoch is shorter than ``log_every_n_steps``."""
    if trainer.loggers and num_batches < trainer.log_every_n_steps and not trainer.fast_dev_run:
        rank_zero_warn(f"The number of training batches ({num_batches}) is smaller than the logging interval"
                       f" Trainer(log_every_n_steps={trainer.log_every_n_steps}). Set a lower value for"
                       " log_every_n_steps if you want to see logs for the training epoch.",
                       category=PossibleUserWarning)


def warn_fit_setup(trainer: Any, data: Any, val: list[Any]) -> None:
    """The fit's warnings at its start, in Lightning's order: max_epochs, the validation loaders'
    workers (``data``: the fit's :class:`~distengine.loop_context.FitData`)."""
    from distengine.data_combined import inner_loaders

    warn_val_loop(bool(val) or data.val_pending, data.has_val_step)  # pending: loaded later
    warn_fit_start(trainer)
    if data.has_val_step:
        warn_few_workers(trainer, [dl for loader in val for dl in inner_loaders(loader)], "val")


def warn_train_loaded(trainer: Any, data: Any, train: list[Any]) -> None:
    """When the training loader is loaded (after the sanity check): its workers, the log interval."""
    from distengine.data_combined import inner_loaders

    warn_few_workers(trainer, [dl for loader in train for dl in inner_loaders(loader)], "train")
    warn_log_interval(trainer, data.num_train_batches)


def warn_best_model_used(stage: str) -> None:
    """``test()``/``validate()``/``predict()`` without a model on a Trainer that has one: the best
    checkpoint of the earlier ``fit`` is loaded, as Lightning does."""
    rank_zero_warn(f"`.{stage}(ckpt_path=None)` was called without a model. The best model of the previous `fit` "
                   f"call will be used (distengine loads the ModelCheckpoint's best file); pass "
                   f"`.{stage}(ckpt_path='best')` or `.{stage}(ckpt_path='last')` to choose and silence this warning.")


def warn_no_last(dirpath: Any, then: str) -> None:
    """``ckpt_path="last"`` with no checkpoint saved yet: Lightning warns and goes on without one."""
    rank_zero_warn(f"ckpt_path='last' found no checkpoint in {dirpath}; {then}", category=UserWarning)


def warn_no_step(epoch: int, batches: int) -> None:
    """Lightning lets ``training_step`` return None to skip a batch (the optimizer step is still
    taken and counted, without gradients); an epoch in which every batch was skipped trains
    nothing, which is almost always a forgotten ``return loss``."""
    rank_zero_warn(f"epoch {epoch} trained nothing (training_step returned None for all {batches} batches); "
                   "return the loss from training_step (None skips a batch, which is meant for a few batches, "
                   "not all)")
