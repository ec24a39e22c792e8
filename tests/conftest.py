import os

import pytest

_DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
              "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "SLURM_PROCID", "SLURM_NTASKS",
              "SLURM_LOCALID", "SLURM_JOB_ID", "SLURM_NODEID", "SLURM_JOB_NODELIST", "SLURM_RESTART_COUNT",
              "SLURM_NTASKS_PER_NODE", "SLURM_NNODES", "SLURM_JOB_NAME", "DISTENGINE_DEBUG",
              "DISTENGINE_ACCELERATOR")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """Each test starts outside any job, and leaves no process group behind."""
    saved = dict(os.environ)  # tests (and seed_everything) may set variables; undo all of it
    for name in _DIST_VARS + ("DISTENGINE_SEED", "PL_GLOBAL_SEED", "DISTENGINE_SEED_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    import torch

    torch.set_num_threads(1)
    yield
    os.environ.clear()
    os.environ.update(saved)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture
def repo_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _slurm(item) -> bool:
    return bool(item.get_closest_marker("slurm")) or item.nodeid.startswith("tests/slurm/")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks (it has no order)
def pytest_collection_modifyitems(config, items):
    """Keep together, under ``pytest -n 2`` (pytest-xdist, ``--dist loadgroup``, as ``make test``
    runs the suite), the tests that share something costly or single: every test of a file with a
    module- or session-scoped fixture runs in one worker (the fixture is built once, not once per
    worker), and every Slurm test in one worker (one local cluster, one job at a time). The other
    tests go to whichever worker is free. Without xdist the marks do nothing.

    The Slurm tests come first: they mostly wait on the cluster (a requeue takes two minutes), and
    at the start the other worker's CPU-bound tests fill that wait; at the end nothing would."""
    items.sort(key=lambda item: not _slurm(item))  # stable: the rest keep their order
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = getattr(info, "name2fixturedefs", {}) or {}
        shared = any(d.scope in ("module", "session", "package", "class")
                     for fixture_defs in defs.values() for d in fixture_defs
                     if d.baseid.startswith("tests"))  # our own fixtures, not pytest's (tmp_path_factory ...)
        if _slurm(item):
            item.add_marker(pytest.mark.xdist_group("slurm"))
        elif shared:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
