"""ModelCheckpoint: naming, top-k, save_last, triggers, last.json, state, ranks that agree."""
from __future__ import annotations

import datetime
import os

import pytest
import torch

from distengine.callbacks.model_checkpoint import ModelCheckpoint, format_checkpoint_name
from distengine.callbacks.time_checks import TimeChecks
from distengine.checkpoint.io import atomic_save, read_last_pointer, resolve_checkpoint, safe_load
from tests.checkpoint.fakes import FakeTrainer, ckpt_files
from tests.helpers import run_ranks


def test_filename_template():
    metrics = {"epoch": 1, "step": 20, "val_loss": torch.tensor(0.12345), "val/acc": 0.5}
    assert format_checkpoint_name("{epoch}-{step}-{val_loss:.3f}", metrics) == \
        "epoch=1-step=20-val_loss=0.123"
    assert format_checkpoint_name("best_{val/acc:.2f}", metrics) == "best_val_acc=0.50"
    assert format_checkpoint_name("{missing:.2f}", metrics) == "missing=nan"
    assert format_checkpoint_name("e{epoch:02d}-{val_loss:.2f}", metrics, False) == "e01-0.12"
    with pytest.raises(ValueError, match="cannot format"):
        format_checkpoint_name("{epoch:.x}", metrics)


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "mean"}, "mode"),
    ({"save_top_k": -2}, "save_top_k"),
    ({"every_n_train_steps": -1}, "every_n_train_steps"),
    ({"every_n_train_steps": 5, "every_n_epochs": 1}, "choose one"),
    ({"train_time_interval": 0}, "train_time_interval"),
    ({"filename": 3}, "filename"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelCheckpoint(**kwargs)


def test_default_dirpath_and_name(tmp_path):
    cb = ModelCheckpoint()
    t = FakeTrainer(str(tmp_path), [cb])
    t.fit_setup()
    assert cb.dirpath == str(tmp_path / "checkpoints")
    for _ in range(3):
        t.train_step()
    t.end_epoch()
    for _ in range(3):
        t.train_step()
    t.end_epoch()
    # monitor=None, save_top_k=1: only the newest is kept, and last.json points at it
    assert ckpt_files(cb.dirpath) == ["epoch=1-step=6.ckpt"]
    assert read_last_pointer(cb.dirpath) == os.path.join(cb.dirpath, "epoch=1-step=6.ckpt")
    assert resolve_checkpoint("last", cb.dirpath) == cb.last_model_path


@pytest.mark.parametrize("mode, losses, kept, best", [
    ("min", [5, 3, 4, 1, 2], [1, 2], 1),
    ("max", [5, 3, 4, 1, 2], [4, 5], 5),
])
def test_top_k_keeps_the_right_files(tmp_path, mode, losses, kept, best):
    cb = ModelCheckpoint(dirpath=tmp_path / "c", monitor="val_loss", mode=mode, save_top_k=2,
                         filename="{epoch}-{val_loss:.1f}")
    t = FakeTrainer(str(tmp_path), [cb], num_val_batches=1)
    t.fit_setup()
    for loss in losses:
        t.train_step()
        t.end_epoch({"val_loss": loss})
    names = {f"epoch={losses.index(v)}-val_loss={v:.1f}.ckpt" for v in kept}
    assert set(ckpt_files(cb.dirpath)) == names
    assert set(map(os.path.basename, cb.best_k_models)) == names
    assert cb.best_model_score == best
    assert os.path.basename(cb.best_model_path) == f"epoch={losses.index(best)}-val_loss={best:.1f}.ckpt"
    # the files hold what was trained at their step
    for path, score in cb.best_k_models.items():
        assert safe_load(path)["global_step"] == losses.index(score) + 1
    # last.json: the newest file (the loss 2 epoch made the top 2 in min mode, not in max mode)
    newest = cb.last_model_path
    assert read_last_pointer(cb.dirpath) == newest
    assert os.path.exists(newest)


def test_save_last_keeps_newest_non_top_k(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1, save_last=True,
                         filename="{epoch}-{val_loss:.0f}")
    t = FakeTrainer(str(tmp_path), [cb], num_val_batches=1)
    t.fit_setup()
    for loss in [3, 5, 6, 1, 7]:
        t.train_step()
        t.end_epoch({"val_loss": loss})
    # best (1) and the newest (7): a save outside the top k goes straight to last.ckpt, as in
    # Lightning, replacing the earlier non-top-k states (5 and 6) there
    assert ckpt_files(tmp_path) == ["epoch=3-val_loss=1.ckpt", "last.ckpt"]
    assert safe_load(tmp_path / "last.ckpt")["global_step"] == 5
    assert read_last_pointer(tmp_path) == str(tmp_path / "last.ckpt")
    assert len(t.saves) == 5  # a save at every trigger


def test_save_top_k_zero_with_save_last(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=True, every_n_train_steps=2)
    t = FakeTrainer(str(tmp_path), [cb])
    t.fit_setup()
    for _ in range(6):
        t.train_step()
    assert ckpt_files(tmp_path) == ["last.ckpt"]  # as in Lightning: only last.ckpt, a file of its own
    assert safe_load(tmp_path / "last.ckpt")["global_step"] == 6
    assert cb.best_k_models == {}


def test_every_n_train_steps_and_no_duplicate_at_epoch_end(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1,
                         save_on_train_epoch_end=True)
    t = FakeTrainer(str(tmp_path), [cb])
    t.fit_setup()
    for _ in range(4):
        t.train_step()
    t.end_epoch()
    assert ckpt_files(tmp_path) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]
    assert len(t.saves) == 2


def test_epoch_trigger_waits_for_validation_and_skips_sanity_check(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", every_n_epochs=2)
    t = FakeTrainer(str(tmp_path), [cb], num_val_batches=2)
    t.fit_setup()
    t.sanity_checking = True
    t.callback_metrics["val_loss"] = torch.tensor(9.0)
    cb.on_validation_end(t, None)
    t.sanity_checking = False
    assert t.saves == []
    for epoch in range(4):
        t.train_step()
        t.end_epoch({"val_loss": 4.0 - epoch})
    assert [os.path.basename(p) for p in t.saves] == ["epoch=1-step=2.ckpt", "epoch=3-step=4.ckpt"]


def test_time_interval_trigger(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, train_time_interval=datetime.timedelta(hours=1))
    t = FakeTrainer(str(tmp_path), [cb])
    t.fit_setup()
    t.train_step()
    assert t.saves == []
    cb._time.last_save -= 3601  # an hour went by: the save comes at the next check (a few batches)
    for _ in range(TimeChecks.MAX_BATCHES):
        t.train_step()
    assert len(t.saves) == 1 and os.path.basename(t.saves[0]).startswith("epoch=0-step=")


class _FakeClock:
    """Stands in for the ``time`` module in callbacks/time_checks: ``monotonic()`` is ``now``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


def _time_trigger_run(rank, tmp, steps, skew=0.0):
    """``steps`` batches of 1 s with a 10 s interval; per batch: collectives issued, saved?"""
    import torch.distributed as dist

    from distengine.callbacks import time_checks as mc

    dist.init_process_group("gloo")
    clock = _FakeClock(1000.0 + skew * rank)  # the other rank's clock is a little ahead
    mc.time = clock
    counts = [0]
    names = ["broadcast_object_list", "broadcast", "all_reduce", "barrier", "all_gather_object",
             "all_gather", "gather_object", "scatter_object_list", "reduce"]
    inside = [False]

    def counting(fn):
        def wrapper(*a, **k):
            outer = not inside[0]
            counts[0] += outer
            inside[0] = True
            try:
                return fn(*a, **k)
            finally:
                inside[0] = not outer
        return wrapper

    for name in names:
        setattr(dist, name, counting(getattr(dist, name)))
    cb = ModelCheckpoint(dirpath=tmp, train_time_interval=10, save_top_k=-1)
    t = FakeTrainer(tmp, [cb])
    t.fit_setup()
    per_step = []
    for _ in range(steps):
        clock.now += 1.0
        before, saves = counts[0], len(t.saves)
        t.train_step()
        per_step.append((counts[0] - before, len(t.saves) > saves))
    return per_step


def test_time_interval_checks_rank_zero_clock_only_every_few_batches(tmp_path, monkeypatch):
    from distengine.callbacks import time_checks as mc

    monkeypatch.setattr(mc, "time", _FakeClock())
    cb = ModelCheckpoint(dirpath=tmp_path, train_time_interval=10)
    t = FakeTrainer(str(tmp_path), [cb])
    calls = []
    broadcast = t.strategy.broadcast
    t.strategy.broadcast = lambda obj, src=0: (calls.append(t.global_step), broadcast(obj, src))[1]
    t.fit_setup()
    saved = []
    for _ in range(30):
        mc.time.now += 1.0
        n = len(t.saves)
        t.train_step()
        if len(t.saves) > n:
            saved.append(t.global_step)
    assert saved == [10, 20, 30], "the same batches as a check after every batch"
    # the time checks, then each save's own decision (the second broadcast at 10, 20, 30)
    assert calls == [1, 5, 7, 8, 9, 10, 10, 15, 17, 18, 19, 20, 20, 25, 27, 28, 29, 30, 30]


def test_two_ranks_time_interval_without_a_collective_every_batch(tmp_path):
    r0, r1 = run_ranks(_time_trigger_run, 2, str(tmp_path), 50, 0.3, timeout=90)
    saved0 = [i + 1 for i, (_, s) in enumerate(r0) if s]
    saved1 = [i + 1 for i, (_, s) in enumerate(r1) if s]
    assert saved0 == saved1 == [10, 20, 30, 40, 50], "rank zero's clock decides for both"
    quiet = [n for n, s in r0 if not s]
    assert [n for n, s in r1 if not s] == quiet
    assert sum(1 for n in quiet if n == 0) >= 20, "most batches issue no collective at all"
    assert max(quiet) <= 1 and sum(quiet) <= 26, (quiet, "was one broadcast every batch")


def test_missing_monitor_warns_then_errors_after_validation(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc", every_n_train_steps=1)
    t = FakeTrainer(str(tmp_path), [cb], num_val_batches=1)
    t.fit_setup()
    with pytest.warns(UserWarning, match="val_acc"):
        t.train_step()
    assert t.saves == []
    cb2 = ModelCheckpoint(dirpath=tmp_path, monitor="val_acc")
    t2 = FakeTrainer(str(tmp_path), [cb2], num_val_batches=1)
    t2.fit_setup()
    t2.train_step()
    with pytest.raises(ValueError, match=r"self\.log\('val_acc'"):
        t2.end_epoch({"val_loss": 1.0})


def test_save_now_is_outside_top_k_and_superseded_later(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1)
    t = FakeTrainer(str(tmp_path), [cb], num_val_batches=1)
    t.fit_setup()
    t.train_step()
    t.end_epoch({"val_loss": 1.0})
    t.train_step()
    path = cb.save_now(t, "signal 15")
    assert os.path.basename(path) == "epoch=1-step=2-signal_15.ckpt"
    assert read_last_pointer(tmp_path) == path
    assert path not in cb.best_k_models
    # the file resumes with its own path as the last one
    restored = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=1)
    restored.load_state_dict(safe_load(path)["callbacks"][cb.state_key])
    assert restored.last_model_path == path and restored.best_k_models == cb.best_k_models
    t.end_epoch({"val_loss": 2.0})  # not top-1: nothing written, the stop file stays
    assert os.path.exists(path)
    t.train_step()
    t.end_epoch({"val_loss": 0.5})  # a new best supersedes both
    assert ckpt_files(tmp_path) == ["epoch=2-step=3.ckpt"]


def test_state_dict_round_trip_and_resume_tracking(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2)
    t = FakeTrainer(str(tmp_path), [cb], num_val_batches=1)
    t.fit_setup()
    for loss in [3.0, 2.0, 1.0]:
        t.train_step()
        t.end_epoch({"val_loss": loss})
    atomic_save({"cb": cb.state_dict()}, tmp_path / "state.pt")  # only plain data in it
    new = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_top_k=2)
    new.load_state_dict(safe_load(tmp_path / "state.pt")["cb"])
    assert new.state_dict() == cb.state_dict()
    # a resumed run keeps evicting from the restored set
    t2 = FakeTrainer(str(tmp_path), [new], num_val_batches=1)
    t2.global_step, t2.current_epoch = 3, 3
    t2.fit_setup()
    t2.train_step()
    t2.end_epoch({"val_loss": 0.5})
    assert sorted(new.best_k_models.values()) == [0.5, 1.0]
    assert ckpt_files(tmp_path) == ["epoch=2-step=3.ckpt", "epoch=3-step=4.ckpt"]
    other = ModelCheckpoint(dirpath=tmp_path / "elsewhere", monitor="val_loss")
    other.load_state_dict(cb.state_dict())  # no warning: the Trainer's one resume line says it
    assert other.best_k_models == {} and other.resumed_from_dirpath == str(tmp_path)


def test_state_keys_differ_between_configurations():
    assert ModelCheckpoint(monitor="a").state_key != ModelCheckpoint(monitor="b").state_key
    assert ModelCheckpoint().state_key != ModelCheckpoint(every_n_train_steps=5).state_key


def test_async_save_writes_in_background_and_waits_at_fit_end(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, async_save=True, save_top_k=2)
    t = FakeTrainer(str(tmp_path), [cb])
    t.fit_setup()
    for _ in range(4):
        t.train_step()
    t.fit_end()
    assert not cb._writer.in_flight
    assert ckpt_files(tmp_path) == ["epoch=0-step=3.ckpt", "epoch=0-step=4.ckpt"]
    state = safe_load(tmp_path / "epoch=0-step=4.ckpt")
    assert torch.equal(state["state_dict"]["w"], torch.full((4,), 4.0))
    assert read_last_pointer(tmp_path) == str(tmp_path / "epoch=0-step=4.ckpt")
    assert t.saves == []  # the async path gathers with dump_checkpoint instead


def test_failed_background_write_is_raised_at_teardown(tmp_path, monkeypatch):
    from distengine.checkpoint import async_writer

    def broken(obj, path):
        raise OSError("disk full")

    monkeypatch.setattr(async_writer, "atomic_save", broken)
    cb = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, async_save=True)
    t = FakeTrainer(str(tmp_path), [cb])
    t.fit_setup()
    t.train_step()
    with pytest.raises(RuntimeError, match="disk full"):
        cb.teardown(t, None, "fit")
    # when the run itself failed, the write error is a warning: the original error wins
    t.fit_setup()
    t.train_step()
    assert cb._writer.in_flight or cb._writer._error is not None
    cb.on_exception(t, None, ValueError("training blew up"))
    with pytest.warns(UserWarning, match="disk full"):
        cb.teardown(t, None, "fit")


def test_not_fitting_does_not_save(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path)
    t = FakeTrainer(str(tmp_path), [cb], num_val_batches=1)
    cb.setup(t, None, "validate")
    t.callback_metrics["x"] = torch.tensor(1.0)
    cb.on_validation_end(t, None)
    assert t.saves == []


def _two_rank_topk(rank: int, root: str) -> dict:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    cb = ModelCheckpoint(dirpath=os.path.join(root, "c"), monitor="val_loss", save_top_k=2,
                         save_last=True)
    t = FakeTrainer(root, [cb], num_val_batches=1)
    t.fit_setup()
    # the ranks see different metric values; only rank zero's count
    losses = [5, 3, 4, 1, 2] if rank == 0 else [1, 2, 3, 4, 5]
    for loss in losses:
        t.train_step()
        t.end_epoch({"val_loss": float(loss)})
    files = ckpt_files(cb.dirpath)
    dist.barrier()
    result = {"best_k": sorted(map(os.path.basename, cb.best_k_models)), "files": files,
              "last": os.path.basename(cb.last_model_path), "saves": len(t.saves)}
    # a decision that fails on rank zero fails on every rank (never a hang)
    bad = ModelCheckpoint(dirpath=os.path.join(root, "d"), monitor="nope")
    t2 = FakeTrainer(root, [bad], num_val_batches=1)
    t2.fit_setup()
    t2.train_step()
    try:
        t2.end_epoch({"val_loss": 1.0})
    except (ValueError, RuntimeError) as exc:
        result["error"] = "ValueError" if isinstance(exc, ValueError) else type(exc).__name__  # ConfigError is one
    return result


def test_two_ranks_agree_on_top_k(tmp_path):
    r0, r1 = run_ranks(_two_rank_topk, 2, str(tmp_path), timeout=90)
    assert r0["best_k"] == r1["best_k"] == ["epoch=3-step=4.ckpt", "epoch=4-step=5.ckpt"]
    assert r0["last"] == r1["last"] == "last.ckpt"  # save_last: last_model_path is last.ckpt, as in Lightning
    assert r0["saves"] == r1["saves"] == 5
    assert r0["files"] == ["epoch=3-step=4.ckpt", "epoch=4-step=5.ckpt", "last.ckpt"]
    assert r0["error"] == "ValueError" and r1["error"] == "RuntimeError"
