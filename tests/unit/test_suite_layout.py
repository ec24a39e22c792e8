"""The suite's own layout under pytest-xdist (tests/conftest.py), checked with a real `pytest -n 2`.

`make test` runs the suite in two workers with `--dist loadgroup` and relies on the groups it
asks for: the tests of a file with a module fixture on one worker (the fixture is built once),
the Slurm tests on one worker and first. pytest 9.2 with pytest-xdist 3.8 silently dropped the
groups (every test went to whichever worker was free; pyproject.toml pins pytest < 9.2): this
test fails if the groups stop working again."""
import os
import re
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FILE = '''
import pytest

@pytest.fixture(scope="module")
def shared():
    return 1

def test_free_1(): pass
def test_free_2(): pass
def test_free_3(): pass
def test_free_4(): pass
def test_module_1(shared): pass
def test_module_2(shared): pass
def test_module_3(shared): pass
def test_module_4(shared): pass

@pytest.mark.slurm
def test_slurm_1(): pass

@pytest.mark.slurm
def test_slurm_2(): pass
'''


def test_module_fixture_files_and_slurm_tests_stay_on_one_worker_and_slurm_goes_first(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_layout.py").write_text(FILE)
    (tmp_path / "tests" / "conftest.py").write_text(
        "from tests.conftest import pytest_collection_modifyitems  # noqa: F401 - the suite's own hook\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers = slurm: a Slurm test\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    run = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-n", "2", "--dist",
                          "loadgroup", "tests"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    worker = {m.group(2): (m.group(1), m.group(3)) for m in
              re.finditer(r"\[(gw\d)\].*PASSED tests/test_layout.py::(\w+)(@\S+)?", run.stdout)}
    assert len(worker) == 10, run.stdout
    assert {worker[f"test_module_{i}"] for i in range(1, 5)} == {(worker["test_module_1"][0], "@tests/test_layout.py")}
    assert {worker[f"test_slurm_{i}"] for i in (1, 2)} == {(worker["test_slurm_1"][0], "@slurm")}
    order = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120).stdout.split()
    assert [n.split("::")[1] for n in order[:2]] == ["test_slurm_1", "test_slurm_2"]


def test_a_run_that_cannot_fit_on_the_disk_is_refused_up_front_with_the_figures():
    # a CI run once failed as a disk that fills half-way does (a failed pip install of the newest
    # torch, hundreds of unrelated test errors); `make test` now asks `tests.torch_range disk` first
    from tests.torch_range import ENV_GB, SUITE_GB, disk_shortfall

    assert disk_shortfall(ENV_GB + SUITE_GB, 2, "/repo/.torch-range") is None  # one at a time fits
    assert disk_shortfall(SUITE_GB, 0, "/repo/.torch-range") is None  # both environments built
    message = disk_shortfall(ENV_GB + SUITE_GB - 0.96, 2, "/repo/.torch-range")
    assert message == (f"only {ENV_GB + SUITE_GB - 1:.1f} GB free on /repo/.torch-range; the test run needs at "
                       f"least {ENV_GB + SUITE_GB:g} GB: one torch-range environment at a time (about "
                       f"{ENV_GB:g} GB) and {SUITE_GB:g} GB for the suite's files. Free some space, or set "
                       "DISTENGINE_TORCH_RANGE_DIR to a folder on a larger disk.")


def _disk(tmp_path, *args):
    env = dict(os.environ, DISTENGINE_TORCH_RANGE_DIR=str(tmp_path / "range"))
    return subprocess.run([sys.executable, "-m", "tests.torch_range", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_disk_check_reports_what_is_free_and_what_is_to_build(tmp_path):
    from tests.torch_range import ENV_GB, SUITE_GB

    ran = _disk(tmp_path, "disk")
    free = shutil.disk_usage(tmp_path).free / 1e9
    marker = tmp_path / "range" / "one-at-a-time"
    # an empty folder: both environments are still to build
    if free >= 2 * ENV_GB + SUITE_GB + 0.5:
        assert ran.returncode == 0 and not marker.exists()
        assert re.fullmatch(rf"disk: [0-9.]+ GB free on {re.escape(str(tmp_path / 'range'))} "
                            r"\(2 torch-range environments to build\)\n", ran.stdout), ran.stdout
    elif ENV_GB + SUITE_GB + 0.5 <= free < 2 * ENV_GB + SUITE_GB - 0.5:
        assert ran.returncode == 0 and marker.exists()
        assert "each is built when its run starts and removed after it" in ran.stdout
        # in that mode the background build leaves the building to the runs
        assert _disk(tmp_path, "build").returncode == 0 and not (tmp_path / "range" / "2.11.0").exists()
    elif free < ENV_GB + SUITE_GB - 0.5:
        assert ran.returncode == 1 and ran.stderr.startswith("make test: only "), ran.stderr
