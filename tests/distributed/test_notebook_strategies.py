"""strategy="ddp_notebook" (fork) and "ddp_spawn" (spawn): a Trainer with no script to re-run
starts its 2 CPU ranks itself (issue 26).

Every run is tests/distributed/spawn_job.py, compared with the same job under
`distengine launch --cpus 2` (the launcher path): the caller's module ends with rank 0's weights
(torch.equal, dropout included), and global_step, current_epoch, callback_metrics,
logged_metrics, best_model_path/score, validate and predict give what rank 0 got there. The
comparison with Lightning 2.6.6 is in the conformance corpus (scripts/ddp_spawn.py,
scripts/ddp_notebook.py). After each run no rank process is left.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from tests.launcher.util import clean_env

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
JOB = HERE / "spawn_job.py"


def _env() -> dict[str, str]:
    env = clean_env(PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))
    env.pop("PYTHONFAULTHANDLER", None)
    return env


def _python_c(code: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _report(folder: Path) -> dict:
    return torch.load(folder / "report.pt", weights_only=False)


def _assert_same_run(ours: dict, reference: dict, stages: tuple = ("fit",)) -> None:
    assert ours["weights"].keys() == reference["weights"].keys()
    bad = [k for k in ours["weights"] if not torch.equal(ours["weights"][k], reference["weights"][k])]
    assert not bad, f"weights differ from the launcher path: {bad}"
    for key in ("global_step", "current_epoch", "callback_metrics", "logged_metrics", "best_model_path",
                "best_model_score"):
        assert ours[key] == reference[key], key
    if "validate" in stages:
        assert ours["validate"] == reference["validate"]
    if "predict" in stages:
        assert torch.equal(ours["predict"], reference["predict"])


def _assert_ranks_gone(pid_dir: Path) -> None:
    pids = [int(p.read_text()) for p in pid_dir.glob("rank*.pid")]
    assert len(pids) == 2, f"the ranks did not run: {pids}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        time.sleep(0.1)
    for p in alive:  # do not leave them to the next test, then fail
        psutil.Process(p).kill()
    raise AssertionError(f"rank processes left running: {alive}")


@pytest.fixture(scope="module")
def launcher_report(tmp_path_factory) -> dict:
    """The same job under `distengine launch --cpus 2` (report from rank 0)."""
    out = tmp_path_factory.mktemp("launcher")
    proc = subprocess.run([sys.executable, "-m", "distengine.launch", "--cpus", "2", str(JOB), "ddp", str(out),
                           "fit,validate,predict"], env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _report(out)


@pytest.mark.slow  # fit, validate and predict: 3 forks of 2 ranks (about 23 s on a loaded 2-core machine)
def test_python_c_ddp_notebook_matches_the_launcher(launcher_report, tmp_path):
    """`python -c` has no script to re-run: before issue 26 this was an error."""
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = _python_c(f"import spawn_job; spawn_job.run('ddp_notebook', {str(tmp_path)!r}, "
                     f"stages=('fit', 'validate', 'predict'), pid_dir={str(pids)!r})")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = _report(tmp_path)
    assert ours["strategy"] == "ddp_notebook"
    _assert_same_run(ours, launcher_report, ("fit", "validate", "predict"))
    _assert_ranks_gone(pids)


@pytest.mark.slow  # each spawned rank imports torch afresh (about 25 s on a loaded 2-core machine)
def test_script_ddp_spawn_matches_the_launcher(launcher_report, tmp_path):
    """From a script: the module class lives in the script's __main__, which spawn imports again
    in each rank (the `if __name__ == "__main__":` guard keeps fit from running there)."""
    proc = subprocess.run([sys.executable, str(JOB), "ddp_spawn", str(tmp_path)], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(_report(tmp_path), launcher_report)


def test_a_failing_rank_is_one_error_and_no_rank_is_left(tmp_path):
    """Rank 1 raises at step 2 while rank 0 is in a 120 s step: the caller gets rank 1's
    ValueError (with its traceback) within seconds, and both ranks have ended."""
    pids = tmp_path / "pids"
    pids.mkdir()
    begin = time.monotonic()
    proc = _python_c(f"import spawn_job; spawn_job.run('ddp_notebook', {str(tmp_path)!r}, fail_rank=1, "
                     f"fail_step=2, sleep_rank=0, pid_dir={str(pids)!r})", timeout=100)
    elapsed = time.monotonic() - begin
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()
    assert "ValueError: bad batch" in proc.stderr and "in training_step" in proc.stderr, proc.stderr[-3000:]
    assert any("raised in rank 1 of 2 started by Trainer(strategy='ddp_notebook')" in line for line in last)
    assert elapsed < 60, f"the caller waited {elapsed:.0f} s for the rank in its long step"
    _assert_ranks_gone(pids)


def test_errors_before_any_process_starts(tmp_path):
    """One-line errors: a class defined in `python -c` cannot be pickled to spawned ranks; the
    default strategy with no script to re-run names the strategies that work here."""
    code = """
import distengine as de, spawn_job
class Local(spawn_job.SpawnRegressor):
    pass
for strategy in ("ddp_spawn", "auto"):
    try:
        spawn_job.run(strategy, OUT, module_cls=Local)
    except RuntimeError as exc:
        print(strategy, "->", exc)
"""
    proc = _python_c(f"OUT = {str(tmp_path)!r}\n" + code, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" -> ", 1) for line in proc.stdout.splitlines() if " -> " in line)
    assert "Local is defined in this notebook/session" in lines["ddp_spawn"]
    assert "move it into a .py file and import it, or use strategy='ddp_notebook'" in lines["ddp_spawn"]
    assert "no script to re-run; use Trainer(strategy='ddp_notebook') or strategy='ddp_spawn'" in lines["auto"]


# ---------------------------------------------------------------------------- a real Jupyter kernel
def _run_notebook(cells: list[str], cwd: Path, timeout: float = 150) -> list[str]:
    """Execute ``cells`` in a fresh python3 kernel; return each cell's printed text."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(_env())  # the kernel inherits this environment
    try:
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    return ["".join(o.get("text", "") for o in cell.outputs) for cell in nb.cells]


_SETUP = """
import distengine as de, spawn_job
print(de.Trainer(accelerator="cpu", devices=2, logger=False).strategy.name)
try:
    de.Trainer(strategy="ddp", accelerator="cpu", devices=2, logger=False).fit(spawn_job.SpawnRegressor())
except RuntimeError as exc:
    print(exc)
"""


def test_jupyter_kernel_ddp_notebook_matches_the_launcher(launcher_report, tmp_path):
    """In a kernel: "auto" with devices=2 is ddp_fork (Lightning 2.6.6), "ddp" (a script re-run)
    is refused in one line, a class defined in the notebook trains with ddp_notebook, and
    ddp_spawn refuses it with the advice to import it from a file."""
    pids = tmp_path / "pids"
    pids.mkdir()
    fork = f"""
class NotebookRegressor(spawn_job.SpawnRegressor):
    pass
spawn_job.run("ddp_notebook", {str(tmp_path)!r}, module_cls=NotebookRegressor, pid_dir={str(pids)!r})
print("fit done")
"""
    spawn = f"""
try:
    spawn_job.run("ddp_spawn", {str(tmp_path / 'unused')!r}, module_cls=NotebookRegressor)
except RuntimeError as exc:
    print(exc)
"""
    setup, fitted, refused = _run_notebook([_SETUP, fork, spawn], tmp_path)
    assert setup.splitlines()[0] == "ddp_fork"
    assert "an interactive session (a notebook, the prompt) has none; use Trainer(strategy='ddp_notebook')" \
        in setup
    assert "fit done" in fitted
    _assert_same_run(_report(tmp_path), launcher_report)
    assert "NotebookRegressor is defined in this notebook/session" in refused
    _assert_ranks_gone(pids)


@pytest.mark.slow  # a kernel, then 2 spawned ranks that import torch afresh
def test_jupyter_kernel_ddp_spawn_with_an_importable_module(launcher_report, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    cell = f"""
import spawn_job
spawn_job.run("ddp_spawn", {str(tmp_path)!r}, pid_dir={str(pids)!r})
print("fit done")
"""
    (out,) = _run_notebook([cell], tmp_path)
    assert "fit done" in out
    _assert_same_run(_report(tmp_path), launcher_report)
    _assert_ranks_gone(pids)


@pytest.mark.slow  # about 28 s on a loaded 2-core machine: most of it until the ranks' first step
def test_ctrl_c_stops_the_ranks_gracefully(tmp_path):
    """SIGINT to the caller (a notebook's "interrupt") reaches the ranks: they stop at the next
    step with a checkpoint, as under `distengine launch`; the caller raises KeyboardInterrupt."""
    pids = tmp_path / "pids"
    pids.mkdir()
    code = (f"import spawn_job; spawn_job.run('ddp_notebook', {str(tmp_path)!r}, pid_dir={str(pids)!r}, "
            "step_sleep=0.5)")
    # SIGINT as a terminal leaves it (Python's handler): a pytest started in the background by a
    # non-interactive shell passes it on ignored, and the caller then ignores the Ctrl-C
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 90
        while not (pids / "rank1.pid").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        proc.send_signal(2)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (-2, 130), err[-3000:]  # Python ends an uncaught Ctrl-C by SIGINT
    assert err.strip().splitlines()[-1] == "KeyboardInterrupt"
    assert list(tmp_path.rglob("*-signal_2.ckpt")), err[-3000:]
    _assert_ranks_gone(pids)
