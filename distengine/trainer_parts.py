"""The Trainer's setup and checkpoint plumbing, kept apart from its flags and entry points.

``CheckpointMixin`` is mixed into :class:`distengine.Trainer`; it reads the Trainer's
attributes and is not used on its own.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import torch

from distengine import run_warnings
from distengine.data import apply_limit as _apply_limit
from distengine.data import loader_len as _safe_len
from distengine.distributed import collectives
from distengine.utilities.exceptions import ConfigError
from distengine.val_schedule import build_schedule


class CheckpointMixin:
    """Setup of the environment, data and optimizers; saving and restoring checkpoints."""

    # ------------------------------------------------------------------ environment
    def _setup_env(self) -> None:
        if self._setup_done:
            return
        from distengine.distributed import setup

        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=self.deterministic == "warn")
        if self.benchmark is not None:
            torch.backends.cudnn.benchmark = bool(self.benchmark)
        self._strategy.setup_environment(self.accelerator, self.env, self._gpu_ids,
                                         setup.timeout_seconds(self.dist_timeout))
        self._setup_done = True

    # ------------------------------------------------------------------ data
    def _resolve_loader(self, given: Any, datamodule: Any, kind: str, required: bool = True,
                        defer: bool = False) -> list[Any]:
        hook = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader",
                "predict": "predict_dataloader"}[kind]
        source = given
        # the hook each loader came from: reload_dataloaders_every_n_epochs calls it again
        hooks = vars(self).setdefault("_loader_hooks", {})
        hooks.pop(kind, None)
        if datamodule is not None:
            self.datamodule = datamodule
            if hasattr(datamodule, "trainer"):
                datamodule.trainer = self
        if source is None and datamodule is not None:
            done = getattr(datamodule, "_distengine_stages", None)
            if done is None:
                done = datamodule._distengine_stages = set()
                if hasattr(datamodule, "prepare_data"):  # downloads: once per node, the others wait
                    per_node = getattr(datamodule, "prepare_data_per_node", self.prepare_data_per_node)
                    if (self.local_rank if per_node else self.global_rank) == 0:
                        datamodule.prepare_data()
                    collectives.barrier()
            stage = self._status.stage or "fit"
            if stage not in done and hasattr(datamodule, "setup"):  # Lightning: setup(stage) per stage
                datamodule.setup(stage=stage)
            done.add(stage)
            if hasattr(datamodule, hook):
                hooks[kind] = getattr(datamodule, hook)
                source = None if defer else hooks[kind]()
        if source is None and kind not in hooks and self._module_overrides(hook):
            hooks[kind] = getattr(self._module, hook)
            source = None if defer else hooks[kind]()
        if defer and kind in hooks:  # called when a validation first needs it (loop._val_data)
            return []
        vars(self).setdefault("_given_loaders", {})[kind] = source  # as given: trainer.val_dataloaders...
        if source is None:
            if required:
                what = {"train": "training", "val": "validation", "test": "test", "predict": "predict"}[kind]
                raise ConfigError(f"no {what} data: pass it to the Trainer call or define {hook}() in the module")
            return []
        from distengine import data_combined as dc

        # training: one loader, a container of them read together (CombinedLoader); evaluation: a list
        loaders = [dc.train_source(source)] if kind == "train" else dc.eval_sources(source)
        inner = [dl for loader in loaders for dl in dc.inner_loaders(loader)]
        for i, loader in enumerate(inner):
            n = _safe_len(loader)
            if n == 0:
                raise ConfigError(f"the {kind} dataloader #{i} is empty (len 0): check the dataset and batch_size")
        return loaders

    def _setup_fit(self, train: list[Any], val: list[Any]) -> None:
        from distengine.optim import parse_optimizers
        from distengine.optimization import one_x_mode, plan_optimization
        from distengine.precision import Precision

        if len(train) != 1:
            raise ConfigError(f"fit takes one training dataloader, got {len(train)}")
        module = self._module
        self._set_fit_loaders(train, val)
        data = self._data
        data.val_pending = "val" in getattr(self, "_loader_hooks", {}) and not val
        data.train_loaded_epoch, data.val_loaded_epoch = 0, float("-inf")  # (set again in fit_loop)
        run_warnings.warn_fit_setup(self, train, val)  # Lightning's PossibleUserWarnings (max_epochs, workers...)
        # Lightning decides from the flags; the loader is loaded in the check (loop._sanity_check)
        may_validate = data.should_validate() or (data.val_pending and data.has_val_step and self.limits["val"] != 0)
        self._run_sanity_check = may_validate and self.num_sanity_val_steps != 0
        strategy = self._strategy
        self._precision = Precision(self.precision, strategy.root_device)
        self._loop_state.nonfinite_watch = None
        manual = not module.automatic_optimization
        if manual and self.precision == "16-mixed":
            raise ConfigError("manual optimization with precision='16-mixed' is not supported; use 'bf16-mixed'")
        if manual and self.accumulate_grad_batches > 1:  # Lightning 2.x refuses it as well
            raise ConfigError("accumulate_grad_batches is not supported with manual optimization; accumulate in "
                              "training_step (step the optimizer every N batches) or use automatic optimization")
        strategy.precision, strategy.sync_batchnorm = self._precision, self.sync_batchnorm
        strategy.one_x_mode = one_x_mode(module)
        strategy.setup_module(module)
        if self.compile:  # in place; the DDP wrapper calls training_step, which calls the compiled forward
            module.compile()
        # after setup_module: a sharding strategy replaces the parameters the optimizers must hold
        returned = module.configure_optimizers()
        self.optimizers, self.lr_scheduler_configs = parse_optimizers(returned, manual)
        self._optimization = plan_optimization(  # automatic, manual or 1.x several optimizers (optimization/)
            module, self.optimizers, self.lr_scheduler_configs, returned, self.precision, self.accumulate_grad_batches)
        self._has_step_schedulers = any(c.interval == "step" for c in self.lr_scheduler_configs)
        if manual:  # Lightning 2.x: global_step counts the optimizer.step() calls of training_step
            self._step_counters = [o.register_step_post_hook(self._count_manual_step) for o in self.optimizers] + [
                o.register_step_pre_hook(self._before_manual_step) for o in self.optimizers]  # (trainer_run.py)
        self.progress.next_fit()

    def _count_manual_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.progress.global_step += 1

    def _set_fit_loaders(self, train: list[Any], val: list[Any]) -> None:
        from distengine.data_combined import prepare_train

        env, data = self.env, self._data  # refilled in place: the fit loop's context holds it
        self._raw_loaders = (train, val)
        shuffle = False if self.overfit_batches else None
        replicas, rank = self._strategy.data_parallel(env)  # model parallel: one tensor-parallel group, one split
        self._train_replicas = replicas  # the checkpoint's data position counts samples over these
        data.train_loader, data.train_sampler, data.num_train_batches = prepare_train(
            train[0], replicas, rank, self.use_distributed_sampler, shuffle, self.limits["train"],
            self._strategy.lightning_distributed)
        data.limits, data.has_val_step = self.limits, self._module_overrides("validation_step")
        if data.num_train_batches == 0 and self.limits["train"] != 0:  # (limit 0: fit trains nothing, as Lightning)
            raise ConfigError("limit_train_batches leaves no training batch; raise it")
        old = data.val_schedule  # (a reload keeps the time-based clock running)
        data.val_schedule = build_schedule(self.val_check_interval, self.check_val_every_n_epoch,
                                           data.num_train_batches or 1, self.limits["val"] != 0)
        data.val_schedule.last_time = old.last_time
        self._set_val_loaders(val)

    def _set_val_loaders(self, val: list[Any]) -> None:
        from distengine.data_combined import prepare_eval

        data = self._data
        self._raw_loaders = (self._raw_loaders[0], val)
        replicas, rank = self._strategy.data_parallel(self.env)  # model parallel: split over data_parallel only
        data.val_loaders = [prepare_eval(v, replicas, rank, self.use_distributed_sampler) for v in val]
        # Lightning: no validation_step, no validation batches (checkpoints then follow the epochs)
        data.num_val_batches = data.val_limits() if data.has_val_step else []
        n_max = self.num_sanity_val_steps  # the sanity check's batches (in place: the loop's context holds them)
        vars(self).setdefault("_sanity_steps", [])[:] = [n if n_max < 0 else min(n, n_max) for n in
                                                          data.num_val_batches]

    def _reload_dataloaders(self, kind: str) -> None:
        """Call the ``train_dataloader``/``val_dataloader`` hook again (loaders passed to ``fit``
        stay, as in Lightning); the validation one only refills the validation loaders."""
        hook = getattr(self, "_loader_hooks", {}).get(kind)
        if hook is None:
            return
        from distengine import data_combined as dc

        source = vars(self).setdefault("_given_loaders", {})[kind] = hook()  # as returned: trainer.val_dataloaders
        if kind == "train":
            self._set_fit_loaders([dc.train_source(source)], self._raw_loaders[1])
        else:
            first = self._data.val_pending
            self._data.val_pending = False
            self._set_val_loaders(dc.eval_sources(source))
            if first:  # (the warnings a loader given to fit gets at the start)
                run_warnings.warn_few_workers(self, [dl for v in self._raw_loaders[1] for dl in dc.inner_loaders(v)],
                                              "val")

    def _evaluate(self, stage: str, model: Any, dataloaders: Any, datamodule: Any, ckpt_path: Any) -> list[Any]:
        from distengine import loop_eval
        from distengine.data_combined import prepare_eval

        provided, connected = model is not None, self._module is not None
        model = model if provided else self._module
        if model is None:
            raise TypeError(f"Trainer.{stage} needs a model: pass one, or call fit() first")  # (as Lightning)
        self._check_module(model, stage)
        if ckpt_path is None and self._ckpt_path_set is None and not provided and connected:
            ckpt_path = "best"  # Lightning: the previous fit's best (decided here, before ranks are started)
            run_warnings.warn_best_model_used(stage)
        if self._launch_if_needed():  # ddp_notebook/ddp_spawn: the ranks are started from here
            return self._run_in_processes("_evaluate", (stage, model, dataloaders, datamodule, ckpt_path))
        with self._run(stage, model):
            model.zero_grad()  # as Lightning does before a stage's loop
            kind = {"validate": "val", "test": "test", "predict": "predict"}[stage]
            if stage != "predict" and self.limits[kind] == 0:  # Lightning: no dataloader, no hooks, no results
                return []
            if datamodule is None and hasattr(dataloaders, f"{kind}_dataloader"):
                datamodule, dataloaders = dataloaders, None  # test(model, dm), as Lightning allows
            loaders = self._resolve_loader(dataloaders, datamodule, kind)
            run_warnings.warn_few_workers(self, loaders, kind)
            env = self.env
            loaders = [prepare_eval(dl, *self._strategy.data_parallel(env), self.use_distributed_sampler)
                       for dl in loaders]
            device = self._strategy.root_device
            if self._precision is None or self._precision.device != device:
                from distengine.precision import Precision

                self._precision = Precision(self.precision, device)
            self._strategy.precision = self._precision
            self._strategy.module_to_device(model)
            ckpt_path = ckpt_path if ckpt_path is not None else self._ckpt_path_set  # trainer.ckpt_path = ...
            if ckpt_path is not None:
                self._load_weights_only(ckpt_path)
            if stage == "predict":  # a prediction writer's indices (predict_state.py)
                loaders = self.predict_loop.begin(self.callbacks, loaders)
            limit = [_apply_limit(self.limits[kind], _safe_len(dl), kind) for dl in loaders]
            vars(self).setdefault("_eval_batches", {})[stage] = limit  # kept per stage, as in Lightning
            if stage == "validate":
                self._data.num_val_batches = limit
            result = loop_eval.run_eval(self._eval_context(), stage, loaders, limit)
        return result

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_dir(self) -> str:
        cb = self.checkpoint_callback
        if cb is not None and getattr(cb, "dirpath", None):
            return cb.dirpath
        return os.path.join(self.weights_save_path or self.default_root_dir, "checkpoints")

    def _checkpointer(self) -> Any:
        """The Trainer's state as one ``dict[str, Stateful]`` (file key -> object, in file order):
        see distengine/checkpoint/trainer_state.py, which saves and restores it in one loop each."""
        import distengine
        from distengine.checkpoint import trainer_state as ts
        from distengine.checkpoint.apply import FORMAT_VERSION

        module, p, strategy = self._module, self.progress, self._strategy

        def samples_per_batch() -> int:  # over the data-parallel replicas (model parallel: not every rank)
            replicas = getattr(self, "_train_replicas", None) or self.world_size  # as the fit's loaders were split
            return (getattr(self._data.train_loader, "batch_size", None) or 1) * replicas

        weights: dict[str, Any] = {
            "format_version": ts.Value(lambda: FORMAT_VERSION),
            "distengine_version": ts.Value(lambda: distengine.__version__),
            "torch_version": ts.Value(lambda: str(torch.__version__)), "world_size": ts.Value(lambda: self.world_size),
            "epoch": ts.Value(lambda: p.epoch), "global_step": ts.Value(lambda: p.global_step),
            "state_dict": ts.ModuleState(strategy, module),
            **{k: ts.Value(lambda v=v: v) for k, v in module._hparams_checkpoint_entries().items()},
        }
        training: dict[str, Any] = {
            "progress": ts.ProgressState(p, self._resume, samples_per_batch),
            "optimizer_states": ts.OptimizerStates(strategy, module, self.optimizers),
            "optimizer_classes": ts.Value(lambda: [type(o).__name__ for o in self.optimizers]),
            "lr_schedulers": ts.SchedulerStates(self.lr_scheduler_configs),
            "precision": self._precision,
            "data": ts.DataPosition(p, self._resume, lambda: self._data.train_sampler, samples_per_batch),
            "rng": ts.RNGStates(self._resume, self.global_rank),
            "callbacks": ts.CallbackStates(self.callbacks),
        }
        # every rank takes part in gathering the RNG states, and FSDP's weights and optimizer states
        return ts.Checkpointer({**weights, **training}, weights=tuple(weights),
                               collective=("rng", "state_dict", "optimizer_states"))

    def _checkpoint_dict(self, weights_only: bool = False, every_rank: bool = False) -> dict[str, Any] | None:
        """The full checkpoint on global rank zero (None elsewhere; ``every_rank``: on every rank,
        each holding its own shards, for a sharded checkpoint). A collective: every rank must
        call it, since the RNG states of all ranks are gathered. The ``on_save_checkpoint``
        hooks run on global rank zero."""
        self._raise_if_nonfinite()  # never write a checkpoint of weights a NaN step produced
        if not every_rank and self._strategy.checkpoint_layout != "full":  # where a sharded layout plugs in
            raise NotImplementedError("sharded checkpoints are written by distengine.checkpoint.sharded")
        ckpt = self._checkpointer().save(weights_only, every_rank or self.is_global_zero)
        if ckpt is None:
            return None
        if self.is_global_zero:
            for fn in (*self._callback_hooks.get("on_save_checkpoint", ()),  # the callbacks first, as Lightning
                       *self._module_hooks.get("on_save_checkpoint", ())):
                fn(ckpt)
        return ckpt

    def dump_checkpoint(self, weights_only: bool = False) -> dict[str, Any] | None:
        """The checkpoint dictionary, as ``save_checkpoint`` writes it: on global rank zero (None
        on the others). A collective: call it on every rank."""
        return self._checkpoint_dict(weights_only)

    def save_checkpoint(self, filepath: str, weights_only: bool = False, storage_options: Any = None) -> None:
        """Save a checkpoint. A collective: call it on every rank; global rank zero writes the
        file atomically (a temporary file, fsync, rename) and every rank waits for it."""
        from distengine.checkpoint.io import atomic_save

        if self._module is None:  # (an AttributeError, as in Lightning)
            raise AttributeError("Trainer.save_checkpoint needs a model: call fit/validate/test/predict with one first")
        with self.profiler.profile("save_checkpoint"):
            if self._strategy.checkpoint_layout == "sharded":  # a directory; every rank writes its shards
                from distengine.checkpoint.sharded_trainer import save_trainer_checkpoint

                save_trainer_checkpoint(self, filepath, weights_only)
                return
            ckpt = self._checkpoint_dict(weights_only)
            if ckpt is not None:
                os.makedirs(os.path.dirname(os.path.abspath(filepath)), exist_ok=True)
                atomic_save(ckpt, filepath)
            collectives.barrier()

    def _save_on_signal(self, signum: int) -> str | None:
        cb = self.checkpoint_callback
        if cb is None:
            return None
        return cb.save_now(self, reason=f"signal {signum}")

    def _restore(self, ckpt_path: str | None) -> None:
        """Restore the full training state from ``ckpt_path`` (a file or ``"last"``)."""
        from distengine.checkpoint.io import resolve_checkpoint, resolve_last_in_versions, safe_load
        from distengine.checkpoint.sharded_trainer import load_trainer_checkpoint as load_for_trainer

        self._resume.epoch_start_sample, self._resume.epoch_start_batch = 0, 0
        self.ckpt_path = None  # Lightning's trainer.ckpt_path: the checkpoint this fit resumed from
        self._ckpt_path_asked = ckpt_path  # "last": the run's own newest, which ModelCheckpoint may supersede
        if ckpt_path is None and not collectives.is_distributed():
            return

        def resolve() -> str | None:
            path = resolve_checkpoint(ckpt_path, self._checkpoint_dir())
            version_root = getattr(self.checkpoint_callback, "version_root", None)
            if path is None and ckpt_path == "last" and version_root:  # a restarted run: a new version
                path = resolve_last_in_versions(version_root, self._checkpoint_dir())
            return path

        path = self._resume_path(ckpt_path, resolve)
        self._ckpt_path = path  # trainer.ckpt_path: the checkpoint this call loaded
        if path is None:
            if ckpt_path is None:
                return
            return run_warnings.warn_no_last(self._checkpoint_dir(), "training starts from the model as it is")
        # Load on the CPU and let each load_state_dict place its tensors: weights are copied
        # into the parameters where they live, and the optimizers keep Adam's ``step`` counters
        # on the CPU. Loaded onto a GPU, those counters would stay there, and the default
        # (foreach) Adam reads each one back with .item() at every step: a sync per parameter.
        # mapped (mmap): the ranks share the file's pages instead of each reading all of it
        ckpt = load_for_trainer(self, path) if os.path.isdir(path) else safe_load(path, "cpu", mmap=True)
        self.ckpt_path = path
        from distengine.checkpoint.apply import check_resume_epoch
        from distengine.checkpoint.run_folder import continue_run_folder, resume_line

        check_resume_epoch(ckpt, path, self.max_epochs)

        # before anything is written or restored: a resumed run goes on in its own version folder
        moved_to = continue_run_folder(self, path, full="optimizer_states" in ckpt)
        full = self._checkpointer().restore(ckpt, path, self._module_hooks.get("on_load_checkpoint", ()),
                                            self._callback_hooks.get("on_load_checkpoint", ()))
        self._check_resume_agreement(path)  # every rank, weights-only or not: a collective
        if not full:
            return  # a weights-only checkpoint: start training from these weights
        p = self.progress
        self._run_sanity_check = False
        if self.is_global_zero:
            where = resume_line(self, path, moved_to)
            print(f"distengine: resumed from {path} (epoch {p.epoch}, step {p.global_step})"
                  + (f"; {where}" if where else ""), file=sys.stderr, flush=True)

    def _resume_path(self, ckpt_path: Any, resolve: Any) -> str | None:
        """The checkpoint this rank loads, agreed across ranks (see checkpoint/agreement.py)."""
        from distengine.checkpoint.agreement import agreed_checkpoint

        return agreed_checkpoint(ckpt_path, resolve, self._strategy, self.is_global_zero)

    def _check_resume_agreement(self, path: str) -> None:
        from distengine.checkpoint.agreement import check_resume_point

        check_resume_point(self.progress, self._data.num_train_batches, path)

    def _load_weights_only(self, ckpt_path: str) -> None:
        from distengine.checkpoint.apply import check_weights
        from distengine.checkpoint.io import resolve_checkpoint, safe_load

        if ckpt_path == "best":  # Lightning: the best checkpoint the ModelCheckpoint callback kept
            if self.checkpoint_callback is None:
                raise ConfigError('ckpt_path="best" needs a ModelCheckpoint, and this Trainer has none '
                                  "(enable_checkpointing=False?); pass the model, a file path or 'last'")
            best = getattr(self.checkpoint_callback, "best_model_path", "")
            if not best:
                raise ConfigError('ckpt_path="best" needs a ModelCheckpoint that has saved a checkpoint in '
                                  "this Trainer; pass a file path or 'last' instead")
            ckpt_path = best
        # validate/test(ckpt_path="last") right after an async fit: as for a resume, rank 0 decides
        path = self._resume_path(ckpt_path, lambda: resolve_checkpoint(ckpt_path, self._checkpoint_dir()))
        if path is None:  # ("last" with nothing saved) Lightning warns and runs the model as it is
            return run_warnings.warn_no_last(self._checkpoint_dir(), "the model is used as it is")
        self._ckpt_path = path
        from distengine.checkpoint.sharded_trainer import load_trainer_checkpoint

        sharded = os.path.isdir(path)  # a sharded checkpoint: read into this rank's layout
        state = load_trainer_checkpoint(self, path, True) if sharded else safe_load(path, "cpu", mmap=True)
        check_weights(self._module, state["state_dict"], source=path)
        self._strategy.load_module_state_dict(self._module, state["state_dict"])
