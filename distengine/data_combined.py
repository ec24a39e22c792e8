"""Several loaders as one: what the Trainer makes of a dict / list of loaders or a ``CombinedLoader``.

Training
    ``fit(model, {"a": la, "b": lb})`` (or a list, or a ``*_dataloader()`` returning one) reads
    them as ``CombinedLoader(..., "max_size_cycle")``, as Lightning does; a ``CombinedLoader``
    passed in keeps its mode (``sequential`` is refused for training, as in Lightning). Each
    inner loader is prepared as a single training loader would be (its own
    :class:`~distengine.data.ResumableSampler`, sharded by rank), and ``limit_train_batches``
    caps the combined length.

Resume
    The combined position is the number of combined batches ``k`` done in the epoch (the
    progress counter). From it each inner loader's own position follows: ``k`` (min_size),
    ``min(k, len)`` (max_size) or ``k mod len`` (max_size_cycle: a cycled loader restarts its
    own order of the epoch). A loader that ran out exactly at ``k`` resumes as run out, so it
    restarts at the next fetch as it did in the uninterrupted run (the RNG draw of its new
    iterator then happens at the same moment). The checkpoint's ``data`` entry records the
    mode, the world size and every inner loader's sample position; a mid-epoch resume needs the
    same mode, number of loaders and world size. Inner loaders distengine cannot position
    (an iterable dataset, a custom sampler) make the resumed epoch skip its first ``k``
    combined batches instead.

Evaluation
    A dict / list of loaders, or a ``CombinedLoader(..., "sequential")``, is several evaluation
    loaders (``dataloader_idx``); a ``CombinedLoader`` in another mode is one loader whose
    batches hold one batch of each.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

from distengine.data import ResumableSampler, loader_len, prepare_eval_loader, prepare_train_loader
from distengine.utilities.combined_loader import MODES, CombinedLoader, _is_leaf, combined_length, flatten


def train_source(source: Any) -> Any:
    """The training loader as the Trainer reads it: a container of loaders becomes a
    ``CombinedLoader(..., "max_size_cycle")``."""
    if isinstance(source, CombinedLoader) or _is_leaf(source):
        return source
    return CombinedLoader(source, "max_size_cycle")


def eval_sources(source: Any) -> list[Any]:
    """The evaluation loaders, one per ``dataloader_idx``."""
    if isinstance(source, CombinedLoader):
        return list(source.flattened) if source.mode == "sequential" else [source]
    return flatten(source)[0]


def inner_loaders(source: Any) -> list[Any]:
    """The loaders a source reads (to check each for emptiness)."""
    return list(source.flattened) if isinstance(source, CombinedLoader) else [source]


class CombinedBatches:
    """A non-sequential ``CombinedLoader`` as one evaluation loader: yields the batches only."""

    def __init__(self, loader: CombinedLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        return (batch for batch, _, _ in iter(self.loader))

    def __len__(self) -> int:
        n = self.loader._length()
        if math.isinf(n):
            raise TypeError("a combined loader over a loader without a length has no length")
        return int(n)


def prepare_eval(loader: Any, world_size: int, rank: int, enabled: bool) -> Any:
    if not isinstance(loader, CombinedLoader):
        return prepare_eval_loader(loader, world_size, rank, enabled)
    loader = _copy(loader)
    loader.flattened = [prepare_eval_loader(dl, world_size, rank, enabled) for dl in loader.flattened]
    return CombinedBatches(loader)


def _copy(loader: CombinedLoader) -> CombinedLoader:
    """A CombinedLoader over the same iterables: the Trainer replaces the copy's loaders with
    sharded ones, so the user's own stays as it was (a second fit prepares it afresh)."""
    copy = CombinedLoader(loader.iterables, loader.mode)
    copy.limits = loader.limits
    return copy


class CombinedSamplers:
    """The samplers of a combined training loader, driven by the fit loop like one sampler
    (``set_epoch``, ``set_start(0)``) and positioned by a resume (``start_at_batch``)."""

    def __init__(self, loader: CombinedLoader, samplers: list[ResumableSampler | None], world_size: int) -> None:
        self.loader, self.samplers, self.world_size = loader, samplers, world_size
        self.mode = loader.mode
        self.resumable = all(s is not None for s in samplers)
        # per-rank batches of one full pass of each inner loader (before any resume position)
        self.lengths = [loader_len(dl) for dl in loader.flattened]
        self.batch_sizes = [getattr(dl, "batch_size", None) or 1 for dl in loader.flattened]
        loader._before_restart = self._rewind  # a cycled loader starts its next pass at 0

    def _rewind(self, i: int) -> None:
        if self.samplers[i] is not None:
            self.samplers[i].set_start(0)

    def set_epoch(self, epoch: int) -> None:
        for s in self.samplers:
            if s is not None:
                s.set_epoch(epoch)

    def set_start(self, position: int) -> None:
        """``0``: every inner loader from the epoch's start (the fit loop, at an epoch's end)."""
        if position:
            raise ValueError("a combined training loader is positioned by start_at_batch, not set_start")
        for i in range(len(self.samplers)):
            self._rewind(i)

    def batch_positions(self, k: int) -> list[int | float]:
        """Each inner loader's position (batches read in its current pass) after ``k`` combined batches."""
        out: list[int | float] = []
        for n in self.lengths:
            if self.mode == "min_size" or math.isinf(n):
                out.append(k)
            elif self.mode == "max_size":
                out.append(min(k, n))
            else:  # max_size_cycle: one that ran out exactly at k resumes as run out
                out.append(n if k and k % n == 0 else k % n)
        return out

    def sample_positions(self, k: int) -> list[int]:
        """Each inner loader's position in samples over all ranks (what its sampler's start is)."""
        return [int(min(b * bs * self.world_size, s.num_samples)) if s is not None else int(b) * bs * self.world_size
                for b, bs, s in zip(self.batch_positions(k), self.batch_sizes, self.samplers)]

    def start_at_batch(self, k: int) -> None:
        if not self.resumable:
            return  # the loop skips the first k combined batches instead
        for s, start in zip(self.samplers, self.sample_positions(k)):
            s.set_start(start)

    def state(self, k: int) -> dict[str, Any]:
        # each inner loader's current permutation (a drawn seed or generator state on one process)
        drawn = [s.drawn if s is not None else None for s in self.samplers]
        return {"mode": self.mode, "world_size": self.world_size, "batches_done": k,
                "samples": self.sample_positions(k), "drawn": drawn}

    def resume_drawn(self, drawn: list[Any] | None) -> None:
        """A mid-epoch resume: each inner loader continues the permutation it was in (a loader
        that had run out draws its next pass afresh, as the uninterrupted run did)."""
        for s, d in zip(self.samplers, drawn or ()):
            if s is not None:
                s.resume_epoch(d)

    def check_resume(self, saved: dict[str, Any] | None, k: int) -> None:
        """Refuse a mid-epoch resume whose combined loader is not the one that was saved."""
        if not k:
            return
        count = len(self.samplers)
        if saved is None:
            raise ValueError(f"the checkpoint was saved mid-epoch with one training loader, but this fit has "
                             f"{count} combined ones; resume with the loaders it was saved with")
        if saved["mode"] != self.mode or len(saved["samples"]) != count:
            raise ValueError(f"the checkpoint was saved mid-epoch with {len(saved['samples'])} training loaders in "
                             f"mode {saved['mode']!r}, but this fit has {count} in mode {self.mode!r}; resume with "
                             "the loaders it was saved with")
        if saved["world_size"] != self.world_size:
            raise ValueError(f"a mid-epoch checkpoint of a combined training loader resumes only at the world size "
                             f"it was saved at ({saved['world_size']}, now {self.world_size}); resume at that "
                             "size, or from a checkpoint saved at an epoch's end")


def prepare_train(source: Any, world_size: int, rank: int, enabled: bool,
                  shuffle_override: bool | None, limit: Any,
                  distributed: bool = False) -> tuple[Any, Any, int | float]:
    """``(loader, sampler, num_batches)`` for training: ``sampler`` is a ResumableSampler, a
    :class:`CombinedSamplers`, or None (not positioned: a resume skips batches)."""
    from distengine.data import apply_limit

    if not isinstance(source, CombinedLoader):
        loader, sampler = prepare_train_loader(source, world_size, rank, enabled, shuffle_override, distributed)
        return loader, sampler, apply_limit(limit, loader_len(loader), "train")
    if source.mode == "sequential":
        raise ValueError(f"fit does not support CombinedLoader(mode='sequential') for training; use one of "
                         f"{[m for m in MODES if m != 'sequential']}")
    source = _copy(source)
    prepared = [prepare_train_loader(dl, world_size, rank, enabled, shuffle_override, distributed)
                for dl in source.flattened]
    source.flattened = [dl for dl, _ in prepared]
    samplers = CombinedSamplers(source, [s for _, s in prepared], world_size)
    lengths = [loader_len(dl) for dl in source.flattened]
    source.limits = [apply_limit(limit, n, "train") for n in lengths]  # as Lightning sets them
    return source, samplers, apply_limit(limit, combined_length(source.mode, lengths, None), "train")
