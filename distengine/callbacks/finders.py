"""``LearningRateFinder`` and ``BatchSizeFinder``: the Tuner's searches as callbacks.

Put one in ``Trainer(callbacks=[...])`` and ``fit`` runs the search before training, on
trial Trainers built from this Trainer's settings (see :class:`distengine.Tuner`), then
trains with the value found::

    trainer = Trainer(max_epochs=5, callbacks=[LearningRateFinder()])
    trainer.fit(model)      # model.lr is the finder's suggestion; trainer.callbacks[0].optimal_lr
                            # holds the whole curve

Choice: Lightning runs them inside ``on_fit_start`` of the real run; distengine runs them
just before it, so the searches never share the run's optimizer, loggers or checkpoints.
Each runs once per Trainer (a second ``fit`` trains with the value already found).
``BatchSizeFinder`` needs a single-process job, as in Lightning (an out-of-memory error on
one rank would leave the other ranks waiting in a collective).
"""
from __future__ import annotations

from typing import Any

from distengine.callbacks.base import Callback


class LearningRateFinder(Callback):
    """Arguments as :meth:`distengine.Tuner.lr_find` (``num_training_steps`` is its
    ``num_training``). After the search, ``optimal_lr`` is the :class:`LRFinder` result."""

    SUPPORTED_MODES = ("linear", "exponential")

    def __init__(self, min_lr: float = 1e-8, max_lr: float = 1.0, num_training_steps: int = 100,
                 mode: str = "exponential", early_stop_threshold: float | None = 4.0, update_attr: bool = True,
                 attr_name: str = "") -> None:
        mode = mode.lower()
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"LearningRateFinder(mode={mode!r}): use 'exponential' or 'linear'")
        if not 0 < min_lr < max_lr:
            raise ValueError(f"LearningRateFinder: need 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
        self._kwargs = dict(min_lr=min_lr, max_lr=max_lr, num_training=num_training_steps, mode=mode,
                            early_stop_threshold=early_stop_threshold, update_attr=update_attr, attr_name=attr_name)
        self.optimal_lr: Any = None

    def run_search(self, trainer: Any, model: Any, train: Any, val: Any) -> None:
        from distengine.tuner import Tuner

        self.optimal_lr = Tuner(trainer).lr_find(model, train, val, **self._kwargs)


class BatchSizeFinder(Callback):
    """Arguments as :meth:`distengine.Tuner.scale_batch_size`. After the search,
    ``optimal_batch_size`` holds the size found (also set on the model)."""

    SUPPORTED_MODES = ("power", "binsearch")

    def __init__(self, mode: str = "power", steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                 batch_arg_name: str = "batch_size") -> None:
        mode = mode.lower()
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"BatchSizeFinder(mode={mode!r}): use 'power' or 'binsearch'")
        self._kwargs = dict(mode=mode, steps_per_trial=steps_per_trial, init_val=init_val, max_trials=max_trials,
                            batch_arg_name=batch_arg_name)
        self.optimal_batch_size: int | None = None

    def run_search(self, trainer: Any, model: Any, train: Any, val: Any) -> None:
        from distengine.tuner import Tuner

        if train is not None:
            raise ValueError("BatchSizeFinder needs the module's train_dataloader() to build the loader from "
                             f"self.{self._kwargs['batch_arg_name']}; call fit(model) without passing a DataLoader "
                             "or DataModule")
        self.optimal_batch_size = Tuner(trainer).scale_batch_size(model, **self._kwargs)


def run_finder_callbacks(trainer: Any, model: Any, train: Any, val: Any) -> None:
    """Run the searches of the finder callbacks in ``trainer.callbacks`` that have not run yet:
    the batch size first (the best learning rate depends on it), then the learning rate."""
    done = vars(trainer).setdefault("_finders_done", set())
    finders = [cb for cb in trainer.callbacks if isinstance(cb, (BatchSizeFinder, LearningRateFinder))
               and id(cb) not in done]
    for cb in sorted(finders, key=lambda c: not isinstance(c, BatchSizeFinder)):
        cb.run_search(trainer, model, train, val)
        done.add(id(cb))
