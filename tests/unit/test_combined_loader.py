"""CombinedLoader's modes and lengths (Lightning 2.x's documented examples), several loaders
given to fit/validate, and the one-line errors (unknown mode, sequential training, a mid-epoch
resume with other loaders)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distengine import Module, Trainer
from distengine.data_combined import CombinedSamplers, prepare_train
from distengine.utilities import CombinedLoader
from distengine.utilities.combined_loader import CombinedLoader as SameClass


def _iterables():
    return {"a": DataLoader(range(6), batch_size=4), "b": DataLoader(range(15), batch_size=5)}


def _read(mode):
    loader = iter(CombinedLoader(_iterables(), mode))
    out = []
    for batch, batch_idx, dataloader_idx in loader:
        if isinstance(batch, dict):
            batch = {k: None if v is None else v.tolist() for k, v in batch.items()}
        else:
            batch = batch.tolist()
        out.append((batch, batch_idx, dataloader_idx))
    return len(loader), out


def test_modes_as_lightning_documents_them():
    assert SameClass is CombinedLoader
    n, out = _read("max_size_cycle")
    assert n == 3 and out == [({"a": [0, 1, 2, 3], "b": [0, 1, 2, 3, 4]}, 0, 0),
                              ({"a": [4, 5], "b": [5, 6, 7, 8, 9]}, 1, 0),
                              ({"a": [0, 1, 2, 3], "b": [10, 11, 12, 13, 14]}, 2, 0)]
    n, out = _read("max_size")
    assert n == 3 and out[2] == ({"a": None, "b": [10, 11, 12, 13, 14]}, 2, 0)
    n, out = _read("min_size")
    assert n == 2 and len(out) == 2
    n, out = _read("sequential")
    assert n == 5 and [(b, i, d) for b, i, d in out] == [
        ([0, 1, 2, 3], 0, 0), ([4, 5], 1, 0), ([0, 1, 2, 3, 4], 0, 1), ([5, 6, 7, 8, 9], 1, 1),
        ([10, 11, 12, 13, 14], 2, 1)]


def test_limits_cap_each_loader_and_len_needs_iter():
    loader = CombinedLoader(_iterables(), "sequential")
    with pytest.raises(RuntimeError, match="iter"):
        len(loader)
    loader.limits = 1
    assert len(iter(loader)) == 2 and [i for _, i, _ in loader] == [0, 0]
    loader = CombinedLoader([DataLoader(range(6), batch_size=2), DataLoader(range(4), batch_size=2)])
    assert loader.mode == "min_size" and len(iter(loader)) == 2
    batch, _, _ = next(loader)
    assert isinstance(batch, list) and len(batch) == 2


def test_unknown_mode_is_one_line_naming_the_modes():
    with pytest.raises(ValueError) as err:
        CombinedLoader(_iterables(), "max_len")
    msg = str(err.value)
    assert "\n" not in msg and "'max_len'" in msg
    for mode in ("min_size", "max_size_cycle", "max_size", "sequential"):
        assert mode in msg


class _Net(Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.batches, self.val_calls = [], []

    def training_step(self, batch, batch_idx):
        self.batches.append(batch)
        xs = [b[0] for b in (batch.values() if isinstance(batch, dict) else batch)]
        return sum(self.layer(x).mean() for x in xs)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.val_calls.append((batch_idx, dataloader_idx))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n, bs=2):
    return DataLoader(TensorDataset(torch.randn(n, 2)), batch_size=bs)


def _trainer(**kw):
    return Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, **kw)


def test_fit_with_a_list_of_loaders_and_a_dict_of_val_loaders():
    model = _Net()
    trainer = _trainer(limit_train_batches=3)
    trainer.fit(model, [_loader(4), _loader(10)], {"x": _loader(4), "y": _loader(2)})
    assert trainer.num_training_batches == 3 and trainer.global_step == 3
    assert all(isinstance(b, list) and len(b) == 2 for b in model.batches)
    assert model.val_calls == [(0, 0), (1, 0), (0, 1)]
    assert isinstance(trainer.train_dataloader, list)


def test_sequential_training_is_refused_in_one_line():
    with pytest.raises(ValueError, match="sequential") as err:
        _trainer().fit(_Net(), CombinedLoader([_loader(4), _loader(6)], "sequential"))
    assert "\n" not in str(err.value) and "max_size_cycle" in str(err.value)


def test_a_mid_epoch_resume_needs_the_same_loaders():
    combined = CombinedLoader({"a": _loader(8), "b": _loader(4)}, "max_size_cycle")
    _, samplers, n = prepare_train(combined, 1, 0, True, None, None)
    assert isinstance(samplers, CombinedSamplers) and n == 4
    assert samplers.batch_positions(2) == [2, 2] and samplers.batch_positions(3) == [3, 1]
    samplers.check_resume(samplers.state(3), 3)  # the same loaders: fine
    other = dict(samplers.state(3), mode="min_size")
    for saved, words in ((other, "mode 'min_size'"), (None, "one training loader"),
                         (dict(samplers.state(3), world_size=2), "world size")):
        with pytest.raises(ValueError, match=words) as err:
            samplers.check_resume(saved, 3)
        assert "\n" not in str(err.value)
    samplers.check_resume(None, 0)  # saved at an epoch's end: any loaders


def test_a_min_size_combined_val_loader_is_one_loader_of_combined_batches():
    model = _Net()
    seen = []
    model.validation_step = lambda batch, batch_idx, dataloader_idx=None: seen.append(
        (sorted(batch), batch_idx, dataloader_idx))
    _trainer(limit_val_batches=2).validate(model, CombinedLoader({"x": _loader(8), "y": _loader(6)}, "min_size"),
                                           verbose=False)
    assert seen == [(["x", "y"], 0, None), (["x", "y"], 1, None)]
