"""Learning-rate range test and batch-size search.

Both finders run short trial fits on a **fresh internal Trainer** built from the user's
trainer's hardware flags (accelerator, devices, num_nodes, precision, gradient clipping,
accumulation), with no logger, no checkpointing, no progress bar, no sanity check and no
validation. The user's Trainer is never modified, so its progress counters, callbacks and
loggers are exactly as before. The model's weights, buffers, train/eval mode, the random
number generators and the module's link to its Trainer are saved in memory first and put
back afterwards, so a later ``trainer.fit(model)`` starts from the same state as without
tuning; the only lasting change is the attribute the finder is asked to set (``lr`` /
``learning_rate`` / ``hparams.lr``, or ``batch_size`` / ``hparams.batch_size``).

Example::

    trainer = de.Trainer(max_epochs=10, accelerator="cpu")
    tuner = de.Tuner(trainer)
    finder = tuner.lr_find(model, train_loader, max_lr=10)
    print(finder.suggestion()); finder.plot(path="lr.png")      # model.lr is now set
    tuner.scale_batch_size(model, mode="binsearch")             # model.batch_size is now set
    trainer.fit(model, train_loader)

The 1.x spelling ``Trainer(auto_lr_find=True, auto_scale_batch_size="power")`` followed by
``trainer.tune(model)`` calls :func:`tune`.
"""
from __future__ import annotations

import gc
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from distengine.callbacks.base import Callback
from distengine.distributed import collectives
from distengine.tuner.lr_finder import LRFinder, _LRSweep
from distengine.utilities.exceptions import ConfigError

_OOM_MESSAGES = ("out of memory", "cudnn_status_not_supported", "can't allocate memory",
                 "cuda error: out of memory")


# ---------------------------------------------------------------------------- shared plumbing
@contextmanager
def _preserved(model: torch.nn.Module) -> Iterator[None]:
    """Snapshot weights, buffers, train mode, RNGs and the module's trainer; restore on exit.

    Tensors are put back by assigning ``.data``, which restores the exact values, dtype and
    device (a trial with ``precision="bf16-true"`` converts the module) while keeping the
    Parameter objects, so optimizers the user already holds stay attached.
    """
    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        yield from model.named_parameters()
        yield from model.named_buffers()

    saved = {name: t.detach().clone() for name, t in tensors()}
    training = model.training
    owner = getattr(model, "_trainer", None)
    rng = (torch.get_rng_state(), random.getstate(), _numpy_state(),
           torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, t in tensors():
                if name in saved:
                    t.data = saved[name]
        model.zero_grad(set_to_none=True)
        model.train(training)
        if hasattr(model, "_trainer"):
            model._trainer = owner
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        if rng[2] is not None:
            import numpy as np

            np.random.set_state(rng[2])
        if rng[3] is not None:
            torch.cuda.set_rng_state_all(rng[3])


def _numpy_state() -> Any:
    try:
        import numpy as np
    except ImportError:
        return None
    return np.random.get_state()


def _holders(model: Any, name: str) -> list[tuple[Any, bool]]:
    """Where ``name`` lives: ``(model, False)`` for an attribute, ``(hparams, True)`` for a key."""
    found: list[tuple[Any, bool]] = []
    if name in getattr(model, "__dict__", {}) or (hasattr(model, name) and not callable(getattr(model, name))):
        found.append((model, False))
    hparams = getattr(model, "hparams", None)
    if isinstance(hparams, dict) and name in hparams:
        found.append((hparams, True))
    elif hparams is not None and not isinstance(hparams, dict) and hasattr(hparams, name):
        found.append((hparams, False))
    return found


def _set_attr(model: Any, name: str, value: Any) -> None:
    for holder, is_key in _holders(model, name):
        if is_key:
            holder[name] = value
        else:
            setattr(holder, name, value)


def is_oom_error(exc: BaseException) -> bool:
    """True for an out-of-memory error, also when it is the cause of a wrapping exception."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
        if oom_type is not None and isinstance(exc, oom_type):
            return True
        if isinstance(exc, RuntimeError) and len(exc.args) == 1 and isinstance(exc.args[0], str) \
                and any(m in exc.args[0].lower() for m in _OOM_MESSAGES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_initialized():  # never create a CUDA context just to empty it
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- the Tuner
class Tuner:
    """Finds a learning rate and a batch size for ``trainer``'s hardware setup.

    Example::

        tuner = Tuner(trainer)
        lr = tuner.lr_find(model, train_loader).suggestion()
        batch_size = tuner.scale_batch_size(model, mode="power")
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def _trial_trainer(self, max_steps: int, callbacks: list[Callback]) -> Any:
        """A fresh Trainer of the same class, from the user's flags (``trainer.config``): every
        hardware, precision and optimization flag is copied (see ``config.trial_flags``);
        nothing validates or writes."""
        from distengine.config import trial_flags

        return type(self.trainer)(**trial_flags(self.trainer.config, max_steps, callbacks))

    # ---------------------------------------------------------------- lr_find
    def lr_find(self, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None,
                dataloaders: Any = None, datamodule: Any = None, method: str = "fit", min_lr: float = 1e-8,
                max_lr: float = 1.0, num_training: int = 100, mode: str = "exponential",
                early_stop_threshold: float | None = 4.0,
                update_attr: bool = True, attr_name: str = "") -> LRFinder:
        """Run an LR range test: ``num_training`` optimizer steps with the learning rate rising
        from ``min_lr`` to ``max_lr``; stop early once the smoothed loss exceeds
        ``early_stop_threshold`` times its best value (``None`` never stops early).

        With ``update_attr`` the suggestion is written to ``attr_name`` or, when empty, to the
        first of ``lr`` / ``learning_rate`` found on the model or in ``model.hparams``.
        The model and the RNG states are restored afterwards. In a multi-rank job every rank
        calls it; rank zero's measurements are broadcast so all ranks agree on the result.
        The data comes as for ``fit``: ``train_dataloaders`` / ``val_dataloaders``, a
        ``datamodule``, or the module's own ``train_dataloader()``. ``method`` can only be
        ``"fit"`` and ``dataloaders`` (the evaluation stages' argument) is refused, as in Lightning.
        """
        if _skipped_in_fast_dev_run(self.trainer, "lr_find"):
            return None
        if method != "fit":
            raise ConfigError(f"lr_find(method={method!r}): the learning rate finder runs on a fit only; use 'fit'")
        if dataloaders is not None:
            raise ConfigError("lr_find(dataloaders=...): the sweep trains; pass train_dataloaders= (and "
                              "val_dataloaders=) or datamodule= instead")
        if mode not in ("exponential", "linear"):
            raise ConfigError(f"lr_find(mode={mode!r}): use 'exponential' or 'linear'")
        if not (min_lr > 0 and max_lr > 0):  # (as in Lightning, max_lr < min_lr sweeps downwards)
            raise ConfigError(f"lr_find: min_lr and max_lr must be > 0, got min_lr={min_lr}, max_lr={max_lr}")
        if not isinstance(num_training, int) or num_training < 1:
            raise ConfigError(f"lr_find(num_training={num_training!r}): use an integer >= 1")
        target = ""
        if update_attr:
            candidates = [attr_name] if attr_name else ["lr", "learning_rate"]
            target = next((c for c in candidates if _holders(model, c)), "")
            if not target:
                wanted = f"`{attr_name}`" if attr_name else "`lr` or `learning_rate`"
                raise AttributeError(
                    f"lr_find(update_attr=True) found no {wanted} on {type(model).__name__} or in its "
                    f"hparams; define self.lr (and use it in configure_optimizers), pass attr_name=, "
                    "or pass update_attr=False")
        finder = LRFinder(mode, min_lr, max_lr, num_training)
        with _preserved(model):
            trial = self._trial_trainer(num_training, [_LRSweep(finder, early_stop_threshold)])
            trial.fit(model, train_dataloaders, val_dataloaders, datamodule=datamodule)
        # ranks saw different data; rank zero's curve decides, so every rank sets the same lr
        finder.results = collectives.broadcast_object(finder.results, src=0)
        lr = finder.suggestion()
        if update_attr and lr is not None:
            _set_attr(model, target, lr)
        return finder

    # ---------------------------------------------------------------- scale_batch_size
    def scale_batch_size(self, model: Any, mode: str = "power", steps_per_trial: int = 3,
                         init_val: int = 2, max_trials: int = 25, batch_arg_name: str = "batch_size") -> int:
        """Find the largest batch size whose trial steps run without running out of memory.

        ``"power"`` doubles from ``init_val`` until a trial fails and keeps the last success;
        ``"binsearch"`` then bisects between the last success and the first failure. Each
        trial runs ``steps_per_trial`` optimizer steps from the same initial weights. The
        module's ``train_dataloader()`` must build its loader from ``self.<batch_arg_name>`` (or
        ``self.hparams.<batch_arg_name>``); the found value is left there; growth stops at the
        dataset size. Single-process jobs only (an OOM on one rank would strand the others)."""
        if _skipped_in_fast_dev_run(self.trainer, "scale_batch_size"):
            return None
        if mode not in ("power", "binsearch"):
            raise ValueError(f"scale_batch_size(mode={mode!r}): use 'power' or 'binsearch'")
        for name, value in (("steps_per_trial", steps_per_trial), ("init_val", init_val),
                            ("max_trials", max_trials)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"scale_batch_size({name}={value!r}): use a positive integer")
        if collectives.is_distributed() or int(getattr(self.trainer, "world_size", 1) or 1) > 1:
            raise RuntimeError("scale_batch_size is not supported in a multi-rank job (an out-of-memory "
                               "error on one rank would leave the others waiting); run it in a single-"
                               "device job and pass the result to the distributed one")
        if not _holders(model, batch_arg_name):
            raise AttributeError(
                f"scale_batch_size found no `{batch_arg_name}` on {type(model).__name__} or in its hparams; "
                f"set self.{batch_arg_name} in __init__ and read it in train_dataloader()")
        if not callable(getattr(model, "train_dataloader", None)):
            raise TypeError(f"scale_batch_size needs {type(model).__name__}.train_dataloader() that "
                                 f"builds its DataLoader with self.{batch_arg_name}")
        limit = _dataset_size(model)
        say = _announcer(self.trainer, f"scale_batch_size ({mode})")

        def fits(size: int) -> bool:
            ok = trial(size)
            say(f"batch size {size} {'fits' if ok else 'runs out of memory'}")
            return ok

        def trial(size: int) -> bool:
            _set_attr(model, batch_arg_name, size)
            with _preserved(model):
                try:
                    self._trial_trainer(steps_per_trial, []).fit(model)
                except Exception as exc:  # only an out-of-memory error is swallowed; the rest re-raised
                    if not is_oom_error(exc):
                        raise
                    # the traceback's frames hold the failed batch's tensors: free them before
                    # the next try (only here: a full gc pass costs ~0.5 s with torch loaded)
                    del exc
                    _free_memory()
                    return False
            return True

        size, low, high = init_val, 0, None  # low: largest success, high: smallest failure
        for _ in range(max_trials):
            if fits(size):
                low = size
                if high is None:
                    if limit is not None and size >= limit:
                        break
                    size *= 2
                elif high - low <= 1:
                    break
                else:
                    size = (low + high) // 2
            else:
                high = size
                if low == 0:  # nothing fits yet: halve in both modes
                    if size == 1:
                        break
                    size //= 2
                elif mode == "power" or high - low <= 1:
                    break
                else:
                    size = (low + high) // 2
        if low == 0:
            _set_attr(model, batch_arg_name, init_val)
            raise RuntimeError(f"scale_batch_size: even batch size {max(1, size)} runs out of memory")
        _set_attr(model, batch_arg_name, low)
        say(f"using batch size {low} (set as {batch_arg_name})")
        return low


def _announcer(trainer: Any, what: str) -> Any:
    """A function printing one ``distengine: <what>: ...`` line to stderr on global rank zero
    (where distengine's other notices go; Lightning logs its finder's trials at INFO there)."""
    quiet = not getattr(trainer, "is_global_zero", True)

    def say(text: str) -> None:
        if not quiet:
            print(f"distengine: {what}: {text}", file=sys.stderr, flush=True)

    return say


def _dataset_size(model: Any) -> int | None:
    """The training set's length, to stop growing the batch beyond it (None if unknown)."""
    try:
        loader = model.train_dataloader()
        return len(loader.dataset)
    except Exception:  # noqa: BLE001 - an iterable dataset has no length: no cap then
        return None


def tune(trainer: Any, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None,
         scale_batch_size_kwargs: dict[str, Any] | None = None,
         lr_find_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``Trainer.tune(model)`` does (the Lightning 1.x API).

    Reads ``trainer.auto_scale_batch_size`` (``True`` = ``"power"``, or ``"power"`` /
    ``"binsearch"``) and ``trainer.auto_lr_find`` (``True``, or the attribute name to set);
    runs the batch-size search first (the best learning rate depends on the batch size),
    then the LR finder. Returns ``{"scale_batch_size": int, "lr_find": LRFinder}`` with the
    keys of the finders that ran.

    Example::

        trainer = de.Trainer(auto_lr_find=True, max_epochs=5)
        trainer.tune(model)      # sets model.lr
        trainer.fit(model)
    """
    result: dict[str, Any] = {}
    tuner = Tuner(trainer)
    scale = getattr(trainer, "auto_scale_batch_size", False)
    if scale:
        if scale is not True and scale not in ("power", "binsearch"):
            raise ValueError(f"Trainer(auto_scale_batch_size={scale!r}): use True, 'power' or 'binsearch'")
        kwargs = dict(scale_batch_size_kwargs or {})
        kwargs.setdefault("mode", "power" if scale is True else scale)
        result["scale_batch_size"] = tuner.scale_batch_size(model, **kwargs)
    find_lr = getattr(trainer, "auto_lr_find", False)
    if find_lr:
        if find_lr is not True and not isinstance(find_lr, str):
            raise ValueError(f"Trainer(auto_lr_find={find_lr!r}): use True or the name of the attribute to set")
        kwargs = dict(lr_find_kwargs or {})
        if isinstance(find_lr, str):
            kwargs.setdefault("attr_name", find_lr)
        result["lr_find"] = tuner.lr_find(model, train_dataloaders, val_dataloaders, **kwargs)
    return result


__all__ = ["LRFinder", "Tuner", "is_oom_error", "tune"]


def _skipped_in_fast_dev_run(trainer: Any, name: str) -> bool:
    """Lightning skips the finders under ``fast_dev_run`` (a few batches cannot measure anything),
    with a UserWarning; they return None."""
    if not getattr(trainer, "fast_dev_run", 0):
        return False
    from distengine.distributed.rank_zero import rank_zero_warn

    what = "learning rate finder" if name == "lr_find" else "batch size scaler"
    rank_zero_warn(f"Tuner.{name}() does nothing under Trainer(fast_dev_run=...): the {what} needs a real run; "
                   "it returns None", category=UserWarning)
    return True
