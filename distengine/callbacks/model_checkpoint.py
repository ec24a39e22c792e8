"""ModelCheckpoint: save checkpoints during ``fit``, keep the best k, point ``last.json`` at the newest.

Saving is a collective: every rank calls ``trainer.save_checkpoint`` at the same point and rank
zero writes. Which file to write and which older files to delete is decided once, on rank zero,
and broadcast, so the ranks never disagree (their metrics may differ in the last bits, or a
time-based trigger may fire on one rank a step earlier than on another).

Example::

    ckpt = ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=2, save_last=True,
                           filename="{epoch}-{step}-{val_loss:.3f}")
    trainer = Trainer(max_epochs=10, callbacks=[ckpt], default_root_dir="runs/a")
    trainer.fit(model, train_dl, val_dl)           # runs/a/checkpoints/epoch=3-step=80-...
    trainer.fit(model, train_dl, val_dl, ckpt_path="last")   # after a crash: resume
"""
from __future__ import annotations

import datetime
import math
import os
import warnings
from typing import Any, Literal, get_type_hints

import torch

from distengine.callbacks.checkpoint_names import (
    STARTING_VERSION,
    _score,
    _to_float,
    format_checkpoint_name,
    tidy_checkpoint_folders,
    versioned_path,
)
from distengine.callbacks.model_checkpoint_args import checked_arguments
from distengine.callbacks.model_checkpoint_write import CheckpointWrites
from distengine.callbacks.time_checks import TimeChecks
from distengine.checkpoint.async_writer import AsyncCheckpointWriter
from distengine.checkpoint.io import CKPT_SUFFIX
from distengine.utilities.exceptions import ConfigError

__all__ = ["ModelCheckpoint", "format_checkpoint_name"]

class ModelCheckpoint(CheckpointWrites):
    """Save checkpoints when a trigger fires; keep the ``save_top_k`` best by ``monitor``.

    Args:
        dirpath: folder for the files; default, as in Lightning, the first logger's run folder
            ``<save_dir>/<name>/<version>/checkpoints`` (``lightning_logs/version_0/checkpoints``),
            or ``<trainer.default_root_dir>/checkpoints`` without a logger.
            ``fit(ckpt_path="last")`` also looks in the logger's earlier versions.
        filename: template such as ``"{epoch}-{step}-{val_loss:.3f}"``; default ``"{epoch}-{step}"``.
        monitor: metric in ``trainer.callback_metrics`` to rank checkpoints by; None keeps the
            ``save_top_k`` most recent.
        mode: ``"min"`` or ``"max"``: which values of ``monitor`` are better.
        save_top_k: how many to keep; -1 keeps all, 0 keeps none (see ``save_last``).
        save_last: also keep the newest state as ``<dirpath>/last.ckpt``: a hard link to the newest
            checkpoint when it is a top-k one, else a file of its own written there (as in Lightning,
            which also writes it at the end of a run in which no trigger fired); ``"link"``: a
            relative symbolic link to the newest top-k file instead.
        enable_version_counter: a name already on disk that this run did not write (another run's
            ``epoch=0.ckpt`` or ``last.ckpt`` in the same folder) gets ``-v1``, ``-v2``... instead
            of being overwritten; ``False`` overwrites, as in Lightning.
        every_n_train_steps / every_n_epochs / train_time_interval: the trigger (one of them;
            default every epoch). ``train_time_interval`` is a ``timedelta`` or seconds; rank
            zero's clock decides, asked only every few batches (more often as the interval
            nears its end), not a host sync every batch: see ``callbacks/time_checks.py``.
        save_on_train_epoch_end: epoch triggers fire at the end of the training epoch (True) or
            after validation (False); default as in Lightning: at the training epoch end (after
            the epoch-end validation), but after each validation run when validation happens
            every few epochs (``check_val_every_n_epoch > 1``) or within epochs
            (``val_check_interval``).
        async_save: copy the state off the training tensors and write it in the background.
        save_weights_only: write only the weights and hyperparameters (no training state).
        verbose: print a line on rank zero for every checkpoint written.
        auto_insert_metric_name: ``False`` writes ``{epoch}`` as ``3`` instead of ``epoch=3``.

    After every save, ``<dirpath>/last.json`` points at the newest checkpoint.
    """

    FILE_EXTENSION = CKPT_SUFFIX
    CHECKPOINT_NAME_LAST = "last"
    STARTING_VERSION = STARTING_VERSION  # the first suffix a name in use gets: epoch=0-v1.ckpt

    def __init__(self, dirpath: str | os.PathLike | None = None, filename: str | None = None,
                 monitor: str | None = None, mode: str = "min", save_top_k: int = 1,
                 save_last: bool | Literal["link"] | None = None, every_n_train_steps: int | None = None,
                 every_n_epochs: int | None = None,
                 train_time_interval: datetime.timedelta | float | None = None,
                 save_on_train_epoch_end: bool | None = None, async_save: bool = False,
                 save_weights_only: bool = False, verbose: bool = False,
                 auto_insert_metric_name: bool = True, filepath: str | os.PathLike | None = None,
                 enable_version_counter: bool = True, save_on_exception: bool = False) -> None:
        args = checked_arguments(dirpath, filename, filepath, mode, save_top_k, save_last,
                                 every_n_train_steps, every_n_epochs, train_time_interval)
        self.dirpath: str | None = args["dirpath"]
        self.filename = args["filename"]
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.every_n_train_steps = args["every_n_train_steps"]
        self.every_n_epochs = args["every_n_epochs"]
        self.train_time_interval = args["train_time_interval"]
        self.save_on_train_epoch_end = save_on_train_epoch_end
        self.async_save = async_save
        self.save_weights_only = save_weights_only
        self.verbose = verbose
        self.auto_insert_metric_name = auto_insert_metric_name
        self.save_on_exception = save_on_exception
        self._enable_version_counter = enable_version_counter

        # scores are 0-dim tensors, as in Lightning
        self.best_k_models: dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.kth_value = _score(self._worst_value())
        self.best_model_path = ""
        self.best_model_score: torch.Tensor | None = None
        self.current_score: torch.Tensor | None = None
        self.version_root: str | None = None  # <save_dir>/<name> when dirpath follows the logger
        self.resumed_from_dirpath: str | None = None  # the other folder a resumed checkpoint was saved in
        self._newest_path = ""  # the newest checkpoint this run wrote (last_model_path without save_last)
        self._last_link_path = ""  # the <dirpath>/last[-vN].ckpt this run (or the run it resumes) writes
        self._link_restored = False
        self._last_written = ""  # the newest file this callback wrote (save_last="link" links to it)
        self._last_global_step_saved = -1
        self._time = TimeChecks()
        self._fitting = False
        self._val_has_run = False
        self._missing_warned = False
        self._run_failed = False
        self._writer = AsyncCheckpointWriter() if async_save else None
        self._sharded: Any = None  # the strategy's ShardedCheckpointer, once a sharded checkpoint was written

    # ------------------------------------------------------------------ identity and state
    @property
    def state_key(self) -> str:
        # Lightning's key: two instances with different settings do not overwrite each other's state
        return self._generate_state_key(monitor=self.monitor, mode=self.mode,
                                        every_n_train_steps=self.every_n_train_steps,
                                        every_n_epochs=self.every_n_epochs,
                                        train_time_interval=self.train_time_interval)

    @property
    def _legacy_state_keys(self) -> tuple[str, ...]:
        return (f"ModelCheckpoint{{monitor={self.monitor!r}, mode={self.mode!r}, "  # distengine before 2026-12
                f"every_n_train_steps={self.every_n_train_steps}, every_n_epochs="
                f"{self.every_n_epochs}, train_time_interval={self.train_time_interval}}}",)

    @property
    def last_model_path(self) -> str:
        """As in Lightning: ``<dirpath>/last.ckpt`` with ``save_last`` (once written); without it,
        the newest checkpoint this run wrote (Lightning leaves it empty)."""
        return self._last_link_path if self.save_last and self._last_link_path else self._newest_path

    @last_model_path.setter
    def last_model_path(self, path: str) -> None:
        self._newest_path = path

    def to_yaml(self, filepath: str | os.PathLike | None = None) -> None:
        """Write ``best_k_models`` (path -> score) to ``filepath``, default
        ``<dirpath>/best_k_models.yaml``, as Lightning does. Example: ``ckpt.to_yaml()``."""
        from distengine.loggers.csv_logger import to_yaml, write_text_atomic

        if filepath is None:
            if self.dirpath is None:
                raise ValueError("ModelCheckpoint.to_yaml(): no dirpath yet (it is set when fit starts); "
                                 "pass a filepath")
            filepath = os.path.join(self.dirpath, "best_k_models.yaml")
        write_text_atomic(os.path.expanduser(os.fspath(filepath)),
                          to_yaml({k: float(v) for k, v in self.best_k_models.items()}))

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor, "mode": self.mode, "dirpath": self.dirpath,
            "best_model_score": self.best_model_score, "best_model_path": self.best_model_path,
            "current_score": self.current_score, "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path, "kth_value": self.kth_value,
            "last_model_path": self.last_model_path, "last_link_path": self._last_link_path,
            "newest_model_path": self._newest_path,
            "last_global_step_saved": self._last_global_step_saved,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_dir = state_dict.get("dirpath")
        self.best_model_path = state_dict.get("best_model_path", "")
        if self.dirpath is not None and saved_dir is not None and \
                os.path.abspath(saved_dir) != self.dirpath:  # the Trainer's resume line says so too
            self.resumed_from_dirpath = os.path.abspath(saved_dir)  # best-k tracking starts afresh here
            warnings.warn(f"ModelCheckpoint: the checkpoint was saved with dirpath {saved_dir!r}, this callback "
                          f"writes to {self.dirpath!r}; only best_model_path is restored, best-k scores and "
                          "last_model_path start afresh (pass the old dirpath to keep them)", UserWarning, stacklevel=2)
            return
        if self.dirpath is None and saved_dir is not None:
            self.dirpath = os.path.abspath(saved_dir)
        # floats in checkpoints written before scores became tensors
        self.best_model_score = _score(state_dict.get("best_model_score"))
        self.current_score = _score(state_dict.get("current_score"))
        self.best_k_models = {str(k): _score(v) for k, v in
                              state_dict.get("best_k_models", {}).items()}
        self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
        self.kth_value = _score(state_dict.get("kth_value", self._worst_value()))
        # (before "newest_model_path" existed, last_model_path was the newest file)
        self._newest_path = state_dict.get("newest_model_path", state_dict.get("last_model_path", ""))
        # the last.ckpt the resumed run wrote (before the key existed: last.ckpt); this run replaces
        # it only if it holds the state resumed from (on_train_start checks)
        self._last_link_path = state_dict.get("last_link_path", os.path.join(
            self.dirpath, self.CHECKPOINT_NAME_LAST + CKPT_SUFFIX) if self.dirpath else "")
        self._link_restored = True
        self._last_global_step_saved = int(state_dict.get("last_global_step_saved", -1))

    # ------------------------------------------------------------------ hooks
    def resolve_dirpath(self, trainer: Any) -> str:
        """The checkpoint folder, fixed once (every rank calls this at the same point).

        As in Lightning 2.6.6: ``<save_dir>/<name>/<version>/checkpoints`` of the first logger
        (``lightning_logs/version_0/checkpoints``), ``<default_root_dir>/checkpoints`` without
        a logger or with one that has no version (a custom ``Logger`` defining none); 1.x's
        ``weights_save_path`` gives ``<weights_save_path>/checkpoints``. Rank
        zero's answer is broadcast: only its logger has settled on a version.
        """
        if self.dirpath is None:
            loggers = list(getattr(trainer, "loggers", None) or [])
            version_root = None
            if getattr(trainer, "weights_save_path", None):
                path = os.path.join(trainer.weights_save_path, "checkpoints")
            elif loggers and loggers[0].version is not None:  # a logger with a run folder
                lg = loggers[0]
                version = lg.version if isinstance(lg.version, str) else f"version_{lg.version}"
                version_root = os.path.join(getattr(lg, "save_dir", None) or trainer.default_root_dir,
                                            str(lg.name))
                path = os.path.join(version_root, version, "checkpoints")
            else:
                path = os.path.join(trainer.default_root_dir, "checkpoints")
            strategy = getattr(trainer, "strategy", None)
            if strategy is not None:
                path, version_root = strategy.broadcast((path, version_root), src=0)
            self.dirpath = os.path.abspath(os.path.expanduser(path))  # a custom logger's "~/logs" too
            self.version_root = os.path.abspath(os.path.expanduser(version_root)) if version_root else None
        return self.dirpath

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._fitting = stage == "fit"
        if not self._fitting:
            return
        self.resolve_dirpath(trainer)
        if trainer.is_global_zero and not getattr(trainer, "fast_dev_run", 0):  # (it saves nothing then)
            tidy_checkpoint_folders(self.dirpath, self.version_root)
        # no rank resolves ckpt_path="last" before the folders are put right
        getattr(getattr(trainer, "strategy", None), "barrier", lambda: None)()

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self._time.start()
        if self._link_restored:
            # resumed from an older checkpoint than last.ckpt holds (fit(ckpt_path="epoch=0.ckpt")):
            # that last.ckpt is kept and this run writes last-v1.ckpt, as Lightning does. Resumed
            # from last.ckpt (or "last", the file it links to), it is replaced: nothing is lost.
            # Only rank zero's answer is used (it names the files).
            self._link_restored = False
            if self._last_link_path and not _same_file(getattr(trainer, "ckpt_path", None), self._last_link_path):
                self._last_link_path = ""

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # no step or time trigger (the default): the cheapest test first, as it runs every batch
        if (not self.every_n_train_steps and self.train_time_interval is None) or self._skip(trainer):
            return
        fire = bool(self.every_n_train_steps) and trainer.global_step % self.every_n_train_steps == 0
        if self.train_time_interval is not None:
            fire = self._time.due(trainer, self.train_time_interval)  # a collective only every few batches
        if fire:
            self._save_topk_and_last(trainer)
            self._time.saved()

    def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
        if self._epoch_trigger(trainer) and self._on_train_epoch_end(trainer):
            self._save_topk_and_last(trainer)

    def on_validation_end(self, trainer: Any, module: Any) -> None:
        if getattr(trainer, "sanity_checking", False):
            return
        self._val_has_run = True
        if self._epoch_trigger(trainer) and not self._on_train_epoch_end(trainer):
            self._save_topk_and_last(trainer, from_validation=True)

    def on_train_end(self, trainer: Any, module: Any) -> None:
        # save_last: a run in which no trigger fired (saving after validation, with no validation)
        # still leaves last.ckpt, as in Lightning
        if self.save_last and self._fitting and not self._last_written and \
                self._last_global_step_saved != trainer.global_step:
            self._save_topk_and_last(trainer, last_only=True)

    def on_fit_end(self, trainer: Any, module: Any) -> None:
        self.wait()

    def on_exception(self, trainer: Any, module: Any, exception: BaseException) -> None:
        self._run_failed = True
        if self.save_on_exception and self._fitting and not getattr(trainer, "sanity_checking", False) \
                and not getattr(trainer, "fast_dev_run", 0) and trainer.global_step > 0 \
                and self._last_global_step_saved != trainer.global_step:
            self._save_on_exception(trainer, exception)  # not when this step's state is on disk already

    def teardown(self, trainer: Any, module: Any, stage: str) -> None:
        self._fitting = False
        try:
            self.wait()  # the job must not end while the last checkpoint is half written
            if self._sharded is not None:  # and no checkpoint thread or process group outlives the run
                self._sharded.close()
        except RuntimeError as exc:
            if not self._run_failed:
                raise
            # the run already failed: report the write error without hiding the original one
            warnings.warn(f"ModelCheckpoint: {exc}", UserWarning, stacklevel=2)
        self._run_failed = False

    # ------------------------------------------------------------------ decisions
    def _skip(self, trainer: Any) -> bool:
        return (not self._fitting or getattr(trainer, "sanity_checking", False)
                or bool(getattr(trainer, "fast_dev_run", 0))  # Lightning: nothing is saved in a fast_dev_run
                or self._last_global_step_saved == trainer.global_step
                or (self.save_top_k == 0 and not self.save_last))

    def _epoch_trigger(self, trainer: Any) -> bool:
        return (not self._skip(trainer) and self.every_n_epochs >= 1
                and (trainer.current_epoch + 1) % self.every_n_epochs == 0)

    def _on_train_epoch_end(self, trainer: Any) -> bool:
        if self.save_on_train_epoch_end is not None:
            return self.save_on_train_epoch_end
        # Lightning's rule: at the training epoch end (the epoch-end validation has run by then,
        # so a monitored validation metric is fresh), unless validation runs every few epochs
        # or several times per epoch, where saving follows the validation runs
        if getattr(trainer, "check_val_every_n_epoch", 1) != 1:
            return False
        if isinstance(getattr(trainer, "val_check_interval", None), (str, dict, datetime.timedelta)):
            return False  # a time-based interval: saving follows the validation runs
        nval = getattr(trainer, "num_val_batches", 0) or 0
        if not (sum(nval) if isinstance(nval, (list, tuple)) else nval):
            return True
        vci = getattr(trainer, "val_check_interval", 1.0)
        return vci is None or vci == 1.0

    def _save_topk_and_last(self, trainer: Any, from_validation: bool = False, last_only: bool = False) -> None:
        self.resolve_dirpath(trainer)
        decision = self._agree(trainer, lambda: self._decide(trainer, from_validation, last_only))
        self.current_score = _score(decision["score"])
        if not decision["save"]:
            return
        path = decision["path"]
        if decision["topk"]:
            self.best_k_models[path] = _score(decision["score"])
        for old in decision["delete"]:
            self.best_k_models.pop(old, None)
        self._update_best()
        self._newest_path = path
        self._last_link_path = decision["link"] or self._last_link_path
        self._last_written = path
        self._last_global_step_saved = trainer.global_step
        self._write(trainer, path, decision["delete"], decision["link"])

    def _monitored_score(self, metrics: dict[str, Any], from_validation: bool) -> float | None:
        if self.monitor in metrics and _to_float(metrics[self.monitor]) is not None:
            score = _to_float(metrics[self.monitor])
            return self._worst_value() if math.isnan(score) else score  # a NaN never beats a real value
        msg = (f"ModelCheckpoint(monitor={self.monitor!r}) found no such metric; logged: "
               f"{sorted(k for k in metrics if k not in ('epoch', 'step'))}. Log it with "
               f"self.log({self.monitor!r}, value) in the module")
        if from_validation or self._val_has_run:
            raise ConfigError(msg)
        if not self._missing_warned:
            warnings.warn(msg + "; skipping the top-k check until it is logged", UserWarning, stacklevel=3)
            self._missing_warned = True
        return None

    def _decide(self, trainer: Any, from_validation: bool, last_only: bool = False) -> dict[str, Any]:
        """Rank zero only: which file to write, whether it is top-k, what to delete, where last.ckpt is."""
        metrics = self._candidates(trainer)
        score = None if last_only else float(trainer.global_step) if self.monitor is None \
            else self._monitored_score(metrics, from_validation)  # no monitor: the newest is the best
        topk = self._is_topk(score)
        # save_last="link": last.ckpt already links to the newest top-k file (Lightning saves nothing new)
        linked = self.save_last == "link" and self.save_top_k != 0 and bool(self._last_written)
        if not topk and (not self.save_last or linked):
            return {"save": False, "score": score}
        kept = dict(self.best_k_models)
        link = self._last_name(metrics) if self.save_last else ""
        if not topk:  # kept only as the newest: written straight to last.ckpt, as in Lightning
            path = link
        else:
            # a file this save replaces may keep its name (overwritten atomically), as in Lightning:
            # a fixed filename with save_top_k=1 stays one file instead of growing -v1, -v2, ...
            evicted = {self._worst_path(kept)} if self.save_top_k != -1 and len(kept) >= self.save_top_k else set()
            name = format_checkpoint_name(self.filename or "{epoch}-{step}", metrics, self.auto_insert_metric_name)
            path = versioned_path(self.dirpath, name, self._ours(),
                                  evicted | set(self._superseded_last("", kept)), self._enable_version_counter,
                                  self.STARTING_VERSION)
        delete: list[str] = []
        if topk:
            kept[path] = score
            if self.save_top_k != -1 and len(kept) > self.save_top_k:
                worst = self._worst_path(kept)
                kept.pop(worst)
                delete.append(worst)
        delete += [p for p in self._superseded_last(path, kept) if p not in delete and p != link]
        if self._last_link_path and link and self._last_link_path not in (link, path, *kept, *delete):
            delete.append(self._last_link_path)  # a last name with fields ("last-{epoch}") moved on
        # as in Lightning, the file a fit was asked to resume from stays; with ckpt_path="last" (how a
        # preempted job resumes, over and over) it is the run's own newest and is superseded as usual
        asked = getattr(getattr(getattr(trainer, "_parts", None), "paths", None), "asked", None)  # fit's ckpt_path
        resumed = getattr(trainer, "ckpt_path", None) if asked != "last" else None
        delete = [p for p in delete if not (resumed and os.path.abspath(p) == os.path.abspath(resumed))]
        return {"save": True, "score": score, "topk": topk, "path": path, "delete": delete, "link": link}

    def _ours(self) -> set[str]:
        """The files this run keeps (or the run it resumes in this folder kept)."""
        return (set(self.best_k_models) | {self._newest_path, self._last_link_path}) - {""}

    def _last_name(self, metrics: dict[str, Any]) -> str:
        """``<dirpath>/last.ckpt``, or ``last-v1.ckpt``... when another run's last.ckpt is there."""
        name = format_checkpoint_name(self.CHECKPOINT_NAME_LAST, metrics, self.auto_insert_metric_name)
        return versioned_path(self.dirpath, name, set(), {self._last_link_path, self._newest_path} - {""},
                              self._enable_version_counter, self.STARTING_VERSION)

    def _is_topk(self, score: float | None) -> bool:
        if self.save_top_k == 0 or score is None:
            return False
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        return self._better(score, self.kth_value)

    def _better(self, a: Any, b: Any) -> bool:
        a, b = float(a), float(b)
        return a < b if self._mode() == "min" else a > b

    def _mode(self) -> str:
        return "max" if self.monitor is None else self.mode

    def _worst_value(self) -> float:
        return math.inf if self._mode() == "min" else -math.inf

    def _worst_path(self, scores: dict[str, float]) -> str:
        pick = max if self._mode() == "min" else min
        return pick(scores, key=scores.__getitem__)

    def _update_best(self) -> None:
        if not self.best_k_models:
            self.best_model_path, self.best_model_score = "", None
            self.kth_best_model_path, self.kth_value = "", _score(self._worst_value())
            return
        best = (min if self._mode() == "min" else max)(self.best_k_models,
                                                        key=self.best_k_models.__getitem__)
        self.best_model_path, self.best_model_score = best, self.best_k_models[best]
        if self.save_top_k == -1 or len(self.best_k_models) >= self.save_top_k:
            self.kth_best_model_path = self._worst_path(self.best_k_models)
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        else:
            self.kth_best_model_path, self.kth_value = "", _score(self._worst_value())

    def _superseded_last(self, new_path: str, kept: dict[str, float]) -> list[str]:
        # the previous checkpoint that was kept only because it was the newest
        old = self._newest_path
        return [old] if old and old != new_path and old not in kept else []

    def _candidates(self, trainer: Any) -> dict[str, Any]:
        metrics = {k: v for k, v in dict(getattr(trainer, "callback_metrics", {}) or {}).items()}
        metrics.setdefault("epoch", trainer.current_epoch)
        metrics.setdefault("step", trainer.global_step)
        return metrics


# real types, not the strings of postponed annotations: inspect.signature(ModelCheckpoint) is what
# argument parsers (jsonargparse, LightningCLI) read, e.g. to turn "--save_last link" into "link"
ModelCheckpoint.__init__.__annotations__.update(get_type_hints(ModelCheckpoint.__init__))


def _same_file(a: str | None, b: str) -> bool:
    try:
        return a is not None and os.path.samefile(a, b)
    except OSError:  # one of them is gone
        return False
