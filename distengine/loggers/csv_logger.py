"""A dependency-free logger: ``metrics.csv`` plus ``hparams.yaml`` per run.

Layout (the same as :class:`~distengine.loggers.TensorBoardLogger`)::

    save_dir/name/version_0/metrics.csv
    save_dir/name/version_0/hparams.yaml

Also home of the small helpers both file loggers share: version resolution and a
hand-written YAML emitter (PyYAML is not a dependency of distengine).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from distengine.distributed.rank_zero import global_rank, rank_zero_only
from distengine.loggers.base import Logger, NoOpExperiment
from distengine.utilities.exceptions import ConfigError

# --------------------------------------------------------------------------- versions

_VERSION_DIR = re.compile(r"^version_(\d+)$")


def next_version(root_dir: str) -> int:
    """The next free ``version_N`` number under ``root_dir`` (0 when it does not exist).

    Read-only: it lists the folder and never creates it, so every rank may call it.
    """
    try:
        names = os.listdir(root_dir)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    found = [int(m.group(1)) for n in names
             if (m := _VERSION_DIR.match(n)) and os.path.isdir(os.path.join(root_dir, n))]
    return max(found) + 1 if found else 0


def resolve_layout(save_dir: str | os.PathLike, name: str | None,
                   version: int | str | None) -> tuple[str, str, int | str]:
    """Validate the logger arguments and return ``(save_dir, root_dir, version)``.

    The version is decided here, in the constructor, by listing the folder (no writes).
    Every rank constructs its loggers before the process group's rendezvous and rank zero
    writes only after it, so all ranks agree on the version without a collective.
    """
    if not isinstance(save_dir, (str, os.PathLike)) or not os.fspath(save_dir):
        raise ValueError(f"save_dir must be a non-empty path, got {save_dir!r}")
    if isinstance(version, bool) or not isinstance(version, (int, str, type(None))):
        raise TypeError(f"version must be an int, a str or None, got {version!r}")
    if isinstance(version, int) and version < 0:
        raise ValueError(f"version must be >= 0, got {version}")
    # "~/logs": the user's home, where Lightning's loggers write too (their file system layer expands it)
    save_dir = os.path.expanduser(os.fspath(save_dir))
    root_dir = os.path.join(save_dir, name) if name else save_dir
    if version is None:
        version = next_version(root_dir)
    return save_dir, root_dir, version


def version_dir_name(version: int | str) -> str:
    """``version_3`` for an int, the string itself for a str (Lightning's convention)."""
    return version if isinstance(version, str) else f"version_{version}"


def params_to_dict(params: Any) -> dict[str, Any]:
    """Accept a mapping or an ``argparse.Namespace``; reject anything else clearly."""
    import argparse  # here: argparse is not needed on the import path

    if isinstance(params, argparse.Namespace):
        return dict(vars(params))
    if isinstance(params, Mapping):
        return dict(params)
    raise TypeError(f"hyperparameters must be a dict or an argparse.Namespace, got {type(params).__name__}")


def to_float(key: str, value: Any) -> float:
    """A metric value as a Python float (the Trainer already passes floats; users may not)."""
    if hasattr(value, "item"):  # 0-d tensors and numpy scalars
        value = value.item()
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(f"metric {key!r} must be a number or a 0-d tensor, got {type(value).__name__}")


# --------------------------------------------------------------------------- yaml

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*( [A-Za-z0-9_./-]+)*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _yaml_str(s: str) -> str:
    # Plain scalars only when no YAML reader could take them for another type; otherwise a
    # JSON string, which is also a valid YAML double-quoted scalar.
    if _PLAIN.match(s) and s.lower() not in _RESERVED:
        return s
    return json.dumps(s)


def _yaml_scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return ".nan"
        if math.isinf(v):
            return ".inf" if v > 0 else "-.inf"
        text = repr(v)
        # YAML 1.1 readers (PyYAML) need a '.' in the mantissa: 1e-05 would load as a str.
        if "e" in text and "." not in text:
            mantissa, exp = text.split("e")
            text = f"{mantissa}.0e{exp if exp[0] in '+-' else '+' + exp}"
        return text
    if isinstance(v, str):
        return _yaml_str(v)
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # 0-d tensor / numpy scalar
        return _yaml_scalar(v.item())
    return _yaml_str(repr(v))


def _yaml_lines(obj: Any, indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            key = _yaml_str(str(k))
            if isinstance(v, (Mapping, list, tuple)) and len(v) > 0:
                lines.append(f"{pad}{key}:")
                lines.extend(_yaml_lines(v, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_yaml_inline(v)}")
    else:  # list / tuple
        for v in obj:
            if isinstance(v, (Mapping, list, tuple)) and len(v) > 0:
                lines.append(f"{pad}-")
                lines.extend(_yaml_lines(v, indent + 1))
            else:
                lines.append(f"{pad}- {_yaml_inline(v)}")
    return lines


def _yaml_inline(v: Any) -> str:
    if isinstance(v, Mapping):
        return "{}"
    if isinstance(v, (list, tuple)):
        return "[]"
    return _yaml_scalar(v)


def to_yaml(params: Mapping[str, Any]) -> str:
    """Render simple hyperparameters (numbers, strings, bools, None, nested dicts and lists)
    as block YAML. Anything else is written as its ``repr`` in quotes.

    Example::

        >>> print(to_yaml({"lr": 1e-3, "layers": [64, 64], "name": "mlp"}), end="")
        lr: 0.001
        layers:
          - 64
          - 64
        name: mlp
    """
    return "\n".join(_yaml_lines(params, 0)) + "\n" if params else "{}\n"


def write_text_atomic(path: str, text: str) -> None:
    """Write via a temporary file and ``os.replace`` so readers never see half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- CSV logger


class VersionedLogger(Logger):
    """Shared ``save_dir/name/version_N`` properties of the file-writing loggers."""

    _name: str
    _version: int | str
    _save_dir: str
    _root_dir: str

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int | str:
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        """``save_dir/name``: the folder that holds the ``version_N`` folders (``--logdir``). Read
        through ``save_dir``/``name``, so a subclass that overrides those properties moves it."""
        return os.path.join(self.save_dir, self.name) if self.name else self.save_dir

    def continue_version(self, version: int | str) -> bool:
        """Write into ``version``'s folder instead: a resumed run's own (``checkpoint/run_folder.py``).
        Refused (False) when the user gave a version or something was written already."""
        if not self.can_continue_version():
            return False
        self._version, self._continued = version, True
        return True

    def can_continue_version(self) -> bool:
        """No version was given and nothing was written yet (only global rank zero ever writes)."""
        return not getattr(self, "_version_given", False) and not self._started()

    def _started(self) -> bool:
        return False


class CSVLogger(VersionedLogger):
    """Log metrics to ``save_dir/name/version_N/metrics.csv`` and hyperparameters to
    ``hparams.yaml`` next to it.

    Every ``log_metrics`` call is one row: a ``step`` column, then one column per metric
    key in the order keys first appeared (so epoch metrics, which the Trainer logs in their
    own call, get their own rows). A key seen for the first time rewrites the file with the
    wider header; otherwise the row is appended, so the file on disk is always complete.
    Nothing is created until the first write, and only on global rank zero. ``prefix``
    renames every metric to ``"{prefix}-{name}"``.

    Example::

        logger = CSVLogger("runs", name="mnist")      # runs/mnist/version_0/
        trainer = de.Trainer(logger=logger, max_epochs=3)
    """

    def __init__(self, save_dir: str | os.PathLike, name: str | None = "lightning_logs",
                 version: int | str | None = None, prefix: str = "", flush_logs_every_n_steps: int = 100) -> None:
        # flush_logs_every_n_steps: Lightning buffers rows and writes them every N steps; here
        # each row is on disk when log_metrics returns, so the value is accepted and has no effect
        if isinstance(save_dir, str) and "://" in save_dir:
            if not save_dir.startswith("file://"):  # it would become a local folder named "memory:"/"s3:"
                raise ConfigError(f"CSVLogger(save_dir={save_dir!r}): a remote URL; CSVLogger writes local files, "
                                  "so give a local or mounted folder (TensorBoardLogger takes s3:// and gs://)")
            save_dir = save_dir[len("file://"):]
        self._save_dir, self._root_dir, self._version = resolve_layout(save_dir, name, version)
        self._version_given, self._continued = version is not None, False
        self._name = name or ""
        self._prefix = str(prefix)
        self._columns: list[str] | None = None  # None until the existing file was read
        self._hparams: dict[str, Any] = {}
        self._experiment: ExperimentWriter | None = None
        self._rows = 0  # rows written by this logger: the step of a row logged without one

    # properties ---------------------------------------------------------------------
    @property
    def log_dir(self) -> str:
        return os.path.join(self.root_dir, version_dir_name(self.version))

    @property
    def metrics_file(self) -> str:
        return os.path.join(self.log_dir, "metrics.csv")

    def _started(self) -> bool:
        return self._columns is not None

    @property
    def experiment(self) -> Any:
        """Lightning's ``ExperimentWriter`` for this logger (``metrics``, ``metrics_file_path``,
        ``log_metrics``, ``log_hparams``, ``save``), created on first use with the log folder; a
        do-nothing stand-in on non-zero ranks, so ``logger.experiment`` is safe everywhere."""
        if self._experiment is not None:
            return self._experiment
        if global_rank() != 0:
            return NoOpExperiment()
        os.makedirs(self.log_dir, exist_ok=True)
        self._experiment = ExperimentWriter(self)
        return self._experiment

    @property
    def hparams(self) -> dict[str, Any]:
        return dict(self._hparams)

    # writing ------------------------------------------------------------------------
    @rank_zero_only
    def log_hyperparams(self, params: Any = None) -> None:
        """Merge ``params`` into the stored hyperparameters and rewrite ``hparams.yaml``
        (with no params: written as it stands, ``{}`` at first, so the run folder exists)."""
        self._hparams.update(params_to_dict(params if params is not None else {}))
        os.makedirs(self.log_dir, exist_ok=True)
        write_text_atomic(os.path.join(self.log_dir, "hparams.yaml"), to_yaml(self._hparams))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Write one row. ``step`` fills the ``step`` column (a ``"step"`` metric is ignored);
        without one, the number of rows this logger wrote before, as in Lightning."""
        row = {(f"{self._prefix}-{k}" if self._prefix else k): to_float(k, v)
               for k, v in metrics.items() if k != "step"}
        if not row:
            return
        if self._columns is None:
            self._columns = self._read_header()
        new = [k for k in row if k not in self._columns]
        if new:
            self._columns.extend(new)
            self._rewrite_with_header()
        with open(self.metrics_file, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self._columns).writerow({"step": self._rows if step is None else int(step),
                                                                  **row})
        self._rows += 1

    def _read_header(self) -> list[str]:
        # Resuming into an existing version folder appends to its metrics.csv.
        os.makedirs(self.log_dir, exist_ok=True)
        try:
            with open(self.metrics_file, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
        except FileNotFoundError:
            header = None
        if header and header[0] == "step":
            return header
        with open(self.metrics_file, "w", newline="", encoding="utf-8") as f:
            f.write("")  # start (or restart, if it was not ours) an empty file
        return ["step"]

    def _rewrite_with_header(self) -> None:
        assert self._columns is not None
        rows: list[dict[str, str]] = []
        if os.path.exists(self.metrics_file):
            with open(self.metrics_file, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        tmp = f"{self.metrics_file}.tmp{os.getpid()}"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_file)

    def save(self) -> None:
        """Rows are written as they arrive; nothing is buffered."""

    def finalize(self, status: str) -> None:
        """Nothing to flush or close."""


class ExperimentWriter:
    """``CSVLogger.experiment``, as Lightning's: ``log_metrics`` keeps rows in ``metrics`` until
    ``save`` writes them to ``metrics_file_path`` (through the logger, so the file keeps one
    header); ``log_hparams`` merges into ``hparams`` and rewrites ``hparams.yaml``. The rows the
    Trainer logs do not pass through ``metrics``: the logger writes each one at once.

    Example::

        writer = trainer.logger.experiment
        writer.log_metrics({"extra": 1.0}, step=10)
        writer.save()
    """

    NAME_METRICS_FILE = "metrics.csv"
    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(self, logger: CSVLogger) -> None:
        self._logger = logger
        self.metrics: list[dict[str, float]] = []

    @property
    def log_dir(self) -> str:
        return self._logger.log_dir

    @property
    def metrics_file_path(self) -> str:
        return self._logger.metrics_file

    @property
    def hparams(self) -> dict[str, Any]:
        return self._logger.hparams

    def log_metrics(self, metrics_dict: Mapping[str, Any], step: int | None = None) -> None:
        """Keep one row (``step`` defaults to the number of rows kept so far)."""
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics_dict.items()}
        row["step"] = len(self.metrics) if step is None else step
        self.metrics.append(row)

    def log_hparams(self, params: Mapping[str, Any]) -> None:
        self._logger.log_hyperparams(dict(params))

    def save(self) -> None:
        """Write the kept rows to ``metrics.csv`` and forget them."""
        rows, self.metrics = self.metrics, []
        for row in rows:
            self._logger.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])
