"""``CombinedLoader``: several iterables (dataloaders) read together, as in Lightning 2.x.

``iterables`` is one iterable or a dict / list / tuple of them (nested too); each leaf is read
by its own iterator. Iterating a ``CombinedLoader`` yields ``(batch, batch_idx, dataloader_idx)``:

``max_size_cycle``  one batch of every iterable, in the same structure (``{"a": ..., "b": ...}``);
                    a shorter iterable starts again when it runs out; ends with the longest.
                    What ``Trainer.fit`` makes of a dict or list of training loaders.
``min_size``        the same, ending with the shortest.
``max_size``        the same, ending with the longest; an exhausted iterable gives ``None``.
``sequential``      every batch of the first iterable, then of the second...: the batch alone,
                    ``dataloader_idx`` its iterable's index. What evaluation makes of several loaders.

``len()`` (only after ``iter()``, as in Lightning) is the longest, the shortest or the sum of
the iterables' lengths, each capped by its entry in ``limits`` when those are set.

Example::

    from distengine.utilities import CombinedLoader   # as from pytorch_lightning.utilities

    loader = CombinedLoader({"a": DataLoader(range(6), batch_size=4),
                             "b": DataLoader(range(15), batch_size=5)}, "max_size_cycle")
    trainer.fit(model, loader)          # training_step(batch, batch_idx): batch["a"], batch["b"]
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

MODES = ("min_size", "max_size_cycle", "max_size", "sequential")


# ------------------------------------------------------------------ structure
def _is_leaf(obj: Any) -> bool:
    """A dict / list / tuple is a node unless it holds only numbers and strings (or nothing):
    such a container is one iterable (Lightning flattens the same way)."""
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    else:
        return True
    return all(isinstance(c, (int, float, str)) for c in children)


def flatten(tree: Any) -> tuple[list[Any], Any]:
    """``(leaves, spec)``: the leaves in order, and what :func:`unflatten` needs to rebuild."""
    if _is_leaf(tree):
        return [tree], None
    if isinstance(tree, dict):
        keys, children = list(tree), list(tree.values())
    else:
        keys, children = None, list(tree)
    leaves: list[Any] = []
    specs = []
    for child in children:
        flat, spec = flatten(child)
        leaves += flat
        specs.append((len(flat), spec))
    return leaves, (type(tree), keys, specs)


def unflatten(leaves: list[Any], spec: Any) -> Any:
    if spec is None:
        return leaves[0]
    kind, keys, specs = spec
    children, at = [], 0
    for count, child_spec in specs:
        children.append(unflatten(leaves[at:at + count], child_spec))
        at += count
    if keys is not None:
        out = dict(zip(keys, children))
        return out if kind is dict else kind(out)
    if hasattr(kind, "_fields"):  # a named tuple
        return kind(*children)
    return kind(children)


def _length(iterable: Any) -> int | float:
    try:
        return len(iterable)
    except (TypeError, NotImplementedError):
        return math.inf


# ------------------------------------------------------------------ the modes
class _Modes:
    """One pass over the iterables in one mode. ``before_restart(i)`` is called before the
    ``i``-th iterable is iterated again (max_size_cycle); the Trainer uses it to rewind its
    sampler to the epoch's start after a resumed, part-read first pass."""

    def __init__(self, mode: str, iterables: list[Any], limits: list[int | float] | None,
                 before_restart: Callable[[int], None] | None) -> None:
        self.mode, self.iterables, self.limits, self.before_restart = mode, iterables, limits, before_restart
        self.idx = 0  # batch_idx of the next batch
        if mode == "sequential":
            self.current = 0
            self.iterators = [iter(iterables[0])] if iterables else []
        else:
            self.iterators = [iter(it) for it in iterables]
            self.consumed = [False] * len(iterables)

    def __next__(self) -> tuple[list[Any] | Any, int, int]:
        if self.mode == "sequential":
            return self._next_sequential()
        n = len(self.iterators)
        out: list[Any] = [None] * n
        if self.mode == "min_size":
            out = [next(it) for it in self.iterators]
        elif self.mode == "max_size":
            if n == 0:
                raise StopIteration
            exhausted = 0
            for i in range(n):
                try:
                    out[i] = next(self.iterators[i])
                except StopIteration:
                    exhausted += 1
            if exhausted == n:
                raise StopIteration
        else:  # max_size_cycle
            for i in range(n):
                try:
                    out[i] = next(self.iterators[i])
                except StopIteration:
                    self.consumed[i] = True
                    if all(self.consumed):
                        raise
                    if self.before_restart is not None:
                        self.before_restart(i)
                    self.iterators[i] = iter(self.iterables[i])
                    out[i] = next(self.iterators[i])
        index, self.idx = self.idx, self.idx + 1
        return out, index, 0

    def _next_sequential(self) -> tuple[Any, int, int]:
        n = len(self.iterables)
        while self.current < n:
            limit = self.limits[self.current] if self.limits is not None else math.inf
            if self.idx < limit:
                try:
                    batch = next(self.iterators[0])
                except StopIteration:
                    pass
                else:
                    index, self.idx = self.idx, self.idx + 1
                    return batch, index, self.current
            self.current, self.idx = self.current + 1, 0  # the next iterable
            self.iterators = [iter(self.iterables[self.current])] if self.current < n else []
        raise StopIteration


def combined_length(mode: str, lengths: list[int | float], limits: list[int | float] | None) -> int | float:
    """The number of batches a pass yields, as Lightning counts it."""
    if mode == "min_size":
        return min(lengths + (limits or [])) if lengths else 0
    capped = lengths if limits is None else [min(n, lim) for n, lim in zip(lengths, limits)]
    if mode == "sequential":
        return sum(capped)
    return max(capped) if capped else 0


# ------------------------------------------------------------------ the public class
class CombinedLoader(Iterable):
    """Several iterables read together; see the module docstring for the modes.

    Args:
        iterables: one iterable, or a dict / list / tuple of them.
        mode: ``"min_size"`` (the default, as in Lightning), ``"max_size_cycle"``, ``"max_size"``
            or ``"sequential"``.
    """

    def __init__(self, iterables: Any, mode: str = "min_size") -> None:
        if mode not in MODES:
            raise ValueError(f"CombinedLoader mode {mode!r} is not supported; use one of {list(MODES)}")
        self._iterables = iterables
        self._flattened, self._spec = flatten(iterables)
        self._mode = mode
        self._iterator: _Modes | None = None
        self._limits: list[int | float] | None = None
        self._before_restart: Callable[[int], None] | None = None

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def iterables(self) -> Any:
        """The iterables, in the structure they were given in."""
        return self._iterables

    @property
    def flattened(self) -> list[Any]:
        """The iterables as a flat list."""
        return self._flattened

    @flattened.setter
    def flattened(self, flattened: list[Any]) -> None:
        if len(flattened) != len(self._flattened):
            raise ValueError(f"CombinedLoader.flattened takes {len(self._flattened)} iterables, got {len(flattened)}")
        self._flattened = list(flattened)
        self._iterables = unflatten(self._flattened, self._spec)

    @property
    def sampler(self) -> Any:
        return unflatten([getattr(x, "sampler", None) for x in self._flattened], self._spec)

    @property
    def batch_sampler(self) -> Any:
        return unflatten([getattr(x, "batch_sampler", None) for x in self._flattened], self._spec)

    @property
    def limits(self) -> list[int | float] | None:
        """The most batches each iterable gives per pass (``None``: all)."""
        return self._limits

    @limits.setter
    def limits(self, limits: int | float | list[int | float] | None) -> None:
        if isinstance(limits, (int, float)):
            limits = [limits] * len(self._flattened)
        elif limits is not None and len(limits) != len(self._flattened):
            raise ValueError(f"CombinedLoader.limits takes {len(self._flattened)} values, got {len(limits)}")
        self._limits = None if limits is None else list(limits)

    def __iter__(self) -> CombinedLoader:
        self._iterator = _Modes(self._mode, self._flattened, self._limits, self._before_restart)
        return self

    def __next__(self) -> tuple[Any, int, int]:
        if self._iterator is None:
            raise RuntimeError("call iter(combined_loader) before next()")
        out, batch_idx, dataloader_idx = next(self._iterator)
        if self._mode == "sequential":
            return out, batch_idx, dataloader_idx
        return unflatten(out, self._spec), batch_idx, dataloader_idx

    def __len__(self) -> int:
        if self._iterator is None:  # as in Lightning
            raise RuntimeError("call iter(combined_loader) before len(combined_loader)")
        return self._length()

    def _length(self) -> int | float:
        return combined_length(self._mode, [_length(it) for it in self._flattened], self._limits)

    def reset(self) -> None:
        """Forget the current pass (the next ``iter()`` starts a new one)."""
        self._iterator = None

    def __repr__(self) -> str:
        return f"CombinedLoader({len(self._flattened)} iterables, mode={self._mode!r})"
