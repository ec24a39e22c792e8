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
import socket

import torch.distributed as dist
from distengine.launch.config import DEFAULT_MASTER_PORT, LaunchOptions, bind_store_socket, split_endpoint
from torch.distributed.elastic.rendezvous import RendezvousHandler, RendezvousInfo, RendezvousStoreInfo
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import DynamicRendezvousHandler, RendezvousTimeout


def _store(host: str, port: int, *, world_size: int | None, listen_socket: socket.socket | None,
           timeout: float, wait_for_workers: bool = True) -> dist.TCPStore:
    kwargs = {}
    if listen_socket is not None:
        # The store takes ownership of the descriptor (and closes it when it shuts down).
        kwargs["master_listen_fd"] = listen_socket.detach()
    return dist.TCPStore(host, port, world_size, listen_socket is not None,
                         datetime.timedelta(seconds=timeout), wait_for_workers=wait_for_workers,
                         multi_tenant=False, **kwargs)


class StaticRendezvous(RendezvousHandler):
    """Fixed membership: ``nnodes`` agents, node 0 serving the store on ``listen_socket``."""

    def __init__(self, host: str, port: int, *, node_rank: int, nnodes: int, run_id: str,
                 timeout: float, listen_socket: socket.socket | None) -> None:
        if (node_rank == 0) != (listen_socket is not None):
            raise ValueError("node 0, and only node 0, serves the store on a bound socket")
        self._host, self._port = host, port
        self._node_rank, self._nnodes = node_rank, nnodes
        self._run_id, self._timeout = run_id, timeout
        self._listen_socket = listen_socket
        self._store: dist.TCPStore | None = None
        self._worker_store: dist.TCPStore | None = None
        self._round = 0

    def get_backend(self) -> str:
        return "static"

    @property
    def use_agent_store(self) -> bool:
        # The ranks connect to this store as clients (TORCHELASTIC_USE_AGENT_STORE): no rank
        # opens a listening store socket of its own.
        return True

    def next_rendezvous(self) -> RendezvousInfo:
        if self._store is None:
            # On node 0 this waits until all nnodes agents have connected (or the timeout).
            self._store = _store(self._host, self._port, world_size=self._nnodes,
                                 listen_socket=self._listen_socket, timeout=self._timeout)
            self._listen_socket = None
        host, port = self._worker_store_address()
        self._round += 1
        return RendezvousInfo(dist.PrefixStore(self._run_id, self._store), self._node_rank, self._nnodes,
                              RendezvousStoreInfo(host, port))

    def _worker_store_address(self) -> tuple[str, int]:
        """Where this round's ranks find their store.

        The first round uses the agent's own store (the one port the user opened). Every
        restart gets a brand-new store: the ranks write keys without any per-attempt prefix,
        so a restarted rank reading the old store could find a dead peer's gloo address and
        wait on it until the collective timeout.
        """
        if self._round == 0:
            return self._host, self._port
        key = f"distengine/worker_store/{self._round}"
        assert self._store is not None
        if self._node_rank == 0:
            sock = bind_store_socket(self._host, 0)
            port = sock.getsockname()[1]
            # Replacing the old one shuts its server down.
            self._worker_store = _store(self._host, port, world_size=None, listen_socket=sock,
                                        timeout=self._timeout, wait_for_workers=False)
            self._store.set(key, str(port))
            return self._host, port
        return self._host, int(self._store.get(key).decode())

    def is_closed(self) -> bool:
        return False

    def set_closed(self) -> None:
        pass

    def num_nodes_waiting(self) -> int:
        return 0

    def get_run_id(self) -> str:
        return self._run_id

    def shutdown(self) -> bool:
        if self._listen_socket is not None:  # never got to serve: free the port
            self._listen_socket.close()
            self._listen_socket = None
        self._worker_store = None
        return True


class _BoundDynamicRendezvous(DynamicRendezvousHandler):
    """torch's c10d rendezvous; the ranks' store binds to this node's address only, and is new
    on every round (as in :class:`StaticRendezvous`, a restarted rank must not see old keys)."""

    def next_rendezvous(self) -> RendezvousInfo:
        # Forget the previous round's store: node rank 0 then serves a new one and publishes
        # its address under this round's key prefix.
        self._bootstrap_store_info = None
        self._shared_tcp_store_server = None
        return super().next_rendezvous()

    def _create_tcp_store_server(self, master_addr, master_port) -> dist.TCPStore:
        try:
            sock = socket.create_server((master_addr, master_port or 0), reuse_port=False)
        except OSError:
            return super()._create_tcp_store_server(master_addr, master_port)
        port = sock.getsockname()[1]
        return _store(master_addr, port, world_size=None, listen_socket=sock, timeout=300,
                      wait_for_workers=False)


def c10d_rendezvous(opts: LaunchOptions, run_id: str, listen_socket: socket.socket | None) -> RendezvousHandler:
    """An elastic (c10d) rendezvous at ``opts.rdzv_endpoint``; this agent hosts it if it holds the socket."""
    host, port = split_endpoint(opts.rdzv_endpoint or "", DEFAULT_MASTER_PORT)
    local_addr = opts.local_addr or ("127.0.0.1" if opts.loopback_only else None)
    store = _store(host, port, world_size=None, listen_socket=listen_socket, timeout=60,
                   wait_for_workers=False)
    return _BoundDynamicRendezvous.from_backend(
        run_id, store, C10dRendezvousBackend(store, run_id), opts.min_nodes, opts.max_nodes,
        local_addr=local_addr, timeout=RendezvousTimeout(join=datetime.timedelta(seconds=opts.rdzv_timeout)))


def make_rendezvous(opts: LaunchOptions, run_id: str, listen_socket: socket.socket | None) -> RendezvousHandler:
    """The rendezvous handler for validated options (``config.validate`` bound the socket)."""
    if opts.backend() == "c10d":
        return c10d_rendezvous(opts, run_id, listen_socket)
    return StaticRendezvous(opts.master_addr or "127.0.0.1", int(opts.master_port or 0),
                            node_rank=opts.node_rank, nnodes=opts.max_nodes, run_id=run_id,
                            timeout=opts.rdzv_timeout, listen_socket=listen_socket)
