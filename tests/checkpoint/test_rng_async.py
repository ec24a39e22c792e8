"""RNG capture/restore round trip; async saves are isolated from later weight updates."""
from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch

from distengine.checkpoint import async_writer as aw
from distengine.checkpoint.async_writer import AsyncCheckpointWriter, copy_state_to_cpu
from distengine.checkpoint.io import atomic_save, safe_load
from distengine.checkpoint.rng import capture_rng_state, restore_rng_state


def _draw():
    return (torch.rand(5), torch.randn(3), random.random(), random.gauss(0, 1),
            np.random.rand(4), np.random.randn(2), torch.randint(0, 1000, (4,)))


def _same(a, b):
    for x, y in zip(a, b, strict=True):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y)
        elif isinstance(x, np.ndarray):
            assert np.array_equal(x, y)
        else:
            assert x == y


def test_rng_round_trip_through_a_safe_file(tmp_path):
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    _draw()                      # leave cached gaussians in `random` and NumPy
    random.gauss(0, 1)
    np.random.randn(1)
    state = capture_rng_state()
    expected = _draw()
    atomic_save({"rng": state}, tmp_path / "rng.ckpt")
    # scramble every generator, then restore from the weights_only-loaded file
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    restore_rng_state(safe_load(tmp_path / "rng.ckpt")["rng"])
    _same(expected, _draw())


def test_rng_of_older_checkpoints_still_restores(tmp_path):
    """Python's generator state is stored as an int64 tensor (fast to pickle); checkpoints
    written when it was a tuple of 625 ints load and restore the same stream."""
    random.seed(5)
    random.gauss(0, 1)
    state = capture_rng_state()
    assert isinstance(state["python"][1], torch.Tensor) and state["python"][1].dtype == torch.int64
    version, _, gauss = random.getstate()
    old = dict(state, python=(version, tuple(int(x) for x in random.getstate()[1]), gauss))
    atomic_save({"rng": old}, tmp_path / "old.ckpt")
    expected = _draw()
    random.seed(99)
    restore_rng_state(safe_load(tmp_path / "old.ckpt")["rng"])
    _same(expected, _draw())


def test_rng_restore_actually_changes_the_streams():
    state = capture_rng_state()
    first = _draw()
    second = _draw()  # without a restore the streams move on
    with pytest.raises(AssertionError):
        _same(first, second)
    restore_rng_state(state)
    _same(first, _draw())


def test_rng_restore_rejects_non_dict():
    with pytest.raises(TypeError, match="capture_rng_state"):
        restore_rng_state([1, 2])


def _gated_atomic_save(monkeypatch):
    """Make the writer thread wait for `gate` before writing (so the test can act meanwhile)."""
    gate = threading.Event()
    real = aw.atomic_save

    def slow(obj, path):
        assert gate.wait(30)
        real(obj, path)

    monkeypatch.setattr(aw, "atomic_save", slow)
    return gate


def test_async_save_has_weights_at_submit_time(tmp_path, monkeypatch):
    gate = _gated_atomic_save(monkeypatch)
    model = torch.nn.Linear(64, 64)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exp_avg_before = opt.state_dict()["state"][0]["exp_avg"].clone()
    writer = AsyncCheckpointWriter()
    done = []
    writer.submit({"model": model.state_dict(), "optim": opt.state_dict(), "step": 1},
                  tmp_path / "a.ckpt", on_done=done.append)
    assert writer.in_flight
    # training continues: an optimizer step and an in-place edit while the write waits
    model(torch.randn(2, 64)).sum().backward()
    opt.step()
    with torch.no_grad():
        model.weight.add_(1.0)
    gate.set()
    writer.wait()
    assert done == [str(tmp_path / "a.ckpt")]
    saved = safe_load(tmp_path / "a.ckpt")
    for k, v in before.items():
        assert torch.equal(saved["model"][k], v)
        assert not torch.equal(saved["model"][k], model.state_dict()[k])
    assert torch.equal(saved["optim"]["state"][0]["exp_avg"], exp_avg_before)
    assert saved["step"] == 1


def test_async_one_write_in_flight_and_errors_surface(tmp_path, monkeypatch):
    gate = _gated_atomic_save(monkeypatch)
    writer = AsyncCheckpointWriter()
    order = []
    writer.submit({"i": 1}, tmp_path / "1.ckpt", on_done=order.append)
    second_returned = threading.Event()

    def submit_second():
        writer.submit({"i": 2}, tmp_path / "2.ckpt", on_done=order.append)
        second_returned.set()

    t = threading.Thread(target=submit_second)
    t.start()
    assert not second_returned.wait(0.3)  # blocked behind the first write
    gate.set()
    t.join(30)
    writer.wait()
    assert order == [str(tmp_path / "1.ckpt"), str(tmp_path / "2.ckpt")]

    def boom(path):
        raise OSError("disk full")

    writer.submit({"i": 3}, tmp_path / "3.ckpt", on_done=boom)
    with pytest.raises(RuntimeError, match="disk full"):
        writer.wait()
    writer.wait()  # reported once
    with pytest.raises(TypeError):
        writer.submit([1], tmp_path / "x.ckpt")


def test_error_is_raised_by_the_next_submit(tmp_path, monkeypatch):
    def fail(obj, path):
        raise OSError("no space left")

    monkeypatch.setattr(aw, "atomic_save", fail)
    writer = AsyncCheckpointWriter()
    writer.submit({"a": 1}, tmp_path / "a.ckpt")
    with pytest.raises(RuntimeError, match="no space left"):
        writer.submit({"a": 2}, tmp_path / "b.ckpt")


def test_copy_keeps_shared_storage_and_metadata():
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied weights
    model = torch.nn.Sequential(emb, head)
    sd = model.state_dict()
    view = sd["0.weight"][2:5]
    snap = copy_state_to_cpu({"sd": sd, "view": view, "meta": [1, "x", (2, 3.0)]})
    assert snap["sd"]["0.weight"].data_ptr() != sd["0.weight"].data_ptr()
    assert snap["sd"]["0.weight"].untyped_storage().data_ptr() == \
        snap["sd"]["1.weight"].untyped_storage().data_ptr()
    assert torch.equal(snap["view"], view)
    assert snap["view"].untyped_storage().data_ptr() == snap["sd"]["0.weight"].untyped_storage().data_ptr()
    assert snap["meta"] == [1, "x", (2, 3.0)]
    assert type(snap["sd"]) is type(sd) and snap["sd"]._metadata == sd._metadata
    model.load_state_dict(snap["sd"])  # still a valid state_dict


def test_buffers_are_reused_between_saves_without_mixing_them(tmp_path):
    model = torch.nn.Linear(32, 32)
    writer = AsyncCheckpointWriter()
    writer.submit({"model": model.state_dict()}, tmp_path / "1.ckpt")
    writer.wait()
    first_ptrs = [s.data_ptr() for s in writer._pool]
    first = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.mul_(-1)
    writer.submit({"model": model.state_dict()}, tmp_path / "2.ckpt")
    writer.wait()
    assert [s.data_ptr() for s in writer._pool] == first_ptrs  # refilled, not reallocated
    one, two = safe_load(tmp_path / "1.ckpt")["model"], safe_load(tmp_path / "2.ckpt")["model"]
    assert torch.equal(one["weight"], first["weight"])
    assert torch.equal(two["weight"], -first["weight"])
    # a different state shape gets fresh buffers of the right size
    writer.submit({"w": torch.ones(3)}, tmp_path / "3.ckpt")
    writer.wait()
    assert torch.equal(safe_load(tmp_path / "3.ckpt")["w"], torch.ones(3))
    writer.release()
    assert writer._pool == []
    no_reuse = AsyncCheckpointWriter(reuse_buffers=False)
    no_reuse.submit({"w": torch.ones(3)}, tmp_path / "4.ckpt")
    no_reuse.wait()
    assert no_reuse._pool == []
