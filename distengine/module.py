"""`Module`: the hooks a user overrides to describe the science of a training run.

Example::

    import torch, distengine as de

    class Classifier(de.Module):
        def __init__(self, lr=0.1):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(8, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.cross_entropy(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

The older (1.x) style also works: ``training_step`` may return ``{"loss": loss, "log": {...},
"progress_bar": {...}}`` and ``training_epoch_end(outputs)``, ``validation_epoch_end(outputs)``
and ``test_epoch_end(outputs)`` receive the detached step outputs of the epoch on this rank.
"""
from __future__ import annotations

import inspect
from argparse import Namespace
from typing import Any, Mapping

import torch
from torch import nn

from distengine.barebones import warn_log_ignored
from distengine.callbacks.base import CALLBACK_HOOKS
from distengine.module_helpers import clip_gradients
from distengine.module_helpers import copy_hparams as _copy_hparams
from distengine.module_helpers import manual_backward as _manual_backward
from distengine.module_helpers import map_collection as _map_collection
from distengine.module_hooks import ModelHooks

#: Hooks of the module that take no ``trainer, module`` arguments; the Trainer only calls the
#: ones a subclass overrides.
MODULE_HOOKS = tuple(h for h in CALLBACK_HOOKS
                     if h not in ("on_sanity_check_start", "on_sanity_check_end", "on_exception")) + (
    # 1.x names still taught by tutorials
    "on_epoch_start", "on_epoch_end", "on_batch_start", "on_batch_end",
)


class AttributeDict(dict):
    """A dict whose keys are also attributes: ``hparams.lr`` and ``hparams["lr"]``."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"no hyperparameter named {key!r}; saved: {sorted(self)}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


class Module(ModelHooks, nn.Module):
    """A ``torch.nn.Module`` with training hooks. See the module docstring for an example."""

    #: Set to False in ``__init__`` to call ``self.optimizers()``, ``self.manual_backward(loss)``
    #: and ``optimizer.step()`` yourself in ``training_step``.
    automatic_optimization: bool = True
    _exporting = False  # True while torch.jit traces a module (TensorBoard's graph): self.trainer may be None
    #: the checkpoint keys of the hyperparameters, their __init__ argument name and container type
    CHECKPOINT_HYPER_PARAMS_KEY, CHECKPOINT_HYPER_PARAMS_NAME = "hyper_parameters", "hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "hparams_type"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer = None
        self._hparams = AttributeDict()

    def __getstate__(self) -> dict[str, Any]:
        # a copy or a pickle of the module (deepcopy for an averaged or EMA model, a spawned
        # worker) must not drag the Trainer along: it holds process groups and loaders
        state = dict(self.__dict__)
        state["_trainer"] = None
        return state

    # ------------------------------------------------------------------ properties
    @property
    def trainer(self):
        """The Trainer this module is attached to; outside one (before ``fit``/``validate``/...,
        or a module built by hand) reading it is a ``RuntimeError``, as in Lightning."""
        if self._trainer is None and not (torch.jit.is_scripting() or Module._exporting):
            raise RuntimeError(f"{type(self).__qualname__} is not attached to a Trainer (no fit/validate/test/predict "
                               "is running it); read self.trainer inside the Trainer's hooks")
        return self._trainer

    @trainer.setter
    def trainer(self, trainer) -> None:  # Lightning allows it; child LightningModules follow
        for child in self.children():
            if isinstance(child, Module):
                child.trainer = trainer
        self._trainer = trainer

    @property
    def device(self) -> torch.device:
        if self._trainer is not None:
            return self._trainer.strategy.root_device
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def device_mesh(self) -> Any:
        """The strategy's ``DeviceMesh`` (``ModelParallelStrategy``: for ``configure_model``), else None."""
        return getattr(self._trainer.strategy, "device_mesh", None) if self._trainer is not None else None

    @property
    def global_rank(self) -> int:
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def local_rank(self) -> int:
        return self._trainer.local_rank if self._trainer is not None else 0

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def hparams(self) -> AttributeDict:
        return self._hparams

    @hparams.setter
    def hparams(self, hp: Any) -> None:
        """The 0.x/1.x style ``self.hparams = hparams`` (an argparse ``Namespace`` or a dict):
        the same as ``self.save_hyperparameters(hparams)``."""
        self._hparams = AttributeDict()
        self._set_hparams_object(hp)

    def _set_hparams_object(self, hp: Any, ignore: list[str] | None = None) -> None:
        if not isinstance(hp, (Mapping, Namespace)):
            raise TypeError(f"hparams must be a dict or an argparse.Namespace, got {type(hp).__name__}")
        # Like Lightning, remember which __init__ argument held it, so that load_from_checkpoint
        # can hand it back to that argument (as a Namespace when it was one)
        frame, name = inspect.currentframe(), None
        while frame is not None and name is None:
            if frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is self:
                name = next((n for n in frame.f_code.co_varnames[1:frame.f_code.co_argcount]
                             if frame.f_locals.get(n) is hp), None)
            frame = frame.f_back
        self._hparams_name, self._hparams_type = name, type(hp).__name__
        params = dict(vars(hp) if isinstance(hp, Namespace) else hp)
        for k in ignore or ():
            params.pop(k, None)
        self._hparams.update(_copy_hparams(params))
        self._log_hyperparams = True

    def _hparams_checkpoint_entries(self) -> dict[str, Any]:
        """What checkpoints store about the hyperparameters: Lightning's ``hyper_parameters``
        (a plain dict) and ``hparams_name``, plus the container's type."""
        hp = dict(self._hparams)
        # an nn.Module argument is not plain data (the safe loader refuses pickled classes): its
        # weights are in the state_dict, its name here, and load_from_checkpoint asks for it
        modules = sorted(k for k, v in hp.items() if isinstance(v, nn.Module))
        out: dict[str, Any] = {self.CHECKPOINT_HYPER_PARAMS_KEY: {k: v for k, v in hp.items() if k not in modules}}
        if modules:
            out["hparams_modules"] = modules
        name = getattr(self, "_hparams_name", None)
        if name:
            out.update({self.CHECKPOINT_HYPER_PARAMS_NAME: name, self.CHECKPOINT_HYPER_PARAMS_TYPE: self._hparams_type})
        return out

    @property
    def logger(self):
        return self._trainer.logger if self._trainer is not None else None

    @property
    def loggers(self) -> list[Any]:
        """All of the Trainer's loggers (``[]`` outside a Trainer)."""
        return list(self._trainer.loggers) if self._trainer is not None else []

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the parameters (float32 unless converted; ``torch.float32`` without any)."""
        for p in self.parameters():
            return p.dtype
        return torch.get_default_dtype()

    @property
    def on_gpu(self) -> bool:
        """True when the module runs on a CUDA device."""
        return self.device.type == "cuda"

    # ------------------------------------------------------------------ freezing
    def freeze(self) -> Module:
        """Stop training every parameter and switch to eval mode (for inference); returns the module."""
        for p in self.parameters():
            p.requires_grad = False
        return self.eval()

    def unfreeze(self) -> Module:
        """Undo :meth:`freeze`: every parameter trainable again, train mode; returns the module."""
        for p in self.parameters():
            p.requires_grad = True
        return self.train()

    # ------------------------------------------------------------------ collectives
    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Gather ``data`` (a tensor, number, or a dict/list/tuple of them) from every rank:
        each tensor comes back stacked, shape ``(world_size, *shape)``, in rank order. Outside
        a process group it is returned unchanged (numbers as tensors), as in Lightning.
        ``sync_grads=True`` lets gradients flow back through the gather."""
        import torch.distributed as dist

        def gather(x: Any) -> Any:
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                x = torch.as_tensor(x, device=self.device)
            if not isinstance(x, torch.Tensor):
                return x
            if not (dist.is_available() and dist.is_initialized()):
                return x
            x = x.contiguous()
            if sync_grads:
                from torch.distributed.nn.functional import all_gather as differentiable_gather

                return torch.stack(differentiable_gather(x, group=group or dist.group.WORLD))
            out = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
            dist.all_gather(out, x, group=group)
            return torch.stack(out)

        return _map_collection(data, gather)

    # ------------------------------------------------------------------ logging
    def log(self, name: str, value: Any, prog_bar: bool = False, logger: bool = True,
            on_step: bool | None = None, on_epoch: bool | None = None, reduce_fx: str = "mean",
            sync_dist: bool = False, batch_size: int | None = None, rank_zero_only: bool = False,
            enable_graph: bool = False, add_dataloader_idx: bool = True, metric_attribute: str | None = None,
            **_ignored: Any) -> None:
        """Record a scalar metric.

        Defaults follow Lightning: inside ``training_step`` and the train batch hooks the
        value is logged per step (``on_step=True, on_epoch=False``); in validation/test, and
        in any ``*_epoch_*`` hook, it is accumulated over the epoch (``on_epoch=True``),
        weighted by ``batch_size`` (inferred from the batch when omitted). Epoch values are
        always reduced across ranks with per-rank sample counts, so a validation metric equals
        its single-process value. ``sync_dist=True`` also reduces per-step values when they
        are written (every ``log_every_n_steps``), in one fused collective for all metrics.
        Every rank must log the same names (checked where values are written); a value that
        only rank 0 logs needs ``rank_zero_only=True``, which keeps it out of that check and of
        every reduce (it is this rank's own value). Outside a Trainer the call does nothing.

        ``value`` may also be a ``torchmetrics.Metric`` attribute of this module: its step value
        is its ``forward`` result on the batch, its epoch value ``compute()`` (synchronised by
        torchmetrics) followed by ``reset()``, as in Lightning (see metric_objects.py);
        ``metric_attribute`` names the attribute when the metric object is not found on the module.

        With several evaluation dataloaders the name gets ``/dataloader_idx_N``
        (``add_dataloader_idx=False``: kept as given; the value then appears only in the results of
        the dataloader that logged it). A name may not contain ``/dataloader_idx_`` itself.
        """
        trainer = self._trainer
        if trainer is None:
            return
        if getattr(trainer, "barebones", False):
            return warn_log_ignored(name)  # (barebones.py)
        if "/dataloader_idx_" in name:
            from distengine.utilities.exceptions import ConfigError

            raise ConfigError(f"self.log({name!r}): the name may not contain '/dataloader_idx_'; the Trainer adds "
                              "that suffix itself with several dataloaders, log the plain name")
        if trainer.metric_results.no_log_hook is not None:
            from distengine.utilities.exceptions import ConfigError

            hook = trainer.metric_results.no_log_hook
            raise ConfigError(f"self.log({name!r}) inside `{hook}` is not allowed (as in Lightning): log from a "
                              "step, batch or epoch hook, or write to self.logger.experiment directly")
        trainer.metric_results.log(name, value, prog_bar, logger, on_step, on_epoch, reduce_fx,
                                   sync_dist, batch_size, rank_zero_only, add_dataloader_idx, metric_attribute)

    def log_dict(self, dictionary: Mapping[str, Any], **kwargs: Any) -> None:
        """Call :meth:`log` for each item of ``dictionary`` with the same options; a
        ``torchmetrics.MetricCollection`` logs each of its metrics under its key (with the
        collection's prefix/postfix)."""
        from distengine.metric_objects import dict_items

        for name, value in dict_items(dictionary):
            self.log(name, value, **kwargs)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank zero only."""
        if self.global_rank == 0:
            print(*args, **kwargs)

    # ------------------------------------------------------------------ hyperparameters
    def save_hyperparameters(self, *args: Any, ignore: list[str] | str | None = None,
                             logger: bool = True) -> None:
        """Store the arguments of the calling ``__init__`` in ``self.hparams``.

        With no arguments every ``__init__`` argument is saved; with names, only those; with a
        dict (or Namespace), its items. They are written to checkpoints and to the loggers.
        """
        ignore = [ignore] if isinstance(ignore, str) else list(ignore or [])
        if len(args) == 1 and not isinstance(args[0], str):
            self._set_hparams_object(args[0], ignore)
            self._log_hyperparams = logger
            return
        else:
            frame = inspect.currentframe().f_back
            init_args: dict[str, Any] = {}
            # Walk up through super().__init__ calls to collect every subclass's arguments.
            while frame is not None and frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is self:
                info = inspect.getargvalues(frame)
                for name in info.args[1:]:
                    init_args.setdefault(name, info.locals[name])
                if info.varargs:
                    init_args.setdefault(info.varargs, info.locals[info.varargs])
                if info.keywords:
                    for k, v in info.locals[info.keywords].items():
                        init_args.setdefault(k, v)
                frame = frame.f_back
            params = {k: v for k, v in init_args.items() if not args or k in args}
            missing = [a for a in args if a not in init_args]
            if missing:
                raise ValueError(f"save_hyperparameters: {missing} are not arguments of __init__")
        for k in ignore:
            params.pop(k, None)
        self._hparams.update(_copy_hparams(params))
        self._log_hyperparams = logger

    # ------------------------------------------------------------------ the science (override)
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self(batch)

    def configure_optimizers(self) -> Any:
        raise NotImplementedError

    def train_dataloader(self) -> Any:
        raise NotImplementedError

    def val_dataloader(self) -> Any:
        raise NotImplementedError

    def test_dataloader(self) -> Any:
        raise NotImplementedError

    def predict_dataloader(self) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ manual optimization
    def optimizers(self, use_pl_optimizer: bool = True):
        """The optimizer(s) from ``configure_optimizers`` (one, or a list when several), each a
        :class:`~distengine.optim.LightningOptimizer` (also an instance of its own class; the
        same object on every call); ``use_pl_optimizer=False``: the torch optimizers themselves."""
        opts = self._trainer.optimizers
        if use_pl_optimizer:
            from distengine.optim import wrap_optimizers

            opts = wrap_optimizers(self._trainer, opts)
        return opts[0] if len(opts) == 1 else opts

    def lr_schedulers(self):
        cfgs = self._trainer.lr_scheduler_configs
        if not cfgs:
            return None
        return cfgs[0].scheduler if len(cfgs) == 1 else [c.scheduler for c in cfgs]

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """``loss.backward()`` through the Trainer's precision and :meth:`backward` (use with manual
        optimization), between ``on_before_backward`` and ``on_after_backward``. Under DDP it
        first prepares DDP's reducer for this loss, so each call's gradients are averaged over
        the ranks before it returns."""
        _manual_backward(self, loss, *args, **kwargs)  # (module_helpers.py)

    def clip_gradients(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                       gradient_clip_algorithm: str | None = None) -> None:
        """Clip the gradients of ``optimizer``'s parameters (use with manual optimization, after
        ``manual_backward`` and before ``optimizer.step()``). Mixed-precision gradients are
        unscaled first. With no value, the Trainer's ``gradient_clip_val`` /
        ``gradient_clip_algorithm`` are used; ``0``/``None`` clips nothing.

        Example: ``self.clip_gradients(opt, gradient_clip_val=0.5, gradient_clip_algorithm="norm")``
        """
        clip_gradients(self._trainer, optimizer, gradient_clip_val, gradient_clip_algorithm)

    # the optimisation hooks a module may override (called as in Lightning: optim_hooks.py)
    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Step ``optimizer``; ``optimizer_closure`` runs this batch's ``training_step`` and backward.
        An override must call ``optimizer.step(closure=optimizer_closure)`` (or the closure)."""
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad()

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Called before every optimizer step with the Trainer's clipping values."""
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Step ``scheduler`` (override it for a scheduler with another ``step`` signature)."""
        scheduler.step() if metric is None else scheduler.step(metric)

    def log_grad_norm(self, grad_norm_dict: dict[str, float]) -> None:
        """1.x hook (``Trainer(track_grad_norm=p)``): log the gradient norms of a step."""
        self.log_dict(grad_norm_dict, on_step=True, on_epoch=True, prog_bar=False, logger=True)

    def toggle_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Freeze (``requires_grad=False``) the parameters of every OTHER optimizer, so that a
        backward for this one leaves no gradients on them (the GAN pattern); undo it with
        :meth:`untoggle_optimizer`. Parameters this optimizer owns keep their own setting.

        Example: ``self.toggle_optimizer(opt_g); self.manual_backward(g_loss); opt_g.step();
        self.untoggle_optimizer(opt_g)``
        """
        saved: dict[torch.nn.Parameter, bool] = {}
        for opt in self._trainer.optimizers:
            for group in opt.param_groups:
                for p in group["params"]:
                    saved.setdefault(p, p.requires_grad)
                    p.requires_grad_(False)
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.requires_grad_(saved[p])
        self._toggled_requires_grad = saved

    def untoggle_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Restore the ``requires_grad`` flags that :meth:`toggle_optimizer` changed."""
        for p, flag in getattr(self, "_toggled_requires_grad", {}).items():
            p.requires_grad_(flag)
        self._toggled_requires_grad = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str, map_location: Any = "cpu", hparams_file: Any = None,
                             strict: bool = True, **overrides: Any) -> Module:
        """Build the module from a checkpoint's hyperparameters (or ``hparams_file``'s, a .yaml
        or .csv file; updated by ``overrides``) and load its weights (``strict=False``: keys the
        module lacks or the checkpoint lacks are left out). No training state is restored.
        Loading is always ``weights_only`` (distengine/module_loading.py).

        Example: ``model = Classifier.load_from_checkpoint("checkpoints/last.ckpt", lr=0.01)``
        """
        from distengine.module_loading import load_module

        model, ckpt = load_module(cls, checkpoint_path, map_location, hparams_file, strict, overrides)
        if type(model).on_load_checkpoint is not Module.on_load_checkpoint:
            model.on_load_checkpoint(ckpt)
        return model


def _noop(self, *args, **kwargs):
    return None


for _name in MODULE_HOOKS:
    setattr(Module, _name, _noop)
del _name


def module_overrides(module: Module, name: str, unwrap: bool = False) -> bool:
    """True when ``module`` has its own ``name``. ``unwrap``: a wrapper (functools.wraps, a
    partial) set on the instance around the default does not count (Lightning's is_overridden)."""
    if name in getattr(module, "__dict__", ()):  # set on the instance (LightningCLI's configure_optimizers)
        attr = module.__dict__[name]
        if not callable(attr):
            return False
        while unwrap and hasattr(attr, "__wrapped__"):
            attr = attr.__wrapped__
        return not unwrap or getattr(attr, "__func__", attr) is not getattr(Module, name, None)
    impl = getattr(type(module), name, None)
    return impl is not None and impl is not getattr(Module, name, None)


# torch.jit.script skips these (they read the Trainer, which TorchScript cannot type): a module
# attached to a Trainer scripts, as in Lightning
Module.__jit_unused_properties__ = sorted(
    {n for c in Module.__mro__ if c.__module__.startswith("distengine") for n, v in vars(c).items()
     if isinstance(v, property)} | set(getattr(nn.Module, "__jit_unused_properties__", [])))

LightningModule = Module
