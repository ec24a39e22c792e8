"""Trainer(profiler=...): the reports are read back from the files each rank writes."""
from __future__ import annotations

import glob
import json
import os
import pstats
import sys
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import distengine as de
from distengine.callbacks import Callback
from distengine.profilers import AdvancedProfiler, PassThroughProfiler, Profiler, PyTorchProfiler, SimpleProfiler
from tests.helpers import run_ranks

HOOK_SLEEP = 0.005


class Tiny(de.Module):
    def __init__(self, manual: bool = False, fail_at: int = -1, user_block: bool = True) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.automatic_optimization = not manual
        self.fail_at, self.user_block = fail_at, user_block

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("boom")
        x = batch[0] * 1.0
        if self.user_block:
            with self.trainer.profiler.profile("user_block"):  # Lightning's API for user code
                x = x * 1.0
        loss = self.layer(x).pow(2).mean()
        self.log("loss", loss)
        if not self.automatic_optimization:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
            return None
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val", self.layer(batch[0]).mean())

    def on_train_epoch_end(self):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Sleepy(Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        time.sleep(HOOK_SLEEP)


def loader(n: int = 16, bs: int = 4) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(n, 4)), batch_size=bs)


def trainer(tmp_path, profiler, **kw) -> de.Trainer:
    opts = dict(default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False,
                enable_model_summary=False, profiler=profiler)
    opts.update(kw)
    return de.Trainer(**opts)


def parse_table(text: str) -> dict[str, tuple[float, int, float]]:
    """SimpleProfiler's report -> {action: (mean s, calls, total s)}."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("Action", "Total"):
            rows[cells[0]] = (float(cells[1]), int(cells[2]), float(cells[3]))
    return rows


def read_table(path: str) -> dict[str, tuple[float, int, float]]:
    with open(path) as f:
        return parse_table(f.read())


def test_simple_profiler_table_per_phase_and_hook(tmp_path, capsys):
    prof = SimpleProfiler(filename="perf")
    t = trainer(tmp_path, prof, max_epochs=2, limit_val_batches=2, log_every_n_steps=2, callbacks=[Sleepy()])
    assert t.profiler is prof
    t.fit(Tiny(), loader(), loader())
    rows = read_table(os.path.join(str(tmp_path), "fit-perf.txt"))
    batches = 8  # 2 epochs x 4
    for action in ("train_dataloader_next", "training_step", "backward", "optimizer_step", "user_block",
                   "[Callback]Sleepy.on_train_batch_end"):
        assert rows[action][1] == batches, action
    assert rows["run_training_epoch"][1] == 2
    assert rows["[LightningModule]Tiny.on_train_epoch_end"][1] == 2
    assert rows["log_step_metrics"][1] == 4  # every 2nd of 8 steps
    assert rows["run_sanity_check"][1] == 1 and rows["run_validation"][1] == 2
    assert rows["validation_step"][1] == 2 + 2 * 2  # the sanity check's 2, then 2 per epoch
    assert rows["save_checkpoint"][1] == 2  # ModelCheckpoint: one per epoch
    assert any(a.startswith("[Callback]ModelCheckpoint") and a.endswith(".on_train_epoch_end") for a in rows)
    # the durations are measured: the hook sleeps, and the epoch contains its batches
    mean, calls, total = rows["[Callback]Sleepy.on_train_batch_end"]
    assert HOOK_SLEEP <= mean < 0.5 and total == pytest.approx(mean * calls, rel=1e-3)
    assert rows["run_training_epoch"][2] > total
    assert "FIT Profiler Report" in capsys.readouterr().err  # printed (one process: rank zero)

    t.validate(Tiny(), loader(8))  # another run: its own file and numbers
    rows = read_table(os.path.join(str(tmp_path), "validate-perf.txt"))
    assert rows["validation_step"][1] == 2 and "training_step" not in rows


def test_manual_optimization_times_the_users_optimizer_steps(tmp_path):
    t = trainer(tmp_path, "simple", max_epochs=1, enable_checkpointing=False)
    t.fit(Tiny(manual=True), loader())
    rows = read_table(os.path.join(str(tmp_path), "fit-profiler.txt"))  # default filename
    assert rows["optimizer_step"][1] == 4 and rows["training_step"][1] == 4
    assert "backward" not in rows  # manual_backward runs inside training_step
    t.fit(Tiny(manual=True), loader())  # the optimizer hooks were removed with the first run
    with open(os.path.join(str(tmp_path), "fit-profiler.txt")) as f:
        second = f.read().split("FIT Profiler Report")[-1]
    assert parse_table(second)["optimizer_step"][1] == 4  # appended: one report per run


def test_failed_run_still_writes_its_report(tmp_path):
    t = trainer(tmp_path, SimpleProfiler(filename="perf"), max_epochs=1, enable_checkpointing=False)
    with pytest.raises(RuntimeError, match="boom"):
        t.fit(Tiny(fail_at=2), loader())
    rows = read_table(os.path.join(str(tmp_path), "fit-perf.txt"))
    assert rows["training_step"][1] == 3 and rows["optimizer_step"][1] == 2


def test_advanced_profiler_writes_cprofile_per_action(tmp_path):
    prof = AdvancedProfiler(filename="adv", line_count_restriction=15, dump_stats=True)
    trainer(tmp_path, prof, max_epochs=1, enable_checkpointing=False).fit(Tiny(), loader())
    text = open(os.path.join(str(tmp_path), "fit-adv.txt")).read()
    section = text.split("Profile stats for: training_step\n")[1].split("Profile stats for:")[0]
    assert "Ordered by: cumulative time" in section and "function calls" in section
    assert "linear.py" in section or "(linear)" in section  # the forward the step ran
    assert "Profile stats for: backward" in text and "Profile stats for: optimizer_step" in text
    dumped = os.path.join(str(tmp_path), "fit-adv-training_step.prof")
    assert pstats.Stats(dumped).total_calls > 0


def test_pytorch_profiler_writes_chrome_traces_with_the_phases(tmp_path):
    prof = PyTorchProfiler(filename="tr", schedule={"wait": 1, "warmup": 1, "active": 2})
    t = trainer(tmp_path, prof, max_epochs=1, enable_checkpointing=False, limit_val_batches=0)
    t.fit(Tiny(), loader(24))  # 6 batches: the recording covers batches 3 and 4
    traces = glob.glob(os.path.join(str(tmp_path), "fit-tr.*.pt.trace.json"))
    assert traces and prof.trace_paths == traces
    events = json.load(open(traces[0]))["traceEvents"]
    names = {e.get("name") for e in events}
    for phase in ("training_step", "backward", "optimizer_step", "train_dataloader_next", "user_block"):
        assert phase in names, phase
    assert {n for n in names if n and n.startswith("ProfilerStep#")} == {"ProfilerStep#2", "ProfilerStep#3"}
    table = open(os.path.join(str(tmp_path), "fit-tr.txt")).read()
    assert "training_step" in table and "Self CPU" in table and traces[0] in table

    short = PyTorchProfiler(filename="short")  # default schedule: waits 1 batch, warms up on 1
    trainer(tmp_path, short, max_epochs=1, enable_checkpointing=False).fit(Tiny(), loader(4))
    assert short.trace_paths == [] and "no profiler step was recorded" in open(short.report_path).read()


def _two_rank_fit(rank: int, folder: str) -> dict:
    t = de.Trainer(accelerator="cpu", devices="auto", logger=False, enable_progress_bar=False,
                   enable_model_summary=False, enable_checkpointing=False, max_epochs=1,
                   profiler=SimpleProfiler(dirpath=folder, filename="perf"), callbacks=[Sleepy()])
    t.fit(Tiny(), loader(16, 2))  # 8 batches, 4 per rank
    prof = PyTorchProfiler(dirpath=folder, filename="tr", schedule={"wait": 0, "warmup": 1, "active": 1})
    t2 = de.Trainer(accelerator="cpu", devices="auto", logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, max_epochs=1, profiler=prof)
    t2.fit(Tiny(), loader(16, 2))
    return {"report": t.profiler.report_path, "traces": prof.trace_paths}


def test_two_ranks_write_one_file_each(tmp_path):
    results = run_ranks(_two_rank_fit, 2, str(tmp_path), timeout=120)
    for rank, res in enumerate(results):
        path = os.path.join(str(tmp_path), f"fit-perf-{rank}.txt")
        assert res["report"] == path
        text = open(path).read()
        assert f"FIT Profiler Report (rank {rank})" in text
        rows = read_table(path)
        assert rows["training_step"][1] == 4 and rows["backward"][1] == 4
        assert rows["[Callback]Sleepy.on_train_batch_end"][1] == 4
        assert len(res["traces"]) == 1 and os.path.basename(res["traces"][0]).startswith(f"fit-tr-{rank}.")
        assert "training_step" in {e.get("name") for e in json.load(open(res["traces"][0]))["traceEvents"]}
    assert not os.path.exists(os.path.join(str(tmp_path), "fit-perf.txt"))


def test_profiler_argument_resolution():
    assert isinstance(de.Trainer(logger=False).profiler, PassThroughProfiler)
    assert isinstance(de.Trainer(logger=False, profiler="simple").profiler, SimpleProfiler)
    assert isinstance(de.Trainer(logger=False, profiler="Advanced").profiler, AdvancedProfiler)
    assert isinstance(de.Trainer(logger=False, profiler="pytorch").profiler, PyTorchProfiler)
    assert isinstance(de.Trainer(logger=False, profiler=True).profiler, SimpleProfiler)  # 1.x
    with pytest.raises(ValueError, match=r"profiler='fancy'.*'simple', 'advanced', 'pytorch'") as err:
        de.Trainer(profiler="fancy")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="a int"):
        de.Trainer(profiler=3)
    with pytest.raises(ValueError, match="sort_by_key"):
        PyTorchProfiler(sort_by_key="speed")
    with pytest.raises(ValueError, match="schedule"):
        PyTorchProfiler(schedule={"wait": 1, "active": 0})
    with pytest.raises(TypeError, match="'with_flopz'"):
        PyTorchProfiler(with_flopz=True)
    with pytest.raises(ValueError, match="line_count_restriction"):
        AdvancedProfiler(line_count_restriction=0)
    from distengine.profiler import BaseProfiler  # the 1.x module name
    from distengine.profiler import SimpleProfiler as OneX

    assert BaseProfiler is Profiler and OneX is SimpleProfiler and de.profilers.SimpleProfiler is SimpleProfiler


def test_unwritable_report_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    module = Tiny(fail_at=0)  # training would raise "boom"; the folder error must come first
    for prof in (SimpleProfiler(dirpath=str(blocker / "sub")), PyTorchProfiler(dirpath=str(blocker / "sub"))):
        with pytest.raises(OSError, match="cannot create the report folder"):
            trainer(tmp_path, prof, max_epochs=1).fit(module, loader())


class _CallCounter:
    """Counts Python calls into distengine/profilers while active (sys.setprofile)."""

    def __init__(self) -> None:
        self.calls = 0
        self.folder = os.path.dirname(de.profilers.__file__)

    def __call__(self, frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(self.folder):
            self.calls += 1

    def run(self, fn) -> int:
        sys.setprofile(self)
        try:
            fn()
        finally:
            sys.setprofile(None)
        return self.calls


@pytest.mark.parametrize("profiler", [None, "simple"])
def test_unprofiled_batches_call_no_profiler_code(tmp_path, profiler):
    def calls(n: int) -> int:
        t = trainer(tmp_path, profiler, max_epochs=1, enable_checkpointing=False)
        return _CallCounter().run(lambda: t.fit(Tiny(user_block=False), loader(4 * n)))

    few, many = calls(2), calls(6)
    if profiler is None:
        assert few == many  # per run and per epoch only: nothing per batch
    else:
        assert many > few  # the counter does see profiler code when there is some per batch
