"""The one module of the launcher that touches private names of torch's elastic agent.

Everything else in ``distengine.launch`` uses torch elastic's public API only
(``LocalElasticAgent(...)``, ``run()``, ``get_worker_group()``, ``WorkerSpec``, ``RunResult``,
``LogsSpecs``, ``RendezvousHandler``, ``DynamicRendezvousHandler.from_backend`` ...). What the
launcher needs beyond that is here, behind public names, and checked against every torch in
the supported range (2.11.0 .. 2.14.1) by ``tests/launcher/test_elastic_adapter.py``.

Private names used, and why
---------------------------

=========================================  ==========================================================
private name (torch class; who uses it)    why it is needed; how torch 2.11.0 and 2.13.0/2.14.1 differ
=========================================  ==========================================================
``SimpleElasticAgent._start_workers``      Abstract extension point. Per-attempt state is reset
(overridden by :class:`SupervisedAgent`)   before it, and the ranks' pids are learnt from its return
                                           value, ``{local_rank: pid}`` (``PContext.pids()``).
                                           Same signature and return value in all three.
``SimpleElasticAgent._monitor_workers``    Abstract extension point. The launcher looks at the ranks
(overridden by :class:`SupervisedAgent`)   first, to tear a failed job down with SIGABRT at once
                                           (torch would SIGTERM the survivors and wait 30 s); torch's
                                           own runs once every rank has ended (it reaps them and
                                           reads their error files). Same signature in all three;
                                           2.13+ also look for ranks stuck in D-state there (only with
                                           ``TORCHELASTIC_UNINTERRUPTIBLE_STATE_TIMEOUT`` set), which
                                           the launcher's check, run first, skips while ranks run.
``SimpleElasticAgent._shutdown``           Abstract extension point. A signal is forwarded to the
(overridden by :class:`SupervisedAgent`)   ranks only, with the launcher's grace period, before
                                           torch's cleanup (watchdog, health check, process context).
                                           2.11: ``_shutdown(death_sig)``; 2.13+: ``_shutdown(death_sig,
                                           timeout=30)`` and ``run()`` passes ``timeout=``. Both are
                                           accepted; torch's is called with ``death_sig`` only.
``DynamicRendezvousHandler                 Rank 0's store of the c10d rendezvous serves on a socket
._create_tcp_store_server``                bound to the rendezvous address only (torch binds a free
(overridden by                             port on every interface). Same in all three.
:class:`BoundDynamicRendezvous`)
``DynamicRendezvousHandler                 Cleared before each round, so that every round (restart)
._bootstrap_store_info`` and               gets a new store: a restarted rank must not read a dead
``._shared_tcp_store_server``              attempt's keys. Same attributes in all three; 2.13+ also
(set by :class:`BoundDynamicRendezvous`)   rebuild both by themselves when a node becomes rank 0.
=========================================  ==========================================================

Why the agent's three extension points stay: they are the abstract methods of torch's
``SimpleElasticAgent``, the way torch itself customises an agent (``LocalElasticAgent``
implements them), and the public API has no other place to act between two polls of the ranks
or before torch's SIGTERM-and-wait teardown. They are overridden here only, and call hooks
with public names (:class:`SupervisedAgent`); the launcher's ``JobAgent`` implements those.

Private names the launcher used to read and no longer does (public replacements):

* ``agent._worker_group`` -> ``agent.get_worker_group()`` (or the ``worker_group`` argument).
* ``agent._remaining_restarts`` -> the launcher counts failed attempts itself
  (:attr:`SupervisedAgent.failed_attempts`); torch restarts while that count is at most
  ``spec.max_restarts``.
* ``agent._pcontext.subprocess_handlers[i].proc`` (the ranks' ``Popen`` objects) -> the pids
  that ``_start_workers`` returns (torch's public ``PContext.pids()``), watched with
  ``os.waitid(..., WNOWAIT)`` (:mod:`distengine.launch.procs`), which does not reap them:
  torch's ``Popen`` objects still collect each rank's real exit status.

Example::

    class MyAgent(SupervisedAgent):
        def check_workers(self, worker_group): ...   # public hook names only
"""
from __future__ import annotations

import inspect
import signal
import socket
from collections.abc import Callable

import torch.distributed as dist
from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup, WorkerSpec, WorkerState
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
from torch.distributed.elastic.multiprocessing.api import LogsSpecs
from torch.distributed.elastic.rendezvous import RendezvousInfo
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import DynamicRendezvousHandler


class SupervisedAgent(LocalElasticAgent):
    """``LocalElasticAgent`` whose three private extension points call public hooks.

    Subclasses override only the hooks (all optional):

    * :meth:`attempt_starting` / :meth:`attempt_started` around torch's ``_start_workers``;
    * :meth:`check_workers` before torch's ``_monitor_workers`` (return a result to skip it);
    * :meth:`stop_workers` before torch's ``_shutdown``, which then always runs (even if the
      hook raises) with SIGKILL: the hook has stopped the ranks its own way by then.

    The constructor passes only the arguments torch 2.11's agent takes (2.13 added
    ``shutdown_timeout``, ``health_check_server``, ``uninterruptible_state_timeout``).
    """

    def __init__(self, spec: WorkerSpec, logs_specs: LogsSpecs, *, start_method: str = "spawn",
                 exit_barrier_timeout: float = 300) -> None:
        super().__init__(spec, logs_specs=logs_specs, start_method=start_method,
                         exit_barrier_timeout=exit_barrier_timeout)
        self.rank_pids: dict[int, int] = {}   # local rank -> pid, this attempt
        self.failed_attempts = 0              # attempts that ended FAILED or UNHEALTHY
        self.last_result: RunResult | None = None  # torch's last answer (failures: rank -> ProcessFailure)

    # -- public hooks (defaults do nothing) -------------------------------------------------
    def attempt_starting(self, worker_group: WorkerGroup) -> None:
        """Before the ranks of an attempt (the first, or a restart) are started."""

    def attempt_started(self, worker_group: WorkerGroup, pids: dict[int, int]) -> None:
        """After they were started; ``pids`` maps local rank -> pid (also in :attr:`rank_pids`)."""

    def check_workers(self, worker_group: WorkerGroup) -> RunResult | None:
        """Every monitor interval, first. A result is returned to torch as is; ``None`` lets
        torch's own monitor decide (it reaps the ranks that ended and reads error files)."""
        return None

    def stop_workers(self, death_sig: signal.Signals) -> None:
        """At every shutdown (a finished or failed attempt, a restart, a signal), before torch's."""

    # -- torch's private extension points ---------------------------------------------------
    def _start_workers(self, worker_group: WorkerGroup):
        """torch: start the attempt's ranks, return ``{local_rank: pid}`` (all supported versions)."""
        self.attempt_starting(worker_group)
        pids = super()._start_workers(worker_group)
        self.rank_pids = {int(lr): int(pid) for lr, pid in dict(pids).items()}
        self.attempt_started(worker_group, dict(self.rank_pids))
        return pids

    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        """torch: report the group's state. Counts failed attempts (torch's restart budget is
        private: ``_remaining_restarts``, which 2.13+ may also zero on a D-state rank)."""
        result = self.check_workers(worker_group)
        if result is None:
            result = super()._monitor_workers(worker_group)
            self.last_result = result
        if result.state in (WorkerState.FAILED, WorkerState.UNHEALTHY):
            self.failed_attempts += 1
        return result

    def _shutdown(self, death_sig: signal.Signals = signal.SIGTERM, timeout: int = 30, **_ignored) -> None:
        """torch: stop the ranks. 2.11 calls ``_shutdown(sig)``, 2.13+ ``_shutdown(sig, timeout=...)``;
        torch's own is called the 2.11 way, with SIGKILL (the hook stopped the ranks already)."""
        try:
            self.stop_workers(death_sig)
        finally:
            super()._shutdown(signal.SIGKILL)


class BoundDynamicRendezvous(DynamicRendezvousHandler):
    """torch's c10d rendezvous; the ranks' store binds to the rendezvous address only, and is new
    on every round (a restarted rank must not see the old round's keys).

    ``make_store(host, socket)`` builds a TCPStore serving on an already bound socket (it takes
    the socket over); it is set with :meth:`with_store_factory` after ``from_backend``.
    """

    make_store: Callable[[str, socket.socket], dist.TCPStore] | None = None

    def with_store_factory(self, make_store: Callable[[str, socket.socket], dist.TCPStore]
                           ) -> BoundDynamicRendezvous:
        self.make_store = make_store
        return self

    def next_rendezvous(self) -> RendezvousInfo:
        # Forget the previous round's store (private attributes, the same in 2.11 .. 2.14.1):
        # node rank 0 then serves a new one and publishes its address under this round's prefix.
        self._bootstrap_store_info = None
        self._shared_tcp_store_server = None
        return super().next_rendezvous()

    def _create_tcp_store_server(self, master_addr, master_port) -> dist.TCPStore:
        """torch: create rank 0's store server (a free port on every interface by default)."""
        if self.make_store is None:
            return super()._create_tcp_store_server(master_addr, master_port)
        try:
            sock = socket.create_server((master_addr, master_port or 0), reuse_port=False)
        except OSError:
            return super()._create_tcp_store_server(master_addr, master_port)
        return self.make_store(master_addr, sock)


def missing_private_names(rendezvous: DynamicRendezvousHandler | None = None) -> list[str]:
    """The private torch names of the table above that this torch lacks: ``[]`` on 2.11.0 ..
    2.14.1. A ``rendezvous`` (a handler that has rendezvoused once) also has its instance
    attributes checked. Meant for tests and for a check after a torch upgrade."""
    missing = [f"LocalElasticAgent.{name}" for name in ("_start_workers", "_monitor_workers", "_shutdown")
               if not callable(getattr(LocalElasticAgent, name, None))]
    if not callable(getattr(DynamicRendezvousHandler, "_create_tcp_store_server", None)):
        missing.append("DynamicRendezvousHandler._create_tcp_store_server")
    else:
        params = list(inspect.signature(DynamicRendezvousHandler._create_tcp_store_server).parameters)
        if params[1:3] != ["master_addr", "master_port"]:
            missing.append("DynamicRendezvousHandler._create_tcp_store_server(master_addr, master_port)")
    if "_shutdown" not in " ".join(missing):
        params = list(inspect.signature(LocalElasticAgent._shutdown).parameters)
        if params[1:2] != ["death_sig"]:
            missing.append("LocalElasticAgent._shutdown(death_sig)")
    if rendezvous is not None:
        missing += [f"DynamicRendezvousHandler.{name}" for name in ("_bootstrap_store_info", "_shared_tcp_store_server")
                    if not hasattr(rendezvous, name)]
    return missing
