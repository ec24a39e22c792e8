"""Comet logger: hyperparameters and metrics to a Comet experiment, online or offline.

Needs ``comet_ml`` (``pip install 'distengine[comet]'``), imported on global rank zero when the
experiment starts (the first write, or ``logger.experiment``/``logger.version``). The
constructor is Lightning 2.6.6's (``api_key``, ``workspace``, ``project``, ``experiment_key``,
``mode``, ``online``, ``prefix``, and ``comet_ml.ExperimentConfig`` keywords such as ``name``
and ``offline_directory``; the older ``experiment_name``, ``project_name``, ``offline`` and
``save_dir`` are still accepted).

Offline: ``online=False`` (or comet's own ``COMET_START_ONLINE=false`` with ``online`` left
unset) records the experiment without any network call and writes it as one zip archive under
``offline_directory`` (``save_dir``) when the experiment ends (``logger.experiment.end()``, or
when the process exits); ``comet upload <archive>`` sends it later. Lightning 2.6.6 passes
``disabled=True`` to Comet with ``online=False``, so its offline experiment records nothing;
here it does.

Example::

    from distengine.loggers import CometLogger
    logger = CometLogger(project="mnist", name="run-1", online=False, offline_directory="comet")
    trainer = de.Trainer(logger=logger, max_epochs=3)
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from distengine.distributed.rank_zero import global_rank, rank_zero_only
from distengine.loggers.artifacts import require
from distengine.loggers.base import Logger, NoOpExperiment
from distengine.loggers.csv_logger import params_to_dict

log = logging.getLogger(__name__)
FRAMEWORK_NAME = "pytorch-lightning"  # what Lightning records as "Created from" (same dashboards)

# Lightning's older keyword -> its current one
_RENAMED = {"experiment_name": "name", "project_name": "project", "save_dir": "offline_directory"}


class CometLogger(Logger):
    """Log to a Comet experiment, created on global rank zero at the first use.

    Args:
        api_key: Comet API key (online; else Comet's config or ``COMET_API_KEY``).
        workspace: Comet workspace. project: Comet project (Comet's default ``Uncategorized``).
        experiment_key: the key of an experiment to continue, or for a new one.
        mode: ``"get_or_create"``, ``"get"`` or ``"create"`` (``comet_ml.start``'s).
        online: ``False`` records offline into an archive under ``offline_directory``;
            ``None`` lets Comet decide (``COMET_START_ONLINE``; online by default).
        prefix: prepended to every metric name (Comet's ``prefix``: ``"{prefix}_{name}"``).
        **kwargs: ``comet_ml.ExperimentConfig`` keywords: ``name``, ``offline_directory``,
            ``tags``, ``log_code``, ...
    """

    def __init__(self, *, api_key: str | None = None, workspace: str | None = None, project: str | None = None,
                 experiment_key: str | None = None, mode: str | None = None, online: bool | None = None,
                 prefix: str | None = None, **kwargs: Any) -> None:
        require("comet_ml", "CometLogger", "comet")
        if mode not in (None, "get_or_create", "get", "create"):
            raise ValueError(f"CometLogger(mode={mode!r}): use 'get_or_create', 'get', 'create' or None")
        for old, new in _RENAMED.items():
            if old in kwargs:
                value = kwargs.pop(old)
                if new == "project":
                    project = value if project is None else project
                else:
                    kwargs.setdefault(new, value)
                log.warning(f"CometLogger: `{old}` is deprecated, use `{new}`")
        if "offline" in kwargs:
            offline = kwargs.pop("offline")
            online = (not offline) if online is None else online
            log.warning("CometLogger: `offline` is deprecated, use `online`")
        if "offline_directory" in kwargs and kwargs["offline_directory"] is not None:
            kwargs["offline_directory"] = os.fspath(kwargs["offline_directory"])
        self._api_key, self._workspace, self._project_name = api_key, workspace, project
        self._experiment_key, self._mode, self._online, self._prefix = experiment_key, mode, online, prefix
        self._kwargs = kwargs
        self._experiment: Any = None
        # Comet's own automatic logging (framework patching, system metrics) stays off, as in Lightning
        os.environ["COMET_DISABLE_AUTO_LOGGING"] = "1"

    @property
    def experiment(self) -> Any:
        """The Comet experiment (started on first use), or a do-nothing stand-in on non-zero ranks."""
        if self._experiment is not None:
            return self._experiment
        if global_rank() != 0:
            return NoOpExperiment()
        import comet_ml

        config = comet_ml.ExperimentConfig(**self._kwargs)
        experiment = comet_ml.start(api_key=self._api_key, workspace=self._workspace, project=self._project_name,
                                    experiment_key=self._experiment_key, mode=self._mode, online=self._online,
                                    experiment_config=config)
        if experiment is None:
            raise RuntimeError("CometLogger: comet_ml.start returned no experiment; check the api_key, "
                               "workspace and experiment_key (or pass online=False)")
        self._experiment = experiment
        self._experiment_key = experiment.get_key()
        self._project_name = experiment.project_name
        experiment.log_other("Created from", FRAMEWORK_NAME)
        return experiment

    @property
    def name(self) -> str | None:  # type: ignore[override]
        """The project name."""
        return self._project_name

    @property
    def version(self) -> str | None:
        """The experiment key (starts the experiment on global rank zero)."""
        if self._experiment is None and global_rank() == 0:
            _ = self.experiment
        return self._experiment.get_key() if self._experiment is not None else self._experiment_key

    @property
    def save_dir(self) -> str | None:
        """``offline_directory`` (where an offline experiment's archive goes)."""
        if self._experiment is not None:
            return getattr(self._experiment, "offline_directory", None) or self._kwargs.get("offline_directory")
        return self._kwargs.get("offline_directory")

    @property
    def log_dir(self) -> str | None:
        return self.save_dir

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Log ``params`` as Comet parameters (nested dicts flattened as ``outer|inner``)."""
        self.experiment.log_parameters(params_to_dict(params), nested_support=True)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """One ``log_metrics`` call at ``step``; an ``epoch`` value becomes Comet's epoch."""
        values = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        epoch = values.pop("epoch", None)
        self.experiment.log_metrics(values, step=step, epoch=None if epoch is None else int(epoch),
                                    prefix=self._prefix)

    def log_graph(self, model: Any, input_array: Any = None) -> None:
        if self._experiment is not None:
            self._experiment.set_model_graph(model)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush what was logged; the experiment stays open for later writes (as in Lightning).
        An offline experiment writes its archive when it ends (``experiment.end()`` or at exit)."""
        if self._experiment is not None:
            self._experiment.flush()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_experiment"] = None  # a process it is sent to starts (or continues) its own
        return state
