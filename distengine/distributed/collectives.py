"""Collectives that return their input unchanged when the job is not distributed.

Every function here is called by ALL ranks at the same point; a rank that calls one alone
waits until the process-group timeout and then fails with an error (it never hangs forever).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def on_gloo() -> bool:
    """Distributed over the gloo backend (CPU ranks)."""
    return is_distributed() and dist.get_backend() == "gloo"


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when ``flag`` is true on at least one rank (one small all-reduce)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device or _comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` across ranks in place (and return it); identity when not distributed."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def reduce_tensors(tensors: Sequence[torch.Tensor], op: str = "sum") -> list[torch.Tensor]:
    """Reduce a list of tensors with ONE fused collective ("sum", "max", "min").

    The tensors may live on different devices (a sum kept on the GPU next to a count built on
    the CPU): each is packed as float64 on the communication device, and each result goes
    back to its input's device and dtype.
    """
    if not is_distributed() or not tensors:
        return list(tensors)
    flat = pack_float64(tensors, _comm_device())
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    dist.all_reduce(flat, op=ops[op])
    out, offset = [], 0
    for t in tensors:
        n = t.numel()
        out.append(flat[offset:offset + n].reshape(t.shape).to(device=t.device, dtype=t.dtype))
        offset += n
    return out


def pack_float64(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """One flat float64 vector on ``device`` holding every element of ``tensors`` in order.

    Each tensor is moved before the concatenation: ``torch.cat`` refuses inputs on different
    devices, and NCCL can only reduce a CUDA tensor.
    """
    return torch.cat([t.detach().reshape(-1).to(device=device, dtype=torch.float64) for t in tensors])


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
