"""Launch options: the command line (and ``DISTENGINE_*`` environment), checked before anything starts.

Nothing here imports torch, so ``distengine launch --help`` and every input error answer in
a fraction of a second, and a bad command never starts a process. The one resource this
module takes is the rendezvous socket: :func:`bind_store_socket` binds it here, during
validation, and the launcher hands the already-bound socket to the TCPStore later, so
"port in use" is reported up front and no other process can take the port in between.

Example::

    opts = parse_launch_args(["--cpus", "2", "train.py", "--lr", "0.1"])
    validate(opts)            # raises UsageError("...") on bad input
    opts.nproc, opts.script_args   # -> 2, ['--lr', '0.1']
"""
from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field

from distengine.distributed.env import usable_cpu_count
from distengine.launch.errors import UsageError  # noqa: F401 - imported from here by the launcher's modules
from distengine.launch.network import _is_loopback, bind_store_socket, split_endpoint  # noqa: F401

ENV_PREFIX = "DISTENGINE_"
DEFAULT_MASTER_PORT = 29500  # torchrun's default, for multi-node jobs that name no port


@dataclass
class LaunchOptions:
    """Everything the launcher needs to know, after parsing; see ``distengine launch --help``."""

    script: str
    script_args: list[str] = field(default_factory=list)
    module: bool = False
    gpus: str | None = None          # "N", "all" or "i,j,..." as given
    cpus: int | None = None
    nnodes: str = "1"                # "N" or "MIN:MAX"
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None
    # where they came from, for error messages: "--master-addr"/"--master-port" (the flag or
    # DISTENGINE_MASTER_*), or "MASTER_ADDR"/"MASTER_PORT" (the plain variables, as torch reads them)
    master_addr_source: str = "--master-addr"
    master_port_source: str = "--master-port"
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None
    rdzv_backend: str | None = None  # "static" or "c10d"; None: static unless --rdzv-endpoint
    rdzv_timeout: float = 900.0
    local_addr: str | None = None
    max_restarts: int = 0
    oversubscribe: bool = False      # allow more --cpus processes than this machine's cores
    debug: bool = False
    log_dir: str | None = None
    all_ranks_console: bool = False
    timeout: float | None = None
    grace_period: float = 30.0
    # filled in by validate()
    nproc: int = 0
    accelerator: str = "cpu"                     # "cpu" or "gpu"
    cuda_visible_devices: str | None = None      # what the ranks get, for GPU jobs
    min_nodes: int = 1
    max_nodes: int = 1

    @property
    def multi_node(self) -> bool:
        return self.max_nodes > 1

    @property
    def loopback_only(self) -> bool:
        """A job that never leaves this machine: every socket can (and does) bind to 127.0.0.1."""
        if not self.multi_node and self.master_addr is None and self.rdzv_endpoint is None:
            return True
        host = self.rendezvous_host()
        return host is not None and _is_loopback(host)

    def backend(self) -> str:
        if self.rdzv_backend:
            return self.rdzv_backend
        return "c10d" if self.rdzv_endpoint else "static"

    def rendezvous_host(self) -> str | None:
        if self.rdzv_endpoint:
            return split_endpoint(self.rdzv_endpoint, DEFAULT_MASTER_PORT)[0]
        return self.master_addr

    def run_id(self) -> str:
        # Every agent of a job must use the same id: it prefixes the rendezvous keys. Each
        # single-node job has a store of its own, so the torchrun default "none" is safe there.
        return self.rdzv_id or "none"


# ---------------------------------------------------------------------------- parsing


class _Parser(argparse.ArgumentParser):
    """argparse, but every error is one line (the input checks promise one-line errors)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _env(name: str) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return value if value not in (None, "") else None


def _env_flag(name: str) -> bool:
    value = _env(name)
    if value is None:
        return False
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"environment variable {ENV_PREFIX}{name}={value!r} is not a boolean (use 1 or 0)")


def build_parser(prog: str = "distengine launch") -> argparse.ArgumentParser:
    """The ``distengine launch`` parser; every option also reads ``DISTENGINE_<OPTION>``."""
    p = _Parser(
        prog=prog,
        description="Start one process per GPU (or N CPU processes) running SCRIPT under torch's "
                    "elastic agent. Every option can also be set with an environment variable "
                    "DISTENGINE_<OPTION>, e.g. DISTENGINE_MAX_RESTARTS=2; the command line wins.",
        epilog="Example: distengine launch --gpus 4 train.py --lr 0.1",
    )
    dev = p.add_argument_group("devices (one of)")
    dev.add_argument("--gpus", default=None, metavar="N|all|I,J",
                     help="N GPUs (the first N visible), 'all', or these GPU indices (e.g. 0,2; '2,' is GPU 2)")
    dev.add_argument("--cpus", type=int, default=None, metavar="N",
                     help="N CPU processes using gloo (no GPU is touched)")
    dev.add_argument("--oversubscribe", action="store_true", default=None,
                     help="allow --cpus N above this machine's CPU cores (also DISTENGINE_OVERSUBSCRIBE=1)")
    p.add_argument("-m", "--module", action="store_true", default=False,
                   help="run SCRIPT as a module, like 'python -m SCRIPT'")
    nodes = p.add_argument_group("multi-node (same names as torchrun)")
    nodes.add_argument("--nnodes", default=_env("NNODES") or "1", metavar="N|MIN:MAX",
                       help="number of machines (default 1); MIN:MAX needs --rdzv-backend c10d")
    nodes.add_argument("--node-rank", type=int, default=_env("NODE_RANK") or 0, metavar="R",
                       help="this machine's index")
    nodes.add_argument("--master-addr", default=_env("MASTER_ADDR"), metavar="HOST",
                       help="address of node 0; a single-node job without it binds only to 127.0.0.1")
    nodes.add_argument("--master-port", type=int, default=_env("MASTER_PORT"), metavar="PORT",
                       help="port of the rendezvous store on node 0 (default: a free port, or 29500 multi-node)")
    nodes.add_argument("--rdzv-backend", choices=("static", "c10d"), default=_env("RDZV_BACKEND"),
                       help="'static' (fixed node ranks, default) or 'c10d' (elastic, needs --rdzv-endpoint)")
    nodes.add_argument("--rdzv-endpoint", default=_env("RDZV_ENDPOINT"), metavar="HOST[:PORT]",
                       help="c10d rendezvous store; the agent on HOST hosts it")
    nodes.add_argument("--rdzv-id", default=_env("RDZV_ID"), metavar="ID", help="job id shared by all nodes (c10d)")
    nodes.add_argument("--rdzv-timeout", type=float, default=_env("RDZV_TIMEOUT") or 900.0, metavar="SECONDS",
                       help="how long nodes wait for each other at start (default 900)")
    nodes.add_argument("--local-addr", default=_env("LOCAL_ADDR"), metavar="ADDR", help="this node's address (c10d)")
    run = p.add_argument_group("supervision")
    run.add_argument("--max-restarts", type=int, default=_env("MAX_RESTARTS") or 0, metavar="K",
                     help="restart all ranks up to K times after a failure (default 0)")
    run.add_argument("--timeout", type=float, default=_env("TIMEOUT"), metavar="SECONDS",
                     help="collective timeout in the ranks (sets DISTENGINE_TIMEOUT): a hang fails after this")
    run.add_argument("--grace-period", type=float, default=_env("GRACE_PERIOD") or 30.0, metavar="SECONDS",
                     help="after forwarding SIGTERM/SIGINT, wait this long for ranks to stop (default 30)")
    run.add_argument("--debug", action="store_true", default=None,
                     help="run SCRIPT once, in this process, with anomaly detection and a few batches")
    out = p.add_argument_group("output")
    out.add_argument("--log-dir", default=_env("LOG_DIR"), metavar="DIR",
                     help="also write each rank's stdout+stderr to DIR/rank_K.log")
    out.add_argument("--all-ranks-console", action="store_true", default=None,
                     help="show every rank on the console, prefixed '[rank K]' (default: rank 0 only)")
    p.add_argument("script", metavar="SCRIPT", help="training script (or module with -m)")
    p.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="passed to SCRIPT untouched")
    return p


def _plain_master_env(addr: str | None, port: int | None) -> tuple[str | None, str, int | None, str]:
    """``MASTER_ADDR``/``MASTER_PORT`` from the environment, below the flags and DISTENGINE_*.

    A value someone exported (a cluster's job script, a notebook) is honoured, as torch's own
    ``env://`` reads it, instead of being replaced in silence; a port that is not one is refused.
    """
    addr_source, port_source = "--master-addr", "--master-port"
    if addr is None and os.environ.get("MASTER_ADDR", "").strip():
        addr, addr_source = os.environ["MASTER_ADDR"].strip(), "MASTER_ADDR"
    raw = os.environ.get("MASTER_PORT", "").strip()
    if port is None and raw:
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise UsageError(f"MASTER_PORT={raw!r} in the environment is not a port number (1-65535); "
                             "set it to a free port, or unset it to let the launcher pick one")
        port, port_source = int(raw), "MASTER_PORT"
    return addr, addr_source, port, port_source


def parse_launch_args(argv: list[str], prog: str = "distengine launch") -> LaunchOptions:
    """Parse ``distengine launch`` arguments (without the ``launch`` word) into options."""
    ns = build_parser(prog).parse_args(argv)
    master_addr, addr_source, master_port, port_source = _plain_master_env(ns.master_addr, ns.master_port)
    gpus, cpus = ns.gpus, ns.cpus
    if gpus is None and cpus is None:  # the environment only fills in when the command line is silent
        gpus, env_cpus = _env("GPUS"), _env("CPUS")
        if env_cpus is not None:
            try:
                cpus = int(env_cpus)
            except ValueError:
                raise UsageError(f"{ENV_PREFIX}CPUS={env_cpus!r} is not an integer") from None
    return LaunchOptions(
        script=ns.script, script_args=list(ns.script_args), module=ns.module or _env_flag("MODULE"),
        gpus=gpus, cpus=cpus, nnodes=str(ns.nnodes), node_rank=int(ns.node_rank),
        master_addr=master_addr, master_port=master_port, master_addr_source=addr_source,
        master_port_source=port_source, rdzv_endpoint=ns.rdzv_endpoint,
        rdzv_id=ns.rdzv_id, rdzv_backend=ns.rdzv_backend, rdzv_timeout=float(ns.rdzv_timeout),
        local_addr=ns.local_addr, max_restarts=int(ns.max_restarts),
        oversubscribe=ns.oversubscribe if ns.oversubscribe is not None else _env_flag("OVERSUBSCRIBE"),
        debug=ns.debug if ns.debug is not None else _env_flag("DEBUG"),
        log_dir=ns.log_dir, timeout=ns.timeout, grace_period=float(ns.grace_period),
        all_ranks_console=(ns.all_ranks_console if ns.all_ranks_console is not None
                           else _env_flag("ALL_RANKS_CONSOLE")),
    )


# ---------------------------------------------------------------------------- devices


def physical_gpu_count() -> int:
    """GPUs on this machine, WITHOUT creating a CUDA context (NVML, then /proc; 0 if neither)."""
    try:
        import pynvml  # nvidia-ml-py: talks to the driver, not to the CUDA runtime

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no library, no driver or no permission all mean "unknown"
        pass
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def visible_gpus(environ: dict | None = None, physical: int | None = None) -> list[str]:
    """The GPU identifiers this launcher may hand out, in CUDA order.

    With ``CUDA_VISIBLE_DEVICES`` set, its entries (cut at the first invalid one, as CUDA
    does); otherwise ``0 .. physical-1``. ``--gpus`` indices are positions in this list.
    """
    env = os.environ if environ is None else environ
    count = physical_gpu_count() if physical is None else physical
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is None:
        return [str(i) for i in range(count)]
    out: list[str] = []
    for entry in (e.strip() for e in cvd.split(",")):
        if not entry:
            break
        if entry.lstrip("-").isdigit():
            if int(entry) < 0 or int(entry) >= count or entry in out:
                break
        out.append(entry)
    return out


def _select_gpus(spec: str, visible: list[str]) -> list[str]:
    where = (f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}"
             if "CUDA_VISIBLE_DEVICES" in os.environ else "visible")
    if spec == "all":
        if not visible:
            raise UsageError(f"--gpus all: this machine has no GPU ({where}); use --cpus N for CPU processes")
        return list(visible)
    if "," not in spec:
        try:
            n = int(spec)
        except ValueError:
            raise UsageError(f"--gpus {spec!r} is not a count, 'all' or a list of indices like 0,2") from None
        if n < 1:
            raise UsageError(f"--gpus {n}: need at least 1 GPU (or use --cpus N)")
        if n > len(visible):
            hint = f"use --gpus {len(visible)} or fewer, or --cpus N" if visible else "use --cpus N instead"
            raise UsageError(f"--gpus {n} asks for {n} GPUs but this machine has {len(visible)} {where}; {hint}")
        return visible[:n]
    try:
        ids = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--gpus {spec!r}: indices must be integers, like 0,2") from None
    if not ids or len(set(ids)) != len(ids):
        raise UsageError(f"--gpus {spec!r}: give each GPU index once, like 0,2")
    bad = [i for i in ids if i < 0 or i >= len(visible)]
    if bad:
        valid = f"indices 0..{len(visible) - 1}" if visible else "use --cpus N instead"
        raise UsageError(f"--gpus {spec}: GPU index {bad[0]} does not exist; this machine has "
                         f"{len(visible)} GPUs {where} ({valid})")
    return [visible[i] for i in ids]


# ---------------------------------------------------------------------------- validation


def _nnodes(spec: str) -> tuple[int, int]:
    try:
        lo, _, hi = spec.partition(":")
        lo_n, hi_n = int(lo), int(hi or lo)
    except ValueError:
        raise UsageError(f"--nnodes {spec!r} is not N or MIN:MAX") from None
    if lo_n < 1 or hi_n < lo_n:
        raise UsageError(f"--nnodes {spec!r}: need 1 <= MIN <= MAX")
    return lo_n, hi_n


def _check_script(opts: LaunchOptions) -> None:
    if opts.module:
        import importlib.util
        import sys

        top = opts.script.split(".")[0]
        # find_spec on the top-level name only: it does not import (and run) the package.
        sys.path.insert(0, os.getcwd())
        try:
            found = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            found = False
        finally:
            sys.path.pop(0)
        if not found:
            raise UsageError(f"module {opts.script!r} not found (is its package on PYTHONPATH?)")
        return
    if not os.path.exists(opts.script):
        raise UsageError(f"script {opts.script!r} does not exist")
    if not os.path.isfile(opts.script):
        raise UsageError(f"script {opts.script!r} is not a file")


def validate(opts: LaunchOptions) -> socket.socket | None:
    """Check every option; fill in ``nproc``, ``accelerator``, node counts.

    Returns the bound rendezvous socket when this node hosts the store (``None`` otherwise).
    Raises :class:`UsageError` before anything is started.
    """
    _check_script(opts)
    if opts.gpus is not None and opts.cpus is not None:
        raise UsageError("give either --gpus or --cpus, not both")
    if opts.cpus is not None:
        if opts.cpus < 1:
            raise UsageError(f"--cpus {opts.cpus}: need at least 1 process")
        cores = usable_cpu_count()
        if opts.cpus > cores and not opts.oversubscribe:
            raise UsageError(f"--cpus {opts.cpus} asks for {opts.cpus} processes but this machine gives this job "
                             f"{cores} CPU core(s); use --cpus {cores} or fewer, or pass --oversubscribe "
                             "(or DISTENGINE_OVERSUBSCRIBE=1) to run more processes than cores")
        opts.nproc, opts.accelerator = opts.cpus, "cpu"
    else:
        visible = visible_gpus()
        if opts.gpus is None:  # neither flag: all GPUs if there are any, else one CPU process
            opts.gpus = "all" if visible else None
        if opts.gpus is None:
            opts.nproc, opts.accelerator = 1, "cpu"
        else:
            chosen = _select_gpus(opts.gpus.strip(), visible)
            opts.nproc, opts.accelerator = len(chosen), "gpu"
            opts.cuda_visible_devices = ",".join(chosen)
    opts.min_nodes, opts.max_nodes = _nnodes(opts.nnodes)
    if opts.max_restarts < 0:
        raise UsageError(f"--max-restarts {opts.max_restarts}: must be 0 or more")
    if opts.timeout is not None and opts.timeout <= 0:
        raise UsageError(f"--timeout {opts.timeout:g}: must be a positive number of seconds")
    if opts.grace_period < 0:
        raise UsageError(f"--grace-period {opts.grace_period:g}: must be 0 or more")
    if opts.log_dir and os.path.exists(opts.log_dir) and not os.path.isdir(opts.log_dir):
        raise UsageError(f"--log-dir {opts.log_dir!r} exists and is not a directory")
    if opts.master_port is not None and not 0 <= opts.master_port < 65536:
        raise UsageError(f"--master-port {opts.master_port} is not a port number")
    if opts.debug:
        if opts.multi_node:
            raise UsageError("--debug runs one process on this machine; drop --nnodes")
        return None
    backend = opts.backend()
    if backend == "static":
        return _validate_static(opts)
    return _validate_c10d(opts)


def _validate_static(opts: LaunchOptions) -> socket.socket | None:
    if opts.min_nodes != opts.max_nodes:
        raise UsageError(f"--nnodes {opts.nnodes}: a range needs --rdzv-backend c10d and --rdzv-endpoint")
    if not 0 <= opts.node_rank < opts.max_nodes:
        raise UsageError(f"--node-rank {opts.node_rank} must be in 0..{opts.max_nodes - 1}")
    if opts.rdzv_endpoint and not opts.master_addr:  # torchrun accepts the store address here too
        opts.master_addr, opts.master_port = split_endpoint(opts.rdzv_endpoint, DEFAULT_MASTER_PORT)
    if opts.multi_node and not opts.master_addr:
        raise UsageError("a multi-node job needs --master-addr (the address of node 0)")
    if opts.node_rank != 0:
        if opts.master_port is None:
            opts.master_port = DEFAULT_MASTER_PORT
        return None
    host = opts.master_addr or "127.0.0.1"
    port = opts.master_port if opts.master_port is not None else (
        DEFAULT_MASTER_PORT if opts.multi_node else 0)
    sock = bind_store_socket(host, port, flag=opts.master_port_source, addr_flag=opts.master_addr_source)
    opts.master_addr, opts.master_port = host, sock.getsockname()[1]
    return sock


def _validate_c10d(opts: LaunchOptions) -> socket.socket | None:
    addr_flag = "--rdzv-endpoint"
    if not opts.rdzv_endpoint:
        if not opts.master_addr:
            raise UsageError("--rdzv-backend c10d needs --rdzv-endpoint HOST:PORT")
        opts.rdzv_endpoint = f"{opts.master_addr}:{opts.master_port or DEFAULT_MASTER_PORT}"
        addr_flag = opts.master_addr_source
    host, port = split_endpoint(opts.rdzv_endpoint, DEFAULT_MASTER_PORT)
    if opts.max_nodes > 1 and not opts.rdzv_id:
        raise UsageError("a multi-node c10d job needs --rdzv-id (the same on every node)")
    # The first agent that can bind the endpoint hosts the store; the others (other machines,
    # or other agents on this one) connect to it. Only a bad address is an error here, and an
    # address of another machine when there is no other machine (a single-node job).
    try:
        return bind_store_socket(host, port, flag="--rdzv-endpoint port", addr_flag=addr_flag)
    except UsageError as exc:
        if "already in use" in str(exc) or ("not an address of this machine" in str(exc) and opts.multi_node):
            return None
        raise


def rank_environment(opts: LaunchOptions, environ: dict | None = None) -> dict[str, str]:
    """Extra environment every rank gets (on top of what the elastic agent sets).

    User settings already in the environment win over the launcher's defaults.
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    # The Trainer follows this over its own guess: with --cpus it uses gloo on CPU even on a
    # machine that has GPUs.
    out["DISTENGINE_ACCELERATOR"] = opts.accelerator
    # The rank entry point (launch/rank.py) dies with this process: see _die_with_launcher there.
    out["DISTENGINE_LAUNCHER_PID"] = str(os.getpid())
    if opts.cuda_visible_devices is not None:
        out["CUDA_VISIBLE_DEVICES"] = opts.cuda_visible_devices
    if opts.timeout is not None:
        out["DISTENGINE_TIMEOUT"] = f"{opts.timeout:g}"
    defaults = {
        # A rank the launcher tears down gets SIGABRT first: with this, Python writes every
        # thread's stack to the rank's log before dying, which is what a hang report needs.
        "PYTHONFAULTHANDLER": "1",
        # N processes each using every core is slower than one thread each (torchrun does the same).
        "OMP_NUM_THREADS": str(max(1, usable_cpu_count() // max(1, opts.nproc))),
    }
    if opts.loopback_only:
        # Keep gloo's and NCCL's own listening sockets on the loopback interface too.
        lo = loopback_interface()
        defaults.update(GLOO_SOCKET_IFNAME=lo, NCCL_SOCKET_IFNAME=lo)
    for key, value in defaults.items():
        if key not in env:
            out[key] = value
    return out


def loopback_interface() -> str:
    """Name of the interface holding 127.0.0.1 ("lo" on Linux)."""
    try:
        import psutil

        for name, addrs in psutil.net_if_addrs().items():
            if any(a.family == socket.AF_INET and a.address.startswith("127.") for a in addrs):
                return name
    except Exception:  # noqa: BLE001 - fall back to the usual name
        pass
    return "lo"
