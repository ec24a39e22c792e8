"""Every rank resumes from the same checkpoint and the same point in it.

``agreed_checkpoint``: which checkpoint this rank loads. ``"last"`` names whatever last.json
points at when it is read. Rank 0 repoints it once a save is in place, in the background after
an async save, and the other ranks may leave the previous fit before that: resolved on each
rank, the ranks could resume from different checkpoints and hang in the first collective that
then differs (an FSDP all-gather on one rank, an epoch-end reduction on another). So when every
rank asks for ``"last"``, rank 0 (which has waited for its own writes) resolves it for everyone.
Other paths are each rank's own; a failure on any rank, or ranks of which some load a
checkpoint and some start fresh, raise on every rank.

``check_resume_point``: right after loading, one all-reduce (the minimum and maximum of epoch,
global step, batch in the epoch, batches in the epoch and batches left) checks that the ranks
hold the same position; when they do not, every rank raises the same one-line
:class:`CheckpointError` (:func:`resume_disagreement`) instead of hanging.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable

import torch

from distengine.checkpoint.io import CheckpointError
from distengine.distributed import collectives


def agreed_checkpoint(ckpt_path: Any, resolve: Callable[[], str | None], strategy: Any,
                      is_global_zero: bool) -> str | None:
    """The checkpoint this rank loads (None: a fresh start), decided so that the ranks agree.
    Every rank calls it (collectives when distributed); ``resolve()`` resolves ``ckpt_path`` here."""
    if not collectives.is_distributed():
        return resolve() if ckpt_path is not None else None
    asked = collectives.all_gather_object(None if ckpt_path is None else os.fspath(ckpt_path))
    if all(a is None for a in asked):
        return None
    if all(a == "last" for a in asked):
        return on_rank_zero(resolve, strategy, is_global_zero, "resolving ckpt_path='last'")
    path, error = None, None
    try:
        path = resolve() if ckpt_path is not None else None
    except Exception as exc:  # noqa: BLE001 - every rank must learn of it, not hang
        error = exc
    why = None if error is None else f"{type(error).__name__}: {error}"
    everyone = collectives.all_gather_object((path, why))
    if error is not None:
        raise error
    for rank, (_, failure) in enumerate(everyone):
        if failure is not None:
            raise CheckpointError(f"resolving ckpt_path failed on rank {rank}: {failure}")
    if any(p is None for p, _ in everyone):
        which = ", ".join(f"rank {r}: {p or 'none (a fresh start)'} (ckpt_path={a!r})"
                          for r, ((p, _), a) in enumerate(zip(everyone, asked)))
        raise CheckpointError(f"ranks disagree on the checkpoint to resume from: {which}; pass the same "
                              "ckpt_path on every rank")
    return path


def on_rank_zero(fn: Callable[[], Any], strategy: Any, is_global_zero: bool, what: str) -> Any:
    """``fn()`` run on global rank zero, its result (or its failure) handed to every rank."""
    error: BaseException | None = None
    box: dict[str, Any] | None = None
    if is_global_zero:
        try:
            box = {"value": fn()}
        except Exception as exc:  # noqa: BLE001 - every rank must learn of it, not hang
            error, box = exc, {"error": f"{type(exc).__name__}: {exc}"}
    box = strategy.broadcast(box, src=0)
    if "error" in box:
        if error is not None:
            raise error
        raise CheckpointError(f"{what} failed on rank 0: {box['error']}")
    return box["value"]


def check_resume_point(progress: Any, num_batches: int | float, path: str) -> None:
    """Raise the same :class:`CheckpointError` on every rank unless all hold the same position
    (called by every rank right after loading ``path``; one all-reduce, one all-gather more
    when they disagree)."""
    if not collectives.is_distributed():
        return
    p = progress
    total = -1 if math.isinf(num_batches) else int(num_batches)  # -1: a loader without a length
    left = -1 if total < 0 else max(total - p.batches_done, 0)
    mine = [p.epoch, p.global_step, p.batches_done, total, left]
    both = torch.tensor(mine + [-v for v in mine], dtype=torch.float64)
    hi = collectives.reduce_tensors([both], "max")[0].tolist()
    if hi[:5] == [-v for v in hi[5:]]:  # max == min: every rank holds the same position
        return
    everyone = collectives.all_gather_object((mine, os.path.basename(os.fspath(path))))
    raise CheckpointError(resume_disagreement(everyone))


def resume_disagreement(everyone: list[tuple[list[int], str]]) -> str:
    """The one-line error of :func:`check_resume_point`: each distinct resume point with the
    ranks at it, ``everyone[r] = ([epoch, global_step, batches_done, batches, left], file)``."""
    groups: dict[tuple[tuple[int, ...], str], list[int]] = {}
    for rank, (pos, name) in enumerate(everyone):
        groups.setdefault((tuple(int(v) for v in pos), name), []).append(rank)

    def where(pos: tuple[int, ...], name: str, ranks: list[int]) -> str:
        epoch, step, done, total, _ = pos
        of = f"batch {done} of {total}" if total >= 0 else f"batch {done}"
        who = f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ",".join(map(str, ranks))
        return f"{who} at epoch {epoch} step {step} ({of}) from {name}"

    points = ", ".join(where(pos, name, ranks) for (pos, name), ranks in groups.items())
    return (f"ranks disagree on the resume point: {points}; every rank must load the same checkpoint: "
            "pass the same ckpt_path on every rank, from a checkpoint folder all ranks share")
