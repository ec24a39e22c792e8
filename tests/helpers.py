"""Test helpers: free ports, and running a function on N real gloo ranks.

``run_ranks(fn, 2, *args)`` starts 2 fresh processes, sets the environment a
launcher would set (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free MASTER_PORT,
a short DISTENGINE_TIMEOUT), limits each to one thread, calls ``fn(rank, *args)`` and
returns the per-rank return values. A rank that raises fails the test with its traceback;
a job that runs past ``timeout`` is killed and fails the test.

The ranks are forked from multiprocessing's fork server, which imports torch once per pytest
process (``set_forkserver_preload``, with ``torch._dynamo``, which the first optimizer imports),
instead of each rank importing them (about 2.5 s of CPU per rank here). A rank gets what a
spawned one would: the test's environment as it is at the call (``os.environ`` is sent along
and replaces the server's), its working directory and
``sys.path`` (multiprocessing's own preparation data), and no state of the pytest process.
``DISTENGINE_TEST_START=spawn`` goes back to plain spawn.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import socket
import subprocess
import sys
import traceback
from typing import Any, Callable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_rank(cmd: list[str], env: dict[str, str], log: str, rank: int):
    """Start one rank, ``cmd`` = ``[python, "-m", "distengine.launch.rank", SCRIPT, *ARGS]`` (or a
    one-process job, ``[python, SCRIPT, *ARGS]``), with ``env``, its output into the file
    ``log``: forked from this process's zygote for that rank
    (tests/zygote.py: torch already imported, the rank's own hash seed when ``env`` fixes none)
    when ``python`` is this interpreter, otherwise (or with DISTENGINE_TEST_START=spawn) as a
    fresh process. Returns a ``subprocess.Popen`` or its stand-in (poll, wait, kill, pid)."""
    from tests import zygote

    open(log, "w").close()
    if zygote.enabled() and cmd[:3] == [sys.executable, "-m", "distengine.launch.rank"]:
        return zygote.zygote(sys.executable, env, slot=rank).start(cmd[3], os.getcwd(), env, log, mode="rank",
                                                                   args=cmd[4:])
    if zygote.enabled() and cmd[:1] == [sys.executable] and cmd[1:2] and cmd[1].endswith(".py"):  # python SCRIPT
        return zygote.zygote(sys.executable, env, slot=rank).start(cmd[1], os.getcwd(), env, log, args=cmd[2:])
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_rank(proc, timeout: float, log: str) -> str:
    """Wait for a process of ``start_rank``; its output. Past ``timeout``: TimeoutExpired."""
    proc.wait(timeout=timeout)
    with open(log) as f:
        return f.read()


# torch._dynamo: the first optimizer a rank builds imports it (about 1.2 s of CPU more)
_PRELOAD = ["torch", "torch.distributed", "torch._dynamo"]


def _context():
    method = os.environ.get("DISTENGINE_TEST_START", "forkserver")
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(_PRELOAD)  # read when the server starts (the first call)
        _forget_a_reaped_fork_server()
    return ctx


def _forget_a_reaped_fork_server() -> None:
    """Start a new fork server when the old one is gone and already reaped.

    multiprocessing restarts a fork server that died, but it finds out with
    ``waitpid(pid, WNOHANG)``, which fails with ChildProcessError when something else in this
    process already reaped it (seen in the full suite after in-process wandb/mlflow runs: every later
    ``run_ranks`` failed). Then its record of the old server is cleared here, so it starts a new one.
    """
    from multiprocessing import forkserver

    server = forkserver._forkserver
    pid = server._forkserver_pid
    if pid is None:
        return
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        done = pid  # reaped by someone else
    if not done:
        return  # alive
    if server._forkserver_alive_fd is not None:
        try:
            os.close(server._forkserver_alive_fd)
        except OSError:
            pass
    server._forkserver_address = server._forkserver_alive_fd = server._forkserver_pid = None


def _rank_main(fn, rank, world, port, env, args, queue):  # runs in the child
    os.environ.clear()  # the environment of the call, not the fork server's from its start
    os.environ.update(env)
    os.environ.update({
        "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world), "GROUP_RANK": "0",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
    })
    os.environ.setdefault("DISTENGINE_TIMEOUT", "30")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        # plain pickle copies tensors by value; the queue's own pickler would share them
        # through memory that vanishes when this process exits
        queue.put((rank, "ok", pickle.dumps(fn(rank, *args))))
    except BaseException as exc:  # noqa: BLE001 - report everything to the parent
        queue.put((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world: int = 2, *args: Any, timeout: float = 120,
              env: dict[str, str] | None = None) -> list[Any]:
    ctx = _context()
    queue = ctx.Queue()
    port = free_port()
    full_env = {**os.environ, **(env or {})}
    procs = [ctx.Process(target=_rank_main, args=(fn, r, world, port, full_env, args, queue))
             for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    import queue as queue_mod
    import time

    deadline = time.monotonic() + timeout
    try:
        while len(results) + len(errors) < world:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"ranks did not finish within {timeout}s")
            try:
                rank, status, value = queue.get(timeout=min(remaining, 1.0))
            except queue_mod.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and len(results) + len(errors) < world:
                    # give the queue a moment to deliver an error report before failing
                    try:
                        rank, status, value = queue.get(timeout=5)
                    except queue_mod.Empty:
                        raise AssertionError(
                            f"rank process died with exit code {dead[0].exitcode}") from None
                else:
                    continue
            if status == "ok":
                results[rank] = pickle.loads(value)
            else:
                errors.append(f"rank {rank}: {value}")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[r] for r in range(world)]
