"""Lightning's utilities under their Lightning names (``pytorch_lightning.utilities`` ->
``distengine.utilities``); the same outputs as pytorch-lightning 2.6.6 are checked by
tests/conformance/test_public_surface.py, this file needs no reference Lightning."""
from __future__ import annotations

import collections
import dataclasses
import random
import warnings

import pytest
import torch

from distengine.utilities import (
    GradClipAlgorithmType,
    disable_possible_user_warnings,
    find_shared_parameters,
    is_picklable,
    move_data_to_device,
    set_shared_parameters,
    suggested_max_num_workers,
)
from distengine.utilities.seed import isolate_rng, reset_seed, seed_everything
from distengine.utilities.warnings import PossibleUserWarning


@dataclasses.dataclass
class Box:
    x: torch.Tensor
    tag: str


def test_move_data_to_device_keeps_the_containers():
    pair = collections.namedtuple("pair", "a b")
    out = move_data_to_device({"l": [torch.ones(1), "s"], "p": pair(torch.ones(1), 3), "b": Box(torch.ones(1), "t"),
                               "d": collections.defaultdict(list, k=torch.ones(1))}, "meta")
    assert out["l"][0].is_meta and out["l"][1] == "s" and type(out["p"]) is pair and out["p"].a.is_meta
    assert out["b"].x.is_meta and out["b"].tag == "t" and out["d"]["k"].is_meta and out["d"]["new"] == []


def test_parameter_tying_round_trip():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    net[1].weight = net[0].weight
    shared = find_shared_parameters(net)
    assert shared == [["0.weight", "1.weight"]]
    net[1].weight = torch.nn.Parameter(torch.zeros(2, 2))
    assert find_shared_parameters(net) == []
    assert set_shared_parameters(net, shared)[1].weight is net[0].weight


def test_enum_workers_picklable_and_possible_user_warnings():
    assert GradClipAlgorithmType.NORM == "NORM" and GradClipAlgorithmType.from_str("value").value == "value"
    assert suggested_max_num_workers(1) >= 1
    with pytest.raises(ValueError, match="local_world_size"):
        suggested_max_num_workers(0)
    assert is_picklable(1) and not is_picklable(lambda: 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        disable_possible_user_warnings()
        warnings.warn("possible", PossibleUserWarning)
        warnings.warn("plain", UserWarning)
    assert [str(w.message) for w in caught] == ["plain"]


def test_isolate_rng_and_reset_seed():
    seed_everything(3, verbose=False)
    first = (torch.rand(2).tolist(), random.random())
    reset_seed()
    assert (torch.rand(2).tolist(), random.random()) == first
    state = torch.get_rng_state()
    with isolate_rng():
        torch.rand(4), random.random()
    assert torch.equal(torch.get_rng_state(), state)
