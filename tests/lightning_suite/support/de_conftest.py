"""The suite's conftest on the distengine side of the gate (our code, written for the gate).

Lightning's own tests_pytorch/conftest.py imports Lightning internals (its signal connector, the
fabric process-group helpers, the accelerator modules it patches), so it cannot load here. This
file gives the suite the same fixtures in plain stdlib/torch terms: the autouse hygiene checks
(environment variables, signal handlers, process group, determinism, left-over threads and
files) and the fixtures the tests request by name. The fixtures that exist only to patch
Lightning's private device counting (cuda_count_N, mps_count_N, xla/tpu_available) hold as they
are when the machine already is that way (no CUDA, no MPS) and otherwise fail as reaching
Lightning internals (class A).
"""
import logging
import os
import signal
import socket
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import torch.distributed
from lsuite_support import ReachesLightningInternals
from tests_pytorch import _PATH_DATASETS

_ENV_ALLOWED = {
    "CUBLAS_WORKSPACE_CONFIG", "CUDA_DEVICE_ORDER", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR",
    "MASTER_PORT", "PL_GLOBAL_SEED", "PL_SEED_WORKERS", "RANK", "CUDA_MODULE_LOADING", "KMP_INIT_AT_FORK",
    "KMP_DUPLICATE_LIB_OK", "CRC32C_SW_MODE", "TRITON_CACHE_DIR", "OMP_NUM_THREADS", "TORCHINDUCTOR_CACHE_DIR",
    "_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR", "LD_LIBRARY_PATH", "WANDB_MODE",
    # distengine's names for what the suite allows as PL_GLOBAL_SEED / PL_SEED_WORKERS
    "DISTENGINE_SEED", "DISTENGINE_SEED_WORKERS",
}


@pytest.fixture(scope="session")
def datadir():
    return Path(_PATH_DATASETS)


@pytest.fixture(autouse=True)
def restore_env_variables():
    backup = os.environ.copy()
    yield
    leaked = os.environ.keys() - backup.keys() - _ENV_ALLOWED
    os.environ.clear()
    os.environ.update(backup)
    assert not leaked, f"test is leaking environment variable(s): {set(leaked)}"


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    valid = set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
    handlers = {signum: signal.getsignal(signum) for signum in valid}
    yield
    for signum, handler in handlers.items():
        if handler is not None:
            signal.signal(signum, handler)


@pytest.fixture(autouse=True)
def teardown_process_group():
    yield
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.fixture(autouse=True)
def reset_deterministic_algorithm():
    yield
    torch.use_deterministic_algorithms(False)


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    before = set(threading.enumerate())
    yield
    for thread in set(threading.enumerate()) - before:
        stop = getattr(thread, "stop", None) or getattr(thread, "exit", None)
        if thread.daemon and callable(stop):
            stop()
        elif thread.name in ("QueueFeederThread", "QueueManagerThread") or not thread.daemon:
            thread.join(timeout=20)
            assert not thread.is_alive(), f"Test left zombie thread: {thread}"


@pytest.fixture(autouse=True)
def leave_no_artifacts_behind():
    root = Path(__file__).parent.parent
    before = {p for p in root.rglob("*") if "__pycache__" not in p.parts}
    yield
    after = {p for p in root.rglob("*") if "__pycache__" not in p.parts}
    left = {str(p.relative_to(root)) for p in after - before if not str(p).endswith(".coverage")}
    assert not left, f"Test left artifacts behind: {left}"


def _internal(what):
    raise ReachesLightningInternals(f"the suite's fixture {what} patches Lightning's private modules")


def mock_cuda_count(monkeypatch, n):
    if n != torch.cuda.device_count():
        _internal(f"mock_cuda_count({n})")


def mock_mps_count(monkeypatch, n):
    if n != int(torch.backends.mps.is_available()):
        _internal(f"mock_mps_count({n})")


def mock_xla_available(monkeypatch, value=True):
    if value:
        _internal("mock_xla_available")


def mock_tpu_available(monkeypatch, value=True):
    if value:
        _internal("mock_tpu_available")


@pytest.fixture
def cuda_count_0(monkeypatch):
    mock_cuda_count(monkeypatch, 0)


@pytest.fixture
def cuda_count_1(monkeypatch):
    mock_cuda_count(monkeypatch, 1)


@pytest.fixture
def cuda_count_2(monkeypatch):
    mock_cuda_count(monkeypatch, 2)


@pytest.fixture
def cuda_count_4(monkeypatch):
    mock_cuda_count(monkeypatch, 4)


@pytest.fixture
def mps_count_0(monkeypatch):
    mock_mps_count(monkeypatch, 0)


@pytest.fixture
def mps_count_1(monkeypatch):
    mock_mps_count(monkeypatch, 1)


@pytest.fixture
def xla_available(monkeypatch):
    mock_xla_available(monkeypatch)


@pytest.fixture
def tpu_available(monkeypatch):
    mock_tpu_available(monkeypatch)


@pytest.fixture
def caplog(caplog):
    """Let records of non-propagating library loggers reach caplog (as the suite's fixture does)."""
    root = logging.getLogger()
    saved = {"": root.propagate}
    root.propagate = True
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("pytorch_lightning", "distengine")):
            saved[name] = logging.getLogger(name).propagate
            logging.getLogger(name).propagate = True
    yield caplog
    for name, propagate in saved.items():
        logging.getLogger(name or None).propagate = propagate


@pytest.fixture
def tmpdir_server(tmp_path):
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    with ThreadingHTTPServer(("localhost", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server.server_address
        server.shutdown()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def single_process_pg():
    if torch.distributed.is_initialized():
        raise RuntimeError("Can't use `single_process_pg` when the default process group is already initialized.")
    saved = os.environ.copy()
    os.environ.update(MASTER_ADDR="localhost", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1")
    torch.distributed.init_process_group("gloo")
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)


assert sys.modules.get("pytorch_lightning") is not None
