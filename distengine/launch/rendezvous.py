"""Rendezvous handlers whose TCPStore listens only where the user said (127.0.0.1 by default).

torch's own handlers let the TCPStore server bind to every interface. A TCPStore can
instead serve on a socket that is already bound (``master_listen_fd``); the launcher binds
that socket while checking its input (see ``config.bind_store_socket``), so

* a single-node job's store, and with it every rank's bootstrap, is reachable from this
  machine only;
* the port is chosen (or checked) before anything starts, and nobody can take it in between.

``static``: node 0 hosts the store, ``nnodes`` agents join, ranks are fixed (torchrun's default).
``c10d``: torch's dynamic (elastic) rendezvous on top of a store built the same way.

Example::

    handler = StaticRendezvous("127.0.0.1", sock.getsockname()[1], node_rank=0, nnodes=1,
                               run_id="job", timeout=900, listen_socket=sock)
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist
from torch.distributed import DistError
from torch.distributed.elastic.rendezvous import (
    RendezvousError,
    RendezvousHandler,
    RendezvousInfo,
    RendezvousStoreInfo,
)
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import RendezvousTimeout

from distengine.launch.config import DEFAULT_MASTER_PORT, LaunchOptions, bind_store_socket, split_endpoint
from distengine.launch.elastic_private import BoundDynamicRendezvous


class StoreUnreachable(RendezvousError):
    """This node could not connect to the store that node 0 hosts. The message is one line;
    ``details`` holds what torch printed meanwhile (C++ warnings with their stack frames)."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


@contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Send file descriptor 2 to a temporary file (torch's C++ logger writes there directly);
    the list yielded holds what was written once the block ends."""
    sys.stderr.flush()
    saved, text = os.dup(2), []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text.append(tmp.read().decode(errors="replace"))


def _store(host: str, port: int, *, world_size: int | None, listen_socket: socket.socket | None,
           timeout: float, wait_for_workers: bool = True) -> dist.TCPStore:
    kwargs = {}
    if listen_socket is not None:
        # The store takes ownership of the descriptor (and closes it when it shuts down).
        kwargs["master_listen_fd"] = listen_socket.detach()
        return dist.TCPStore(host, port, world_size, True, datetime.timedelta(seconds=timeout),
                             wait_for_workers=wait_for_workers, multi_tenant=False, **kwargs)
    # A client: while it retries, torch's C++ logger prints every failed try with ~40 lines of
    # C++ frames. They are kept from the console; a failure is said in one line.
    with _stderr_captured() as captured:
        try:
            return dist.TCPStore(host, port, world_size, False, datetime.timedelta(seconds=timeout),
                                 wait_for_workers=wait_for_workers, multi_tenant=False)
        except DistError as exc:
            error = exc
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
    raise StoreUnreachable(
        f"cannot reach the rendezvous store of node 0 at {host}:{port} within {timeout:g}s ({reason}); "
        "start node 0 (--node-rank 0) first, or check the address and port (--master-addr/--master-port, "
        "or --rdzv-endpoint) and that this machine can connect to it",
        details="".join(captured) + str(error))


class StaticRendezvous(RendezvousHandler):
    """Fixed membership: ``nnodes`` agents, node 0 serving the store on ``listen_socket``.

    Its state has no leading underscore: those names belong to torch's side of the class."""

    def __init__(self, host: str, port: int, *, node_rank: int, nnodes: int, run_id: str,
                 timeout: float, listen_socket: socket.socket | None) -> None:
        if (node_rank == 0) != (listen_socket is not None):
            raise ValueError("node 0, and only node 0, serves the store on a bound socket")
        self.host, self.port = host, port
        self.node_rank, self.nnodes = node_rank, nnodes
        self.run_id, self.timeout = run_id, timeout
        self.listen_socket = listen_socket
        self.store: dist.TCPStore | None = None
        self.worker_store: dist.TCPStore | None = None
        self.round = 0

    def get_backend(self) -> str:
        return "static"

    @property
    def use_agent_store(self) -> bool:
        # The ranks connect to this store as clients (TORCHELASTIC_USE_AGENT_STORE): no rank
        # opens a listening store socket of its own.
        return True

    def next_rendezvous(self) -> RendezvousInfo:
        if self.store is None:
            # On node 0 this waits until all nnodes agents have connected (or the timeout).
            self.store = _store(self.host, self.port, world_size=self.nnodes,
                                listen_socket=self.listen_socket, timeout=self.timeout)
            self.listen_socket = None
        host, port = self.worker_store_address()
        self.round += 1
        return RendezvousInfo(dist.PrefixStore(self.run_id, self.store), self.node_rank, self.nnodes,
                              RendezvousStoreInfo(host, port))

    def worker_store_address(self) -> tuple[str, int]:
        """Where this round's ranks find their store.

        The first round uses the agent's own store (the one port the user opened). Every
        restart gets a brand-new store: the ranks write keys without any per-attempt prefix,
        so a restarted rank reading the old store could find a dead peer's gloo address and
        wait on it until the collective timeout.
        """
        if self.round == 0:
            return self.host, self.port
        key = f"distengine/worker_store/{self.round}"
        assert self.store is not None
        if self.node_rank == 0:
            sock = bind_store_socket(self.host, 0)
            port = sock.getsockname()[1]
            # Replacing the old one shuts its server down.
            self.worker_store = _store(self.host, port, world_size=None, listen_socket=sock,
                                       timeout=self.timeout, wait_for_workers=False)
            self.store.set(key, str(port))
            return self.host, port
        return self.host, int(self.store.get(key).decode())

    def is_closed(self) -> bool:
        return False

    def set_closed(self) -> None:
        pass

    def num_nodes_waiting(self) -> int:
        return 0

    def get_run_id(self) -> str:
        return self.run_id

    def shutdown(self) -> bool:
        if self.listen_socket is not None:  # never got to serve: free the port
            self.listen_socket.close()
            self.listen_socket = None
        self.worker_store = None
        return True


def c10d_rendezvous(opts: LaunchOptions, run_id: str, listen_socket: socket.socket | None) -> RendezvousHandler:
    """An elastic (c10d) rendezvous at ``opts.rdzv_endpoint``; this agent hosts it if it holds the socket."""
    host, port = split_endpoint(opts.rdzv_endpoint or "", DEFAULT_MASTER_PORT)
    local_addr = opts.local_addr or ("127.0.0.1" if opts.loopback_only else None)
    store = _store(host, port, world_size=None, listen_socket=listen_socket, timeout=60,
                   wait_for_workers=False)
    handler = BoundDynamicRendezvous.from_backend(
        run_id, store, C10dRendezvousBackend(store, run_id), opts.min_nodes, opts.max_nodes,
        local_addr=local_addr, timeout=RendezvousTimeout(join=datetime.timedelta(seconds=opts.rdzv_timeout)))
    # The ranks' store of every round: a new server on a socket bound to the rendezvous address.
    return handler.with_store_factory(
        lambda host, sock: _store(host, sock.getsockname()[1], world_size=None, listen_socket=sock,
                                  timeout=300, wait_for_workers=False))


def make_rendezvous(opts: LaunchOptions, run_id: str, listen_socket: socket.socket | None) -> RendezvousHandler:
    """The rendezvous handler for validated options (``config.validate`` bound the socket)."""
    if opts.backend() == "c10d":
        return c10d_rendezvous(opts, run_id, listen_socket)
    return StaticRendezvous(opts.master_addr or "127.0.0.1", int(opts.master_port or 0),
                            node_rank=opts.node_rank, nnodes=opts.max_nodes, run_id=run_id,
                            timeout=opts.rdzv_timeout, listen_socket=listen_socket)
