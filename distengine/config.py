"""The Trainer's flags as one dataclass, their validation, and what a tuner trial inherits.

``Trainer(**flags)`` keeps ``trainer.config`` (a :class:`TrainerConfig`, the flags as given
after the 1.x translation) and :func:`distengine.settings.resolve_settings` checks and resolves
them once into ``trainer.settings``. The tuner builds its trial Trainer from the same config (:func:`trial_flags`):
every flag is copied except the few a trial sets itself (:data:`TRIAL_OVERRIDES`) or must not
inherit (:data:`TRIAL_DROPPED`), so a new flag reaches the trial without anyone remembering it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

# the trial's own values (max_steps and callbacks are the tuner's arguments)
TRIAL_OVERRIDES: dict[str, Any] = {
    "max_epochs": -1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
    "enable_model_summary": False, "num_sanity_val_steps": 0, "limit_val_batches": 0,
    # "skip" so that a diverging sweep ends the trial instead of raising
    "on_nonfinite_loss": "skip",
}
# flags about the length, evaluation, logging or debugging of the user's run, not how one step
# computes: a trial runs its own fixed number of steps without them
TRIAL_DROPPED = frozenset({"fast_dev_run", "min_epochs", "min_steps", "max_time", "limit_train_batches",
                           "limit_test_batches", "limit_predict_batches", "overfit_batches", "val_check_interval",
                           "check_val_every_n_epoch", "log_every_n_steps", "detect_anomaly", "profiler",
                           "barebones"})


@dataclass(frozen=True)
class TrainerConfig:
    """Every ``Trainer.__init__`` flag, as given (the same names and defaults)."""
    accelerator: str = "auto"
    strategy: Any = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    precision: Any = "32-true"
    logger: Any = None
    callbacks: Any = None
    fast_dev_run: Any = False
    max_epochs: int | None = None
    min_epochs: int | None = None
    max_steps: int = -1
    min_steps: int | None = None
    max_time: Any = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    overfit_batches: Any = 0.0
    val_check_interval: Any = None
    check_val_every_n_epoch: int = 1
    num_sanity_val_steps: int | None = None
    log_every_n_steps: int | None = None
    enable_checkpointing: bool | None = None
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str | None = None
    deterministic: Any = None
    benchmark: bool | None = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    detect_anomaly: bool = False
    sync_batchnorm: bool = False
    default_root_dir: str | None = None
    compile: bool = False
    on_nonfinite_loss: str = "error"
    dist_timeout: float | timedelta | None = None
    find_unused_parameters: bool = False
    gpus: Any = None
    profiler: Any = None
    plugins: Any = None
    barebones: bool = False


def trial_flags(config: TrainerConfig, max_steps: int, callbacks: list[Any]) -> dict[str, Any]:
    """The flags of a tuner trial Trainer: ``config``'s hardware, precision and optimization
    flags (every flag not overridden or dropped), a fixed ``max_steps``, and ``callbacks``."""
    from distengine.strategies import Strategy

    flags = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in TRIAL_DROPPED}
    if isinstance(flags["strategy"], Strategy):  # the same options, not the user's (set-up) instance
        flags["strategy"] = flags["strategy"].fresh()
    flags.update(TRIAL_OVERRIDES, max_steps=max_steps, callbacks=callbacks)
    return flags
