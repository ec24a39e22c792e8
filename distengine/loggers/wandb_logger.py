"""Weights & Biases logger: config, metric history, checkpoints as artifacts.

Needs ``wandb`` (``pip install 'distengine[wandb]'``), imported on global rank zero at the
first write only. ``offline=True`` (or ``WANDB_MODE=offline``) writes the run to
``<save_dir>/wandb/offline-run-<time>-<id>/`` without any network call; ``wandb sync`` on that
folder uploads it later.

Steps. wandb keeps its own step (``_step``), which must only grow, while the Trainer writes
some values at an earlier index than the last one (the epoch-end values at the index of the
last step, evaluation batches from 0). So, as Lightning's WandbLogger does, each ``log``
call carries the Trainer's index as a metric, ``trainer/global_step``, declared as the x
axis of every other metric (``define_metric``); ``_step`` just counts the calls.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

from distengine.distributed.rank_zero import global_rank, rank_zero_only
from distengine.loggers.artifacts import CheckpointUploads, require
from distengine.loggers.base import Logger, NoOpExperiment
from distengine.loggers.csv_logger import params_to_dict

STEP_METRIC = "trainer/global_step"


def _config_value(value: Any) -> Any:
    """A value wandb's config stores as it is: JSON types, nested; anything else as text."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, Mapping):
        return {str(k): _config_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_config_value(v) for v in value]
    try:
        json.dumps(value, allow_nan=True)
        return value
    except (TypeError, ValueError):
        # a class or function by its name (Lightning's rule), anything else as its text
        return getattr(value, "__name__", None) or str(value) if callable(value) else str(value)


class WandbLogger(Logger):
    """Log to a W&B run: one run per logger, created on global rank zero at the first write.

    Args:
        name: the run's display name.
        save_dir: the folder under which wandb writes ``wandb/<run folder>``; ``dir`` is the
            same (used when ``save_dir`` is ``None``).
        version: the run id, to resume a run (``id`` is the same).
        offline: write the run locally only (``wandb.init(mode="offline")``).
        anonymous: W&B's anonymous logging (``True`` -> ``"allow"``).
        project: default ``$WANDB_PROJECT``, else ``"lightning_logs"``.
        log_model: upload ``ModelCheckpoint`` files as ``model`` artifacts: ``"all"`` each one
            when saved, ``True`` the kept ones when the fit ends (each one when saved if
            ``save_top_k == -1``), aliases ``latest`` and ``best``. Unlike Lightning, allowed
            offline too: wandb records the artifacts in the offline run for ``wandb sync``.
        experiment: an existing ``wandb`` run to log into (the logger then does not finish it).
        prefix: prepended to every metric name as ``"{prefix}-{name}"``.
        checkpoint_name: the artifact's name (default ``model-<run id>``).
        add_file_policy: ``"mutable"`` (copy the file when logged) or ``"immutable"``.
        **kwargs: passed on to ``wandb.init`` (``tags``, ``group``, ``entity``, ``config``...).

    When the fit ends, ``finalize`` finishes the run this logger started (exit code 0, or 1
    when the fit failed or was stopped by a signal) and, if no other wandb run is left open
    in the process, shuts down wandb's background service (``wandb.teardown()``), so a job
    leaves no ``wandb-core`` process behind. A later write (``trainer.test`` after ``fit``)
    resumes the same run id. If a wandb run is already active when the logger starts, it logs
    into that run (as Lightning) and leaves finishing it to you.

    Example::

        from distengine.loggers import WandbLogger
        logger = WandbLogger(project="mnist", save_dir="runs", offline=True)
        trainer = de.Trainer(logger=logger, max_epochs=3)
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(self, name: str | None = None, save_dir: str | os.PathLike | None = ".",
                 version: str | None = None, offline: bool = False,
                 dir: str | os.PathLike | None = None, id: str | None = None,
                 anonymous: bool | None = None, project: str | None = None,
                 log_model: bool | str = False, experiment: Any = None, prefix: str = "",
                 checkpoint_name: str | None = None, add_file_policy: str = "mutable",
                 **kwargs: Any) -> None:
        require("wandb", "WandbLogger", "wandb")
        if add_file_policy not in ("mutable", "immutable"):
            raise ValueError(f"WandbLogger(add_file_policy={add_file_policy!r}): use 'mutable' or 'immutable'")
        self._offline = bool(offline)
        self._prefix = str(prefix)
        self._experiment = experiment
        self._owns_run = False
        self._uploads = CheckpointUploads(log_model, "WandbLogger")
        self._checkpoint_name = checkpoint_name
        self._add_file_policy = add_file_policy
        folder = save_dir if save_dir is not None else dir
        self._wandb_init: dict[str, Any] = {
            "name": name,
            "project": project or os.environ.get("WANDB_PROJECT", "lightning_logs"),
            "dir": os.fspath(folder) if folder is not None else None,
            "id": version or id,
            "resume": "allow",
            **({"anonymous": "allow"} if anonymous else {}),
            **kwargs,
        }
        if self._offline:
            self._wandb_init["mode"] = "offline"
        self._project = self._wandb_init.get("project")
        self._save_dir = self._wandb_init.get("dir")
        self._id = self._wandb_init.get("id")

    # the run ---------------------------------------------------------------------------
    @property
    def experiment(self) -> Any:
        """The ``wandb`` run (started on first use), or a do-nothing stand-in on non-zero ranks."""
        if self._experiment is not None and not self._finished(self._experiment):
            return self._experiment
        if global_rank() != 0:
            return NoOpExperiment()
        import wandb

        if self._experiment is None and wandb.run is not None:
            warnings.warn("WandbLogger: a wandb run is already active; logging into it (call "
                          "wandb.finish() first for a new run)", UserWarning, stacklevel=2)
            self._experiment, self._owns_run = wandb.run, False
            return self._experiment
        settings = dict(self._wandb_init)
        if self._experiment is not None:  # finalize finished this logger's run: resume it
            settings["id"] = self._experiment.id
            settings.setdefault("reinit", "create_new")  # not some other run that is active
        run = self._experiment = wandb.init(**settings)
        self._owns_run, self._id = True, run.id
        if self._wandb_init.get("sync_tensorboard"):
            run.define_metric("*", step_metric="global_step")
        else:
            run.define_metric(STEP_METRIC)
            run.define_metric("*", step_metric=STEP_METRIC, step_sync=True)
        return run

    @staticmethod
    def _finished(run: Any) -> bool:
        return bool(getattr(run, "_is_finished", False))

    @property
    def name(self) -> str | None:  # type: ignore[override]
        """The project (as Lightning: checkpoints go under ``save_dir/<project>/<run id>``)."""
        return self._project

    @property
    def version(self) -> str | None:
        """The run id (starts the run on global rank zero; elsewhere the id given, if any)."""
        if self._experiment is None and global_rank() == 0:
            _ = self.experiment
        return self._experiment.id if self._experiment is not None else self._id

    @property
    def save_dir(self) -> str | None:
        return self._save_dir

    @property
    def log_dir(self) -> str | None:
        """``save_dir``: what ``trainer.log_dir`` is with this logger first, as in Lightning."""
        return self._save_dir

    # writing ---------------------------------------------------------------------------
    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Merge ``params`` into the run's config (nested dicts stay nested; values wandb cannot
        store as JSON are stored as text)."""
        config = {str(k): _config_value(v) for k, v in params_to_dict(params).items()}
        self.experiment.config.update(config, allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """One ``run.log`` call: the metrics plus ``trainer/global_step = step``."""
        row = {(f"{self._prefix}{self.LOGGER_JOIN_CHAR}{k}" if self._prefix else k):
               (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        if step is not None and not self._wandb_init.get("sync_tensorboard"):
            row[STEP_METRIC] = int(step)
        self.experiment.log(row)

    def watch(self, model: Any, log: str | None = "gradients", log_freq: int = 100,
              log_graph: bool = True) -> None:
        """``wandb.watch``: gradient/parameter histograms every ``log_freq`` steps."""
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Upload the checkpoint just saved when ``log_model`` asks for it now (rank zero)."""
        for path, metadata, aliases in self._uploads.after_save(checkpoint_callback):
            self._upload(path, metadata, aliases)

    def _upload(self, path: str, metadata: dict[str, Any], aliases: list[str]) -> None:
        import wandb

        run = self.experiment
        artifact = wandb.Artifact(self._checkpoint_name or f"model-{run.id}", type="model",
                                  metadata=metadata)
        artifact.add_file(path, name="model.ckpt", policy=self._add_file_policy)
        run.log_artifact(artifact, aliases=aliases)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Upload what ``log_model=True`` kept for the end, finish the run this logger started
        and, when no wandb run is left open, stop wandb's background service."""
        run = self._experiment
        if run is None or self._finished(run):
            return
        for path, metadata, aliases in self._uploads.at_end():
            self._upload(path, metadata, aliases)
        if not self._owns_run:
            return
        run.finish(exit_code=0 if status == "success" else 1)
        import wandb

        if wandb.run is None:  # no other run needs the service
            wandb.teardown()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._experiment is not None:  # a copy resumes the same run id when it writes
            state["_id"] = self._experiment.id
            state["_wandb_init"] = {**self._wandb_init, "id": self._experiment.id}
        state["_experiment"] = None
        state["_owns_run"] = False
        return state
