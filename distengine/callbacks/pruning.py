"""``ModelPruning``: prune parameters during training with ``torch.nn.utils.prune``.

Lightning's callback (``pytorch_lightning.callbacks.ModelPruning``) with its arguments and
order of operations, so the same script prunes the same weights:

* at ``setup`` the parameters to prune are chosen (all ``weight``/``bias`` parameters of the
  model's leaf modules when none are given) and, for the lottery ticket hypothesis, a copy of
  their modules is kept;
* at each training epoch end (or validation epoch end with ``prune_on_train_epoch_end=False``)
  ``amount`` (a fraction, a count, or ``amount(epoch)``) is pruned when ``apply_pruning`` (or
  ``apply_pruning(epoch)``) says so; then the surviving weights are reset to their initial
  values (``use_lottery_ticket_hypothesis``), or to freshly drawn ones (``resample_parameters``);
* ``make_pruning_permanent``: a saved checkpoint holds plain pruned weights (``weight``, no
  ``weight_orig``/``weight_mask``), loadable into the unpruned model, and at the end of
  training the masks are folded into the weights.

Every rank prunes its own copy (no collective): with DDP the weights, and so the masks, agree.

Example::

    trainer = Trainer(callbacks=[ModelPruning("l1_unstructured", amount=0.2)])
"""
from __future__ import annotations

import copy
import inspect
import logging
from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.nn.utils.prune as prune
from torch import nn

from distengine.callbacks.base import Callback
from distengine.distributed.rank_zero import global_rank

log = logging.getLogger(__name__)

_FUNCTIONS = {"ln_structured": prune.ln_structured, "l1_unstructured": prune.l1_unstructured,
              "random_structured": prune.random_structured, "random_unstructured": prune.random_unstructured}
_METHODS = {"ln_structured": prune.LnStructured, "l1_unstructured": prune.L1Unstructured,
            "random_structured": prune.RandomStructured, "random_unstructured": prune.RandomUnstructured}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class ModelPruning(Callback):
    """Prune the model's parameters during training (see the module docstring).

    Args:
        pruning_fn: ``"l1_unstructured"``, ``"random_unstructured"``, ``"ln_structured"``,
            ``"random_structured"``, or a ``torch.nn.utils.prune.BasePruningMethod`` subclass.
        parameters_to_prune: ``[(module, "weight"), ...]``; empty: every leaf module's parameters
            named in ``parameter_names``.
        parameter_names: ``"weight"`` and/or ``"bias"`` (default both).
        use_global_unstructured: prune ``amount`` over all the parameters together (unstructured
            methods only) rather than each parameter by itself.
        amount: fraction (float) or number (int) of parameters to prune, or ``amount(epoch)``.
        apply_pruning: whether to prune, or ``apply_pruning(epoch)``.
        make_pruning_permanent: save checkpoints, and end training, with the masks applied.
        use_lottery_ticket_hypothesis: after pruning, reset the remaining weights to their values at
            ``setup`` (or ``f(epoch)`` saying when).
        resample_parameters: with the lottery ticket, reset to freshly initialised values instead.
        pruning_dim: the dimension of structured pruning. pruning_norm: the norm of ``ln_structured``.
        verbose: 0 silent, 1 logs the overall sparsity, 2 also each parameter's.
        prune_on_train_epoch_end: prune at the training epoch end; ``False``: at the validation epoch end.
    """

    PARAMETER_NAMES = ("weight", "bias")

    def __init__(self, pruning_fn: Callable | str, parameters_to_prune: Sequence[tuple[nn.Module, str]] = (),
                 parameter_names: list[str] | None = None, use_global_unstructured: bool = True,
                 amount: int | float | Callable[[int], int | float] = 0.5,
                 apply_pruning: bool | Callable[[int], bool] = True, make_pruning_permanent: bool = True,
                 use_lottery_ticket_hypothesis: bool | Callable[[int], bool] = True,
                 resample_parameters: bool = False, pruning_dim: int | None = None,
                 pruning_norm: int | None = None, verbose: int = 0, prune_on_train_epoch_end: bool = True) -> None:
        self._use_global_unstructured = use_global_unstructured
        self._parameters_to_prune = parameters_to_prune
        self._use_lottery_ticket_hypothesis = use_lottery_ticket_hypothesis
        self._resample_parameters = resample_parameters
        self._prune_on_train_epoch_end = prune_on_train_epoch_end
        self._parameter_names = parameter_names or self.PARAMETER_NAMES
        self._global_kwargs: dict[str, Any] = {}
        self._original_layers: dict[int, dict[str, Any]] | None = None
        self._pruning_method_name: str | None = None
        for name in self._parameter_names:
            if name not in self.PARAMETER_NAMES:
                raise ValueError(f"ModelPruning(parameter_names=[{name!r}]): use 'weight' and/or 'bias'")
        self.pruning_fn = self._resolve_pruning_fn(pruning_fn, pruning_dim, pruning_norm)
        self._apply_pruning = apply_pruning
        self._make_pruning_permanent = make_pruning_permanent
        if isinstance(amount, bool) or not (isinstance(amount, (int, float)) or callable(amount)):
            raise TypeError(f"ModelPruning(amount={amount!r}): use a fraction (float), a number of parameters "
                            "(int), or a function epoch -> amount")
        self.amount = amount
        if verbose not in (0, 1, 2):
            raise ValueError(f"ModelPruning(verbose={verbose!r}): use 0, 1 or 2")
        self._verbose = verbose

    def _resolve_pruning_fn(self, fn: Callable | str, dim: int | None, norm: int | None) -> Any:
        if isinstance(fn, str):
            name, kwargs = fn.lower(), {}
            if name not in _FUNCTIONS:
                raise ValueError(f"ModelPruning(pruning_fn={fn!r}): use one of {list(_FUNCTIONS)} or a "
                                 "torch.nn.utils.prune.BasePruningMethod subclass")
            if name.endswith("_structured"):
                if dim is None:
                    raise ValueError(f"ModelPruning(pruning_fn={fn!r}): structured pruning needs pruning_dim=")
                if name == "ln_structured":
                    if norm is None:
                        raise ValueError("ModelPruning(pruning_fn='ln_structured'): pass the norm as pruning_norm=")
                    kwargs["n"] = norm
                kwargs["dim"] = dim
            fn = self._create_pruning_fn(name, **kwargs)
        elif inspect.isclass(fn) and issubclass(fn, prune.BasePruningMethod):
            if not self._use_global_unstructured:
                raise ValueError("ModelPruning: a BasePruningMethod class works only with use_global_unstructured=True")
        else:
            raise TypeError(f"ModelPruning(pruning_fn={fn!r}): use one of {list(_FUNCTIONS)} or a "
                            "torch.nn.utils.prune.BasePruningMethod subclass (the class, not an instance)")
        if self._use_global_unstructured and fn.PRUNING_TYPE != "unstructured":
            raise ValueError(f"ModelPruning: {fn.__name__} is {fn.PRUNING_TYPE} pruning; "
                             "use_global_unstructured=True needs an unstructured method (or pass False)")
        return fn

    def filter_parameters_to_prune(self, parameters_to_prune: Sequence[tuple[nn.Module, str]] = ()
                                   ) -> Sequence[tuple[nn.Module, str]]:
        """Override to choose which of the parameters found at ``setup`` are pruned."""
        return parameters_to_prune

    def _create_pruning_fn(self, name: str, **kwargs: Any) -> Any:
        """The method class (global pruning, its kwargs kept for later) or the function with ``kwargs`` bound."""
        if self._use_global_unstructured:
            self._global_kwargs = kwargs
            self._pruning_method_name = _METHODS[name].__name__
            return _METHODS[name]
        self._pruning_method_name = _FUNCTIONS[name].__name__
        return partial(_FUNCTIONS[name], **kwargs)

    def make_pruning_permanent(self, module: nn.Module) -> None:
        """Fold every pruning mask under ``module`` into its parameter (``weight_orig * weight_mask``
        becomes ``weight`` again) and remove the pruning hooks."""
        for sub in module.modules():
            for name in _pruned_names(sub):
                prune.remove(sub, name)

    @staticmethod
    def _copy_param(new: nn.Module, old: nn.Module, name: str) -> None:
        dst = getattr(new, name + "_orig", None)
        dst = getattr(new, name) if dst is None else dst
        src = getattr(old, name)
        if isinstance(dst, torch.Tensor) and isinstance(src, torch.Tensor):
            dst.data = src.data.to(dst.device)

    def apply_lottery_ticket_hypothesis(self) -> None:
        """Reset the pruned parameters' surviving weights to their values at ``setup`` (the
        lottery ticket, arXiv:1803.03635), or to freshly initialised ones with ``resample_parameters``."""
        assert self._original_layers is not None
        for ref in self._original_layers.values():
            original = ref["data"]
            if self._resample_parameters and callable(getattr(original, "reset_parameters", None)):
                original = copy.deepcopy(original)  # the kept copy stays as it was
                original.reset_parameters()
            for i, name in ref["names"]:
                self._copy_param(self._parameters_to_prune[i][0], original, name)

    def apply_pruning(self, amount: int | float) -> None:
        """Prune ``amount`` of ``parameters_to_prune`` now."""
        before = [_pruned_stats(m, n) for m, n in self._parameters_to_prune] if self._verbose else None
        if self._use_global_unstructured:
            self._global_kwargs["amount"] = amount
            accepted = set(inspect.signature(self.pruning_fn).parameters) - {"self"}
            kwargs = {k: v for k, v in self._global_kwargs.items() if k in accepted}
            prune.global_unstructured(self._parameters_to_prune, pruning_method=self.pruning_fn, **kwargs)
        else:
            for module, name in self._parameters_to_prune:
                self.pruning_fn(module, name=name, amount=amount)
        if before is not None:
            self._log_sparsity_stats(before, [_pruned_stats(m, n) for m, n in self._parameters_to_prune], amount)

    def _log_sparsity_stats(self, prev: list[tuple[int, int]], curr: list[tuple[int, int]],
                            amount: int | float = 0) -> None:
        if global_rank() != 0:
            return
        total = sum(n for _, n in curr)
        was, now = sum(z for z, _ in prev), sum(z for z, _ in curr)
        log.info(f"Applied `{self._pruning_method_name}`. Pruned: {was}/{total} ({was / total:.2%}) -> "
                 f"{now}/{total} ({now / total:.2%})")
        if self._verbose == 2:
            for (module, name), (pz, pn), (cz, cn) in zip(self._parameters_to_prune, prev, curr):
                log.info(f"Applied `{self._pruning_method_name}` to `{module!r}.{name}` with amount={amount}. "
                         f"Pruned: {pz} ({pz / pn:.2%}) -> {cz} ({cz / cn:.2%})")

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        chosen = self.sanitize_parameters_to_prune(pl_module, self._parameters_to_prune, self._parameter_names)
        self._parameters_to_prune = self.filter_parameters_to_prune(chosen)
        if self._use_lottery_ticket_hypothesis:
            self._original_layers = {}
            for i, (module, name) in enumerate(self._parameters_to_prune):
                ref = self._original_layers.setdefault(id(module), {"data": copy.deepcopy(module), "names": []})
                ref["names"].append((i, name))

    def _run_pruning(self, epoch: int) -> None:
        do = self._apply_pruning(epoch) if callable(self._apply_pruning) else self._apply_pruning
        amount = self.amount(epoch) if callable(self.amount) else self.amount
        if not do or not amount:
            return
        self.apply_pruning(amount)
        lottery = self._use_lottery_ticket_hypothesis
        if lottery(epoch) if callable(lottery) else lottery:
            self.apply_lottery_ticket_hypothesis()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._prune_on_train_epoch_end:
            self._run_pruning(pl_module.current_epoch)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking and not self._prune_on_train_epoch_end:
            self._run_pruning(pl_module.current_epoch)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._make_pruning_permanent:
            self.make_pruning_permanent(pl_module)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if not self._make_pruning_permanent:
            return
        # the module keeps training with its masks; only the saved weights are made plain
        state = dict(pl_module.state_dict())
        for key in [k[:-len("_mask")] for k in state if k.endswith("_mask")]:
            orig, mask = state.pop(key + "_orig"), state.pop(key + "_mask")
            state[key] = mask.to(dtype=orig.dtype) * orig
        checkpoint["state_dict"] = {k: v.cpu() for k, v in state.items()}

    @staticmethod
    def sanitize_parameters_to_prune(pl_module: nn.Module, parameters_to_prune: Sequence = (),
                                     parameter_names: Sequence[str] = ()) -> list[tuple[nn.Module, str]]:
        """The ``(module, name)`` pairs to prune: those given, checked to be in the model, or
        (none given) every leaf module's ``parameter_names`` parameters."""
        from distengine.module import Module

        names = parameter_names or ModelPruning.PARAMETER_NAMES
        leaves = [m for m in pl_module.modules() if not isinstance(m, (Module, *_CONTAINERS))]
        if not parameters_to_prune:
            return [(m, p) for p in names for m in leaves if isinstance(getattr(m, p, None), nn.Parameter)]
        if not isinstance(parameters_to_prune, (list, tuple)) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], nn.Module) and isinstance(p[1], str)
                for p in parameters_to_prune):
            raise TypeError("ModelPruning(parameters_to_prune=...): pass a list of (nn.Module, parameter_name) "
                            "pairs, or nothing to prune every parameter")
        missing_modules = [m for m, _ in parameters_to_prune if not any(m is x for x in leaves)]
        missing_names = [n for m, n in parameters_to_prune if any(m is x for x in leaves) and not hasattr(m, n)]
        if missing_modules or missing_names:
            raise ValueError(f"ModelPruning(parameters_to_prune=...): not in the model: modules {missing_modules}, "
                             f"parameters {missing_names}")
        return list(parameters_to_prune)


def _pruned_names(module: nn.Module) -> list[str]:
    """Names of ``module``'s own parameters that carry a pruning mask."""
    return [n[:-len("_orig")] for n, _ in module.named_parameters(recurse=False)
            if n.endswith("_orig") and hasattr(module, n[:-len("_orig")] + "_mask")]


def _pruned_stats(module: nn.Module, name: str) -> tuple[int, int]:
    mask = getattr(module, name + "_mask", None)
    return (0, 1) if mask is None else (int((mask == 0).sum().item()), mask.numel())
