"""The Trainer's state as Lightning code reads it (``trainer.global_step``, ``trainer.strategy``,
``trainer.callback_metrics``...): plain functions of the Trainer, each one a property (or a
method) of :class:`distengine.Trainer`, named in its class body; :class:`Flag` and
:class:`Limit` are the descriptors of the flags a callback may change while a run goes on."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from distengine.callbacks.base import Callback
from distengine.loop_context import LoopFlags
from distengine.module import Module
from distengine.strategies import Strategy
from distengine.trainer_states import TrainerState

if TYPE_CHECKING:
    from distengine.trainer import Trainer


class Flag:
    """A Trainer attribute kept in the Trainer's :class:`~distengine.loop_context.LoopFlags`, so
    that what a callback sets (``trainer.accumulate_grad_batches = 4``) is what the loop reads."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else getattr(obj._parts.flags, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj._parts.flags, self.name, value)


class Limit:
    """``trainer.limit_{train,val,test,predict}_batches``: the limit in use (1.0: all batches),
    fast_dev_run's and overfit_batches' included, as Lightning reads them back."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        value = obj.limits[self.kind]
        return 1.0 if value is None else value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.limits[self.kind] = value


def should_stop(trainer: Trainer) -> bool:
    """Set it to ask for a stop (callbacks do); the ranks agree on it at the next step or epoch end."""
    return trainer._parts.loop_state.should_stop


def set_should_stop(trainer: Trainer, value: bool) -> None:
    trainer._parts.loop_state.should_stop = value


def logged_metrics(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The values written to the loggers in this stage (float32 tensors, as in Lightning)."""
    return trainer._parts.writer.logged_metrics


def global_step(trainer: Trainer) -> int:
    return trainer.progress.global_step


def current_epoch(trainer: Trainer) -> int:
    # A fit that stopped early (EarlyStopping, max_steps mid-epoch, a stop request) counts
    # the epoch it stopped in as finished, as Lightning does; `progress.epoch` keeps the
    # exact position, which is what a checkpoint stores and a resume continues from.
    return trainer.progress.epoch + trainer._parts.loop_state.stopped_in_epoch


def global_rank(trainer: Trainer) -> int:
    return trainer.env.rank


def local_rank(trainer: Trainer) -> int:
    return trainer.env.local_rank


def node_rank(trainer: Trainer) -> int:
    return trainer.env.node_rank


def world_size(trainer: Trainer) -> int:
    return trainer.env.world_size


def num_devices(trainer: Trainer) -> int:
    return trainer.settings.devices


def device_ids(trainer: Trainer) -> list[int]:
    """The indices of the devices this Trainer uses on each node (``devices=[0, 2]`` ->
    ``[0, 2]``; ``devices=2`` -> ``[0, 1]``), as Lightning's ``trainer.device_ids``."""
    return list(trainer.settings.gpu_ids) if trainer.settings.gpu_ids else list(range(trainer.settings.devices))


def is_global_zero(trainer: Trainer) -> bool:
    return trainer.env.rank == 0


def lightning_module(trainer: Trainer) -> Module | None:
    return trainer._module


def train_dataloader(trainer: Trainer) -> Any:
    """The training loader of the current (or last) fit, as this rank iterates it (sharded);
    several loaders: in the structure they were given in (a dict, a list), as in Lightning.
    ``None`` before a fit and once another call (``test``...) ran after it."""
    if trainer._parts.status.last_fn != "fit":
        return None
    loader = trainer._parts.data.fit.train_loader
    return loader.iterables if hasattr(loader, "flattened") else loader


def _given(trainer: Trainer, kind: str, *calls: str) -> Any:
    return trainer._parts.data.given.get(kind) if trainer._parts.status.last_fn in calls else None


def val_dataloaders(trainer: Trainer) -> Any:
    """The validation loader(s) of the current or last ``fit``/``validate``, as given; else ``None``."""
    return _given(trainer, "val", "fit", "validate")


def test_dataloaders(trainer: Trainer) -> Any:
    """The test loader(s) of the current or last ``test``, as given; else ``None``."""
    return _given(trainer, "test", "test")


def predict_dataloaders(trainer: Trainer) -> Any:
    """The predict loader(s) of the current or last ``predict``, as given; else ``None``."""
    return _given(trainer, "predict", "predict")


def enable_validation(trainer: Trainer) -> bool:
    """Whether the current (or last) ``fit`` validates: it has validation data, the module a
    ``validation_step``, and ``limit_val_batches`` is not 0."""
    limit, fit = getattr(trainer, "limits", {}).get("val"), trainer._parts.data.fit
    return trainer._parts.status.last_fn == "fit" and bool(fit.val_loaders) and fit.has_val_step and limit != 0


def is_last_batch(trainer: Trainer) -> bool:
    """Whether the running (or last run) training batch is the last of its epoch."""
    return trainer._parts.loop_state.is_last_batch


def ckpt_path(trainer: Trainer) -> str | None:
    """The checkpoint the current (or last) ``fit``/``validate``/``test``/``predict`` loaded;
    ``None`` when it loaded none. Set it to have the next calls load that checkpoint when they
    are given no ``ckpt_path`` (set it back to ``None`` yourself, as in Lightning)."""
    return trainer._parts.paths.current


def set_ckpt_path(trainer: Trainer, path: str | None) -> None:
    trainer._parts.paths.set(path)


def interrupted(trainer: Trainer) -> bool:
    """The last call stopped on an error, Ctrl-C or a stop signal (``state.status`` is INTERRUPTED)."""
    return trainer._parts.status.run_status == "interrupted"


def model(trainer: Trainer) -> Any:
    """What the loop calls forward on (the module, or its DDP wrapper) during ``fit``."""
    return trainer.settings.strategy.model


def strategy(trainer: Trainer) -> Strategy:
    """How this rank holds the model and talks to the others (``root_device``, ``barrier``,
    ``broadcast``, ``reduce``, ``reduce_boolean_decision``): see :mod:`distengine.strategies`."""
    return trainer.settings.strategy


def find_unused_parameters(trainer: Trainer) -> bool:
    return bool(getattr(trainer.settings.strategy, "find_unused_parameters", False))


def root_device(trainer: Trainer) -> torch.device:
    return trainer.settings.strategy.root_device


def barrier(trainer: Trainer, name: str | None = None) -> None:
    trainer.settings.strategy.barrier()


def broadcast(trainer: Trainer, obj: Any, src: int = 0) -> Any:
    return trainer.settings.strategy.broadcast(obj, src)


def reduce_boolean_decision(trainer: Trainer, decision: bool, all: bool = True) -> bool:
    return trainer.settings.strategy.reduce_boolean_decision(decision, all)


def loggers(trainer: Trainer) -> list[Any]:
    return trainer._loggers


def logger(trainer: Trainer) -> Any:
    return trainer._loggers[0] if trainer._loggers else None


def log_dir(trainer: Trainer) -> str:
    if trainer.logger is not None and getattr(trainer.logger, "log_dir", None):
        return trainer.logger.log_dir
    return trainer.default_root_dir


def profiler(trainer: Trainer) -> Any:  # a PassThroughProfiler without Trainer(profiler=...), as in Lightning
    return trainer.settings.profiler


def sanity_checking(trainer: Trainer) -> bool:
    return trainer._parts.status.sanity_checking


def training(trainer: Trainer) -> bool:
    return trainer._parts.status.stage == "fit" and trainer._parts.results.stage == "train"


def validating(trainer: Trainer) -> bool:
    return trainer._parts.results.stage == "validate" and trainer._parts.status.stage in ("fit", "validate")


def testing(trainer: Trainer) -> bool:
    return trainer._parts.status.stage == "test"


def predicting(trainer: Trainer) -> bool:
    return trainer._parts.status.stage == "predict"


def callback_metrics(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Latest values of everything logged: local step values and rank-reduced epoch values."""
    return trainer._parts.results.callback_metrics()


def record_callback_metrics(trainer: Trainer, values: dict[str, float]) -> None:
    """Add values a callback computed (for example learning rates) to ``callback_metrics``."""
    trainer._parts.results.epoch_values.update({k: torch.tensor(v) for k, v in values.items()})


def log_metrics(trainer: Trainer, metrics: dict[str, float], step: int | None = None) -> None:
    """Write ``metrics`` to the loggers now (global rank zero), and to ``logged_metrics``;
    with no ``step`` at the index the Trainer's own step values use, with ``epoch`` added."""
    trainer._parts.writer.log_to_loggers(metrics, step)


def progress_bar_metrics(trainer: Trainer) -> dict[str, float]:
    """The values logged with ``prog_bar=True`` (the bar shows the step's loss beside them)."""
    return trainer._parts.results.prog_bar_now()


def progress_bar_step_metrics(trainer: Trainer) -> dict[str, float]:
    """The part of ``progress_bar_metrics`` the latest training step logged (``on_step``): the
    progress bar leaves out its implicit ``loss`` when one of these holds the same value."""
    return trainer._parts.results.prog_bar_steps()


def predict_loop(trainer: Trainer) -> Any:
    """Lightning's ``trainer.predict_loop`` as prediction writers read it: this rank's
    ``predictions`` and the dataset indices of its batches (see predict_state.py)."""
    parts = trainer._parts
    if parts.predict_loop is None:
        from distengine.predict_state import PredictLoopState

        parts.predict_loop = PredictLoopState()
    return parts.predict_loop


def checkpoint_callbacks(trainer: Trainer) -> list[Callback]:
    from distengine.callbacks.model_checkpoint import ModelCheckpoint

    return [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]


def checkpoint_callback(trainer: Trainer) -> Callback | None:
    cbs = trainer.checkpoint_callbacks
    return cbs[0] if cbs else None


def early_stopping_callbacks(trainer: Trainer) -> list[Callback]:
    from distengine.callbacks.early_stopping import EarlyStopping

    return [c for c in trainer.callbacks if isinstance(c, EarlyStopping)]


def early_stopping_callback(trainer: Trainer) -> Callback | None:
    cbs = trainer.early_stopping_callbacks
    return cbs[0] if cbs else None


def progress_bar_callback(trainer: Trainer) -> Callback | None:
    """The progress bar among the callbacks (``None`` with ``enable_progress_bar=False``)."""
    from distengine.callbacks.progress_bar import ProgressBar

    return next((c for c in trainer.callbacks if isinstance(c, ProgressBar)), None)


def num_training_batches(trainer: Trainer) -> int | float:
    # Lightning: inf until a training loader is loaded
    return float("inf") if trainer._parts.data.fit.train_loader is None else trainer._parts.data.fit.num_train_batches


def num_val_batches(trainer: Trainer) -> list[int]:
    return list(trainer._parts.data.fit.num_val_batches)


def num_sanity_val_batches(trainer: Trainer) -> list[int]:
    return list(trainer._parts.data.sanity_steps)


def num_test_batches(trainer: Trainer) -> list[int]:
    return list(trainer._parts.data.eval_batches.get("test", []))


def num_predict_batches(trainer: Trainer) -> list[int]:
    return list(trainer._parts.data.eval_batches.get("predict", []))


def estimated_stepping_batches(trainer: Trainer) -> int | float:
    from distengine.data import estimated_steps

    run = trainer._run
    if run is not None and trainer._parts.status.stage == "fit" and trainer._parts.data.fit.train_pending:
        run.load_train(position=False)  # Lightning loads the training data when this is read (configure_optimizers)
    return estimated_steps(trainer.num_training_batches, trainer.accumulate_grad_batches, trainer.max_epochs,
                           trainer.max_steps)


def state(trainer: Trainer) -> TrainerState:
    """Lightning's ``trainer.state``: ``fn``, ``stage``, ``status``, ``finished`` (trainer_states.py)."""
    return TrainerState(trainer._parts.status, trainer._parts.results)


def precision_plugin(trainer: Trainer) -> Any:
    """The Precision object of the current run (autocast, GradScaler, ``backward``); None before one."""
    return trainer._run.precision if trainer._run is not None else None


def fit_loop(trainer: Trainer) -> FitLoopLimits:
    """Lightning's ``trainer.fit_loop`` for its limits only: ``trainer.fit_loop.max_epochs = 5``
    before a second ``fit`` trains the epochs still missing (what tutorials do to train on)."""
    return FitLoopLimits(trainer._parts.flags)


def metric_results(trainer: Trainer) -> Any:
    """Where ``trainer.log`` writes (step and epoch values, reduced across ranks when logged)."""
    return trainer._parts.results


class FitLoopLimits:
    """The stop limits of the fit loop, read and written through to the Trainer's flags."""

    __slots__ = ("_flags",)

    def __init__(self, flags: LoopFlags) -> None:
        self._flags = flags

    def __repr__(self) -> str:
        f = self._flags
        return (f"FitLoopLimits(max_epochs={f.max_epochs}, min_epochs={f.min_epochs}, "
                f"max_steps={f.max_steps}, min_steps={f.min_steps})")


def _limit(name: str) -> property:
    def get(self: FitLoopLimits) -> int:
        return getattr(self._flags, name)

    def set_(self: FitLoopLimits, value: int | None) -> None:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise TypeError(f"fit_loop.{name} takes an int, got {type(value).__name__}")
        setattr(self._flags, name, -1 if value is None and name.startswith("max") else (value or 0))

    return property(get, set_)


for _name in ("max_epochs", "min_epochs", "max_steps", "min_steps"):
    setattr(FitLoopLimits, _name, _limit(_name))


del _name
