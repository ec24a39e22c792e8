"""FSDP2: every rank holds a shard of each parameter (``torch.distributed.fsdp.fully_shard``).

Parameters become DTensors sharded on dim 0 over all ranks. Before a shard unit's forward its
parameters are all-gathered, after it they are freed again (``reshard_after_forward``), and in
backward the gradients are reduce-scattered so that each rank keeps only its shard's gradient.
The optimizer therefore only ever sees (and keeps state for) this rank's shard.

Which modules become shard units:

* ``auto_wrap_policy={Block}``: each instance of these classes, then the root module;
* or the module's own ``configure_model()`` hook, where the user calls ``fully_shard`` by hand
  (and may build the model on the ``meta`` device); the policy is then not applied again
  (Lightning's rule), and the root is sharded last if the hook did not shard it;
* neither: the root alone (one unit: all parameters gathered at once, as ZeRO-3 of one layer).

Example::

    strategy = FSDPStrategy(auto_wrap_policy={Block}, activation_checkpointing_policy={Block},
                            mixed_precision="bf16-mixed", reshard_after_forward=True)
    trainer = de.Trainer(strategy=strategy, max_epochs=3)

HSDP (Lightning's names): ``FSDPStrategy(sharding_strategy="HYBRID_SHARD", device_mesh=(2, 4))``
builds a 2-D mesh ``("replicate", "shard")`` (default without ``device_mesh``: nodes x ranks per
node); each parameter is sharded within a group of 4 ranks and replicated across 2 such groups,
its gradient reduce-scattered in the group and all-reduced across the replicas. Under gradient
accumulation neither runs before the last micro-batch (``set_requires_gradient_sync``): one
all-reduce per unit and optimizer step. ``"SHARD_GRAD_OP"``/``"NO_SHARD"`` are refused with the
FSDP2 equivalent (``reshard_after_forward=False``; DDP). Tensor parallelism: ``ModelParallelStrategy``.

Choices:

* One process works (as in Lightning and torchtitan): a device mesh of one rank, so the same
  script, ``cpu_offload`` included, runs unlaunched for debugging. Not launched, the strategy
  starts a 1-rank process group of its own (its store on a free loopback port) and destroys it
  at the end of each stage (the next stage makes it again).
* ``cpu_offload=True`` keeps shards, gradients and optimizer state on the host; on CUDA the
  default group is then ``"cpu:gloo,cuda:nccl"``, since clipping's norm, ``full_tensor`` and
  the fp16 inf check reduce those CPU tensors (:meth:`FSDPStrategy.backend`).
* ``"bf16-mixed"`` becomes ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``:
  compute in bf16, gradients reduced and kept in fp32, the optimizer steps fp32 shards.
  ``"16-mixed"`` is the same with fp16 plus the Precision object's ``torch.amp.GradScaler``,
  which handles DTensor gradients (its inf check is reduced over the shards).
  The policy casts the inputs of each ``forward`` (the root's and every shard unit's) to the
  compute dtype, never the arguments of a step method: ``training_step`` gets its batch as
  under DDP (float targets stay fp32), and ``self(x)`` inside it computes in bf16/fp16.
* Meta-device init (``configure_model`` builds modules on ``meta``): after sharding, the
  meta tensors are allocated and each module owning one is filled by its own
  ``reset_parameters()`` (``nn.MultiheadAttention``: ``_reset_parameters()``), Lightning's
  rule; tensors built on a real device keep their values. A module that owns a meta tensor
  but has no ``reset_parameters()`` (a RoPE ``inv_freq`` buffer computed in ``__init__``, a
  parameter filled there) is refused before anything is allocated, with one line naming its
  class: FSDP cannot know how ``__init__`` filled it, and the alternative is uninitialised
  memory. Define ``reset_parameters()`` filling every tensor the module owns, or build it on a
  real device.
  Where the shards are filled on CPU (``cpu_offload``, CPU ranks) each module's reset runs
  on complete tensors and each rank keeps its shard of them: DTensor's RNG tracker offsets
  the shards only on an accelerator's generator, and on CPU every rank drew the same shard.
  With the same seed on every rank the weights are those the same init gives without FSDP.
* ``sync_batchnorm=True`` converts every BatchNorm layer to ``SyncBatchNorm`` before sharding
  (layers built in ``configure_model()`` too, unless it already sharded them: refused), and,
  as under DDP, is refused on CPU ranks with a BatchNorm layer (no CPU kernels in torch).
* ``clip_gradients`` returns the total norm over all shards as a plain tensor, equal on every
  rank (``clip_grad_norm_`` on DTensor gradients returns a DTensor). It computes the norm
  itself with one all-reduce per clipped step (:func:`clip_grad_norm`), not through DTensor
  ops, after which, with some torch versions, a partial norm needed a second all-reduce.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from distengine.checkpoint.key_mismatch import describe_key_mismatch  # noqa: F401 - re-exported
from distengine.strategies.base import Strategy
from distengine.strategies.fsdp_tensors import (  # noqa: F401 - re-exported: callers import them from here
    _gradient_sync,
    _has_dtensor,
    clip_grad_norm,
    full_tensor,
    gathered,
)
from distengine.strategies.fsdp_wrapping import (  # noqa: F401 - re-exported: callers import them from here
    STEP_METHODS,
    apply_activation_checkpointing,
    convert_sync_batchnorm,
    register_step_method,
    register_step_methods,
    register_uncast_step_method,
    shard_units,
)
from distengine.strategies.meta_init import has_meta_tensors, materialize  # noqa: F401 - re-exported

_PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def mixed_precision_policy(precision: str) -> Any:
    """The ``MixedPrecisionPolicy`` for a Trainer ``precision`` (already normalised)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision not in _PRECISIONS:
        raise ValueError(f"FSDPStrategy does not support precision={precision!r}; use '32-true', "
                         "'bf16-mixed' or '16-mixed' (the '-true' modes would shard low-precision weights "
                         "and step them without an fp32 copy)")
    dtype = _PRECISIONS[precision]
    if dtype is None:
        return MixedPrecisionPolicy()
    # gradients reduced in fp32: summing N low-precision shards loses bits the fp32 step needs
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def _precision_name(value: Any) -> str:
    from distengine.precision import normalize_precision

    return normalize_precision(value)


_SHARDING = ("FULL_SHARD", "HYBRID_SHARD")


def hybrid_mesh_spec(sharding_strategy: Any, device_mesh: Any) -> tuple[str, Any]:
    """Check Lightning's ``sharding_strategy``/``device_mesh`` pair; returns the strategy's name
    and the mesh to build: None (1-D), "hybrid" (nodes x ranks per node), a ``(replicate, shard)``
    tuple, or "given" (a ``DeviceMesh`` passed in)."""
    name = getattr(sharding_strategy, "name", sharding_strategy)
    if name not in _SHARDING:
        hint = {"SHARD_GRAD_OP": "FSDPStrategy(reshard_after_forward=False)", "NO_SHARD": "strategy='ddp'"}.get(name)
        raise ValueError(f"FSDPStrategy(sharding_strategy={sharding_strategy!r}) is not supported; use "
                         f"{' or '.join(map(repr, _SHARDING))}" + (f" (for {name}: {hint})" if hint else ""))
    if device_mesh is None:
        return name, ("hybrid" if name == "HYBRID_SHARD" else None)
    if hasattr(device_mesh, "mesh_dim_names"):  # a DeviceMesh
        return name, "given"
    if not (isinstance(device_mesh, tuple) and len(device_mesh) == 2 and
            all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in device_mesh)):
        raise ValueError(f"FSDPStrategy(device_mesh={device_mesh!r}) must be a tuple (replicate size, shard size) "
                         "of positive ints or a DeviceMesh")
    if name != "HYBRID_SHARD":
        raise ValueError(f"FSDPStrategy(device_mesh={device_mesh}) is a hybrid (replicate, shard) layout; pass "
                         "sharding_strategy='HYBRID_SHARD' with it")
    return name, device_mesh


def _class_set(policy: Any, what: str) -> Callable[[nn.Module], bool] | None:
    """A predicate from a set/list of module classes, one class, or a ``module -> bool`` callable."""
    if policy is None:
        return None
    if isinstance(policy, type) and issubclass(policy, nn.Module):
        policy = {policy}
    if isinstance(policy, (set, frozenset, list, tuple)):
        classes = tuple(policy)
        bad = [c for c in classes if not (isinstance(c, type) and issubclass(c, nn.Module))]
        if bad or not classes:
            raise TypeError(f"{what} must be a set of nn.Module classes or a callable module -> bool, got {policy!r}")
        return lambda m: isinstance(m, classes)
    if callable(policy):
        return policy
    raise TypeError(f"{what} must be a set of nn.Module classes or a callable module -> bool, got {policy!r}")


def _overrides_configure_model(module: nn.Module) -> bool:
    hook = getattr(type(module), "configure_model", None)
    if hook is None:
        return False
    from distengine import module as de_module

    base = getattr(de_module.Module, "configure_model", None)
    return hook is not base


class FSDPStrategy(Strategy):
    """Fully sharded data parallel (FSDP2) over all ranks of the default process group."""

    name = "fsdp"
    lightning_distributed = True
    #: ``optimizer_state_dict`` keys parameters by name (``get_optimizer_state_dict``), not by number
    optimizer_state_keyed_by_name = True

    def __init__(self, auto_wrap_policy: Any = None, activation_checkpointing_policy: Any = None,
                 reshard_after_forward: bool | int = True, cpu_offload: bool = False,
                 mixed_precision: Any = None, state_dict_type: str = "sharded",
                 sharding_strategy: Any = "FULL_SHARD", device_mesh: Any = None) -> None:
        super().__init__()
        self.sharding_strategy, self._mesh_spec = hybrid_mesh_spec(sharding_strategy, device_mesh)
        if state_dict_type not in ("sharded", "full"):
            raise ValueError(f"state_dict_type must be 'sharded' or 'full', got {state_dict_type!r}")
        self._wrap = _class_set(auto_wrap_policy, "auto_wrap_policy")
        self._checkpoint = _class_set(activation_checkpointing_policy, "activation_checkpointing_policy")
        self._policy_text = repr(auto_wrap_policy)
        self.reshard_after_forward = reshard_after_forward
        self.cpu_offload = cpu_offload
        if isinstance(mixed_precision, (str, int)):
            mixed_precision_policy(_precision_name(mixed_precision))  # refuse a bad value at construction
        #: a MixedPrecisionPolicy, a precision name, or None: follow the Trainer's ``precision``
        self.mixed_precision = mixed_precision
        self.state_dict_type = state_dict_type
        self.checkpoint_layout = state_dict_type
        self.mesh: Any = device_mesh if self._mesh_spec == "given" else None
        self.sharded_checkpointer: Any = None  # made by the first sharded save (checkpoint/sharded_trainer.py)
        self._one_process = False  # not launched: the strategy runs a 1-rank group of its own
        self._timeout_s = 1800.0
        self._local_world_size = 1
        self._own_group = False  # that group is up now (destroyed by teardown)

    def fresh(self) -> FSDPStrategy:
        new = super().fresh()
        new.mesh = self.mesh if self._mesh_spec == "given" else None
        new.sharded_checkpointer = None
        new._one_process = new._own_group = False
        return new

    # ------------------------------------------------------------------ environment
    def setup_environment(self, accelerator: str, env: Any, gpu_ids: list[int] | None, timeout_s: float) -> None:
        from distengine.distributed import setup

        self.root_device = setup.select_device(accelerator, env, gpu_ids)
        self._timeout_s = timeout_s
        self._local_world_size = env.local_world_size
        self._mesh_shape(env.world_size if env.distributed else 1)  # bad sizes: refused before any group starts
        setup.init_process_group(env, self.root_device, timeout_s, backend=self.backend())
        self._one_process = not env.distributed
        self._ensure_group()
        if self.mesh is None:
            self.mesh = self._build_mesh()

    def _mesh_shape(self, world: int) -> tuple[int, ...]:
        """FULL_SHARD: one dimension of all ranks. HYBRID_SHARD: ``(replicate, shard)``, shards
        within each group of ``shard`` ranks (default: the ranks of one node) and replicas across."""
        if self._mesh_spec is None:
            return (world,)
        if self._mesh_spec == "given":
            return tuple(self.mesh.shape)
        local = max(min(self._local_world_size, world), 1)
        shape = self._mesh_spec if isinstance(self._mesh_spec, tuple) else (world // local, local)
        if shape[0] * shape[1] != world:
            raise ValueError(f"FSDPStrategy(device_mesh={shape}): replicate x shard = {shape[0] * shape[1]} but the "
                             f"job has {world} ranks; choose sizes that multiply to {world}")
        return shape

    def _build_mesh(self) -> Any:
        from torch.distributed.device_mesh import init_device_mesh

        shape = self._mesh_shape(self.world_size)
        names = ("replicate", "shard") if len(shape) == 2 else None
        return init_device_mesh(self.root_device.type, shape, mesh_dim_names=names)

    def backend(self) -> str:
        """The default group's backend: ``"cpu:gloo,cuda:nccl"`` on CUDA with ``cpu_offload``
        (gradients and shards on the host are reduced over gloo), else NCCL on CUDA, gloo on CPU."""
        from distengine.distributed import setup

        return setup.process_group_backend(self.root_device, cpu_offload=self.cpu_offload)

    def _ensure_group(self) -> None:
        """One process (not launched): a 1-rank process group of this strategy's own, made at
        setup and again at the next stage after :meth:`teardown` destroyed it; the device mesh
        follows it. Nothing when launched, or when a group runs already."""
        import torch.distributed as dist

        if not self._one_process or dist.is_initialized():
            return
        from distengine.distributed import setup

        self._own_group = setup.init_single_process_group(self.root_device, self._timeout_s, backend=self.backend())
        self.mesh = self._build_mesh()

    # ------------------------------------------------------------------ the model
    def _fsdp_kwargs(self) -> dict[str, Any]:
        from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy

        return {"mesh": self.mesh, "reshard_after_forward": self.reshard_after_forward,
                "mp_policy": self._mp_policy(),
                # pinned host memory needs an accelerator; on CPU ranks offloading changes nothing anyway
                "offload_policy": CPUOffloadPolicy(pin_memory=self.root_device.type == "cuda") if self.cpu_offload
                else OffloadPolicy()}

    def _mp_policy(self) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        chosen = self.mixed_precision
        if isinstance(chosen, MixedPrecisionPolicy):
            return chosen
        if chosen is None:  # the Trainer sets ``precision`` (its Precision object) before setup_module
            chosen = getattr(self, "precision", None)
            chosen = getattr(chosen, "precision", chosen)
        return mixed_precision_policy(_precision_name(chosen))

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Shard ``module`` in place and return it (the root is an ``FSDPModule`` afterwards)."""
        from torch.distributed.fsdp import FSDPModule, fully_shard

        self._ensure_group()
        if isinstance(module, FSDPModule):  # sharded by an earlier fit/validate of this module: reuse
            self.module = self.model = module
            self.step_fn = module.training_step
            return module
        by_hand = _overrides_configure_model(module)
        if not by_hand and self._wrap is not None and not shard_units(module, self._wrap):
            raise ValueError(f"auto_wrap_policy={self._policy_text} matches no submodule of "
                             f"{type(module).__name__}; name the layer classes to shard (e.g. your block class)")
        if self.mesh is None:
            raise RuntimeError("FSDPStrategy.setup_module called before setup_environment")
        kwargs = self._fsdp_kwargs()  # refuses an unsupported precision before anything changes
        self.module = module
        sync_bn = self.sync_batchnorm and self.is_distributed
        if sync_bn:
            convert_sync_batchnorm(module, self.root_device)
        if by_hand:
            module.configure_model()
            if sync_bn:  # the BatchNorm layers configure_model() built
                convert_sync_batchnorm(module, self.root_device)
        if self._checkpoint is not None:
            apply_activation_checkpointing(module, self._checkpoint)
        if not by_hand and self._wrap is not None:
            units = shard_units(module, self._wrap)
            for unit in reversed(units):  # innermost first: a unit must not contain an unsharded unit
                fully_shard(unit, **kwargs)
        if not isinstance(module, FSDPModule):
            fully_shard(module, **kwargs)
        if has_meta_tensors(module):
            materialize(module, torch.device("cpu") if self.cpu_offload else self.root_device)
        elif not self.cpu_offload:
            module.to(self.root_device)
        register_step_methods(module)
        self.model = module
        self.step_fn = module.training_step
        return module

    def module_to_device(self, module: nn.Module) -> None:
        """Evaluation without ``fit`` shards the module too (a sharded module stays as it is)."""
        self.setup_module(module)

    def no_sync(self, model: nn.Module, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        return _gradient_sync(model, last_micro_batch)

    def configure_model(self, module: nn.Module) -> None:
        """Nothing here: ``setup_module`` calls ``configure_model()`` itself, before sharding."""

    def evaluation_context(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """Around a whole validation/test/predict run: see :func:`gathered`."""
        return gathered(model)

    def clip_gradients(self, optimizer: torch.optim.Optimizer, clip_val: float, algorithm: str = "norm") -> Any:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, clip_val)  # elementwise: each shard on its own
            return None
        return clip_grad_norm(params, clip_val)

    # ------------------------------------------------------------------ state
    def _options(self, full: bool, **kw: Any) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=full, cpu_offload=full, **kw)

    def module_state_dict(self, module: nn.Module) -> dict[str, Any]:
        """``"sharded"``: this rank's shards as DTensors; ``"full"``: complete CPU tensors on rank 0
        (an empty dict elsewhere). Every rank must call it (``"full"`` gathers)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(module, options=self._options(self.state_dict_type == "full"))

    def load_module_state_dict(self, module: nn.Module, state: dict[str, Any], strict: bool = True) -> None:
        """Load complete tensors (every rank holds them; each keeps its shard) or this rank's
        DTensor shards."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        full = not _has_dtensor(state)
        result = set_model_state_dict(module, state, options=self._options(full, strict=strict))
        if strict and (result.missing_keys or result.unexpected_keys):  # set_* reports, does not raise
            raise RuntimeError(describe_key_mismatch(result.missing_keys, result.unexpected_keys))

    def optimizer_state_dict(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """``"sharded"``: this rank's shards keyed by parameter name (``get_optimizer_state_dict``).
        ``"full"``: complete tensors on rank 0 with the parameters numbered as
        ``optimizer.state_dict()`` numbers them, as Lightning's full checkpoints hold them: a plain
        optimizer loads the file's state."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        from distengine.checkpoint.sharded import name_keyed_to_indexed

        full = self.state_dict_type == "full"
        state = get_optimizer_state_dict(module, optimizer, options=self._options(full))
        return name_keyed_to_indexed(state) if full and state else state

    def load_optimizer_state_dict(self, module: nn.Module, optimizer: torch.optim.Optimizer,
                                  state: dict[str, Any]) -> None:
        """This rank's shards keyed by name, or complete tensors keyed by name or, as a plain or DDP
        run's checkpoint holds them, by number (``optimizer.state_dict()``'s form)."""
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        from distengine.checkpoint.sharded import indexed_to_name_keyed

        full = not _has_dtensor(state)
        state = indexed_to_name_keyed(state, module, optimizer)
        set_optimizer_state_dict(module, optimizer, state, options=self._options(full))

    def teardown(self) -> None:
        """Wait for an asynchronous sharded save still in flight and release its process group
        (every rank calls this), so that no checkpoint thread outlives the run. In one process,
        destroy the strategy's own 1-rank group too (the next stage makes it again before it
        uses the module, which stays sharded on its 1-rank mesh)."""
        ckpt, self.sharded_checkpointer = getattr(self, "sharded_checkpointer", None), None
        super().teardown()  # the module stays sharded: ``model`` is that module
        try:
            if ckpt is not None:
                ckpt.close()
        finally:
            if getattr(self, "_own_group", False):
                from distengine.distributed import setup

                self._own_group = False
                setup.destroy_single_process_group()

