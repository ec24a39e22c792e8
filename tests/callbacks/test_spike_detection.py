"""SpikeDetection: which losses count as spikes, the skip file, and every rank stopping."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks import SpikeDetection
from distengine.callbacks.spike import TrainingSpikeException
from tests.helpers import run_ranks


class Scripted(de.Module):
    """Returns the loss given for (rank, batch_idx); 1.0 where none is given."""

    def __init__(self, losses):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.losses = losses

    def training_step(self, batch, batch_idx):
        value = self.losses.get((self.global_rank, batch_idx), 1.0)
        return self.w.sum() * 0 + value

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp, losses, spike, batches=8):
    # "ignore": distengine's own non-finite check would otherwise raise before the callback runs
    trainer = de.Trainer(default_root_dir=tmp, on_nonfinite_loss="ignore", max_epochs=1, accelerator="cpu",
                         logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[spike])
    data = DataLoader(TensorDataset(torch.zeros(batches * trainer.world_size, 1)), batch_size=1)
    trainer.fit(Scripted(losses), data)
    return trainer


def test_a_jump_stops_and_writes_the_two_batches(tmp_path):
    spike = SpikeDetection(window=3, warmup=1)
    with pytest.raises(TrainingSpikeException, match="Training spike detected in batch 5"):
        _fit(str(tmp_path), {(0, 5): 10.0}, spike)
    assert json.loads((tmp_path / "skip_batches.json").read_text()) == [4, 5]
    assert spike.bad_batches == [4, 5]


def test_small_rises_improvements_and_warmup_are_not_spikes(tmp_path):
    losses = {(0, 0): 100.0, (0, 1): 1.5, (0, 2): 2.5, (0, 3): 0.1}  # batch 0: in warm-up
    spike = SpikeDetection(window=2, warmup=1, exclude_batches_path=str(tmp_path / "d"))
    _fit(str(tmp_path), losses, spike)
    assert spike.bad_batches == [] and not (tmp_path / "d").exists()
    max_mode = SpikeDetection(mode="max", window=2, warmup=1, exclude_batches_path=str(tmp_path / "m"))
    _fit(str(tmp_path), {(0, 3): 50.0}, max_mode)  # a rise is an improvement when maximising
    assert max_mode.bad_batches == []


def test_nan_is_a_spike_only_with_finite_only(tmp_path):
    with pytest.raises(TrainingSpikeException, match="batch 2"):
        _fit(str(tmp_path), {(0, 2): math.nan}, SpikeDetection(warmup=1))
    lenient = SpikeDetection(warmup=1, finite_only=False, exclude_batches_path=str(tmp_path / "x.json"))
    _fit(str(tmp_path), {(0, 2): math.nan}, lenient)
    assert lenient.bad_batches == []


def test_atol_and_bad_arguments(tmp_path):
    quiet = SpikeDetection(window=2, warmup=1, atol=100.0, exclude_batches_path=str(tmp_path / "a.json"))
    _fit(str(tmp_path), {(0, 4): 10.0}, quiet)  # 10x the mean, but within atol
    assert quiet.bad_batches == []
    state = quiet.state_dict()
    again = SpikeDetection(window=2)
    again.load_state_dict(state)
    assert again.state_dict() == state
    with pytest.raises(ValueError, match="mode"):
        SpikeDetection(mode="up")


def _ranked(rank, tmp):
    try:
        _fit(tmp, {(1, 3): 40.0}, SpikeDetection(window=2, warmup=1))
    except TrainingSpikeException as e:
        return str(e)
    return None


def test_a_spike_on_one_rank_stops_every_rank(tmp_path):
    assert run_ranks(_ranked, 2, str(tmp_path)) == ["Training spike detected in batch 3"] * 2
    assert json.loads((tmp_path / "skip_batches.json").read_text()) == [2, 3]
