"""``launch/elastic_private.py`` against the real torch elastic agent of the torch running the tests.

Every function of the adapter (the launcher's only contact with torch's private elastic names)
runs here with torch's own ``LocalElasticAgent`` and ``DynamicRendezvousHandler``: the hooks
of :class:`SupervisedAgent` on a job that succeeds, one that fails once and restarts, and one
stopped by a signal; :class:`BoundDynamicRendezvous` over two rounds; and the pid-based rank
watching that replaced the agent's ``Popen`` objects. Run it on each supported torch
(2.11.0 .. 2.14.1, see docs/launching.md).
"""
from __future__ import annotations

import ast
import datetime
import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import torch
import torch.distributed as dist
from torch.distributed.elastic.agent.server.api import RunResult, WorkerSpec, WorkerState
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import RendezvousTimeout

from distengine.launch import procs
from distengine.launch.elastic_private import BoundDynamicRendezvous, SupervisedAgent, missing_private_names
from distengine.launch.network import bind_store_socket
from distengine.launch.rendezvous import StaticRendezvous

# What each rank runs (``python -c RANK_CODE MODE``); no torch import, so a rank starts fast.
RANK_CODE = """
import os, sys, time
rank, attempt = int(os.environ["RANK"]), int(os.environ["TORCHELASTIC_RESTART_COUNT"])
mode = sys.argv[1]
if mode == "ok":
    time.sleep(0.3)
elif mode == "fail-once":
    time.sleep(0.3)
    sys.exit(3 if (rank == 1 and attempt == 0) else 0)
elif mode == "sleep":
    time.sleep(60)
"""
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


@pytest.fixture(autouse=True)
def restore_signal_handlers():
    """torch's agent installs its own handlers in this (the test) process; put ours back."""
    saved = {s: signal.getsignal(s) for s in SIGNALS}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def make_spec(mode: str, max_restarts: int = 0) -> tuple[WorkerSpec, StaticRendezvous]:
    sock = bind_store_socket("127.0.0.1", 0)
    rdzv = StaticRendezvous("127.0.0.1", sock.getsockname()[1], node_rank=0, nnodes=1, run_id="adapter",
                            timeout=60, listen_socket=sock)
    spec = WorkerSpec(role="rank", local_world_size=2, entrypoint=sys.executable, args=("-c", RANK_CODE, mode),
                      rdzv_handler=rdzv, max_restarts=max_restarts, monitor_interval=0.05)
    return spec, rdzv


class Recording(SupervisedAgent):
    """Records every hook call; watches the ranks the way the launcher's JobAgent does."""

    def __init__(self, spec: WorkerSpec, logs, *, raise_in_check: int | None = None,
                 stop_raises: bool = False) -> None:
        super().__init__(spec, logs)
        self.calls: list[tuple] = []
        self.checks = 0
        self.raise_in_check, self.stop_raises = raise_in_check, stop_raises
        self.torch_result_while_running: list[bool] = []

    def attempt_starting(self, worker_group) -> None:
        failures = self.last_result.failures if self.last_result is not None else {}
        self.calls.append(("starting", self.failed_attempts, {r: f.exitcode for r, f in failures.items()}))

    def attempt_started(self, worker_group, pids) -> None:
        me = os.getpid()
        parents = {lr: psutil.Process(pid).ppid() for lr, pid in pids.items()}
        self.calls.append(("started", dict(pids), parents == dict.fromkeys(pids, me), pids == self.rank_pids))

    def check_workers(self, worker_group) -> RunResult | None:
        self.checks += 1
        if self.raise_in_check is not None and self.checks >= self.raise_in_check:
            raise SignalException("test", sigval=signal.SIGTERM)
        if any(procs.exit_status(pid) is None for pid in self.rank_pids.values()):
            self.torch_result_while_running.append(self.last_result is not None)
            return RunResult(state=WorkerState.HEALTHY)
        return None  # every rank has ended: torch's monitor reaps them and reports

    def stop_workers(self, death_sig) -> None:
        self.calls.append(("stop", death_sig, sorted(self.rank_pids.values())))
        if self.stop_raises:
            raise RuntimeError("stop hook failed")


def run_agent(agent: SupervisedAgent, rdzv: StaticRendezvous) -> RunResult:
    try:
        return agent.run()
    finally:
        rdzv.shutdown()


def gone(pids) -> bool:
    """Ended and reaped (by torch's Popen objects, not by us)."""
    return all(procs.exit_status(pid) is procs.GONE for pid in pids)


def test_this_torch_has_every_private_name_the_adapter_uses():
    assert missing_private_names() == [], torch.__version__


def _assigned_on_self(cls) -> set[str]:
    """``X`` of every ``self.X = ...`` in the source of ``cls``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    return {t.attr for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}


def test_the_launchers_names_do_not_collide_with_torchs(tmp_path):
    """The hooks and the launcher's own agent state use public names that torch's agent does
    not define (in this torch): nothing of torch's is replaced by accident."""
    from distengine.launch.agent import JobAgent

    spec, rdzv = make_spec("ok")
    rdzv.shutdown()
    torchs = set(dir(LocalElasticAgent)) | set(vars(LocalElasticAgent(spec, DefaultLogsSpecs(log_dir=str(tmp_path)))))
    ours = {n for cls in (SupervisedAgent, JobAgent) for n in vars(cls) if not n.startswith("__")} - {"_abc_impl"}
    ours |= _assigned_on_self(SupervisedAgent) | _assigned_on_self(JobAgent)
    private_overrides = {"_start_workers", "_monitor_workers", "_shutdown"}
    assert {n for n in ours if n.startswith("_")} == private_overrides
    assert (ours & torchs) == private_overrides, torch.__version__


def test_default_hooks_leave_torch_in_charge(tmp_path):
    spec, rdzv = make_spec("ok")
    agent = SupervisedAgent(spec, DefaultLogsSpecs(log_dir=str(tmp_path)))
    result = run_agent(agent, rdzv)
    assert result.state == WorkerState.SUCCEEDED and not result.failures
    assert sorted(agent.rank_pids) == [0, 1] and gone(agent.rank_pids.values())
    assert agent.failed_attempts == 0 and agent.last_result is result
    assert agent.get_worker_group().spec is spec


def test_hooks_see_a_failed_attempt_and_its_restart(tmp_path):
    spec, rdzv = make_spec("fail-once", max_restarts=1)
    agent = Recording(spec, DefaultLogsSpecs(log_dir=str(tmp_path)))
    result = run_agent(agent, rdzv)
    assert result.state == WorkerState.SUCCEEDED, result.failures
    starts = [c for c in agent.calls if c[0] == "starting"]
    started = [c for c in agent.calls if c[0] == "started"]
    # The restart's hook knows the first attempt failed, and how (torch's Popen got the real
    # exit code 3: watching the ranks with waitid(WNOWAIT) did not reap them).
    assert starts == [("starting", 0, {}), ("starting", 1, {1: 3})]
    assert agent.failed_attempts == 1
    assert len(started) == 2 and all(c[2] and c[3] for c in started), started  # our children, rank_pids
    first, second = (set(c[1].values()) for c in started)
    assert len(first) == len(second) == 2 and not first & second
    assert gone(first | second)
    # While ranks ran, check_workers answered and torch's monitor was not asked.
    assert agent.torch_result_while_running and not any(agent.torch_result_while_running[:1])
    stops = [c for c in agent.calls if c[0] == "stop"]
    assert stops and stops[0][2] == sorted(first) and stops[-1][2] == sorted(second)


@pytest.mark.parametrize("stop_raises", [False, True], ids=["hook-stops", "hook-raises"])
def test_a_signal_reaches_the_stop_hook_and_torch_cleans_up(tmp_path, stop_raises):
    """run() answers SignalException with ``_shutdown(sig)`` (2.11) or ``_shutdown(sig,
    timeout=...)`` (2.13+); either way the hook sees the signal, and torch's own cleanup runs
    after it, even when the hook raises (here the hook leaves the ranks to torch's SIGKILL)."""
    spec, rdzv = make_spec("sleep")
    agent = Recording(spec, DefaultLogsSpecs(log_dir=str(tmp_path)), raise_in_check=5, stop_raises=stop_raises)
    started = time.monotonic()
    with pytest.raises(RuntimeError if stop_raises else SignalException):
        run_agent(agent, rdzv)
    assert time.monotonic() - started < 30  # no 30 s SIGTERM wait: torch was told SIGKILL
    stops = [c for c in agent.calls if c[0] == "stop"]
    assert stops[0] == ("stop", signal.SIGTERM, sorted(agent.rank_pids.values()))
    # torch's run() calls _shutdown once more when the first call raised
    assert len(stops) == (2 if stop_raises else 1) and {c[1] for c in stops} == {signal.SIGTERM}
    assert gone(agent.rank_pids.values())


def _store_on(host: str, sock) -> dist.TCPStore:
    return dist.TCPStore(host, sock.getsockname()[1], None, True, datetime.timedelta(seconds=30),
                         wait_for_workers=False, multi_tenant=False, master_listen_fd=sock.detach())


def _listening(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process().net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def _c10d(run_id: str) -> tuple[BoundDynamicRendezvous, dist.TCPStore]:
    store = dist.TCPStore("127.0.0.1", 0, None, True, datetime.timedelta(seconds=30), wait_for_workers=False)
    handler = BoundDynamicRendezvous.from_backend(
        run_id, store, C10dRendezvousBackend(store, run_id), 1, 1, local_addr="127.0.0.1",
        timeout=RendezvousTimeout(join=datetime.timedelta(seconds=30)))
    return handler, store


def test_bound_dynamic_rendezvous_serves_a_new_loopback_store_every_round():
    handler, _store = _c10d("adapter-bound")
    made = []

    def make_store(host, sock):
        made.append(host)
        return _store_on(host, sock)

    assert handler.with_store_factory(make_store) is handler
    ports = []
    for round_ in range(2):
        info = handler.next_rendezvous()
        assert (info.rank, info.world_size) == (0, 1)
        boot = info.bootstrap_store_info
        assert boot.master_addr == "127.0.0.1"
        assert _listening(boot.master_port) == {"127.0.0.1"}  # this address only, not 0.0.0.0
        client = dist.TCPStore(boot.master_addr, boot.master_port, None, False, datetime.timedelta(seconds=10))
        # A new store each round: the previous round's keys are not there.
        assert not client.check(["written-in-round-0"])
        client.set(f"written-in-round-{round_}", "x")
        ports.append(boot.master_port)
    assert made == ["127.0.0.1", "127.0.0.1"] and ports[0] != ports[1]
    assert missing_private_names(handler) == []
    handler.shutdown()


def test_bound_dynamic_rendezvous_without_a_factory_is_torchs():
    handler, _store = _c10d("adapter-default")
    info = handler.next_rendezvous()
    boot = info.bootstrap_store_info
    client = dist.TCPStore(boot.master_addr, boot.master_port, None, False, datetime.timedelta(seconds=10))
    client.set("k", "v")
    assert client.get("k") == b"v"
    handler.shutdown()


# -- the pid-based watching that replaced the agent's Popen objects ------------------------
def test_exit_status_reads_without_reaping():
    ok = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert procs.exit_status(sleeper.pid) is None and procs.running(sleeper.pid)
        deadline = time.monotonic() + 30
        while procs.exit_status(ok.pid) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert procs.exit_status(ok.pid) == 3 and procs.exit_status(ok.pid) == 3  # asked twice
        assert ok.wait(5) == 3  # still there for Popen to collect
        assert procs.exit_status(ok.pid) is procs.GONE
        procs.stop_ranks([sleeper.pid], signal.SIGTERM, 5)
        assert procs.exit_status(sleeper.pid) == -signal.SIGTERM
        assert sleeper.wait(5) == -signal.SIGTERM
    finally:
        sleeper.kill()
        sleeper.wait()
