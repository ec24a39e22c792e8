"""DistributedDataParallel: every rank holds the whole model, gradients are averaged.

Example (bf16 gradient compression, the buckets of a large model)::

    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from distengine.strategies import DDPStrategy

    trainer = Trainer(strategy=DDPStrategy(ddp_comm_hook=default_hooks.bf16_compress_hook,
                                           bucket_cap_mb=100, gradient_as_bucket_view=True))
"""
from __future__ import annotations

import contextlib
import re
from typing import Any, Callable

import torch
from torch import nn

from distengine import torch_private
from distengine.strategies.base import _NO_CONTEXT, Strategy

START_METHODS = ("popen", "spawn", "fork", "forkserver")


class DDPStrategy(Strategy):
    """DDP over the ranks the launcher started (gloo on CPUs, NCCL on GPUs).

    Arguments are passed to :class:`torch.nn.parallel.DistributedDataParallel`:
    ``find_unused_parameters``, ``static_graph``, ``gradient_as_bucket_view``,
    ``bucket_cap_mb`` (None: torch's default), and a communication hook registered on the
    wrapper (``ddp_comm_hook(ddp_comm_state, bucket)``, e.g. ``default_hooks.fp16_compress_hook``
    or ``bf16_compress_hook``; ``ddp_comm_state`` defaults to None, the default process group).
    ``**ddp_kwargs`` go to DDP as they are. In one process (not launched) the module is not wrapped.

    ``start_method``: how a Trainer that was not launched starts its ``devices`` ranks.
    ``"popen"`` (``"ddp"``): ``fit`` re-runs the script under ``distengine launch``.
    ``"fork"`` (``"ddp_notebook"``/``"ddp_fork"``) and ``"spawn"`` (``"ddp_spawn"``), also
    ``"forkserver"``: the ranks are started from this interpreter and the stage's results come
    back to it (:mod:`distengine.distributed.processes`), as Lightning's multiprocessing launcher.
    """

    name = "ddp"
    lightning_distributed = True

    def __init__(self, find_unused_parameters: bool = False, static_graph: bool = False,
                 gradient_as_bucket_view: bool = False, bucket_cap_mb: float | None = None,
                 ddp_comm_hook: Callable | None = None, ddp_comm_state: Any = None,
                 start_method: str = "popen", **ddp_kwargs: Any) -> None:
        super().__init__()
        if start_method not in START_METHODS:
            raise ValueError(f"DDPStrategy(start_method={start_method!r}) is not one of {', '.join(START_METHODS)}")
        self.start_method = start_method
        if ddp_comm_hook is not None and not callable(ddp_comm_hook):
            raise TypeError(f"ddp_comm_hook must be a function (state, bucket) -> future, got "
                            f"{type(ddp_comm_hook).__name__}")
        self.find_unused_parameters = bool(find_unused_parameters)
        self.static_graph, self.gradient_as_bucket_view = bool(static_graph), bool(gradient_as_bucket_view)
        self.bucket_cap_mb = bucket_cap_mb
        self.ddp_comm_hook, self.ddp_comm_state = ddp_comm_hook, ddp_comm_state
        self.ddp_kwargs = ddp_kwargs
        self.manual_step: Any = None  # dist.setup.ManualDDPStep under manual optimization
        self._wrapped: list[tuple[Any, bool]] = []  # (parameter, requires_grad) when DDP was built

    # ------------------------------------------------------------------ environment
    def setup_environment(self, accelerator: str, env: Any, gpu_ids: list[int] | None, timeout_s: float) -> None:
        from distengine.distributed import collectives, setup

        self.root_device = setup.select_device(accelerator, env, gpu_ids)
        setup.init_process_group(env, self.root_device, timeout_s)
        if env.distributed and collectives.world_size() != env.world_size:
            raise RuntimeError(f"the process group has {collectives.world_size()} ranks but the environment "
                               f"says WORLD_SIZE={env.world_size}")

    # ------------------------------------------------------------------ the model
    def setup_module(self, module: nn.Module) -> nn.Module:
        self.module = module
        self.module_to_device(module)
        if self.sync_batchnorm and self.is_distributed:
            if self.root_device.type == "cpu" and any(torch_private.is_batchnorm(m) for m in module.modules()):
                # torch's SyncBatchNorm has no CPU kernels: fail here, not in the first batch
                raise ValueError("sync_batchnorm=True needs GPUs (torch's SyncBatchNorm has no CPU kernels); "
                                 "run on GPUs or drop the flag so each CPU rank keeps its own BatchNorm statistics")
            # converts the children in place (the returned object is `module` unless it is a BatchNorm itself)
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return self._wrap(module)

    def _ddp_arguments(self) -> dict[str, Any]:
        # the 1.x several-optimizer mode freezes the other optimizers' parameters in each call:
        # they get no gradient, so DDP must look for unused parameters (1.9.5's DDP default)
        kwargs = {"find_unused_parameters": self.find_unused_parameters or self.one_x_mode,
                  "static_graph": self.static_graph, "gradient_as_bucket_view": self.gradient_as_bucket_view}
        if self.bucket_cap_mb is not None:
            kwargs["bucket_cap_mb"] = self.bucket_cap_mb
        return {**kwargs, **self.ddp_kwargs}

    def _wrap(self, module: nn.Module) -> nn.Module:
        from distengine.distributed import setup

        manual = not getattr(module, "automatic_optimization", True)
        if self.is_distributed:
            self.model = setup.wrap_ddp(module, self.root_device, **self._ddp_arguments())
            if self.ddp_comm_hook is not None:
                self.model.register_comm_hook(state=self.ddp_comm_state, hook=self.ddp_comm_hook)
            self.manual_step = setup.ManualDDPStep(self.model) if manual else None
            # DDP's forward is routed to training_step (dist.setup.StepModule)
            self.step_fn = self.manual_step or self.model
        else:  # one process: nothing to synchronise
            self.model, self.manual_step, self.step_fn = module, None, module.training_step
        self._wrapped = self._parameters_now()
        return self.model

    def _parameters_now(self) -> list[tuple[Any, bool]]:
        return [(p, p.requires_grad) for p in self.module.parameters()] if self.module is not None else []

    def _unchanged(self) -> bool:
        now = self._parameters_now()
        return len(now) == len(self._wrapped) and all(
            p is q and a == b for (p, a), (q, b) in zip(now, self._wrapped))

    def refresh_wrapping(self) -> bool:
        """DDP reduces only the gradients of the parameters that were trainable when it was
        built: after a callback froze or unfroze some (finetuning), added a submodule or replaced
        one, build it again (every rank does, at the same epoch start). Its start-up broadcast
        copies rank 0's parameters and buffers to every rank, so layers each rank initialised
        its own way start equal."""
        if self.model is self.module or self.module is None or self._unchanged():
            return False
        self._wrap(self.module)
        return True

    def check_wrapping(self, epoch: int) -> None:
        if self.model is self.module or self.module is None:
            return
        now = self._parameters_now()  # (trainable flags may change: manual toggling, finetuning)
        if len(now) != len(self._wrapped) or any(p is not q for (p, _), (q, _) in zip(now, self._wrapped)):
            raise RuntimeError(
                f"the module's parameters were replaced or added during epoch {epoch}, after DDP was "
                "built: their gradients were not averaged and the ranks now differ; add or replace "
                "layers in on_train_epoch_start (or setup), where distengine rebuilds DDP")

    def no_sync(self, model: nn.Module, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        if last_micro_batch or model is self.module:
            return _NO_CONTEXT
        return model.no_sync()

    def prepare_for_backward(self, loss: torch.Tensor) -> None:
        if self.manual_step is not None:
            self.manual_step.prepare_for_backward(loss)

    def explain_error(self, exc: BaseException) -> BaseException | None:
        """DDP's "Expected to have finished reduction in the prior iteration" means parameters
        that got no gradient: say which, and name the fix (torch's text stays in the cause)."""
        text = str(exc)
        if not isinstance(exc, RuntimeError) or "Expected to have finished reduction" not in text:
            return None
        unused = ""
        found = re.search(r"did not receive grad for rank \d+: ([\d ]+)", text)
        if found and self.module is not None:
            trainable = [n for n, p in self.module.named_parameters() if p.requires_grad]
            names = [trainable[int(i)] for i in found.group(1).split() if int(i) < len(trainable)]
            unused = f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else ""
        return RuntimeError(
            f"DDP: your module has parameters that were not used in producing the loss returned by "
            f"training_step{unused}. If that is intended, set strategy='ddp_find_unused_parameters_true' "
            f"(or Trainer(find_unused_parameters=True)); otherwise use or remove them. torch's error is above")

    def fresh(self) -> DDPStrategy:
        new = super().fresh()
        new.manual_step, new._wrapped = None, []
        return new

    def teardown(self) -> None:
        super().teardown()
        self.manual_step = None
