"""Finetuning callbacks: freeze part of a model, then unfreeze it later with its own
learning rate.

``BaseFinetuning`` is the toolkit (subclass it and write ``freeze_before_training`` and
``finetune_function``); ``BackboneFinetuning`` is the common case, a ``module.backbone``
frozen until a chosen epoch::

    class Unfreeze(BaseFinetuning):
        def freeze_before_training(self, module):
            self.freeze(module.encoder)

        def finetune_function(self, module, epoch, optimizer):
            if epoch == 5:
                self.unfreeze_and_add_param_group(module.encoder, optimizer, lr=1e-4)

    Trainer(callbacks=[Unfreeze()])                        # or:
    Trainer(callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=5)])

Resuming: the parameter groups added so far are recorded (by parameter name) in the
checkpoint and rebuilt before the optimizer state is loaded, so a resumed run has the same
groups, learning rates and optimizer moments as the interrupted one.

Under DDP the Trainer rebuilds its DDP wrapper when the set of trainable parameters changes
(DDP only reduces the gradients of parameters that were trainable when it was built), so
unfrozen parameters stay identical on every rank.

Unlike Lightning, a parameter already in the optimizer is recognised by identity, not by
equal values (two zero-initialised biases are different parameters).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch import nn

from distengine import torch_private
from distengine.callbacks.base import Callback

Modules = nn.Module | Iterable[Any]


def multiplicative(epoch: int) -> float:
    """BackboneFinetuning's default ``lambda_func``: the backbone's rate doubles each epoch (as in Lightning)."""
    return 2.0


class BaseFinetuning(Callback):
    """Freeze modules before training, change them in ``finetune_function`` at each epoch
    start. Subclasses implement ``freeze_before_training(module)`` and
    ``finetune_function(module, epoch, optimizer)``."""

    def __init__(self) -> None:
        # optimizer index -> its parameter groups, with parameter NAMES instead of tensors
        self._internal_optimizer_metadata: dict[int, list[dict[str, Any]]] = {}
        self._pending_groups: dict[int, list[dict[str, Any]]] | None = None
        self._trainer: Any = None

    # ------------------------------------------------------------------ the toolkit
    @staticmethod
    def flatten_modules(modules: Modules) -> list[nn.Module]:
        """The leaf modules (those with no children) under ``modules``; a module that owns
        parameters itself is kept as well."""
        if isinstance(modules, nn.ModuleDict):
            modules = list(modules.values())
        if isinstance(modules, Iterable) and not isinstance(modules, nn.Module):
            roots: list[nn.Module] = []
            for m in modules:
                roots.extend(BaseFinetuning.flatten_modules(m))
            return roots
        return [m for m in modules.modules()
                if not list(m.children()) or any(True for _ in m.parameters(recurse=False))]

    @staticmethod
    def filter_params(modules: Modules, train_bn: bool = True, requires_grad: bool = True) -> list[nn.Parameter]:
        """Parameters of ``modules`` whose ``requires_grad`` equals ``requires_grad`` (BatchNorm
        parameters only with ``train_bn``)."""
        out = []
        for mod in BaseFinetuning.flatten_modules(modules):
            if torch_private.is_batchnorm(mod) and not train_bn:
                continue
            out.extend(p for p in mod.parameters(recurse=False) if p.requires_grad == requires_grad)
        return out

    @staticmethod
    def make_trainable(modules: Modules) -> None:
        for mod in BaseFinetuning.flatten_modules(modules):
            if torch_private.is_batchnorm(mod):
                mod.track_running_stats = True
            for p in mod.parameters(recurse=False):
                p.requires_grad = True

    @staticmethod
    def freeze_module(module: nn.Module) -> None:
        """Freeze one module's own parameters; a BatchNorm also stops updating its statistics."""
        if torch_private.is_batchnorm(module):
            module.track_running_stats = False
        for p in module.parameters(recurse=False):
            p.requires_grad = False

    @staticmethod
    def freeze(modules: Modules, train_bn: bool = True) -> None:
        """Freeze ``modules``; with ``train_bn`` their BatchNorm layers stay trainable."""
        for mod in BaseFinetuning.flatten_modules(modules):
            if torch_private.is_batchnorm(mod) and train_bn:
                BaseFinetuning.make_trainable(mod)
            else:
                BaseFinetuning.freeze_module(mod)

    @staticmethod
    def filter_on_optimizer(optimizer: torch.optim.Optimizer, params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
        """``params`` minus those already in one of ``optimizer``'s groups."""
        present = {id(p) for g in optimizer.param_groups for p in g["params"]}
        params = list(params)
        out = [p for p in params if id(p) not in present]
        skipped = len(params) - len(out)
        if skipped:
            from distengine.distributed.rank_zero import rank_zero_warn

            rank_zero_warn(f"{skipped} parameter(s) to unfreeze are already in the optimizer and were skipped; "
                           "build it from the trainable parameters only, e.g. "
                           "Adam(filter(lambda p: p.requires_grad, self.parameters()))")
        return out

    @staticmethod
    def unfreeze_and_add_param_group(modules: Modules, optimizer: torch.optim.Optimizer, lr: float | None = None,
                                     initial_denom_lr: float = 10.0, train_bn: bool = True) -> None:
        """Unfreeze ``modules`` and give their parameters a new group of ``optimizer`` with
        learning rate ``lr`` (default: the first group's rate / ``initial_denom_lr``)."""
        BaseFinetuning.make_trainable(modules)
        group_lr = optimizer.param_groups[0]["lr"] / initial_denom_lr if lr is None else float(lr)
        params = BaseFinetuning.filter_on_optimizer(
            optimizer, BaseFinetuning.filter_params(modules, train_bn=train_bn, requires_grad=True))
        if params:
            optimizer.add_param_group({"params": params, "lr": group_lr})

    # ------------------------------------------------------------------ what subclasses write
    def freeze_before_training(self, module: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement freeze_before_training(module)")

    def finetune_function(self, module: Any, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement finetune_function(module, epoch, "
                                  "optimizer)")

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = trainer
        self.freeze_before_training(pl_module)

    def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
        names = {p: n for n, p in module.named_parameters()}
        for i, optimizer in enumerate(trainer.optimizers):
            before = len(optimizer.param_groups)
            self.finetune_function(module, trainer.current_epoch, optimizer)
            groups = self._internal_optimizer_metadata.get(i)
            if groups is None:
                self._internal_optimizer_metadata[i] = _named_groups(optimizer.param_groups, names)
            elif len(optimizer.param_groups) != before:  # groups the function added
                groups.extend(_named_groups(optimizer.param_groups[before:], names))

    def teardown(self, trainer: Any, module: Any, stage: str) -> None:
        self._trainer = None

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Called on resume, after the optimizers are built and before their state is loaded:
        rebuild the saved parameter groups now, so the saved optimizer state fits them."""
        self._internal_optimizer_metadata = {int(k): v for k, v in
                                             state_dict.get("internal_optimizer_metadata", {}).items()}
        trainer = self._trainer
        if trainer is None or not self._internal_optimizer_metadata:
            return
        params = dict(trainer.lightning_module.named_parameters())
        for i, optimizer in enumerate(trainer.optimizers):
            saved = self._internal_optimizer_metadata.get(i)
            if saved is None:
                continue
            missing = sorted({n for g in saved for n in g["params"] if n not in params})
            if missing:
                raise RuntimeError(f"{type(self).__name__}: the checkpoint's optimizer groups name parameters "
                                   f"this model lacks ({missing[:3]}); resume with the model it was saved with")
            for name in {n for g in saved[len(optimizer.param_groups):] for n in g["params"]}:
                params[name].requires_grad = True  # unfrozen before the interruption
            optimizer.param_groups = [{**{k: v for k, v in g.items() if k != "params"},
                                       "params": [params[n] for n in g["params"]]} for g in saved]


def _named_groups(groups: list[dict[str, Any]], names: dict[Any, str]) -> list[dict[str, Any]]:
    return [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[p] for p in g["params"]]}
            for g in groups]


class BackboneFinetuning(BaseFinetuning):
    """Freeze ``module.backbone`` until ``unfreeze_backbone_at_epoch``; then train it in a new
    parameter group whose learning rate starts at ``backbone_initial_lr`` (default: the
    current rate x ``backbone_initial_ratio_lr``) and is multiplied by ``lambda_func(epoch + 1)``
    at each later epoch, capped at the main rate when ``should_align``."""

    def __init__(self, unfreeze_backbone_at_epoch: int = 10, lambda_func: Callable[[int], float] = multiplicative,
                 backbone_initial_ratio_lr: float = 10e-2, backbone_initial_lr: float | None = None,
                 should_align: bool = True, initial_denom_lr: float = 10.0, train_bn: bool = True,
                 verbose: bool = False, rounding: int = 12) -> None:
        super().__init__()
        if not isinstance(unfreeze_backbone_at_epoch, int) or unfreeze_backbone_at_epoch < 0:
            raise ValueError(f"BackboneFinetuning(unfreeze_backbone_at_epoch={unfreeze_backbone_at_epoch!r}): "
                             "use an epoch number >= 0")
        self.unfreeze_backbone_at_epoch = unfreeze_backbone_at_epoch
        self.lambda_func = lambda_func
        self.backbone_initial_ratio_lr = backbone_initial_ratio_lr
        self.backbone_initial_lr = backbone_initial_lr
        self.should_align = should_align
        self.initial_denom_lr = initial_denom_lr
        self.train_bn = train_bn
        self.verbose = verbose
        self.rounding = rounding
        self.previous_backbone_lr: float | None = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not isinstance(getattr(pl_module, "backbone", None), nn.Module):
            raise ValueError(f"BackboneFinetuning needs an nn.Module attribute `backbone` on "
                             f"{type(pl_module).__name__}; name the part to freeze self.backbone, or subclass "
                             "BaseFinetuning")
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, module: Any) -> None:
        self.freeze(module.backbone)

    def finetune_function(self, module: Any, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        current = optimizer.param_groups[0]["lr"]
        if epoch == self.unfreeze_backbone_at_epoch:
            lr = self.backbone_initial_lr if self.backbone_initial_lr is not None \
                else current * self.backbone_initial_ratio_lr
            self.previous_backbone_lr = lr
            self.unfreeze_and_add_param_group(module.backbone, optimizer, lr, train_bn=self.train_bn,
                                              initial_denom_lr=self.initial_denom_lr)
        elif epoch > self.unfreeze_backbone_at_epoch and self.previous_backbone_lr is not None:
            lr = self.lambda_func(epoch + 1) * self.previous_backbone_lr
            if self.should_align and lr > current:
                lr = current
            optimizer.param_groups[-1]["lr"] = lr
            self.previous_backbone_lr = lr
        else:
            return
        if self.verbose:
            from distengine.distributed.rank_zero import rank_zero_info

            rank_zero_info(f"epoch {epoch}: lr {round(current, self.rounding)}, "
                           f"backbone lr {round(self.previous_backbone_lr, self.rounding)}")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous_backbone_lr": self.previous_backbone_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_backbone_lr = state_dict.get("previous_backbone_lr")
        super().load_state_dict(state_dict)
