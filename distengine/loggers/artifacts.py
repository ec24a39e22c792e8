"""What the tracking-service loggers (MLflow, Weights & Biases) share.

* :func:`require` — the one-line error when the optional package is missing;
* :func:`flatten_params` — nested hyperparameters as one flat ``{"a/b": value}`` table;
* :class:`CheckpointUploads` — which ``ModelCheckpoint`` files to upload for ``log_model``,
  and when (Lightning's rule: ``"all"`` each file once it is saved; ``True`` the files kept at
  the end, or each one as it is saved when ``save_top_k == -1``);
* :func:`checkpoint_notifier` — how ``ModelCheckpoint`` tells the loggers a file is on disk.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def require(package: str, who: str, extra: str) -> None:
    """Raise a one-line ImportError naming the extra when ``package`` is not installed.

    Only looks the package up (``importlib.util.find_spec``): nothing is imported, so a
    logger built on every rank costs nothing where it never writes.
    """
    if importlib.util.find_spec(package) is None:
        raise ImportError(f"{who} needs {package}: pip install 'distengine[{extra}]'")


def flatten_params(params: Any, delimiter: str = "/") -> dict[str, Any]:
    """``{"opt": {"lr": 0.1}, "layers": [{"w": 8}]}`` -> ``{"opt/lr": 0.1, "layers/0/w": 8}``.

    Accepts a mapping or an ``argparse.Namespace``; nested mappings, namespaces, dataclass
    instances and lists of mappings are opened up, any other value is kept as it is.
    """
    if isinstance(params, argparse.Namespace):
        params = vars(params)
    if not isinstance(params, Mapping):
        raise TypeError(f"hyperparameters must be a dict or an argparse.Namespace, got {type(params).__name__}")
    out: dict[str, Any] = {}

    def visit(value: Any, key: str) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        elif isinstance(value, argparse.Namespace):
            value = vars(value)
        if isinstance(value, Mapping) and (value or not key):
            for k, v in value.items():
                visit(v, f"{key}{delimiter}{k}" if key else str(k))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, v in enumerate(value):
                visit(v, f"{key}{delimiter}{i}")
        else:
            out[key] = value

    visit(params, "")
    return out


def _score(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.item() if hasattr(value, "item") else value)


class CheckpointUploads:
    """Decides which checkpoint files a logger uploads, and remembers what it uploaded.

    A file is uploaded again when it changed on disk since (a name reused for a newer
    checkpoint). ``section`` names the callback settings in the metadata, as Lightning's loggers
    do (``"Checkpoint"`` for MLflow, the class name for W&B).
    """

    SETTINGS = ("monitor", "mode", "save_last", "save_top_k", "save_weights_only",
                "every_n_train_steps", "every_n_epochs")

    def __init__(self, log_model: Any, who: str, section: str | None = None) -> None:
        if not (log_model is True or log_model is False or log_model == "all"):
            raise ValueError(f"{who}(log_model={log_model!r}): use False, True (the kept checkpoints "
                             "at the end) or 'all' (every checkpoint when it is saved)")
        self.log_model = log_model
        self.section = section
        self._uploaded: dict[str, float] = {}  # path -> mtime when uploaded
        self._pending: dict[int, Any] = {}  # log_model=True: callbacks to look at in finalize

    def after_save(self, callback: Any) -> list[tuple[str, dict[str, Any], list[str]]]:
        """The files to upload now that ``callback`` saved one (empty with ``log_model=True``,
        which uploads at the end, unless every checkpoint is kept anyway)."""
        if self.log_model == "all" or (self.log_model is True and getattr(callback, "save_top_k", 1) == -1):
            return self._scan(callback)
        if self.log_model is True:
            self._pending[id(callback)] = callback
        return []

    def at_end(self) -> list[tuple[str, dict[str, Any], list[str]]]:
        """The files still to upload when the run ends (``log_model=True``)."""
        files = [f for cb in self._pending.values() for f in self._scan(cb)]
        self._pending.clear()
        return files

    def _scan(self, cb: Any) -> list[tuple[str, dict[str, Any], list[str]]]:
        scores: dict[str, Any] = {}
        if getattr(cb, "last_model_path", ""):
            scores[cb.last_model_path] = getattr(cb, "current_score", None)
        if getattr(cb, "best_model_path", ""):
            scores[cb.best_model_path] = getattr(cb, "best_model_score", None)
        scores.update(getattr(cb, "best_k_models", {}) or {})
        found = []
        for path, score in scores.items():
            try:
                mtime = os.stat(path).st_mtime
            except OSError:  # deleted since (an evicted top-k file) or never written
                continue
            if self._uploaded.get(path, -1.0) < mtime:
                found.append((mtime, path, score))
        files = []
        for mtime, path, score in sorted(found):  # oldest first: the newest ends up "latest"
            self._uploaded[path] = mtime
            aliases = ["latest", "best"] if path == getattr(cb, "best_model_path", "") else ["latest"]
            files.append((path, self._metadata(cb, path, score), aliases))
        return files

    def _metadata(self, cb: Any, path: str, score: Any) -> dict[str, Any]:
        settings = {k: getattr(cb, k) for k in self.SETTINGS if hasattr(cb, k)}
        return {"score": _score(score), "original_filename": os.path.basename(path),
                self.section or type(cb).__name__: settings}


def checkpoint_notifier(trainer: Any, callback: Any) -> Callable[[], None] | None:
    """What ``ModelCheckpoint`` calls once a file is durable: each logger's
    ``after_save_checkpoint`` (global rank zero only; ``None`` elsewhere or without loggers).

    The loggers get a copy of the callback taken now, when the file is decided, so a write
    that finishes in the background (``async_save=True``) reports the files of its own save
    even if training has moved on to the next one. A logger that fails here (an upload
    error) is reported as a warning: raised on rank zero alone, it would leave the other
    ranks waiting in their next collective until the job's timeout.
    """
    if not getattr(trainer, "is_global_zero", True):
        return None
    loggers = [lg for lg in getattr(trainer, "loggers", None) or [] if hasattr(lg, "after_save_checkpoint")]
    if not loggers:
        return None
    snapshot = copy.copy(callback)
    snapshot.best_k_models = dict(callback.best_k_models)

    def notify() -> None:
        for lg in loggers:
            try:
                lg.after_save_checkpoint(snapshot)
            except Exception as exc:  # noqa: BLE001 - see the docstring
                warnings.warn(f"{type(lg).__name__}.after_save_checkpoint failed: {type(exc).__name__}: "
                              f"{exc}", RuntimeWarning, stacklevel=2)

    return notify
