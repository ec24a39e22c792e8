"""The Trainer's setup and checkpoint plumbing, kept apart from its flags and entry points.

``CheckpointMixin`` is mixed into :class:`distengine.Trainer`; it reads the Trainer's
attributes and is not used on its own.
"""
from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import Any

import torch

from distengine.data import apply_limit as _apply_limit
from distengine.data import loader_len as _safe_len
from distengine.data import val_every_batches
from distengine.dist import collectives

# How long StopVote.close waits for torch to free the last vote's tensor (normally microseconds).
_RELEASE_WAIT_S = 10.0


class StopVote:
    """Agree across ranks on stopping without waiting for the answer every step.

    ``step`` starts a small non-blocking all-reduce (MAX of [stop flag, signal number]) and
    returns the result of the one started at the PREVIOUS step: every rank sees the same
    answer at the same step, one step after the request, and the reduce overlaps the next
    step's work. ``sync`` is the blocking version used at epoch ends. ``close`` ends a fit:
    one vote is made per fit, and closed when its loop has stopped.
    """

    def __init__(self) -> None:
        import torch.distributed as dist

        self.pending: tuple[Any, torch.Tensor] | None = None
        self.distributed = collectives.is_distributed()
        self.group = None
        if self.distributed and self._side_group_needed():
            # Vote over a CPU (gloo) side group: reading an NCCL result every step would make
            # the host wait for the GPU. Every rank builds it here, at the same point.
            self.group = dist.new_group(backend="gloo")

    @staticmethod
    def _side_group_needed() -> bool:
        import torch.distributed as dist

        return dist.get_backend() != "gloo"

    def _start(self, flag: bool, signum: int):
        import torch.distributed as dist

        buf = torch.tensor([float(flag), float(signum)])
        return dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=self.group, async_op=True), buf

    def _drain(self) -> tuple[bool, int]:
        if self.pending is None:
            return False, 0
        work, buf = self.pending
        self.pending = None
        work.wait()
        flag, signum = buf.tolist()
        return flag > 0, int(signum)

    def step(self, flag: bool, signum: int) -> tuple[bool, int]:
        if not self.distributed:
            return flag, signum
        result = self._drain()
        self.pending = self._start(flag, signum)
        return result

    def close(self) -> None:
        """After the fit loop stopped (every rank): finish the vote still in flight, free the side group.

        The vote started at the last step is never read. Left running, its gloo worker thread
        would finish it in its own time, and freeing the vote's tensor needs the GIL: when that
        happens during interpreter shutdown, Python ends the thread and the process aborts
        (exit 134) after a successful run. So wait for the vote, and then until the worker has
        let go of the tensor: the weak reference dies when the tensor is freed, in whichever
        thread frees it. The bound only guards against a torch that never frees it. (Any
        collective leaves such a release behind; for launched jobs launch/rank.py makes sure
        none can abort a finished process.)
        """
        import torch.distributed as dist

        if self.pending is not None:
            work, buf = self.pending
            self.pending = None
            work.wait()
            freed = threading.Event()
            ref = weakref.ref(buf, lambda _: freed.set())
            del work, buf
            freed.wait(_RELEASE_WAIT_S)
            del ref
        if self.group is not None:  # created by this vote, used by nobody else
            dist.destroy_process_group(self.group)
            self.group = None

    def sync(self, flag: bool, signum: int) -> tuple[bool, int]:
        if not self.distributed:
            return flag, signum
        prev_flag, prev_sig = self._drain()
        work, buf = self._start(flag or prev_flag, max(signum, prev_sig))
        work.wait()
        f, s = buf.tolist()
        return f > 0, int(s)


class CheckpointMixin:
    """Setup of the environment, data and optimizers; saving and restoring checkpoints."""

    # ------------------------------------------------------------------ environment
    def _setup_env(self) -> None:
        if self._setup_done:
            return
        from distengine.dist import setup

        if self.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=self.deterministic == "warn")
        if self.benchmark is not None:
            torch.backends.cudnn.benchmark = bool(self.benchmark)
        self._device = setup.select_device(self.accelerator, self.env, self._gpu_ids)
        setup.init_process_group(self.env, self._device, setup.timeout_seconds(self.dist_timeout))
        if self.env.distributed and collectives.world_size() != self.env.world_size:
            raise RuntimeError(f"the process group has {collectives.world_size()} ranks but the environment "
                               f"says WORLD_SIZE={self.env.world_size}")
        self._setup_done = True

    # ------------------------------------------------------------------ data
    def _resolve_loader(self, given: Any, datamodule: Any, kind: str, required: bool = True) -> list[Any]:
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
                datamodule.setup(stage)
            done.add(stage)
            if hasattr(datamodule, hook):
                source = getattr(datamodule, hook)()
                hooks[kind] = getattr(datamodule, hook)
        if source is None and self._module_overrides(hook):
            source = getattr(self._module, hook)()
            hooks[kind] = getattr(self._module, hook)
        if source is None:
            if required:
                what = {"train": "training", "val": "validation", "test": "test", "predict": "predict"}[kind]
                raise ValueError(f"no {what} data: pass it to the Trainer call or define {hook}() in the module")
            return []
        loaders = list(source) if isinstance(source, (list, tuple)) else [source]
        for i, loader in enumerate(loaders):
            n = _safe_len(loader)
            if n == 0:
                raise ValueError(f"the {kind} dataloader #{i} is empty (len 0): check the dataset and batch_size")
        return loaders

    def _limit(self, kind: str, loaders: list[Any] | None = None) -> list[int]:
        loaders = self._val_loaders if loaders is None else loaders
        return [_apply_limit(self.limits[kind], _safe_len(dl), kind) for dl in loaders]

    def _should_validate(self) -> bool:
        return bool(self._val_loaders) and self._module_overrides("validation_step") and \
            any(n > 0 for n in self._limit("val"))

    def _setup_fit(self, train: list[Any], val: list[Any]) -> None:
        from distengine import compat
        from distengine.optim import parse_optimizers
        from distengine.precision import Precision

        if len(train) != 1:
            raise ValueError(f"fit takes one training dataloader, got {len(train)}")
        env, module = self.env, self._module
        self._set_fit_loaders(train, val)
        self._run_sanity_check = self._should_validate() and self.num_sanity_val_steps != 0
        self._sanity_steps = [n if self.num_sanity_val_steps < 0 else min(n, self.num_sanity_val_steps)
                              for n in self._num_val_batches]
        self._precision = Precision(self.precision, self._device)
        self._nonfinite_watch = None
        module.to(self._device)
        self._precision.convert_module(module)
        if self.sync_batchnorm and env.distributed:
            if self._device.type == "cpu" and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                                  for m in module.modules()):
                # torch's SyncBatchNorm has no CPU kernels: fail here, not in the first batch
                raise ValueError("sync_batchnorm=True needs GPUs (torch's SyncBatchNorm has no CPU kernels); "
                                 "run on GPUs or drop the flag so each CPU rank keeps its own BatchNorm statistics")
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        returned = module.configure_optimizers()
        self.optimizers, self.lr_scheduler_configs = parse_optimizers(returned)
        self._one_x = compat.plan_optimization(self, module, returned)  # 1.x: several optimizers, optimizer_idx
        manual = not module.automatic_optimization
        if manual and self.precision == "16-mixed":
            raise ValueError("manual optimization with precision='16-mixed' is not supported; use 'bf16-mixed'")
        if manual and self.accumulate_grad_batches > 1:  # Lightning 2.x refuses it as well
            raise ValueError("accumulate_grad_batches is not supported with manual optimization; accumulate in "
                             "training_step (step the optimizer every N batches) or use automatic optimization")
        self._has_step_schedulers = any(c.interval == "step" for c in self.lr_scheduler_configs)
        if self.compile:
            module.compile()
        self._wrap_model(module)
        if manual:  # Lightning 2.x: global_step counts the optimizer.step() calls of training_step
            self._step_counters = [o.register_step_post_hook(self._count_manual_step) for o in self.optimizers]
        self.progress.__init__()

    def _wrap_model(self, module: Any) -> None:
        """DDP-wrap ``module`` (when distributed) and choose the training-step function."""
        from distengine.dist import setup

        distributed, manual = self.env.distributed, not module.automatic_optimization
        # the 1.x mode freezes the other optimizers' parameters in each call: 1.9.5's DDP default
        find_unused = self.find_unused_parameters or self._one_x is not None
        self._model = setup.wrap_ddp(module, self._device, find_unused_parameters=find_unused) \
            if distributed else module
        self._manual_ddp = setup.ManualDDPStep(self._model) if distributed and manual else None
        self._step_fn = self._manual_ddp or (self._model if distributed else module.training_step)
        self._wrapped_trainable = [p.requires_grad for p in module.parameters()]

    def _rewrap_if_trainable_changed(self) -> None:
        """DDP reduces only the gradients of parameters that were trainable when it was built:
        after a callback froze or unfroze some (finetuning), build it again (every rank does,
        at the same epoch start, so its start-up broadcast pairs up)."""
        if self._model is self._module:
            return
        if [p.requires_grad for p in self._module.parameters()] != self._wrapped_trainable:
            self._wrap_model(self._module)

    def _count_manual_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.progress.global_step += 1

    def _set_fit_loaders(self, train: list[Any], val: list[Any]) -> None:
        from distengine.data import prepare_eval_loader, prepare_train_loader

        env = self.env
        self._raw_loaders = (train, val)
        shuffle = False if self.overfit_batches else None
        self._train_loader, self._train_sampler = prepare_train_loader(
            train[0], env.world_size, env.rank, self.use_distributed_sampler, shuffle)
        self._val_loaders = [prepare_eval_loader(v, env.world_size, env.rank, self.use_distributed_sampler)
                             for v in val]
        n = _safe_len(self._train_loader)
        self._num_train_batches = _apply_limit(self.limits["train"], n, "train")
        if self._num_train_batches == 0:
            raise ValueError("limit_train_batches leaves no training batch; raise it")
        # Lightning: no validation_step, no validation batches (checkpoints then follow the epochs)
        self._num_val_batches = self._limit("val") if self._module_overrides("validation_step") else []
        self._val_every_batches = val_every_batches(self.val_check_interval, self._num_train_batches)

    def _reload_dataloaders(self) -> None:
        """Call the ``*_dataloader`` hooks again (loaders passed to ``fit`` stay, as in Lightning)."""
        hooks = getattr(self, "_loader_hooks", {})
        if not {"train", "val"} & set(hooks):
            return
        train, val = self._raw_loaders
        if "train" in hooks:
            train = [hooks["train"]()]
        if "val" in hooks:
            source = hooks["val"]()
            val = list(source) if isinstance(source, (list, tuple)) else [source]
        self._set_fit_loaders(train, val)

    def _evaluate(self, stage: str, model: Any, dataloaders: Any, datamodule: Any, ckpt_path: Any) -> list[Any]:
        from distengine import loop
        from distengine.data import prepare_eval_loader

        model = model if model is not None else self._module
        if model is None:
            raise ValueError(f"Trainer.{stage} needs a model: pass one, or call fit() first")
        self._check_module(model, stage)
        self._launch_if_needed()
        with self._run(stage, model):
            kind = {"validate": "val", "test": "test", "predict": "predict"}[stage]
            if datamodule is None and hasattr(dataloaders, f"{kind}_dataloader"):
                datamodule, dataloaders = dataloaders, None  # test(model, dm), as Lightning allows
            loaders = self._resolve_loader(dataloaders, datamodule, kind)
            env = self.env
            loaders = [prepare_eval_loader(dl, env.world_size, env.rank, self.use_distributed_sampler)
                       for dl in loaders]
            if self._precision is None or self._precision.device != self._device:
                from distengine.precision import Precision

                self._precision = Precision(self.precision, self._device)
            model.to(self._device)
            self._precision.convert_module(model)
            if ckpt_path is not None:
                self._load_weights_only(ckpt_path)
            limit = [_apply_limit(self.limits[kind], _safe_len(dl), kind) for dl in loaders]
            self._eval_batches = {stage: limit}
            if stage == "validate":
                self._num_val_batches = limit
            result = loop.run_eval(self, stage, loaders, limit)
        return result

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_dir(self) -> str:
        cb = self.checkpoint_callback
        if cb is not None and getattr(cb, "dirpath", None):
            return cb.dirpath
        return os.path.join(self.weights_save_path or self.default_root_dir, "checkpoints")

    def _checkpoint_dict(self, weights_only: bool = False) -> dict[str, Any] | None:
        """The full checkpoint on global rank zero (None elsewhere). A collective: every rank
        must call it, since the RNG states of all ranks are gathered."""
        import distengine
        from distengine.checkpoint.apply import FORMAT_VERSION
        from distengine.checkpoint.rng import capture_rng_state
        from distengine.data import global_seed

        self._raise_if_nonfinite()  # never write a checkpoint of weights a NaN step produced
        rng = collectives.all_gather_object(capture_rng_state()) if not weights_only else None
        if not self.is_global_zero:
            return None
        module, p = self._module, self.progress
        ckpt: dict[str, Any] = {
            "format_version": FORMAT_VERSION, "distengine_version": distengine.__version__,
            "torch_version": str(torch.__version__), "world_size": self.world_size,
            "epoch": p.epoch, "global_step": p.global_step,
            "state_dict": module.state_dict(), **module._hparams_checkpoint_entries(),
        }
        if not weights_only:
            bs = getattr(self._train_loader, "batch_size", None) or 1
            samples = self._epoch_start_sample + (p.batches_done - self._epoch_start_batch) * bs * self.world_size
            p.samples_done = samples if not p.epoch_done else 0
            ckpt.update({
                "progress": p.state_dict(),
                "optimizer_states": [o.state_dict() for o in self.optimizers],
                "optimizer_classes": [type(o).__name__ for o in self.optimizers],
                "lr_schedulers": [c.scheduler.state_dict() for c in self.lr_scheduler_configs],
                "precision": self._precision.state_dict(),
                "data": {"seed": global_seed(), "epoch": p.epoch, "samples_done": p.samples_done},
                "rng": rng,
                "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
            })
        for fn in self._module_hooks.get("on_save_checkpoint", ()):
            fn(ckpt)
        for fn in self._callback_hooks.get("on_save_checkpoint", ()):
            fn(ckpt)
        return ckpt

    def save_checkpoint(self, filepath: str, weights_only: bool = False, storage_options: Any = None) -> None:
        """Save a checkpoint. A collective: call it on every rank; global rank zero writes the
        file atomically (a temporary file, fsync, rename) and every rank waits for it."""
        from distengine.checkpoint.io import atomic_save

        with self.profiler.profile("save_checkpoint"):
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
        from distengine.checkpoint.apply import check_optimizer_states, load_weights
        from distengine.checkpoint.io import resolve_checkpoint, resolve_last_in_versions, safe_load

        self._epoch_start_sample, self._epoch_start_batch = 0, 0
        if ckpt_path is None:
            return
        path = resolve_checkpoint(ckpt_path, self._checkpoint_dir())
        version_root = getattr(self.checkpoint_callback, "version_root", None)
        if path is None and ckpt_path == "last" and version_root:  # a restarted run: a new version
            path = resolve_last_in_versions(version_root, self._checkpoint_dir())
        if path is None:
            if self.is_global_zero:
                print(f"distengine: no checkpoint in {self._checkpoint_dir()} yet; starting fresh",
                      file=sys.stderr, flush=True)
            return
        # Load on the CPU and let each load_state_dict place its tensors: weights are copied
        # into the parameters where they live, and the optimizers keep Adam's ``step`` counters
        # on the CPU. Loaded onto a GPU, those counters would stay there, and the default
        # (foreach) Adam reads each one back with .item() at every step: a sync per parameter.
        ckpt = safe_load(path, map_location="cpu")
        module = self._module
        for fn in self._module_hooks.get("on_load_checkpoint", ()):
            fn(ckpt)
        # before anything is restored: a refused resume leaves the weights and optimizers as they are
        if "optimizer_states" in ckpt:  # first: a callback may rebuild parameter groups (finetuning)
            for cb in self.callbacks:
                state = ckpt.get("callbacks", {}).get(cb.state_key)
                if state is not None:
                    cb.load_state_dict(state)
        check_optimizer_states(self.optimizers, ckpt, source=path)
        load_weights(module, ckpt["state_dict"], source=path)
        if "optimizer_states" not in ckpt:
            return  # a weights-only checkpoint: start training from these weights
        for opt, state in zip(self.optimizers, ckpt["optimizer_states"]):
            opt.load_state_dict(state)
        for cfg, state in zip(self.lr_scheduler_configs, ckpt.get("lr_schedulers", [])):
            cfg.scheduler.load_state_dict(state)
        self._precision.load_state_dict(ckpt.get("precision", {}))
        for fn in self._callback_hooks.get("on_load_checkpoint", ()):
            fn(ckpt)
        p = self.progress
        p.load_state_dict(ckpt["progress"])
        self._rng_after_iter = p.iter_started and not p.epoch_done
        if p.epoch_done:
            p.epoch, p.batches_done, p.samples_done, p.epoch_done = p.epoch + 1, 0, 0, False
            p.iter_started = False
        samples = int(ckpt.get("data", {}).get("samples_done", p.samples_done))
        if self._train_sampler is not None and samples:
            self._train_sampler.set_start(samples)
            bs = getattr(self._train_loader, "batch_size", None) or 1
            p.batches_done = samples // (bs * self.world_size)
        self._epoch_start_sample, self._epoch_start_batch = samples, p.batches_done
        rng = ckpt.get("rng") or []
        if rng:
            # exact when the world size is unchanged; otherwise rank r continues rank r's stream
            self._pending_rng = rng[self.global_rank] if self.global_rank < len(rng) else rng[0]
        self._run_sanity_check = False
        if self.is_global_zero:
            print(f"distengine: resumed from {path} (epoch {p.epoch}, step {p.global_step})",
                  file=sys.stderr, flush=True)

    def _load_weights_only(self, ckpt_path: str) -> None:
        from distengine.checkpoint.apply import load_weights
        from distengine.checkpoint.io import resolve_checkpoint, safe_load

        if ckpt_path == "best":  # Lightning: the best checkpoint the ModelCheckpoint callback kept
            best = getattr(self.checkpoint_callback, "best_model_path", "")
            if not best:
                raise ValueError('ckpt_path="best" needs a ModelCheckpoint that has saved a checkpoint in '
                                 "this Trainer; pass a file path or 'last' instead")
            ckpt_path = best
        path = resolve_checkpoint(ckpt_path, self._checkpoint_dir())
        if path is None:
            raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: no checkpoint found in {self._checkpoint_dir()}")
        load_weights(self._module, safe_load(path, map_location="cpu")["state_dict"], source=path)

