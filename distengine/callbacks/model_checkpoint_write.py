"""How ModelCheckpoint writes: the save itself (in the background with ``async_save``), then,
once it is on disk, ``last.json``, ``last.ckpt`` and the deletions; plus the saves outside the
trigger schedule (a graceful stop's :meth:`save_now`, ``save_on_exception``). Every rank calls
these; what to write is decided on rank zero and broadcast (:meth:`_agree`)."""
from __future__ import annotations

import os
import re
import shutil
import sys
from typing import Any

from distengine.callbacks.checkpoint import Checkpoint
from distengine.callbacks.checkpoint_names import format_checkpoint_name, versioned_path
from distengine.checkpoint.io import link_atomic, write_last_pointer
from distengine.loggers.artifacts import checkpoint_notifier

__all__ = ["CheckpointWrites"]


class CheckpointWrites(Checkpoint):
    """The writing half of :class:`~distengine.callbacks.model_checkpoint.ModelCheckpoint`."""

    def wait(self) -> None:
        """Block until a background write (``async_save=True``) is on disk."""
        if self._writer is not None:
            self._writer.wait()
        if self._sharded is not None:
            self._sharded.wait()

    def _save_on_exception(self, trainer: Any, exception: BaseException) -> str:
        """``save_on_exception=True``: the state when the run failed, under the ``filename``
        template's name (``-v1``... when that name is taken), and ``last.ckpt`` with ``save_last``,
        as in Lightning; outside the top-k accounting, so nothing deletes it later."""
        self.resolve_dirpath(trainer)
        self.wait()

        def decide() -> dict[str, Any]:
            metrics = self._candidates(trainer)
            name = format_checkpoint_name(self.filename or "{epoch}-{step}", metrics, self.auto_insert_metric_name)
            return {"path": versioned_path(self.dirpath, name, self._ours(), set(), self._enable_version_counter,
                                           self.STARTING_VERSION),
                    "link": self._last_name(metrics) if self.save_last else ""}

        decision = self._agree(trainer, decide)
        path, self._last_link_path = decision["path"], decision["link"] or self._last_link_path
        notify = checkpoint_notifier(trainer, self)
        trainer.save_checkpoint(path, self.save_weights_only)  # positional, as Lightning calls it
        self._last_global_step_saved = trainer.global_step
        if trainer.is_global_zero:
            self._after_durable(path, [], notify, decision["link"])
            print(f"distengine: {type(exception).__name__} raised ({exception}); saved checkpoint to {path}",
                  file=sys.stderr, flush=True)
        return path

    # ------------------------------------------------------------------ graceful stop
    def save_now(self, trainer: Any, reason: str) -> str:
        """Write a full checkpoint now (every rank calls this), outside the top-k accounting.

        Used by the Trainer for a graceful stop on a signal. ``last.json`` then points at it, and
        the previous checkpoint kept only as "last" is deleted. Returns the path written.
        Example: ``path = ckpt_cb.save_now(trainer, "sigterm")``.
        """
        self.resolve_dirpath(trainer)
        self.wait()
        tag = re.sub(r"[^A-Za-z0-9_]+", "_", str(reason)).strip("_") or "stop"

        def decide() -> dict[str, Any]:
            name = format_checkpoint_name(self.filename or "{epoch}-{step}",
                                          self._candidates(trainer), self.auto_insert_metric_name)
            path = versioned_path(self.dirpath, f"{name}-{tag}", self._ours(), set(), self._enable_version_counter,
                                  self.STARTING_VERSION)
            link = self._last_name(self._candidates(trainer)) if self.save_last else ""
            return {"path": path, "delete": [p for p in self._superseded_last(path, self.best_k_models) if p != link],
                    "link": link}

        decision = self._agree(trainer, decide)
        self._newest_path = self._last_written = decision["path"]
        self._last_link_path = decision["link"] or self._last_link_path
        # a full state regardless of save_weights_only: this file exists to resume from
        notify = checkpoint_notifier(trainer, self)
        trainer.save_checkpoint(decision["path"])
        if trainer.is_global_zero:
            self._after_durable(decision["path"], decision["delete"], notify, decision["link"])
        return decision["path"]

    @staticmethod
    def _agree(trainer: Any, decide: Any) -> dict[str, Any]:
        """Run ``decide()`` on rank zero and hand its result (or its failure) to every rank."""
        error: BaseException | None = None
        decision: dict[str, Any] | None = None
        if trainer.is_global_zero:
            try:
                decision = decide()
            except Exception as exc:  # noqa: BLE001 - every rank must learn of it, not hang
                error, decision = exc, {"error": f"{type(exc).__name__}: {exc}"}
        decision = trainer.strategy.broadcast(decision, src=0)
        if "error" in decision:
            if error is not None:
                raise error
            raise RuntimeError(f"ModelCheckpoint failed on rank 0: {decision['error']}")
        return decision

    def _write(self, trainer: Any, path: str, delete: list[str], link: str) -> None:
        notify = checkpoint_notifier(trainer, self)  # the loggers' after_save_checkpoint
        if getattr(trainer.strategy, "checkpoint_layout", "full") == "sharded":  # a directory: each rank writes
            from distengine.checkpoint.sharded_trainer import save_trainer_checkpoint

            self._sharded = save_trainer_checkpoint(trainer, path, self.save_weights_only, self._writer is not None,
                                                    on_done=lambda p: self._after_durable(p, delete, notify, link))
            return
        if self._writer is None:
            trainer.save_checkpoint(path, self.save_weights_only)  # positional, as Lightning calls it
            if trainer.is_global_zero:
                self._after_durable(path, delete, notify, link)
            return
        # every rank takes part in gathering (it is a collective); rank zero gets the dict
        state = trainer.dump_checkpoint(weights_only=self.save_weights_only)
        if trainer.is_global_zero:
            self._writer.submit(state, path, on_done=lambda p: self._after_durable(p, delete, notify, link))

    def _after_durable(self, path: str, delete: list[str], notify: Any = None, link: str = "") -> None:
        """Rank zero, once ``path`` is on disk: repoint last.json (and ``link``, the ``last.ckpt``
        of ``save_last``), tell the loggers (``notify``), then delete superseded files."""
        write_last_pointer(self.dirpath, path)
        if link and link != path:  # a hard link to a file (save_last="link": a relative symlink)
            link_atomic(path, link, symbolic=self.save_last == "link")
        if self.verbose:
            print(f"distengine: saved checkpoint {path}", file=sys.stderr, flush=True)
        if notify is not None:
            notify()
        for old in delete:
            # never delete what is tracked again (a name reused after the decision was taken)
            if old in (path, link, self._newest_path, self._last_link_path) or old in self.best_k_models:
                continue
            try:
                shutil.rmtree(old) if os.path.isdir(old) and not os.path.islink(old) else os.remove(old)
            except FileNotFoundError:
                pass
