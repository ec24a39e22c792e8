"""Tensor parallelism x FSDP2 (2-D parallelism) applied by the user in ``configure_model``.

``ModelParallelStrategy(data_parallel_size, tensor_parallel_size)`` builds a 2-D device mesh
``("data_parallel", "tensor_parallel")`` with ``init_device_mesh`` and hands it to the module
as ``self.device_mesh``; the module's ``configure_model()`` parallelizes itself with it (the
strategy applies nothing on its own, as in Lightning)::

    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    class LM(de.Module):
        def configure_model(self):
            tp, dp = self.device_mesh["tensor_parallel"], self.device_mesh["data_parallel"]
            for block in self.blocks:
                parallelize_module(block, tp, {"attn.wq": ColwiseParallel(), "attn.wo": RowwiseParallel(),
                                               "mlp.w1": ColwiseParallel(), "mlp.w2": RowwiseParallel()})
                fully_shard(block, mesh=dp)
            fully_shard(self, mesh=dp)

    trainer = de.Trainer(strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=2))

Behaviour (Lightning's): ``"auto"`` sizes are the number of nodes (data parallel) and the ranks
per node (tensor parallel); the sizes must multiply to the world size. The data loaders are
split over the ``data_parallel`` dimension only: the ranks of one tensor-parallel group read the
same batches. Modules built on the ``meta`` device in ``configure_model`` are filled by their
``reset_parameters()`` after parallelization (:func:`~distengine.strategies.meta_init.materialize`).
``save_distributed_checkpoint=True`` writes sharded (DCP) checkpoints, each rank its shards;
False gathers complete tensors into one file written by rank 0.

Everything after ``configure_model`` (gradient accumulation, evaluation, state dicts,
checkpoints) is :class:`~distengine.strategies.fsdp.FSDPStrategy`'s, which handles shard units
wherever the user put them.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from torch import nn

from distengine.strategies.fsdp import FSDPStrategy, _overrides_configure_model
from distengine.strategies.fsdp_wrapping import register_step_methods
from distengine.strategies.meta_init import has_meta_tensors, materialize


class MeshSizeError(ValueError, RuntimeError):
    """Sizes that do not multiply to the world size (a RuntimeError too: Lightning raises one)."""


def _size(value: Any, what: str) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ValueError(f"ModelParallelStrategy({what}={value!r}) must be 'auto' or a positive int")


class ModelParallelStrategy(FSDPStrategy):
    """A 2-D (data parallel x tensor parallel) mesh for a module that parallelizes itself."""

    name = "model_parallel"

    def __init__(self, data_parallel_size: Any = "auto", tensor_parallel_size: Any = "auto",
                 save_distributed_checkpoint: bool = True, process_group_backend: str | None = None,
                 timeout: timedelta | float | None = None) -> None:
        layout = "sharded" if save_distributed_checkpoint else "full"
        super().__init__(state_dict_type=layout)
        self._data_parallel_size = _size(data_parallel_size, "data_parallel_size")
        self._tensor_parallel_size = _size(tensor_parallel_size, "tensor_parallel_size")
        self._save_distributed_checkpoint = bool(save_distributed_checkpoint)
        self.process_group_backend = process_group_backend
        self._timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        self._device_mesh: Any = None

    @property
    def device_mesh(self) -> Any:
        """The ``DeviceMesh`` with dimensions ``("data_parallel", "tensor_parallel")``."""
        if self._device_mesh is None:
            raise RuntimeError("ModelParallelStrategy.device_mesh is made when the processes start (the Trainer's "
                               "setup); use it in configure_model(), not before")
        return self._device_mesh

    def fresh(self) -> ModelParallelStrategy:
        new = super().fresh()
        new._device_mesh = None
        return new

    def backend(self) -> str:
        return self.process_group_backend or super().backend()

    def setup_environment(self, accelerator: str, env: Any, gpu_ids: list[int] | None, timeout_s: float) -> None:
        super().setup_environment(accelerator, env, gpu_ids, timeout_s if self._timeout is None else self._timeout)

    def _mesh_shape(self, world: int) -> tuple[int, ...]:
        """Lightning's ``"auto"``: nodes (data parallel) x ranks per node (tensor parallel)."""
        local = max(min(self._local_world_size, world), 1)
        dp = world // local if self._data_parallel_size == "auto" else self._data_parallel_size
        tp = local if self._tensor_parallel_size == "auto" else self._tensor_parallel_size
        if dp * tp != world:
            raise MeshSizeError(f"ModelParallelStrategy: data_parallel_size={dp} x tensor_parallel_size={tp} = "
                                f"{dp * tp}, but the job has {world} ranks; choose sizes that multiply to {world}")
        return dp, tp

    def _build_mesh(self) -> Any:
        from torch.distributed.device_mesh import init_device_mesh

        self._device_mesh = init_device_mesh(self.root_device.type, self._mesh_shape(self.world_size),
                                             mesh_dim_names=("data_parallel", "tensor_parallel"))
        return self._device_mesh

    def data_parallel(self, env: Any) -> tuple[int, int]:
        """The loaders are split over the ``data_parallel`` dimension: one tensor-parallel group
        reads the same batches."""
        dp = self.device_mesh["data_parallel"]
        return dp.size(), dp.get_local_rank()

    def gather_predictions(self, outputs: list[Any]) -> list[Any]:
        """Each data-parallel group's predictions once, in group order (dataset order): the ranks of a
        tensor-parallel group predict the same batches, and only its first rank's are kept."""
        from distengine.distributed import collectives

        tp = self.device_mesh["tensor_parallel"].get_local_rank()
        dp = self.device_mesh["data_parallel"].get_local_rank()
        sent = collectives.all_gather_object((dp, outputs) if tp == 0 else None)
        return [item for _, out in sorted((x for x in sent if x is not None), key=lambda x: x[0]) for item in out]

    def setup_module(self, module: nn.Module) -> nn.Module:
        """Call the module's ``configure_model()`` (where it parallelizes itself with
        ``self.device_mesh``), fill meta tensors, move the rest to the device."""
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor

        self._ensure_group()
        self.module = module
        if not any(isinstance(p, DTensor) for p in module.parameters()):  # not parallelized by an earlier stage
            if not _overrides_configure_model(module):
                raise TypeError(f"ModelParallelStrategy: {type(module).__name__} must override configure_model() and "
                                "parallelize itself there (parallelize_module / fully_shard with self.device_mesh)")
            if self.mesh is None:
                raise RuntimeError("ModelParallelStrategy.setup_module called before setup_environment")
            module.configure_model()
            if has_meta_tensors(module):
                materialize(module, self.root_device)
            module.to(self.root_device)  # layers configure_model() left alone
            if isinstance(module, FSDPModule):
                register_step_methods(module)
        self.model = module
        self.step_fn = module.training_step
        return module

    def module_to_device(self, module: nn.Module) -> None:
        self.setup_module(module)
