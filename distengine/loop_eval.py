"""The evaluation loop (validate, test, predict; also the validation inside ``fit``).

``run_eval(ctx, stage, loaders, limit)``::

    under inference_mode (inside the strategy's evaluation context), all of it:
    capture each submodule's mode; on_{stage}_model_eval; on_{stage}_start, on_{stage}_epoch_start
    for each loader and batch:
        move to device -> on_{stage}_batch_start -> {stage}_step (autocast) ->
        on_{stage}_batch_end -> write its on_step values
    predict: gather every rank's predictions in rank order (dataset order); on several ranks
        each batch's output is moved to the CPU first (``outputs_to_cpu``), so the gather
        never pickles CUDA tensors of one rank's GPU into every other rank
    otherwise: 1.x *_epoch_end(outputs) -> module's on_{stage}_epoch_end -> reduce the epoch
        values over the ranks -> loggers -> callbacks' on_{stage}_epoch_end
    on_{stage}_end; on_{stage}_model_train where overridden, else each submodule's mode as it was

It runs on the unwrapped module, so ranks with different numbers of batches never meet in a
collective until the epoch-end reduce. ``ctx`` is an :class:`~distengine.loop_context.EvalContext`.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from distengine.data import move_to_device
from distengine.distributed import collectives
from distengine.loop_context import EvalContext, LoopContext
from distengine.module import module_overrides
from distengine.profilers import wiring as profiling
from distengine.step_outputs import detach, log_returned
from distengine.utilities.signatures import signature_params

_EVAL_NAMES = {"validate": "validation", "test": "test", "predict": "predict"}


def takes_batch_idx(step: Any) -> bool:
    """Lightning 2.x lets ``*_step`` omit ``batch_idx``; decided once per loop, not per batch."""
    params = signature_params(step)
    if params is None:
        return True
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return True
    return len(params) >= 2


_TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")


def batch_mover(module: Any, device: torch.device) -> Any:
    """``move(batch, dataloader_idx)`` for a loop, chosen once: the module's
    ``on_before_batch_transfer`` -> ``transfer_batch_to_device`` -> ``on_after_batch_transfer``
    where it overrides any of them (as in Lightning, on the CPU too); else a plain move to the
    device, or None on the CPU (nothing to do per batch)."""
    if not any(module_overrides(module, name) for name in _TRANSFER_HOOKS):
        return None if device.type == "cpu" else (lambda batch, idx: move_to_device(batch, device))
    before, transfer, after = (getattr(module, name) for name in _TRANSFER_HOOKS)
    return lambda batch, idx: after(transfer(before(batch, idx), device, idx), idx)


def run_eval(ctx: EvalContext, stage: str, loaders: list[Any], limit: list[int], sanity: bool = False) -> list[dict]:
    """Run validation/test/predict over ``loaders``; return per-loader metrics (or predictions)."""
    with ctx.profiler.profile("run_sanity_check" if sanity else f"run_{_EVAL_NAMES[stage]}"):
        return _run_eval(ctx, stage, loaders, limit, sanity)


@torch.no_grad()
def _run_eval(ctx: EvalContext, stage: str, loaders: list[Any], limit: list[int], sanity: bool) -> list[dict]:
    """As in Lightning 2.x the whole run, its start/end hooks and the mode switch included, is
    under ``torch.inference_mode`` in ``validate``/``test``/``predict`` and under ``no_grad``
    inside ``fit`` (its tensors may meet training's), with ``Trainer(inference_mode=False)``, and
    over gloo; entered inside the strategy's evaluation context, whose gathered parameters
    training reuses. Each submodule's train/eval mode is captured before ``on_{stage}_model_eval``
    and restored afterwards (a submodule the user froze in eval mode stays so), unless the module
    overrides ``on_{validation,test}_model_train``."""
    module, name = ctx.module, _EVAL_NAMES[stage]
    inference = ctx.flags.inference_mode and not isinstance(ctx, LoopContext) and not collectives.on_gloo()
    mode = torch.inference_mode() if inference else contextlib.nullcontext()  # (no_grad: the decorator)
    with ctx.strategy.evaluation_context(module), mode:
        modes = [(m, m.training) for m in module.modules()]
        getattr(module, f"on_{name}_model_eval")()
        result = _eval_stage(ctx, stage, name, loaders, limit, sanity)
        if stage != "predict" and module_overrides(module, f"on_{name}_model_train"):
            getattr(module, f"on_{name}_model_train")()
        else:
            for m, training in modes:
                m.training = training
    return result


def _eval_stage(ctx: EvalContext, stage: str, name: str, loaders: list[Any], limit: list[int],
                sanity: bool) -> list[Any]:
    module, hooks, res, prec, strategy = ctx.module, ctx.hooks, ctx.results, ctx.precision, ctx.strategy
    step = getattr(module, f"{name}_step")
    takes_idx = takes_batch_idx(step)
    if ctx.profiling:  # timed step and batch fetches, chosen once per run
        step, loaders = profiling.eval_parts(ctx, name, step, loaders)
    prev_stage, prev_in_step = res.stage, res.in_step
    res.stage, res.in_step = stage, True
    res.reset_stage(stage)
    collect = ctx.adapted.collect_eval_outputs[stage]  # 1.x *_epoch_end(outputs)
    move, convert = batch_mover(module, strategy.root_device), (prec.convert_input if prec._true_dtype else None)
    many = len(loaders) > 1
    write_steps = not sanity and stage != "predict"  # on_step values, after every batch (Lightning)
    write_eval_step = ctx.writer.write_eval_step
    # predictions gathered over ranks: kept on the CPU (all_gather_object pickles them, and a
    # CUDA tensor would come back on the sender's device on every rank); one process keeps
    # them where predict_step put them (as Lightning does)
    keep = outputs_to_cpu if stage == "predict" and collectives.is_distributed() else (lambda o: o)
    writing = ctx.predict if stage == "predict" and ctx.predict.track else None  # a prediction writer
    if stage == "predict" and not ctx.predict.return_predictions:
        collect = False  # predict(return_predictions=False): nothing kept, nothing gathered
    for fn in hooks[f"on_{name}_start"]:
        fn()
    for fn in hooks[f"on_{name}_epoch_start"]:
        fn()
    all_outputs: list[list[Any]] = []
    for dl_idx, loader in enumerate(loaders):
        res.dataloader_suffix = f"/dataloader_idx_{dl_idx}" if many else ""
        outputs: list[Any] = []
        extra = (dl_idx,) if many else ()
        # range first: zip stops at the limit without fetching one more batch from the loader
        n = limit[dl_idx]  # inf: a loader without a length, read until it is exhausted
        for batch_idx, batch in enumerate(loader) if math.isinf(n) else zip(range(n), loader):
            if move is not None:
                batch = move(batch, dl_idx)
            if convert is not None:
                batch = convert(batch)
            res.set_batch(batch)
            if writing is not None:
                writing.record(dl_idx, batch_idx)
            for fn in hooks[f"on_{name}_batch_start"]:
                fn(batch, batch_idx, *extra)
            with prec.autocast():
                out = step(batch, batch_idx, *extra) if takes_idx else step(batch, *extra)
            if writing is not None:
                writing.keep(dl_idx, out)
            for fn in hooks[f"on_{name}_batch_end"]:
                fn(out, batch, batch_idx, *extra)
            if write_steps:
                write_eval_step(stage, dl_idx)
            if collect:
                outputs.append(detach(out) if stage != "predict" else keep(out))
        all_outputs.append(outputs)
    res.dataloader_suffix = ""
    result: list[Any]
    if stage == "predict":
        result = [ctx.strategy.gather_predictions(o) for o in all_outputs] if collect else [[] for _ in loaders]
        for fn in hooks["on_predict_epoch_end"]:
            fn()
    else:
        result = _end_eval_epoch(ctx, stage, name, all_outputs if collect else None, len(loaders), sanity)
    for fn in hooks[f"on_{name}_end"]:
        fn()
    if stage == "predict":
        ctx.predict.end()
    res.reset_metric_objects(stage)
    res.stage, res.in_step = prev_stage, prev_in_step
    return result


def _end_eval_epoch(ctx: EvalContext, stage: str, name: str, all_outputs: list[list[Any]] | None,
                    num_loaders: int, sanity: bool) -> list[dict[str, float]]:
    """The 1.x ``*_epoch_end(outputs)`` (``all_outputs`` None: not collected), the module's
    epoch-end hook, the rank-reduced epoch values (to the loggers), the callbacks' hook."""
    module, res = ctx.module, ctx.results
    res.in_step = False
    end_hook = getattr(module, f"{name}_epoch_end", None)
    if all_outputs is not None and end_hook is not None and module_overrides(module, f"{name}_epoch_end"):
        ret = end_hook(all_outputs[0] if num_loaders <= 1 else all_outputs)
        log_returned(res, ret, epoch_level=True)
    elif all_outputs is not None and module_overrides(module, "validation_end") and stage == "validate":
        log_returned(res, module.validation_end(all_outputs[0]), epoch_level=True)
    # the steps' epoch values first (the hooks read them in callback_metrics), then as in Lightning
    # the callbacks' hook and the module's, then what those hooks logged; one write to the loggers
    log, values = res.collect_epoch(stage)
    hooks = ctx.callback_hooks[f"on_{name}_epoch_end"] + ctx.module_hooks[f"on_{name}_epoch_end"]
    for fn in hooks:
        fn()
    if hooks:
        late_log, late = res.collect_late(stage)
        log.update(late_log)
        values.update(late)
    if log and not sanity:
        ctx.writer.log_epoch(log)
    return _split_by_loader(values, num_loaders, res.loader_of)


def outputs_to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor moved to the CPU, recursively through dicts, lists, tuples
    and named tuples (containers rebuilt with their own type). A CPU tensor is returned as it
    is; a copy from a GPU is blocking, so the values are there when the tensor is read."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device.type == "cpu" else obj.detach().to("cpu")
    if isinstance(obj, dict):
        items = {k: outputs_to_cpu(v) for k, v in obj.items()}
        try:
            return type(obj)(items)
        except TypeError:  # a mapping type that takes no dict: a plain one
            return items
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(outputs_to_cpu(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(outputs_to_cpu(v) for v in obj)
    return obj


def _split_by_loader(values: dict[str, float], n: int, loader_of: dict[str, int]) -> list[dict[str, float]]:
    """One results dict per dataloader: a name with ``/dataloader_idx_N`` (or logged with
    ``add_dataloader_idx=False`` while loader N ran) in N's; the rest (epoch hooks) in every one."""
    if n <= 1:
        return [values]
    out: list[dict[str, float]] = [{} for _ in range(n)]
    for k, v in values.items():
        base, sep, idx = k.rpartition("/dataloader_idx_")
        if sep and idx.isdigit() and int(idx) < n:
            out[int(idx)][k] = v
        elif k.removesuffix("_epoch") in loader_of or k in loader_of:
            out[loader_of.get(k, loader_of.get(k.removesuffix("_epoch"), 0))][k] = v
        else:
            for d in out:
                d[k] = v
    return out
