"""The checkpoints of a stage run: the Trainer's state as one ``dict[str, Stateful]``
(:mod:`distengine.checkpoint.trainer_state`), saving it (``trainer.save_checkpoint``,
``dump_checkpoint``, the stop-signal checkpoint), restoring a fit from it, and loading weights
only for validate/test/predict.

One :class:`StageCheckpoints` per :class:`~distengine.stage_run.StageRun`; the Trainer's
``save_checkpoint`` after a call has returned uses the last run's.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import torch

from distengine import run_warnings
from distengine.distributed import collectives
from distengine.utilities.exceptions import ConfigError


class CheckpointPaths:
    """``trainer.ckpt_path`` and what it is made of, kept by the Trainer across its calls."""

    def __init__(self) -> None:
        self.loaded: str | None = None   # the checkpoint the current/last call loaded
        self.set_by_user: str | None = None  # `trainer.ckpt_path = ...`: the checkpoint the next calls load
        self.asked: str | None = None    # the latest fit's ckpt_path argument ("last", a path, None)

    @property
    def current(self) -> str | None:
        return self.loaded if self.loaded is not None else self.set_by_user

    def set(self, path: str | None) -> None:
        """``trainer.ckpt_path = path`` (also how a resumed fit records where it resumed from)."""
        self.set_by_user = self.loaded = None if path is None else str(path)


class StageCheckpoints:
    """Save and restore for one run (``run``: its module, precision, hooks; ``trainer``: the
    public state it saves: progress, optimizers, schedulers, callbacks)."""

    def __init__(self, run: Any) -> None:
        self.run, self.trainer = run, run.trainer
        self.pending_position: tuple[dict, str] | None = None  # a resume's data position, file

    def directory(self) -> str:
        t = self.trainer
        cb = t.checkpoint_callback
        if cb is not None and getattr(cb, "dirpath", None):
            return cb.dirpath
        return os.path.join(t.weights_save_path or t.default_root_dir, "checkpoints")

    def checkpointer(self) -> Any:
        """The Trainer's state as one ``dict[str, Stateful]`` (file key -> object, in file order):
        see distengine/checkpoint/trainer_state.py, which saves and restores it in one loop each."""
        import distengine
        from distengine.checkpoint import trainer_state as ts
        from distengine.checkpoint.apply import FORMAT_VERSION

        t, run = self.trainer, self.run
        module, p, strategy, data, resume = run.module, t.progress, t.strategy, run.parts.data, run.parts.resume

        def samples_per_batch() -> int:  # over the data-parallel replicas (model parallel: not every rank)
            replicas = data.train_replicas or t.world_size  # as the fit's loaders were split
            return (getattr(data.fit.train_loader, "batch_size", None) or 1) * replicas

        weights: dict[str, Any] = {
            "format_version": ts.Value(lambda: FORMAT_VERSION),
            "distengine_version": ts.Value(lambda: distengine.__version__),
            "torch_version": ts.Value(lambda: str(torch.__version__)), "world_size": ts.Value(lambda: t.world_size),
            "epoch": ts.Value(lambda: p.epoch), "global_step": ts.Value(lambda: p.global_step),
            "state_dict": ts.ModuleState(strategy, module),
            **{k: ts.Value(lambda v=v: v) for k, v in module._hparams_checkpoint_entries().items()},
        }
        training: dict[str, Any] = {
            "progress": ts.ProgressState(p, resume, samples_per_batch),
            "optimizer_states": ts.OptimizerStates(strategy, module, t.optimizers),
            "optimizer_classes": ts.Value(lambda: [type(o).__name__ for o in t.optimizers]),
            "lr_schedulers": ts.SchedulerStates(t.lr_scheduler_configs),
            "precision": run.precision,
            "data": ts.DataPosition(p, resume, lambda: data.fit.train_sampler, samples_per_batch),
            "rng": ts.RNGStates(resume, t.global_rank),
            "callbacks": ts.CallbackStates(t.callbacks),
        }
        # every rank takes part in gathering the RNG states, and FSDP's weights and optimizer states
        return ts.Checkpointer({**weights, **training}, weights=tuple(weights),
                               collective=("rng", "state_dict", "optimizer_states"))

    def checkpoint_dict(self, weights_only: bool = False, every_rank: bool = False) -> dict[str, Any] | None:
        """The full checkpoint on global rank zero (None elsewhere; ``every_rank``: on every rank,
        each holding its own shards, for a sharded checkpoint). A collective: every rank must
        call it, since the RNG states of all ranks are gathered. The ``on_save_checkpoint``
        hooks run on global rank zero."""
        t, run = self.trainer, self.run
        run.parts.writer.raise_if_nonfinite()  # never write a checkpoint of weights a NaN step produced
        if not every_rank and t.strategy.checkpoint_layout != "full":  # where a sharded layout plugs in
            raise NotImplementedError("sharded checkpoints are written by distengine.checkpoint.sharded")
        ckpt = self.checkpointer().save(weights_only, every_rank or t.is_global_zero)
        if ckpt is None:
            return None
        dm = run.datamodule
        state = dm.state_dict() if dm is not None and callable(getattr(dm, "state_dict", None)) else None
        if state:  # Lightning: a datamodule's state under its class name, when it has one
            ckpt[type(dm).__qualname__] = state
        if t.is_global_zero:
            for fn in (*run.callback_hooks.get("on_save_checkpoint", ()),  # the callbacks first, as Lightning
                       *run.module_hooks.get("on_save_checkpoint", ())):
                fn(ckpt)
        return ckpt

    def save(self, filepath: str, weights_only: bool = False) -> None:
        """``trainer.save_checkpoint``: a collective; global rank zero writes the file atomically
        (a temporary file, fsync, rename) and every rank waits for it; a sharded strategy writes
        a directory, every rank its shards."""
        from distengine.checkpoint.io import atomic_save

        t = self.trainer
        with t.profiler.profile("save_checkpoint"):
            if t.strategy.checkpoint_layout == "sharded":  # a directory; every rank writes its shards
                from distengine.checkpoint.sharded_trainer import save_trainer_checkpoint

                save_trainer_checkpoint(t, filepath, weights_only)
                return
            ckpt = self.checkpoint_dict(weights_only)
            if ckpt is not None:
                os.makedirs(os.path.dirname(os.path.abspath(filepath)), exist_ok=True)
                atomic_save(ckpt, filepath)
            collectives.barrier()

    def save_on_signal(self, signum: int) -> str | None:
        cb = self.trainer.checkpoint_callback
        if cb is None:
            return None
        return cb.save_now(self.trainer, reason=f"signal {signum}")

    def restore(self, ckpt_path: str | None) -> None:
        """Restore the full training state from ``ckpt_path`` (a file or ``"last"``)."""
        from distengine.checkpoint.io import resolve_checkpoint, resolve_last_in_versions, safe_load
        from distengine.checkpoint.sharded_trainer import load_trainer_checkpoint as load_for_trainer

        t, run = self.trainer, self.run
        resume = run.parts.resume
        resume.epoch_start_sample, resume.epoch_start_batch = 0, 0
        run.paths.set(None)  # Lightning's trainer.ckpt_path: the checkpoint this fit resumed from
        run.paths.asked = ckpt_path  # "last": the run's own newest, which ModelCheckpoint may supersede
        if ckpt_path is None and not collectives.is_distributed():
            return

        def resolve() -> str | None:
            path = resolve_checkpoint(ckpt_path, self.directory())
            version_root = getattr(t.checkpoint_callback, "version_root", None)
            if path is None and ckpt_path == "last" and version_root:  # a restarted run: a new version
                path = resolve_last_in_versions(version_root, self.directory())
            return path

        path = self._resume_path(ckpt_path, resolve)
        run.paths.loaded = path  # trainer.ckpt_path: the checkpoint this call loaded
        if path is None:
            if ckpt_path is None:
                return
            return run_warnings.warn_no_last(self.directory(), "training starts from the model as it is")
        # Load on the CPU and let each load_state_dict place its tensors: weights are copied
        # into the parameters where they live, and the optimizers keep Adam's ``step`` counters
        # on the CPU. Loaded onto a GPU, those counters would stay there, and the default
        # (foreach) Adam reads each one back with .item() at every step: a sync per parameter.
        # mapped (mmap): the ranks share the file's pages instead of each reading all of it
        ckpt = load_for_trainer(t, path) if os.path.isdir(path) else safe_load(path, "cpu", mmap=True)
        from distengine.checkpoint.apply import check_resume_epoch
        from distengine.checkpoint.run_folder import continue_run_folder, resume_line

        check_resume_epoch(ckpt, path, t.max_epochs)

        # before anything is written or restored: a resumed run goes on in its own version folder
        moved_to = continue_run_folder(t, path, full="optimizer_states" in ckpt)
        full = self.checkpointer().restore(ckpt, path, (*run.module_hooks.get("on_load_checkpoint", ()),
                                                        self._load_datamodule),
                                           run.callback_hooks.get("on_load_checkpoint", ()), deferred=("data",))
        if not full:
            return  # a weights-only checkpoint: start training from these weights
        # the sampler position: once the training loader is loaded (StageRun.load_train)
        self.pending_position = (ckpt.get("data", {}), path)
        p = t.progress
        run.run_sanity_check = False
        if t.is_global_zero:
            where = resume_line(t, path, moved_to)
            print(f"distengine: resumed from {path} (epoch {p.epoch}, step {p.global_step})"
                  + (f"; {where}" if where else ""), file=sys.stderr, flush=True)

    def _load_datamodule(self, ckpt: dict[str, Any]) -> None:
        """The datamodule's ``load_state_dict`` with what its ``state_dict`` saved (Lightning: after
        the module's ``on_load_checkpoint``, before the callbacks')."""
        dm = self.run.datamodule
        if dm is not None and type(dm).__qualname__ in ckpt and callable(getattr(dm, "load_state_dict", None)):
            dm.load_state_dict(ckpt[type(dm).__qualname__])

    def restore_position(self) -> None:
        """A resumed fit's data position, applied to the training loader once it is loaded
        (every rank at the same moment: the position check is a collective)."""
        if self.pending_position is None:
            return
        from distengine.checkpoint.agreement import check_resume_point

        state, path = self.pending_position
        self.pending_position = None
        self.checkpointer().states["data"].load_state_dict(state)
        check_resume_point(self.trainer.progress, self.run.parts.data.fit.num_train_batches, path)

    def _resume_path(self, ckpt_path: Any, resolve: Any) -> str | None:
        """The checkpoint this rank loads, agreed across ranks (see checkpoint/agreement.py)."""
        from distengine.checkpoint.agreement import agreed_checkpoint

        t = self.trainer
        return agreed_checkpoint(ckpt_path, resolve, t.strategy, t.is_global_zero)

    def load_weights_only(self, ckpt_path: str) -> None:
        from distengine.checkpoint.apply import check_weights
        from distengine.checkpoint.io import resolve_checkpoint, safe_load

        t, run = self.trainer, self.run
        if ckpt_path == "best":  # Lightning: the best checkpoint the ModelCheckpoint callback kept
            if t.checkpoint_callback is None:
                raise ConfigError('ckpt_path="best" needs a ModelCheckpoint, and this Trainer has none '
                                  "(enable_checkpointing=False?); pass the model, a file path or 'last'")
            best = getattr(t.checkpoint_callback, "best_model_path", "")
            if not best:
                raise ConfigError('ckpt_path="best" needs a ModelCheckpoint that has saved a checkpoint in '
                                  "this Trainer; pass a file path or 'last' instead")
            ckpt_path = best
        # validate/test(ckpt_path="last") right after an async fit: as for a resume, rank 0 decides
        path = self._resume_path(ckpt_path, lambda: resolve_checkpoint(ckpt_path, self.directory()))
        if path is None:  # ("last" with nothing saved) Lightning warns and runs the model as it is
            return run_warnings.warn_no_last(self.directory(), "the model is used as it is")
        run.paths.loaded = path
        from distengine.checkpoint.sharded_trainer import load_trainer_checkpoint

        sharded = os.path.isdir(path)  # a sharded checkpoint: read into this rank's layout
        state = load_trainer_checkpoint(t, path, True) if sharded else safe_load(path, "cpu", mmap=True)
        check_weights(run.module, state["state_dict"], source=path)
        t.strategy.load_module_state_dict(run.module, state["state_dict"])
        self._load_datamodule(state)
