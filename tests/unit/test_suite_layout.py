"""The suite's own layout under pytest-xdist (tests/conftest.py), checked with a real `pytest -n 2`.

`make test` runs the suite in two workers with `--dist loadgroup` and relies on the groups it
asks for: the tests of a file with a module fixture on one worker (the fixture is built once),
the Slurm tests on one worker and first. pytest 9.2 with pytest-xdist 3.8 silently dropped the
groups (every test went to whichever worker was free; pyproject.toml pins pytest < 9.2): this
test fails if the groups stop working again."""
import os
import re
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
