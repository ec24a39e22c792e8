"""Predictions gathered over ranks are moved to the CPU first (issue 21 item 3.1).

On several GPUs, ``all_gather_object`` pickles every rank's outputs: a CUDA tensor comes back
on the sender's device on every rank. There is no GPU here, so ``FakeCuda`` stands in: a
tensor that says it lives on ``cuda`` (a wrapper subclass holding a CPU tensor) and becomes a
plain CPU tensor only when it is copied to the CPU.
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple

import torch
from torch.utils._pytree import tree_map
from torch.utils.data import DataLoader

from distengine.loop_eval import outputs_to_cpu
from tests.distributed.test_ddp import IndexDataset, Recorder, _trainer
from tests.helpers import run_ranks


class FakeCuda(torch.Tensor):
    @staticmethod
    def __new__(cls, data):
        r = torch.Tensor._make_wrapper_subclass(cls, data.shape, dtype=data.dtype, device="cuda")
        r._data = data
        return r

    def __repr__(self):
        return f"FakeCuda({self._data!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}

        def unwrap(x):
            return x._data if isinstance(x, FakeCuda) else x

        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        if str(kwargs.get("device", "cuda")) == "cpu":  # .cpu() / .to("cpu"): a plain tensor
            return out
        return tree_map(lambda x: FakeCuda(x) if isinstance(x, torch.Tensor) else x, out)


Pair = namedtuple("Pair", "a b")


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def test_outputs_to_cpu_nested():
    x = FakeCuda(torch.arange(3.0))
    plain = torch.ones(2)
    obj = {"x": x, "l": [x, (x, 7)], "nt": Pair(x, "s"), "od": OrderedDict(k=x), "cpu": plain, "n": None}
    assert x.device.type == "cuda"
    out = outputs_to_cpu(obj)
    assert type(out) is dict and type(out["l"]) is list and type(out["l"][1]) is tuple
    assert type(out["nt"]) is Pair and out["nt"].b == "s" and type(out["od"]) is OrderedDict
    assert out["l"][1][1] == 7 and out["n"] is None
    tensors = _tensors(out)
    assert len(tensors) == 6
    for t in tensors:
        assert type(t) is torch.Tensor and t.device.type == "cpu"
    assert torch.equal(out["x"], torch.arange(3.0)) and torch.equal(out["od"]["k"], torch.arange(3.0))
    assert out["cpu"] is plain, "a CPU tensor is kept as it is (no copy)"


class FakeCudaPredictor(Recorder):
    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        idx = FakeCuda(batch[2].long())
        return {"idx": idx, "nested": [Pair(idx, idx * 2), (idx,)], "batch_idx": batch_idx}


def _predict(rank, tmp):
    trainer = _trainer(tmp)
    return trainer.predict(FakeCudaPredictor(), DataLoader(IndexDataset(9), batch_size=2))


def test_two_rank_predictions_are_gathered_on_cpu_and_complete(tmp_path):
    for preds in run_ranks(_predict, 2, str(tmp_path)):
        assert [p["batch_idx"] for p in preds] == [0, 1, 0, 1, 2], "rank 0's 2 batches, then rank 1's 3"
        for p in preds:
            for t in _tensors(p):
                assert type(t) is torch.Tensor and t.device.type == "cpu", t
        assert torch.cat([p["idx"] for p in preds]).tolist() == list(range(9))
        assert torch.cat([p["nested"][0].b for p in preds]).tolist() == [2 * i for i in range(9)]
