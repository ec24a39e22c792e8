"""TensorBoard logger: scalars, the hparams tab, ``hparams.yaml`` and (optionally) the graph.

The writer (``torch.utils.tensorboard.SummaryWriter``) is imported and created on the
first write, on global rank zero only, so importing distengine and constructing the
logger on every rank costs nothing and touches no file.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

from distengine.distributed.rank_zero import global_rank, rank_zero_only
from distengine.loggers.base import NoOpExperiment
from distengine.loggers.csv_logger import (
    VersionedLogger,
    params_to_dict,
    resolve_layout,
    to_float,
    to_yaml,
    version_dir_name,
    write_text_atomic,
)

#: What TensorBoard's hparams plugin accepts as a value; everything else becomes ``str(v)``.
_HPARAM_TYPES = (bool, int, float, str)


def _flatten(params: Mapping[str, Any], parent: str = "") -> dict[str, Any]:
    """``{"opt": {"lr": 0.1}}`` -> ``{"opt/lr": 0.1}``: the hparams tab has one flat table."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = f"{parent}/{k}" if parent else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _hparam_value(v: Any) -> bool | int | float | str:
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    return v if isinstance(v, _HPARAM_TYPES) else str(v)


class TensorBoardLogger(VersionedLogger):
    """Write TensorBoard event files to ``save_dir/name/version_N[/sub_dir]``.

    ``tensorboard --logdir save_dir/name`` then shows one run per version. ``N`` is the
    next free version number, found by listing the folder when the logger is built (no
    folder is created then). Only global rank zero ever creates files.

    Args:
        save_dir: parent folder of all runs.
        name: experiment folder under ``save_dir`` (``""``/``None``: none).
        version: an int (``version_<int>``), a str (used as the folder name) or ``None``
            (the next free number).
        default_hp_metric: log ``hp_metric = -1`` with the hyperparameters so the hparams
            tab lists the run even before the user logs an ``hp_metric`` of their own.
        log_graph: let :meth:`log_graph` trace the model (off by default: tracing runs
            the model once and not every model can be traced).
        prefix: prepended to every metric name as ``"{prefix}-{name}"``.
        sub_dir: an extra folder under the version folder.

    Example::

        logger = TensorBoardLogger("runs", name="mnist")  # runs/mnist/version_0/
        trainer = de.Trainer(logger=logger)
        # then: tensorboard --logdir runs/mnist
    """

    #: the hyperparameter file's name in the run folder (as Lightning's attribute)
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, save_dir: str | os.PathLike, name: str | None = "lightning_logs",
                 version: int | str | None = None, default_hp_metric: bool = True,
                 log_graph: bool = False, prefix: str = "",
                 sub_dir: str | os.PathLike | None = None) -> None:
        self._save_dir, self._root_dir, self._version = resolve_layout(save_dir, name, version)
        self._version_given, self._continued = version is not None, False
        self._name = name or ""
        self._default_hp_metric = bool(default_hp_metric)
        self._log_graph = bool(log_graph)
        self._prefix = str(prefix)
        self._sub_dir = os.fspath(sub_dir) if sub_dir is not None else None
        self._hparams: dict[str, Any] = {}
        self._writer: Any = None

    # properties ---------------------------------------------------------------------
    @property
    def log_dir(self) -> str:
        """``save_dir/name/version_N[/sub_dir]``: where the event files go (``$VAR`` expanded, as in
        Lightning)."""
        path = os.path.join(self.root_dir, version_dir_name(self.version))
        return os.path.expandvars(os.path.join(path, self._sub_dir) if self._sub_dir else path)

    @property
    def hparams(self) -> dict[str, Any]:
        return dict(self._hparams)

    @property
    def experiment(self) -> Any:
        """The ``SummaryWriter`` (created on first use), or a do-nothing stand-in on
        non-zero ranks so ``logger.experiment.add_image(...)`` is safe everywhere."""
        if self._writer is not None:
            return self._writer
        if global_rank() != 0:
            return NoOpExperiment()
        # Imported here, not at module level: tensorboard and its protobufs take ~0.3 s.
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(self.log_dir, exist_ok=True)
        self._writer = SummaryWriter(log_dir=self.log_dir)
        return self._writer

    def _started(self) -> bool:
        return self._writer is not None

    # writing ------------------------------------------------------------------------
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """One scalar per key at ``step`` (names get ``prefix-`` when a prefix is set; ``None``:
        the writer's own step)."""
        writer = self.experiment
        for key, value in metrics.items():
            tag = f"{self._prefix}-{key}" if self._prefix else key
            if isinstance(value, Mapping):  # {"train": 1.0, "val": 2.0} -> one chart
                writer.add_scalars(tag, {k: to_float(k, v) for k, v in value.items()}, step)
            else:
                writer.add_scalar(tag, to_float(key, value), step)

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: Mapping[str, float] | float | None = None,
                        step: int | None = None) -> None:
        """Record hyperparameters in the hparams tab and in ``hparams.yaml``.

        ``metrics`` names the metrics the hparams tab shows as columns (a number stands for
        ``{"hp_metric": number}``), written at ``step``; by default ``hp_metric = -1`` (see
        ``default_hp_metric``). Log ``hp_metric`` yourself later to fill that column with a real value.
        """
        self._hparams.update(params_to_dict(params))
        writer = self.experiment
        write_text_atomic(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), to_yaml(self._hparams))
        if metrics is None:
            if not self._default_hp_metric or self._continued:  # a resumed run's folder has its hp_metric
                return
            metrics = {"hp_metric": -1}
        elif not isinstance(metrics, Mapping):
            metrics = {"hp_metric": metrics}
        if not metrics:
            return
        from torch.utils.tensorboard.summary import hparams

        flat = {k: _hparam_value(v) for k, v in _flatten(self._hparams).items()}
        metric_dict = {k: to_float(k, v) for k, v in metrics.items()}
        from distengine import torch_private

        self.log_metrics(dict(metrics), step)
        file_writer = torch_private.summary_file_writer(writer)
        # Written into this run's own folder (SummaryWriter.add_hparams would open a new
        # timestamped sub-run, splitting one run in two in the UI).
        for summary in hparams(flat, metric_dict):
            file_writer.add_summary(summary, step)

    @rank_zero_only
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Trace ``model`` on ``input_array`` (default ``model.example_input_array``) and add
        the graph. Does nothing unless the logger was built with ``log_graph=True``."""
        if not self._log_graph:
            return
        if input_array is None:
            input_array = getattr(model, "example_input_array", None)
        if input_array is None:
            warnings.warn("TensorBoardLogger.log_graph: no input_array given and the model has no "
                          "`example_input_array`; the graph is not logged.", stacklevel=2)
            return
        with warnings.catch_warnings():
            # add_graph traces with torch.jit, which warns that it is deprecated; the user
            # cannot act on that, so it is not passed on.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
            from distengine.module import Module

            Module._exporting = True  # the tracer reads every property, self.trainer too
            try:
                self.experiment.add_graph(model, input_array)
            finally:
                Module._exporting = False

    @rank_zero_only
    def save(self) -> None:
        """Flush buffered events to disk."""
        if self._writer is not None:
            self._writer.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush and close the writer; a later write opens a new event file in the same run.

        As Lightning's TensorBoardLogger, the run folder always holds an ``hparams.yaml``:
        ``{}`` when no hyperparameters were logged."""
        yaml_path = os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)
        if not os.path.isfile(yaml_path):
            os.makedirs(self.log_dir, exist_ok=True)
            write_text_atomic(yaml_path, to_yaml(self._hparams))
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    # pickling -----------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        # A SummaryWriter holds a thread and an open file; the copy opens its own lazily.
        state = self.__dict__.copy()
        state["_writer"] = None
        return state
