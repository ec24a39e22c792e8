"""What a prediction writer reads during ``predict``: ``trainer.predict_loop``.

:class:`PredictLoopState` holds, for the current ``predict`` call, this rank's own predictions
(moved to the CPU) and the dataset indices of each batch this rank ran, as Lightning's
``trainer.predict_loop`` exposes them (``predictions``, ``current_batch_indices``,
``epoch_batch_indices``). Indices are recorded only while a
:class:`~distengine.callbacks.BasePredictionWriter` is among the callbacks: the loader's batch
sampler is wrapped by :class:`_RecordingBatchSampler`, which notes each list of indices as the
loader draws it (ahead of the step when workers prefetch, so batch ``i`` is looked up by
position). With several ranks each rank's indices are those of its own contiguous, unpadded
shard, so the union over ranks is the dataset, each index once. A loader whose indices are
unknown (an iterable dataset, a DataLoader subclass, a combined loader) gives empty lists.
"""
from __future__ import annotations

from typing import Any, Iterator

from torch.utils.data import DataLoader, IterableDataset

from distengine.data import _LOADER_ARGS


class _RecordingBatchSampler:
    """A batch sampler that yields its inner sampler's batches and remembers them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seen: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        self.seen = []
        for batch in self.inner:
            batch = list(batch)
            self.seen.append(batch)
            yield batch

    def __len__(self) -> int:
        return len(self.inner)


def recording_loader(loader: Any) -> tuple[Any, _RecordingBatchSampler | None]:
    """``(loader, recorder)``: a plain map-style DataLoader rebuilt over a recording batch
    sampler (same dataset, order and loader arguments); anything else unchanged with ``None``."""
    if type(loader) is not DataLoader or isinstance(loader.dataset, IterableDataset) \
            or loader.batch_sampler is None:
        return loader, None
    recorder = _RecordingBatchSampler(loader.batch_sampler)
    kwargs = {name: getattr(loader, name) for name in _LOADER_ARGS if hasattr(loader, name)}
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    return DataLoader(loader.dataset, batch_sampler=recorder, **kwargs), recorder


class PredictLoopState:
    """``trainer.predict_loop``: see the module docstring."""

    def __init__(self) -> None:
        self.return_predictions = True
        self.current_batch_indices: list[int] = []
        self.epoch_batch_indices: list[list[list[int]]] = []  # dataloaders x batches x samples
        self._predictions: list[list[Any]] = []  # dataloaders x batches
        self.track = self.on_batch = self.on_epoch = False

    @property
    def num_dataloaders(self) -> int:
        return len(self._predictions)

    @property
    def predictions(self) -> list[Any]:
        """This rank's predictions of the current ``predict`` call: a list over batches (a list
        of those per dataloader when there are several)."""
        if not self._predictions:
            return []
        return self._predictions[0] if len(self._predictions) == 1 else self._predictions

    def begin(self, callbacks: list[Any], loaders: list[Any]) -> list[Any]:
        """Start a ``predict`` call; return the loaders to run (recording ones under a writer)."""
        from distengine.callbacks.prediction_writer import BasePredictionWriter

        writers = [cb for cb in callbacks if isinstance(cb, BasePredictionWriter)]
        self.track = bool(writers)
        self.on_batch = any(w.interval.on_batch for w in writers)
        self.on_epoch = any(w.interval.on_epoch for w in writers)
        self.current_batch_indices = []
        self.epoch_batch_indices = [[] for _ in loaders]
        self._predictions = [[] for _ in loaders]
        self._recorders: list[_RecordingBatchSampler | None] = [None] * len(loaders)
        if not self.track:
            return loaders
        pairs = [recording_loader(dl) for dl in loaders]
        self._recorders = [r for _, r in pairs]
        return [dl for dl, _ in pairs]

    def record(self, dl_idx: int, batch_idx: int) -> None:
        """Note the indices of batch ``batch_idx`` of loader ``dl_idx`` (before the batch hooks)."""
        recorder = self._recorders[dl_idx]
        indices = recorder.seen[batch_idx] if recorder is not None and batch_idx < len(recorder.seen) else []
        if self.on_epoch:
            self.epoch_batch_indices[dl_idx].append(indices)
        if self.on_batch:
            self.current_batch_indices = indices

    def keep(self, dl_idx: int, prediction: Any) -> None:
        from distengine.loop_eval import outputs_to_cpu

        if self.on_epoch:
            self._predictions[dl_idx].append(outputs_to_cpu(prediction))

    def end(self) -> None:
        """After ``on_predict_end``: nothing kept past the call (as in Lightning)."""
        self._predictions, self.epoch_batch_indices, self.current_batch_indices = [], [], []
