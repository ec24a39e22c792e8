"""TQDMProgressBar driven through its hooks with a stand-in trainer (no Trainer needed)."""
from __future__ import annotations

import copy
import io
import os
import re
import subprocess
import sys
import textwrap
import timeit
import types

import pytest
import torch

from distengine.callbacks import progress_bar as progress  # (monotonic is patched where the bars read it)
from distengine.callbacks.progress import ProgressBar, TQDMProgressBar

RATE = r"\[\d+\.\ds, \d+\.\d\d it/s\]"


def _trainer(**kw):
    base = dict(is_global_zero=True, current_epoch=0, num_training_batches=5, num_val_batches=[3],
                num_sanity_val_batches=[2], num_test_batches=[4], num_predict_batches=[2],
                progress_bar_metrics={}, sanity_checking=False)
    base.update(kw)
    return types.SimpleNamespace(**base)


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.t


def _fit(bar, trainer, epochs=2, batches=5, val_batches=3, losses=None, sanity=True):
    """Call the hooks in the order the Trainer does (validation inside the epoch)."""
    bar.setup(trainer, None, "fit")
    if sanity:
        trainer.sanity_checking = True
        bar.on_sanity_check_start(trainer, None)
        bar.on_validation_start(trainer, None)
        for i in range(2):
            bar.on_validation_batch_end(trainer, None, None, None, i, 0)
        bar.on_validation_end(trainer, None)
        bar.on_sanity_check_end(trainer, None)
        trainer.sanity_checking = False
    bar.on_train_start(trainer, None)
    for epoch in range(epochs):
        trainer.current_epoch = epoch
        bar.on_train_epoch_start(trainer, None)
        for i in range(batches):
            loss = losses(epoch, i) if losses else torch.tensor(1.0 / (i + 1))
            bar.on_train_batch_end(trainer, None, {"loss": loss}, None, i)
        bar.on_validation_start(trainer, None)
        for i in range(val_batches):
            bar.on_validation_batch_end(trainer, None, None, None, i, 0)
        trainer.progress_bar_metrics = {"val_acc": 0.5 + epoch / 4}
        bar.on_validation_end(trainer, None)
        bar.on_train_epoch_end(trainer, None)
    bar.on_train_end(trainer, None)
    bar.teardown(trainer, None, "fit")


def test_plain_lines_when_stdout_is_not_a_terminal(capsys):
    _fit(TQDMProgressBar(), _trainer())  # capsys' stdout is not a tty: plain mode by itself
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert len(lines) == 4, out
    assert re.fullmatch(rf"Validation done: 3/3 {RATE} val_acc=0\.5", lines[0])
    assert re.fullmatch(rf"Epoch 0 done: 5/5 {RATE} loss=0\.2, val_acc=0\.5", lines[1])
    assert re.fullmatch(rf"Validation done: 3/3 {RATE} val_acc=0\.75", lines[2])
    assert re.fullmatch(rf"Epoch 1 done: 5/5 {RATE} loss=0\.2, val_acc=0\.75", lines[3])


def test_plain_lines_at_most_every_plain_interval(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress, "monotonic", clock)
    out = io.StringIO()
    bar = TQDMProgressBar(plain=True, plain_interval=25.0, file=out)
    trainer = _trainer(num_training_batches=10)
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    for i in range(10):
        clock.t += 10.0  # every batch takes 10 s
        bar.on_train_batch_end(trainer, None, torch.tensor(float(i)), None, i)
    bar.on_train_epoch_end(trainer, None)
    lines = out.getvalue().splitlines()
    # due at t0+25 -> batch 2 (t0+30); next due 30 s later -> batch 5 (t0+60), then batch 8
    assert lines == [
        "Epoch 0: 3/10 (30%) [30.0s, 0.10 it/s] loss=2",
        "Epoch 0: 6/10 (60%) [60.0s, 0.10 it/s] loss=5",
        "Epoch 0: 9/10 (90%) [90.0s, 0.10 it/s] loss=8",
        "Epoch 0 done: 10/10 [100.0s, 0.10 it/s] loss=9",  # the last batch's loss, not a stale one
    ]


def test_resumed_epoch_rate_counts_only_the_batches_run(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress, "monotonic", clock)
    out = io.StringIO()
    bar = TQDMProgressBar(plain=True, file=out)
    trainer = _trainer(num_training_batches=5)
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    for i in (3, 4):  # resumed from a checkpoint taken after 3 batches
        clock.t += 2.0
        bar.on_train_batch_end(trainer, None, 0.5, None, i)
    bar.on_train_epoch_end(trainer, None)
    assert out.getvalue() == "Epoch 0 done: 5/5 [4.0s, 0.50 it/s] loss=0.5\n"


def test_clock_is_read_only_every_refresh_rate_batches(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress, "monotonic", clock)
    bar = TQDMProgressBar(refresh_rate=3, plain=True, file=io.StringIO())
    trainer = _trainer(num_training_batches=11)
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    read_at = []
    for i in range(11):
        before = clock.calls
        bar.on_train_batch_end(trainer, None, torch.tensor(1.0), None, i)
        if clock.calls != before:
            read_at.append(i)
    assert read_at == [0, 3, 6, 9, 10]  # ... and always the epoch's last batch


def test_terminal_mode_draws_a_tqdm_bar():
    out = io.StringIO()
    trainer = _trainer(progress_bar_metrics={"val_acc": 0.5})
    _fit(TQDMProgressBar(plain=False, file=out), trainer, epochs=1)
    text = out.getvalue()
    assert "\r" in text
    assert "Sanity Checking" in text and "Validation" in text
    last_train = [seg for seg in text.split("\r") if seg.startswith("Epoch 0")][-1]
    assert "5/5" in last_train and "loss=0.2" in last_train and "val_acc=0.5" in last_train


@pytest.mark.parametrize("leave", [True, False])
def test_leave_keeps_one_bar_per_epoch(leave):
    bar = TQDMProgressBar(plain=False, leave=leave, file=io.StringIO())
    trainer = _trainer()
    bar.on_train_start(trainer, None)
    seen = []
    for epoch in range(3):
        trainer.current_epoch = epoch
        bar.on_train_epoch_start(trainer, None)
        for i in range(5):
            bar.on_train_batch_end(trainer, None, torch.tensor(1.0), None, i)
        bar.on_train_epoch_end(trainer, None)
        seen.append(bar.train_progress_bar)
        assert (bar.train_progress_bar.n, bar.train_progress_bar.desc.rstrip(": ")) == (5, f"Epoch {epoch}")
    # leave=True: a new bar per epoch (the finished ones stay); otherwise one bar reused
    assert len({id(b) for b in seen}) == (3 if leave else 1)
    bar.on_train_end(trainer, None)
    assert bar.train_progress_bar is None


def test_loss_from_progress_bar_metrics_wins_and_get_metrics_override(capsys):
    class Custom(TQDMProgressBar):
        def get_metrics(self, trainer, module, loss=None):
            shown = super().get_metrics(trainer, module, loss)
            shown["lr"] = 0.1
            return shown

    trainer = _trainer()
    bar = Custom()
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    for i in range(5):
        bar.on_train_batch_end(trainer, None, torch.tensor(9.0), None, i)
    trainer.progress_bar_metrics = {"loss": 0.125, "acc": 1.0}
    bar.on_train_epoch_end(trainer, None)
    line = capsys.readouterr().out.strip()
    assert line.endswith("] loss=0.125, acc=1, lr=0.1"), line


def test_test_and_predict_lines(capsys):
    trainer = _trainer(progress_bar_metrics={"test_acc": 0.875})
    bar = TQDMProgressBar()
    bar.on_test_start(trainer, None)
    for i in range(4):
        bar.on_test_batch_end(trainer, None, None, None, i, 0)
    bar.on_test_end(trainer, None)
    bar.on_predict_start(trainer, None)
    for i in range(2):
        bar.on_predict_batch_end(trainer, None, None, None, i, 0)
    bar.on_predict_end(trainer, None)
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(rf"Testing done: 4/4 {RATE} test_acc=0\.875", lines[0])
    assert re.fullmatch(rf"Predicting done: 2/2 {RATE}", lines[1])  # no (stale) metrics
    assert len(lines) == 2


def test_unknown_totals(capsys):
    """Iterable datasets have no length: counts without a total, and the end still says done."""
    trainer = _trainer(num_training_batches=float("inf"), num_test_batches=None)
    bar = TQDMProgressBar()
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    for i in range(3):
        bar.on_train_batch_end(trainer, None, 0.25, None, i)
    bar.on_train_epoch_end(trainer, None)
    bar.on_test_start(trainer, None)
    bar.on_test_batch_end(trainer, None, None, None, 0, 0)
    bar.on_test_end(trainer, None)
    lines = capsys.readouterr().out.splitlines()
    # without a total the last batch is not known in advance: its loss is read at the epoch end
    assert re.fullmatch(rf"Epoch 0 done: 3 batches {RATE} loss=0.25", lines[0]), lines
    assert re.fullmatch(rf"Testing done: 1 batches {RATE}", lines[1]), lines


def test_non_zero_rank_and_disabled_bar_print_nothing(capsys, monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress, "monotonic", clock)
    _fit(TQDMProgressBar(), _trainer(is_global_zero=False))
    _fit(TQDMProgressBar(refresh_rate=0), _trainer())
    assert capsys.readouterr().out == ""
    assert clock.calls == 0  # an inactive bar does not even look at the clock


def test_bad_arguments():
    with pytest.raises(ValueError, match="refresh_rate must be an int >= 0"):
        TQDMProgressBar(refresh_rate=-1)
    with pytest.raises(ValueError, match="refresh_rate must be an int >= 0"):
        TQDMProgressBar(refresh_rate=0.5)
    with pytest.raises(ValueError, match="plain_interval must be > 0"):
        TQDMProgressBar(plain_interval=0)
    assert isinstance(TQDMProgressBar(), ProgressBar)
    assert TQDMProgressBar(refresh_rate=0).is_disabled


def test_copy_and_pickle_with_open_bars():
    bar = TQDMProgressBar(plain=False, file=io.StringIO())
    trainer = _trainer()
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    clone = copy.deepcopy(bar)
    assert clone.train_progress_bar is None and bar.train_progress_bar is not None
    bar.on_train_end(trainer, None)


def test_subprocess_stdout_pipe_gets_plain_lines(repo_root):
    script = textwrap.dedent("""
        import types  # no torch: a float loss keeps this subprocess quick
        from distengine.callbacks.progress import TQDMProgressBar
        t = types.SimpleNamespace(is_global_zero=True, current_epoch=0, num_training_batches=4,
                                  progress_bar_metrics={"acc": 0.25}, sanity_checking=False)
        bar = TQDMProgressBar()
        bar.on_train_start(t, None)
        for epoch in range(3):
            t.current_epoch = epoch
            bar.on_train_epoch_start(t, None)
            for i in range(4):
                bar.on_train_batch_end(t, None, {"loss": 0.5}, None, i)
            bar.on_train_epoch_end(t, None)
        bar.on_train_end(t, None)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": repo_root})
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout and "\r" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    for epoch, line in enumerate(lines):
        assert re.fullmatch(rf"Epoch {epoch} done: 4/4 {RATE} loss=0\.5, acc=0\.25", line), line


def test_hot_path_cost_is_about_a_microsecond():
    """The per-batch hook when no redraw is due (the common case)."""
    trainer = _trainer(num_training_batches=10**9)
    out = {"loss": torch.tensor(1.0)}
    bar = TQDMProgressBar(refresh_rate=1, plain=False, file=io.StringIO())
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer, None)
    bar.on_train_batch_end(trainer, None, out, None, 0)  # draws once; next draw 0.25 s later
    hook, n = bar.on_train_batch_end, 20000

    def run():
        bar._next_idx = 1  # every call checks the clock: the refresh_rate=1 worst case
        for i in range(1, n + 1):
            hook(trainer, None, out, None, i)

    per_call = min(timeit.repeat(run, number=1, repeat=5)) / n
    bar.on_train_end(trainer, None)
    # ~0.2-0.5 us here; a redraw or a tensor->float conversion per step would cost 10x more
    assert per_call < 5e-6, f"{per_call * 1e6:.2f} us per call"


@pytest.mark.parametrize("rows_cols", [(40, 100), (0, 0)])
def test_auto_mode_on_a_real_pty(rows_cols):
    """A sized terminal gets the tqdm bar; a 0x0 pty (some containers) gets plain lines,
    because tqdm would print nothing at all there."""
    fcntl, pty, termios = (pytest.importorskip(m) for m in ("fcntl", "pty", "termios"))
    import struct

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *rows_cols, 0, 0))
    with os.fdopen(slave, "w") as tty:
        bar = TQDMProgressBar(file=tty)
        trainer = _trainer()
        bar.on_train_start(trainer, None)
        bar.on_train_epoch_start(trainer, None)
        for i in range(5):
            bar.on_train_batch_end(trainer, None, 0.5, None, i)
        bar.on_train_epoch_end(trainer, None)
        bar.on_train_end(trainer, None)
    text = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        text += chunk
    os.close(master)
    out = text.decode()
    if rows_cols[1]:
        assert bar._plain is False and "\r" in out.replace("\r\n", "\n") and "5/5" in out
    else:
        assert bar._plain is True
        assert re.fullmatch(rf"Epoch 0 done: 5/5 {RATE} loss=0\.5\r?\n", out), repr(out)
