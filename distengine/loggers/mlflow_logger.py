"""MLflow logger: parameters, metric histories, checkpoints as artifacts, the run's status.

Needs ``mlflow`` (``pip install 'distengine[mlflow]'`` installs ``mlflow-skinny``, MLflow's
official client-only distribution; the full ``mlflow`` works too). It is imported on global
rank zero at the first write only: building the logger on every rank imports nothing.

The local file store. Lightning's default, ``tracking_uri="file:./mlruns"``, is MLflow's file
store, which MLflow 3.x keeps "in maintenance mode": it raises unless the environment variable
``MLFLOW_ALLOW_FILE_STORE`` is true. A user who asks this logger for a file store (a ``file:``
URI, a plain path, or no URI at all) has chosen it, so the logger sets
``MLFLOW_ALLOW_FILE_STORE=true`` in its own process when it opens the store, unless the
variable is already set (an explicit ``false`` is left alone, and MLflow then refuses with its
own message). A database URI (``sqlite:///mlflow.db``) needs SQLAlchemy, which
``mlflow-skinny`` leaves out: install the full ``mlflow`` for it.
"""
from __future__ import annotations

import importlib.util
import os
import re
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Mapping
from typing import Any

from distengine.distributed.rank_zero import global_rank, rank_zero_only
from distengine.loggers.artifacts import CheckpointUploads, flatten_params, require
from distengine.loggers.base import Logger, NoOpExperiment
from distengine.loggers.csv_logger import to_yaml

#: MLflow's status for each way a fit ends (the Trainer passes success/failed/interrupted).
_STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED",
           "interrupted": "KILLED", "killed": "KILLED"}
_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
#: the characters Lightning keeps in a metric name (MLflow rejects most others)
_BAD_METRIC_CHARS = re.compile(r"[^a-zA-Z0-9_/. -]+")


def _run_status(status: str) -> str:
    mapped = _STATUS.get(str(status).lower(), str(status).upper())
    if mapped not in ("FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED"):
        raise ValueError(f"MLFlowLogger.finalize({status!r}): use 'success', 'failed' or 'interrupted'")
    return mapped


def _is_file_store(uri: str) -> bool:
    scheme = urllib.parse.urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")  # C:\... on Windows


class MLFlowLogger(Logger):
    """Log to an MLflow tracking store: one MLflow run per logger.

    Args:
        experiment_name: the experiment, created when missing.
        run_name: the run's name (MLflow picks one when ``None``).
        tracking_uri: where runs go; default ``$MLFLOW_TRACKING_URI``, else ``file:<save_dir>``.
        tags: tags of the new run (MLflow adds its own: user, source, ...).
        save_dir: the file store's folder when no ``tracking_uri`` is given.
        log_model: upload ``ModelCheckpoint`` files as run artifacts: ``"all"`` each one when it
            is saved; ``True`` the kept ones (best, top-k, last) when the fit ends, or each one
            when saved if ``save_top_k == -1``; ``False`` none.
        prefix: prepended to every metric name as ``"{prefix}-{name}"``.
        artifact_location: artifact root of a new experiment (the store's default when ``None``).
        run_id: log into this existing run (for example to resume) instead of a new one.

    Metrics go in batches (``log_batch``) with the Trainer's step index, so
    ``MlflowClient().get_metric_history(run_id, "train_loss")`` has the same steps and values
    as TensorBoard and ``metrics.csv``. Hyperparameters become flat parameters (``opt/lr``);
    values are written as text, cut to MLflow's length limit with one warning. When the fit
    ends the run is marked ``FINISHED``, ``FAILED`` or ``KILLED`` (a stop on a signal).

    With a file store, checkpoints default to ``<save_dir>/<experiment id>/<run id>/checkpoints``
    (Lightning's folder for this logger) and ``trainer.log_dir`` is ``save_dir``. MLflow 3.x
    refuses a file store unless ``MLFLOW_ALLOW_FILE_STORE=true``: for a ``file:`` URI or a plain
    path the logger sets it in its process when it opens the store, unless it is already set
    (see the module docstring).

    Example::

        from distengine.loggers import MLFlowLogger
        logger = MLFlowLogger(experiment_name="mnist", tracking_uri="file:./mlruns", log_model=True)
        trainer = de.Trainer(logger=logger, max_epochs=3)
        # then: mlflow ui --backend-store-uri ./mlruns
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(self, experiment_name: str = "lightning_logs", run_name: str | None = None,
                 tracking_uri: str | None = None, tags: Mapping[str, Any] | None = None,
                 save_dir: str | os.PathLike | None = "./mlruns", log_model: bool | str = False,
                 prefix: str = "", artifact_location: str | None = None,
                 run_id: str | None = None) -> None:
        require("mlflow", "MLFlowLogger", "mlflow")
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not tracking_uri:
            if save_dir is None:
                raise ValueError("MLFlowLogger: give a tracking_uri, or a save_dir for a local file store")
            tracking_uri = f"file:{os.fspath(save_dir)}"
        tracking_uri = os.fspath(tracking_uri)
        scheme = urllib.parse.urlparse(tracking_uri).scheme.split("+")[0]
        if scheme in _SQL_SCHEMES and importlib.util.find_spec("sqlalchemy") is None:
            raise ImportError(f"MLFlowLogger(tracking_uri={tracking_uri!r}) needs MLflow's SQL store, "
                              "which mlflow-skinny leaves out: pip install mlflow")
        self._experiment_name = experiment_name
        self._run_name = run_name
        self._tracking_uri = tracking_uri
        self.tags = dict(tags) if tags else {}
        self._prefix = str(prefix)
        self._artifact_location = artifact_location
        self._run_id = run_id
        self._experiment_id: str | None = None
        self._uploads = CheckpointUploads(log_model, "MLFlowLogger", section="Checkpoint")
        self._params: dict[str, str] = {}  # what this run already holds
        self._client: Any = None
        self._renamed: set[str] = set()

    # the run ---------------------------------------------------------------------------
    @property
    def experiment(self) -> Any:
        """The ``mlflow.tracking.MlflowClient`` (the experiment and the run are created on
        first use), or a do-nothing stand-in on non-zero ranks."""
        if self._client is not None:
            return self._client
        if global_rank() != 0:
            return NoOpExperiment()
        if _is_file_store(self._tracking_uri):
            # the user asked for the file store; MLflow 3.x refuses it without this opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self._tracking_uri)
        if self._run_id is not None:
            run = client.get_run(self._run_id)
            self._experiment_id = run.info.experiment_id
            self._params = dict(run.data.params)
            if run.info.status != "RUNNING":
                client.update_run(self._run_id, status="RUNNING")
        else:
            self._experiment_id = self._find_or_create_experiment(client)
            self._run_id = self._create_run(client)
        self._client = client
        return client

    def _find_or_create_experiment(self, client: Any) -> str:
        found = client.get_experiment_by_name(self._experiment_name)
        if found is not None and found.lifecycle_stage == "active":
            return found.experiment_id
        if found is not None:
            raise ValueError(f"MLFlowLogger: experiment {self._experiment_name!r} is deleted in "
                             f"{self._tracking_uri}; restore it or choose another experiment_name")
        return client.create_experiment(self._experiment_name, artifact_location=self._artifact_location)

    def _create_run(self, client: Any) -> str:
        from mlflow.tracking.context.registry import resolve_tags
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        tags = {k: str(v) for k, v in self.tags.items()}
        if self._run_name is not None:
            tags[MLFLOW_RUN_NAME] = self._run_name  # run_name wins over a tag of the same name
        run = client.create_run(self._experiment_id, tags=resolve_tags(tags))
        return run.info.run_id

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (creates the run on global rank zero; ``None`` elsewhere)."""
        _ = self.experiment
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        _ = self.experiment
        return self._experiment_id

    @property
    def name(self) -> str | None:  # type: ignore[override]
        """The experiment id (as Lightning: checkpoints go under ``save_dir/<id>/<run id>``)."""
        return self.experiment_id

    @property
    def version(self) -> str | None:
        """The run id."""
        return self.run_id

    @property
    def save_dir(self) -> str | None:
        """The file store's folder for a ``file:`` tracking URI, else ``None``."""
        parsed = urllib.parse.urlparse(self._tracking_uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            return None
        return urllib.parse.unquote(parsed.path)

    @property
    def log_dir(self) -> str | None:
        """``save_dir``: what ``trainer.log_dir`` is with this logger first, as in Lightning."""
        return self.save_dir

    # writing ---------------------------------------------------------------------------
    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Log flattened hyperparameters (``{"opt": {"lr": 1}}`` -> ``opt/lr``) as run params.

        A value longer than MLflow's limit is cut to it (one warning names the keys); a key
        longer than MLflow's key limit, or a value that differs from the one the run already
        holds (MLflow cannot change a parameter), is skipped with a warning.
        """
        from mlflow.entities import Param
        from mlflow.utils.validation import (
            MAX_ENTITY_KEY_LENGTH,
            MAX_PARAM_VAL_LENGTH,
            MAX_PARAMS_TAGS_PER_BATCH,
        )

        client = self.experiment
        cut, skipped, batch = [], [], []
        for key, value in flatten_params(params).items():
            text = str(value)
            if len(text) > MAX_PARAM_VAL_LENGTH:
                text = text[:MAX_PARAM_VAL_LENGTH]
                cut.append(key)
            if len(key) > MAX_ENTITY_KEY_LENGTH or self._params.get(key, text) != text:
                skipped.append(key)
                continue
            if key not in self._params:
                self._params[key] = text
                batch.append(Param(key, text))
        if cut:
            warnings.warn(f"MLFlowLogger: parameter values cut to MLflow's {MAX_PARAM_VAL_LENGTH} "
                          f"characters: {cut}", UserWarning, stacklevel=2)
        if skipped:
            warnings.warn(f"MLFlowLogger: parameters not logged (key longer than {MAX_ENTITY_KEY_LENGTH} "
                          f"characters, or a value the run already holds differently): {skipped}",
                          UserWarning, stacklevel=2)
        for i in range(0, len(batch), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(self._run_id, params=batch[i:i + MAX_PARAMS_TAGS_PER_BATCH])

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log one value per metric at ``step`` in one ``log_batch`` call."""
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        client = self.experiment
        now = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            key = f"{self._prefix}{self.LOGGER_JOIN_CHAR}{key}" if self._prefix else str(key)
            if hasattr(value, "item"):
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                warnings.warn(f"MLFlowLogger: metric {key!r} is not a number ({type(value).__name__}); "
                              "not logged", UserWarning, stacklevel=2)
                continue
            clean = _BAD_METRIC_CHARS.sub("", key)
            if clean != key and key not in self._renamed:
                self._renamed.add(key)
                warnings.warn(f"MLFlowLogger: MLflow metric names allow only letters, digits and "
                              f"'_/. -'; {key!r} is logged as {clean!r}", UserWarning, stacklevel=2)
            batch.append(Metric(clean, float(value), now, int(step or 0)))
        for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
            client.log_batch(self._run_id, metrics=batch[i:i + MAX_METRICS_PER_BATCH])

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Upload the checkpoint just saved when ``log_model`` asks for it now (rank zero)."""
        for path, metadata, aliases in self._uploads.after_save(checkpoint_callback):
            self._upload(path, metadata, aliases)

    def _upload(self, path: str, metadata: dict[str, Any], aliases: list[str]) -> None:
        # Lightning's layout: <file stem>/<file>, metadata.yaml and aliases.txt next to it
        client, folder = self.experiment, os.path.splitext(os.path.basename(path))[0]
        client.log_artifact(self._run_id, path, folder)
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "metadata.yaml"), "w", encoding="utf-8") as f:
                f.write(to_yaml(metadata))
            with open(os.path.join(tmp, "aliases.txt"), "w", encoding="utf-8") as f:
                f.write(str(aliases))
            client.log_artifacts(self._run_id, tmp, folder)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Upload the checkpoints ``log_model=True`` kept for the end, then set the run's status
        (``success`` -> FINISHED, ``failed`` -> FAILED, ``interrupted`` -> KILLED)."""
        if self._client is None:
            return  # nothing was ever logged: no run to close
        for path, metadata, aliases in self._uploads.at_end():
            self._upload(path, metadata, aliases)
        self._client.set_terminated(self._run_id, _run_status(status))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None  # a copy reopens the same run (run_id is kept) on first use
        return state
