"""Endpoints and the rendezvous socket, bound while the launch options are checked."""
from __future__ import annotations

import ipaddress
import socket

from distengine.launch.errors import UsageError


def split_endpoint(endpoint: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port)."""
    endpoint = endpoint.strip()
    if endpoint.startswith("["):
        host, _, rest = endpoint[1:].partition("]")
        port = rest.lstrip(":")
    elif endpoint.count(":") == 1:
        host, port = endpoint.split(":")
    else:
        host, port = endpoint, ""
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"endpoint {endpoint!r}: port {port!r} is not a port number")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_store_socket(host: str, port: int, flag: str = "--master-port",
                      addr_flag: str = "--master-addr/--rdzv-endpoint") -> socket.socket:
    """Bind and listen on ``host:port`` now; the rendezvous TCPStore serves on this very socket.

    ``port=0`` picks a free port. Raises :class:`UsageError` when the port is taken or the
    address does not belong to this machine; ``flag``/``addr_flag`` name where the port and the
    address came from in that message.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"cannot resolve address {host!r} (from {addr_flag}): {exc.strerror}") from None
    # IPv4 first: the stores and gloo default to it.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    # SO_REUSEADDR ignores TIME_WAIT leftovers of a previous job but still fails on a live listener.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(512)
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
            raise UsageError(f"port {port} on {host} is already in use; choose another {flag} "
                             "or leave it out to get a free one") from None
        if exc.errno in (99, 49):  # EADDRNOTAVAIL
            raise UsageError(f"{host} (from {addr_flag}) is not an address of this machine; node 0 serves the "
                             f"rendezvous there, so start it on the machine that {addr_flag} names (a single-node "
                             "job: leave it unset, or use 127.0.0.1)") from None
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock
