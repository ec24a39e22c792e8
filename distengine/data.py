"""Data: sampler injection, the resumable (distributed) training sampler, exact eval sharding.

Training
    Every standard sampler (sequential or random) is replaced by :class:`ResumableSampler`.
    On several ranks it shuffles as the ``DistributedSampler`` Lightning puts in: one
    permutation per epoch from ``seed + epoch`` (the seed of :func:`distengine.seed_everything`,
    else 0), rank ``r`` of ``R`` taking positions ``r, r+R, r+2R, ...`` of it. In one process
    it shuffles as torch's ``RandomSampler`` (which Lightning leaves alone there): each
    iteration draws a seed from torch's global generator (or takes the permutation from the
    loader's ``generator=``), so the data order and every later random draw are Lightning's.
    After every rank has consumed ``n`` samples, exactly the first ``n*R`` positions are used,
    so a checkpoint stores the samples consumed over all ranks and what the epoch's permutation
    came from (the drawn seed or the generator's state), and a resumed run, at any world size,
    continues with the rest of the same permutation without drawing again: every sample of the
    epoch is visited exactly once. The tail is padded with repeated samples so every rank runs
    the same number of steps (as DDP needs).

Iterable datasets
    A loader over an ``IterableDataset`` is left as it is (as in Lightning): the dataset shards
    itself by rank (``torch.distributed.get_rank()``) and by worker (``get_worker_info()``).
    Its length may be unknown: an epoch then ends when the iterator is exhausted.

Evaluation
    Validation, test and predict shard WITHOUT padding: rank ``r`` gets a contiguous slice
    of the dataset. Ranks may run different numbers of batches (evaluation runs on the
    unwrapped module, so there is no collective to hang in), epoch metrics are reduced with
    per-rank sample counts, and gathering slices in rank order restores dataset order.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, Sampler, SequentialSampler

from distengine.utilities.exceptions import ConfigError


def global_seed() -> int:
    return int(os.environ.get("DISTENGINE_SEED", os.environ.get("PL_GLOBAL_SEED", "0")) or 0)


class ResumableSampler(Sampler[int]):
    """Sharded, seeded, resumable sampler for training. See the module docstring.

    ``draw=True`` (one process, shuffled): RandomSampler's permutations. ``drawn`` is what the
    current epoch's permutation came from: None (``seed + epoch``), the seed drawn from the
    global generator, or the state ``generator`` had before the permutation."""

    def __init__(self, num_samples: int, shuffle: bool, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, drop_last: bool = False, draw: bool = False,
                 generator: torch.Generator | None = None) -> None:
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.draw = draw and shuffle
        self.generator = generator
        self.drawn: int | torch.Tensor | None = None
        self._reuse = False  # a resumed epoch: the next iteration takes ``drawn``, draws nothing
        self.epoch = 0
        self.start = 0  # global position (over all ranks) where the next iteration begins

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, global_position: int) -> None:
        """Begin the next iteration at this position of the epoch's permutation."""
        self.start = max(0, min(int(global_position), self.num_samples))

    def resume_epoch(self, drawn: int | torch.Tensor | None) -> None:
        """The next iteration continues the permutation ``drawn`` (a checkpoint's) came from."""
        self.drawn, self._reuse = drawn, True

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        if self._reuse:
            self._reuse = False
        elif not self.draw:
            self.drawn = None
        elif self.generator is None:  # as RandomSampler.__iter__ draws its seed
            self.drawn = int(torch.empty((), dtype=torch.int64).random_().item())
        else:
            self.drawn = self.generator.get_state()
        if self.drawn is None:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
        elif isinstance(self.drawn, int):
            g = torch.Generator()
            g.manual_seed(self.drawn)
        else:  # the loader's generator, put back where it was before this epoch's permutation
            g = self.generator if self.draw and self.generator is not None else torch.Generator()
            g.set_state(self.drawn)
        return torch.randperm(self.num_samples, generator=g)

    def _per_rank(self, remaining: int) -> int:
        if self.drop_last:
            return remaining // self.num_replicas
        return -(-remaining // self.num_replicas)

    def __len__(self) -> int:
        return self._per_rank(self.num_samples - self.start)

    def __iter__(self) -> Iterator[int]:
        # a generator, as RandomSampler's: the permutation is drawn at the first index asked for
        rest = self._order()[self.start:]
        per_rank = self._per_rank(len(rest))
        total = per_rank * self.num_replicas
        if total > len(rest) and len(rest) > 0:  # pad by wrapping around (repeats a few samples)
            reps = -(-total // len(rest))
            rest = rest.repeat(reps)
        rest = rest[:total]
        yield from rest[self.rank::self.num_replicas].tolist()
        if self.draw and self.generator is not None and isinstance(self.drawn, torch.Tensor):
            # RandomSampler then draws an empty second permutation from the loader's generator
            torch.randperm(self.num_samples, generator=self.generator)


class EvalShardSampler(Sampler[int]):
    """Contiguous, unpadded shard of ``range(num_samples)`` for evaluation."""

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.begin = num_samples * rank // num_replicas
        self.end = num_samples * (rank + 1) // num_replicas

    def __len__(self) -> int:
        return self.end - self.begin

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))


_LOADER_ARGS = ("num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn",
                "multiprocessing_context", "generator", "persistent_workers", "pin_memory_device",
                "in_order")


def _rebuild(loader: DataLoader, sampler: Sampler, drop_last: bool) -> DataLoader:
    kwargs: dict[str, Any] = {}
    for name in _LOADER_ARGS:
        if hasattr(loader, name):
            kwargs[name] = getattr(loader, name)
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
        if kwargs.get("worker_init_fn") is None and os.environ.get("DISTENGINE_SEED_WORKERS") == "1":
            from distengine.seed import seed_worker

            kwargs["worker_init_fn"] = seed_worker
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                      drop_last=drop_last, **kwargs)


def _is_standard(loader: DataLoader) -> bool:
    return (type(loader) is DataLoader and not isinstance(loader.dataset, IterableDataset)
            and loader.batch_size is not None
            and isinstance(loader.sampler, (SequentialSampler, RandomSampler)))


def prepare_train_loader(loader: Any, world_size: int, rank: int, enabled: bool,
                         shuffle_override: bool | None = None,
                         distributed: bool = False) -> tuple[Any, ResumableSampler | None]:
    """Return ``(loader, sampler)``: the loader rebuilt on a :class:`ResumableSampler` when it
    uses a standard sampler, else unchanged with ``None``. ``distributed``: the strategy is one
    Lightning counts as distributed (DDP, FSDP, model parallel) even with one replica, so a
    shuffled loader gets DistributedSampler's ``seed + epoch`` order there, not RandomSampler's draw."""
    if not enabled or not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        # Lightning injects no sampler into an IterableDataset loader either: the dataset shards
        # itself (by torch.distributed rank and get_worker_info()) and yields the same number
        # of batches on every rank
        return loader, None
    if not _is_standard(loader):
        if world_size > 1 and not isinstance(getattr(loader, "sampler", None),
                                             torch.utils.data.DistributedSampler):
            raise ValueError(
                f"the training DataLoader uses a custom sampler/batch sampler or a DataLoader "
                f"subclass ({type(loader).__name__} with {type(loader.sampler).__name__}) that "
                "distengine cannot shard; shard it yourself and pass "
                "Trainer(use_distributed_sampler=False)")
        return loader, None
    random = isinstance(loader.sampler, RandomSampler)
    single = world_size == 1 and not distributed
    if single and shuffle_override is False and isinstance(loader.sampler, SequentialSampler):
        return loader, None  # overfit_batches: Lightning's SequentialSampler (a resume skips batches)
    if single and random and shuffle_override is None and (
            loader.sampler.replacement or loader.sampler.num_samples != len(loader.dataset)):
        return loader, None  # sampling with replacement / another length: Lightning's order as it is
    shuffle = random if shuffle_override is None else shuffle_override
    # one process (no distributed strategy): Lightning leaves the RandomSampler alone, so it draws
    # from the global RNG (or the loader's generator); several ranks, or a distributed strategy:
    # Lightning's DistributedSampler(seed + epoch),
    # which pads every rank to the same count (its drop_last is left False) while the loader's
    # drop_last drops each rank's incomplete last batch
    sampler = ResumableSampler(len(loader.dataset), shuffle=shuffle, seed=global_seed(),
                               num_replicas=world_size, rank=rank, drop_last=False,
                               draw=single, generator=getattr(loader.sampler, "generator", None))
    return _rebuild(loader, sampler, loader.drop_last), sampler


def sequential_for_overfit(source: Any, kind: str) -> Any:
    """``overfit_batches``: ``source`` (a loader, a dict / list of them, a CombinedLoader) with each
    DataLoader that does not read its dataset in order rebuilt on a ``SequentialSampler``, as
    Lightning does, with one warning; every epoch (and, for ``kind="val"``, validation) then
    sees the same first batches."""
    from distengine.utilities.combined_loader import CombinedLoader, _is_leaf, flatten, unflatten

    changed = []

    def fix(dl: Any) -> Any:
        if (type(dl) is not DataLoader or isinstance(dl.dataset, IterableDataset) or dl.batch_size is None
                or isinstance(dl.sampler, SequentialSampler)):
            return dl
        changed.append(dl)
        return _rebuild(dl, SequentialSampler(dl.dataset), dl.drop_last)

    if isinstance(source, CombinedLoader):
        out = CombinedLoader(source.iterables, source.mode)
        out.flattened, out.limits = [fix(dl) for dl in source.flattened], source.limits
    elif _is_leaf(source):
        out = fix(source)
    else:
        leaves, spec = flatten(source)
        out = unflatten([fix(dl) for dl in leaves], spec)
    if changed:
        from distengine.distributed.rank_zero import rank_zero_warn

        rank_zero_warn(f"overfit_batches is set and the {kind} dataloader shuffles (or samples out of order); "
                       "it is read in order instead (SequentialSampler), so every epoch sees the same batches",
                       UserWarning)
    return out


def prepare_eval_loader(loader: Any, world_size: int, rank: int, enabled: bool) -> Any:
    """Shard an evaluation loader without padding when distributed (see module docstring)."""
    if world_size == 1 or not enabled or not isinstance(loader, DataLoader) \
            or isinstance(loader.dataset, IterableDataset):  # shards itself, as in Lightning
        return loader
    if not _is_standard(loader):
        raise ValueError(
            f"the evaluation DataLoader uses a custom sampler or a DataLoader subclass "
            f"({type(loader).__name__}) that distengine cannot shard exactly; shard it yourself "
            "and pass Trainer(use_distributed_sampler=False)")
    return _rebuild(loader, EvalShardSampler(len(loader.dataset), world_size, rank), drop_last=False)


def loader_len(loader: Any) -> int | float:
    """``len(loader)``, or ``math.inf`` for a loader without a length (an iterable dataset)."""
    try:
        return len(loader)
    except (TypeError, NotImplementedError):  # (Lightning: a __len__ that raises NotImplementedError too)
        return math.inf


def apply_limit(limit: Any, n: int | float, kind: str) -> int | float:
    """The batch count a ``limit_<kind>_batches`` leaves of ``n``. As in Lightning, a loader
    without a length takes only ``1.0`` (all) or a whole number of batches."""
    if limit is None:
        return n
    if isinstance(limit, float) and (not limit.is_integer() or limit <= 1.0):
        if not 0.0 <= limit <= 1.0:
            raise ConfigError(f"limit_{kind}_batches={limit} must be a fraction in [0, 1] or a batch count")
        if math.isinf(n):
            if limit == 1.0:
                return n
            raise ConfigError(f"limit_{kind}_batches={limit} is a fraction but the {kind} dataloader has no "
                              f"length (an IterableDataset); use 1.0 or a whole number of batches, "
                              f"for example limit_{kind}_batches=100")
        return int(n * limit)
    return min(int(limit), n)


def estimated_steps(num_batches: int | float, accumulate: int, max_epochs: int, max_steps: int) -> int | float:
    """``Trainer.estimated_stepping_batches``, computed as Lightning 2.6.6 does: a loader without
    a length gives ``max_steps`` (``-1`` when that is not set either)."""
    if max_epochs == -1:
        return math.inf if max_steps == -1 else max_steps
    if math.isinf(num_batches):
        return max_steps
    total = -(-int(num_batches) // accumulate) * max(max_epochs, 1)
    return min(total, max_steps) if max_steps != -1 else total


class LookAhead:
    """Iterate one batch ahead, so that the last batch of a loader without a length is known
    when it arrives (Lightning's data fetcher does the same): the optimizer steps on an
    unfinished accumulation, and validation does not run twice at the epoch's end."""

    _END = object()

    def __init__(self, iterator: Any) -> None:
        self._it = iterator
        self._next = next(iterator, self._END)
        self.last = False

    @property
    def exhausted(self) -> bool:
        return self._next is self._END

    def __iter__(self) -> LookAhead:
        return self

    def __next__(self) -> Any:
        if self._next is self._END:
            raise StopIteration
        item, self._next = self._next, next(self._it, self._END)
        self.last = self._next is self._END
        return item


def batch_size_of(batch: Any) -> int:
    """The number of samples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim else 1
    if isinstance(batch, dict):
        for v in batch.values():
            n = batch_size_of(v)
            if n:
                return n
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            n = batch_size_of(v)
            if n:
                return n
    return 1


def move_to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    if hasattr(batch, "to"):
        return batch.to(device)
    return batch
