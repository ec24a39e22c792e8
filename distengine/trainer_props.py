"""The Trainer's read-only state, as Lightning code reads it (``trainer.global_step``,
``trainer.strategy``, ``trainer.callback_metrics``...). Mixed into :class:`distengine.Trainer`."""
from __future__ import annotations

from typing import Any

import torch

from distengine.callbacks.base import Callback
from distengine.loop_context import LoopFlags
from distengine.module import Module
from distengine.strategies import Strategy
from distengine.trainer_states import TrainerState


class _Flag:
    """A Trainer attribute kept in the Trainer's :class:`~distengine.loop_context.LoopFlags`, so
    that what a callback sets (``trainer.accumulate_grad_batches = 4``) is what the loop reads."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        return self if obj is None else getattr(obj._flags, self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(obj._flags, self.name, value)


class _Limit:
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


class TrainerProperties:
    limit_train_batches, limit_val_batches = _Limit("train"), _Limit("val")
    limit_test_batches, limit_predict_batches = _Limit("test"), _Limit("predict")

    # ------------------------------------------------------------------ the loop's flags and state
    @property
    def should_stop(self) -> bool:
        """Set it to ask for a stop (callbacks do); the ranks agree on it at the next step or epoch end."""
        return self._loop_state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self._loop_state.should_stop = value

    @property
    def logged_metrics(self) -> dict[str, torch.Tensor]:
        """The values written to the loggers in this stage (float32 tensors, as in Lightning)."""
        return self._writer.logged_metrics

    # the loop's state under the names the Trainer used to keep it by (the tests read them)
    @property
    def _skipped_nonfinite(self) -> Any:
        return self._loop_state.skipped_nonfinite

    @property
    def _train_outputs(self) -> Any:
        return self._loop_state.train_outputs

    @property
    def _train_loader(self) -> Any:
        return self._data.train_loader

    @property
    def _train_sampler(self) -> Any:
        return self._data.train_sampler

    # ------------------------------------------------------------------ read-only state
    @property
    def global_step(self) -> int:
        return self.progress.global_step

    @property
    def current_epoch(self) -> int:
        # A fit that stopped early (EarlyStopping, max_steps mid-epoch, a stop request) counts
        # the epoch it stopped in as finished, as Lightning does; `progress.epoch` keeps the
        # exact position, which is what a checkpoint stores and a resume continues from.
        return self.progress.epoch + self._loop_state.stopped_in_epoch

    @property
    def global_rank(self) -> int:
        return self.env.rank

    @property
    def local_rank(self) -> int:
        return self.env.local_rank

    @property
    def node_rank(self) -> int:
        return self.env.node_rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def num_devices(self) -> int:
        return self._devices

    @property
    def device_ids(self) -> list[int]:
        """The indices of the devices this Trainer uses on each node (``devices=[0, 2]`` ->
        ``[0, 2]``; ``devices=2`` -> ``[0, 1]``), as Lightning's ``trainer.device_ids``."""
        return list(self._gpu_ids) if self._gpu_ids else list(range(self._devices))

    @property
    def is_global_zero(self) -> bool:
        return self.env.rank == 0

    @property
    def lightning_module(self) -> Module | None:
        return self._module

    @property
    def train_dataloader(self) -> Any:
        """The training loader of the current (or last) fit, as this rank iterates it (sharded);
        several loaders: in the structure they were given in (a dict, a list), as in Lightning.
        ``None`` before a fit and once another call (``test``...) ran after it."""
        if self._status.last_fn != "fit":
            return None
        loader = self._data.train_loader
        return loader.iterables if hasattr(loader, "flattened") else loader

    def _given(self, kind: str, *calls: str) -> Any:
        return self.__dict__.get("_given_loaders", {}).get(kind) if self._status.last_fn in calls else None

    @property
    def val_dataloaders(self) -> Any:
        """The validation loader(s) of the current or last ``fit``/``validate``, as given; else ``None``."""
        return self._given("val", "fit", "validate")

    @property
    def test_dataloaders(self) -> Any:
        """The test loader(s) of the current or last ``test``, as given; else ``None``."""
        return self._given("test", "test")

    @property
    def predict_dataloaders(self) -> Any:
        """The predict loader(s) of the current or last ``predict``, as given; else ``None``."""
        return self._given("predict", "predict")

    @property
    def enable_validation(self) -> bool:
        """Whether the current (or last) ``fit`` validates: it has validation data, the module a
        ``validation_step``, and ``limit_val_batches`` is not 0."""
        limit = getattr(self, "limits", {}).get("val")
        return (self._status.last_fn == "fit" and bool(self._data.val_loaders) and self._data.has_val_step
                and limit != 0)

    @property
    def is_last_batch(self) -> bool:
        """Whether the running (or last run) training batch is the last of its epoch."""
        return self._loop_state.is_last_batch

    @property
    def ckpt_path(self) -> str | None:
        """The checkpoint the current (or last) ``fit``/``validate``/``test``/``predict`` loaded;
        ``None`` when it loaded none. Set it to have the next calls load that checkpoint when they
        are given no ``ckpt_path`` (set it back to ``None`` yourself, as in Lightning)."""
        return self._ckpt_path if self._ckpt_path is not None else self._ckpt_path_set

    @ckpt_path.setter
    def ckpt_path(self, path: str | None) -> None:
        self._ckpt_path_set = self._ckpt_path = None if path is None else str(path)

    @property
    def interrupted(self) -> bool:
        """The last call stopped on an error, Ctrl-C or a stop signal (``state.status`` is INTERRUPTED)."""
        return self._status.run_status == "interrupted"

    @property
    def model(self) -> Any:
        """What the loop calls forward on (the module, or its DDP wrapper) during ``fit``."""
        return self._strategy.model

    @property
    def strategy(self) -> Strategy:
        """How this rank holds the model and talks to the others (``root_device``, ``barrier``,
        ``broadcast``, ``reduce``, ``reduce_boolean_decision``): see :mod:`distengine.strategies`."""
        return self._strategy

    @property
    def find_unused_parameters(self) -> bool:
        return bool(getattr(self._strategy, "find_unused_parameters", False))

    @property
    def root_device(self) -> torch.device:
        return self._strategy.root_device

    def barrier(self, name: str | None = None) -> None:
        self._strategy.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return self._strategy.broadcast(obj, src)

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return self._strategy.reduce_boolean_decision(decision, all)

    @property
    def loggers(self) -> list[Any]:
        return self._loggers

    @property
    def logger(self) -> Any:
        return self._loggers[0] if self._loggers else None

    @property
    def log_dir(self) -> str:
        if self.logger is not None and getattr(self.logger, "log_dir", None):
            return self.logger.log_dir
        return self.default_root_dir

    @property
    def profiler(self) -> Any:  # a PassThroughProfiler without Trainer(profiler=...), as in Lightning
        return self._profiler

    @property
    def sanity_checking(self) -> bool:
        return self._status.sanity_checking

    @property
    def training(self) -> bool:
        return self._status.stage == "fit" and self._results.stage == "train"

    @property
    def validating(self) -> bool:
        return self._results.stage == "validate" and self._status.stage in ("fit", "validate")

    @property
    def testing(self) -> bool:
        return self._status.stage == "test"

    @property
    def predicting(self) -> bool:
        return self._status.stage == "predict"

    @property
    def callback_metrics(self) -> dict[str, torch.Tensor]:
        """Latest values of everything logged: local step values and rank-reduced epoch values."""
        return self._results.callback_metrics()

    def record_callback_metrics(self, values: dict[str, float]) -> None:
        """Add values a callback computed (for example learning rates) to ``callback_metrics``."""
        self._results.epoch_values.update({k: torch.tensor(v) for k, v in values.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Write ``metrics`` to the loggers now (global rank zero), and to ``logged_metrics``;
        with no ``step`` at the index the Trainer's own step values use, with ``epoch`` added."""
        self._writer.log_to_loggers(metrics, step)

    @property
    def progress_bar_metrics(self) -> dict[str, float]:
        """The values logged with ``prog_bar=True`` (the bar shows the step's loss beside them)."""
        return self._results.prog_bar_now()

    @property
    def progress_bar_step_metrics(self) -> dict[str, float]:
        """The part of ``progress_bar_metrics`` the latest training step logged (``on_step``): the
        progress bar leaves out its implicit ``loss`` when one of these holds the same value."""
        return self._results.prog_bar_steps()

    @property
    def predict_loop(self) -> Any:
        """Lightning's ``trainer.predict_loop`` as prediction writers read it: this rank's
        ``predictions`` and the dataset indices of its batches (see predict_state.py)."""
        state = self.__dict__.get("_predict_loop")
        if state is None:
            from distengine.predict_state import PredictLoopState

            state = self.__dict__["_predict_loop"] = PredictLoopState()
        return state

    @property
    def checkpoint_callbacks(self) -> list[Callback]:
        from distengine.callbacks.model_checkpoint import ModelCheckpoint

        return [c for c in self.callbacks if isinstance(c, ModelCheckpoint)]

    @property
    def checkpoint_callback(self) -> Callback | None:
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def early_stopping_callbacks(self) -> list[Callback]:
        from distengine.callbacks.early_stopping import EarlyStopping

        return [c for c in self.callbacks if isinstance(c, EarlyStopping)]

    @property
    def early_stopping_callback(self) -> Callback | None:
        cbs = self.early_stopping_callbacks
        return cbs[0] if cbs else None

    @property
    def progress_bar_callback(self) -> Callback | None:
        """The progress bar among the callbacks (``None`` with ``enable_progress_bar=False``)."""
        from distengine.callbacks.progress import ProgressBar

        return next((c for c in self.callbacks if isinstance(c, ProgressBar)), None)

    @property
    def num_training_batches(self) -> int | float:
        # Lightning: inf until a training loader is loaded
        return float("inf") if self._data.train_loader is None else self._data.num_train_batches

    @property
    def num_val_batches(self) -> list[int]:
        return list(self._data.num_val_batches)

    @property
    def num_sanity_val_batches(self) -> list[int]:
        return list(getattr(self, "_sanity_steps", []))

    @property
    def num_test_batches(self) -> list[int]:
        return list(self._eval_batches.get("test", [])) if hasattr(self, "_eval_batches") else []

    @property
    def num_predict_batches(self) -> list[int]:
        return list(self._eval_batches.get("predict", [])) if hasattr(self, "_eval_batches") else []

    @property
    def estimated_stepping_batches(self) -> int | float:
        from distengine.data import estimated_steps

        return estimated_steps(self.num_training_batches, self.accumulate_grad_batches, self.max_epochs, self.max_steps)

    @property
    def state(self) -> TrainerState:
        """Lightning's ``trainer.state``: ``fn``, ``stage``, ``status``, ``finished`` (trainer_states.py)."""
        return TrainerState(self._status, self._results)

    @property
    def precision_plugin(self) -> Any:
        """The Precision object of the current run (autocast, GradScaler, ``backward``); None before one."""
        return self._precision

    @property
    def fit_loop(self) -> FitLoopLimits:
        """Lightning's ``trainer.fit_loop`` for its limits only: ``trainer.fit_loop.max_epochs = 5``
        before a second ``fit`` trains the epochs still missing (what tutorials do to train on)."""
        return FitLoopLimits(self._flags)

    @property
    def metric_results(self) -> Any:
        """Where ``self.log`` writes (step and epoch values, reduced across ranks when logged)."""
        return self._results


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

for _name in LoopFlags.__dataclass_fields__:  # max_epochs, accumulate_grad_batches, ... (loop_context.py)
    setattr(TrainerProperties, _name, _Flag(_name))
del _name
