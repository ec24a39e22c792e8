"""What a user sees on stdout: the validate/test results table, the progress lines of a resumed
run and of a run that logs its loss with ``prog_bar=True``. Each runs a real script in a
subprocess (stdout a pipe: the progress bar prints plain lines) and reads what it printed."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent('''
    import sys
    if "no-rich" in sys.argv:
        sys.modules["rich"] = None  # as if rich were not installed: the plain table
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    import distengine as de
    from distengine.callbacks import ModelCheckpoint

    torch.set_num_threads(1)
    mode, root = sys.argv[1], sys.argv[2]

    class M(de.Module):
        def __init__(self):
            super().__init__()
            self.l = torch.nn.Linear(4, 1)

        def training_step(self, b, i):
            loss = self.l(b[0]).pow(2).mean()
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def validation_step(self, b, i):
            self.log("val_loss", self.l(b[0]).pow(2).mean())

        def test_step(self, b, i, dataloader_idx=0):
            self.log("test_loss", self.l(b[0]).pow(2).mean())
            self.log("test_acc", 0.5)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    torch.manual_seed(0)
    dl = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=8)  # 8 batches
    if mode == "eval":
        t = de.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                       accelerator="cpu", default_root_dir=root)
        verbose = "quiet" not in sys.argv
        loaders = [dl, dl] if "two" in sys.argv else dl
        print("RESULT", t.test(M(), loaders, verbose=verbose), flush=True)
        print("RESULT", t.validate(M(), dl, verbose=verbose), flush=True)
    else:  # fit; "resume": from the checkpoint written at the last step of epoch 0
        ck = ModelCheckpoint(dirpath=root + "/ck", every_n_train_steps=8, save_top_k=-1)
        t = de.Trainer(max_epochs=int(sys.argv[3]), logger=False, callbacks=[ck], accelerator="cpu",
                       enable_model_summary=False, default_root_dir=root)
        t.fit(M(), dl, ckpt_path=root + "/ck/epoch=0-step=8.ckpt" if mode == "resume" else None)
''')


def _run(tmp_path, *args, launch: bool = False) -> str:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    head = [sys.executable, "-m", "distengine.launch", "--cpus", "2", "--all-ranks-console"] if launch \
        else [sys.executable]
    proc = subprocess.run(head + [str(script), *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def _results(out: str) -> list:
    return [eval(line.split("RESULT", 1)[1]) for line in out.splitlines() if "RESULT" in line]


def test_test_and_validate_print_a_results_table(tmp_path):
    out = _run(tmp_path, "eval", str(tmp_path), "no-rich")
    test, val = _results(out)
    lines = out.splitlines()
    # the plain table: a header naming the stage and the dataloader, then one row per metric
    # with the value the call returned
    assert any(re.fullmatch(r"\s+Test metric\s+DataLoader 0", ln) for ln in lines), out
    assert any(re.fullmatch(rf"\s+test_loss\s+{re.escape(str(test[0]['test_loss']))}", ln) for ln in lines), out
    assert any(re.fullmatch(r"\s+test_acc\s+0\.5", ln) for ln in lines), out
    assert any(re.fullmatch(r"\s+Validate metric\s+DataLoader 0", ln) for ln in lines), out
    assert any(re.fullmatch(rf"\s+val_loss\s+{re.escape(str(val[0]['val_loss']))}", ln) for ln in lines), out
    # the table comes before the call returns
    assert out.index("Test metric") < out.index("RESULT")


def test_results_table_one_column_per_dataloader_and_with_rich(tmp_path):
    out = _run(tmp_path, "eval", str(tmp_path), "two")  # rich installed in the test environment
    test = _results(out)[0]
    assert re.search(r"Test metric\s*┃\s*DataLoader 0\s*┃\s*DataLoader 1", out), out
    value = re.escape(str(test[1]["test_loss/dataloader_idx_1"]))
    assert re.search(rf"│\s*test_loss\s*│\s*{value}\s*│\s*{value}\s*│", out), out
    assert "dataloader_idx" not in out.split("RESULT")[0]  # rows carry the plain metric names


def test_verbose_false_prints_no_table(tmp_path):
    out = _run(tmp_path, "eval", str(tmp_path), "quiet", "no-rich")
    assert "metric" not in out and "test_loss " not in out, out
    assert len(_results(out)) == 2


def test_two_ranks_print_the_table_once(tmp_path):
    out = _run(tmp_path, "eval", str(tmp_path), "no-rich", launch=True)
    assert out.count("Test metric") == 1 and out.count("Validate metric") == 1, out
    assert all(ln.startswith("[rank 0]") for ln in out.splitlines() if "metric" in ln), out
    assert "[rank 1] RESULT" in out  # rank 1's output does reach this console


def test_resume_at_an_epochs_last_step_reports_no_stopped_epoch(tmp_path):
    _run(tmp_path, "fit", str(tmp_path), "1")
    out = _run(tmp_path, "resume", str(tmp_path), "3")
    epochs = [ln for ln in out.splitlines() if ln.startswith("Epoch")]
    # epoch 0's batches all ran before the checkpoint: no "Epoch 0 stopped: 0/8 (0%)" line
    assert "stopped" not in out and "0/8" not in out, out
    assert [ln.split(":")[0] for ln in epochs] == ["Epoch 1 done", "Epoch 2 done"], out


def test_progress_line_shows_a_logged_loss_once(tmp_path):
    out = _run(tmp_path, "fit", str(tmp_path), "1")
    line = next(ln for ln in out.splitlines() if ln.startswith("Epoch 0 done"))
    # train_loss (prog_bar=True) holds the step's loss: the implicit `loss=` is not shown beside it
    assert re.search(r"\] train_loss=[0-9.]+$", line), line
    assert "loss=" not in line.replace("train_loss=", ""), line
