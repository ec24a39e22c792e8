"""A preloaded process that forks test programs, so each does not pay for ``import torch``.

A Python process that imports torch spends about 1.3 CPU-seconds on it here, and another 1.2
on ``torch._dynamo``, which the first ``torch.optim.Optimizer`` imports; a corpus script of the
conformance harness then trains for a fraction of a second. The harness's distengine side runs
each script (one process, and each rank of a 2-rank job) as a child forked from a *zygote*: a
process started once per pytest process that imported both and then waits for requests. A
child gets what ``python -W ignore SCRIPT`` started in a fresh process would get: the run's
environment (it replaces the zygote's, ``os.environ`` and the C environment), its working
directory, ``sys.argv``, ``sys.path[0]`` (the script's folder), ``__main__``, stdin from
/dev/null, stdout and stderr into the run's log, and the normal interpreter exit (``atexit``,
flushing). A rank runs through ``distengine.launch.rank`` as under the launcher. The FSDP,
model-parallel and exact-resume tests start their ranks the same way (``tests.helpers.start_rank``).

The one difference a program can see: the modules the zygote loaded are already imported
(``sys.modules``; the warning filters their import adds, a sympy one, come before those the
program adds until then, instead of after). torch's default generator, ``random`` and numpy's
global generator are seeded anew from the OS in each child, as a fresh process seeds them.

What a fork cannot give a child is what the interpreter reads once at start-up, so a zygote
is started with those fixed: ``PYTHONHASHSEED``, ``OMP_NUM_THREADS`` (libgomp reads it when
torch loads it) and ``PYTHONPATH`` are one zygote's for all its runs, and a request whose
environment sets them otherwise is refused (a pytest process keeps a zygote for each set, and
for each rank ``slot``: without a fixed ``PYTHONHASHSEED`` each draws its own hash seed, so
the ranks of a job hash strings differently, as fresh processes do). The zygote forks only
while it has a single thread (checked from /proc before every fork).
``DISTENGINE_TEST_START=spawn`` turns it off: every run is a fresh process again.

Protocol (one JSON object a line): the zygote writes ``{"threads": N}`` once it has loaded; then
``{"op": "run", ...}`` -> ``{"pid": P}`` and ``{"op": "poll", "pid": P}`` -> ``{"code": C}``
(``None`` while running; ``-SIGNUM`` for a signal, as ``subprocess`` reports it).
"""
from __future__ import annotations

import json
import os
import sys

#: read at interpreter start-up, so a child cannot change them: fixed per zygote
STARTUP_ENV = ("PYTHONHASHSEED", "OMP_NUM_THREADS", "PYTHONPATH")


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _serve() -> dict:
    """The zygote's loop; returns only in a forked child, with the request it is to run."""
    import torch  # noqa: F401 - the point of the zygote
    import torch._dynamo  # noqa: F401

    def reply(obj) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    done: dict[int, int] = {}
    reply({"threads": _threads()})
    while True:
        line = sys.stdin.readline()
        if not line:
            os._exit(0)  # the pytest process is gone
        req = json.loads(line)
        if req["op"] == "run":
            if _threads() != 1:
                reply({"error": f"the zygote has {_threads()} threads; it forks only with one"})
                continue
            pid = os.fork()
            if pid == 0:
                return req
            reply({"pid": pid})
        elif req["op"] == "poll":
            pid = req["pid"]
            if pid not in done:
                got, status = os.waitpid(pid, os.WNOHANG)
                if got:
                    done[pid] = os.waitstatus_to_exitcode(status)
            reply({"code": done.get(pid)})


def _become(req: dict) -> None:
    """In the child: take on the run's process state, then run its program."""
    import random

    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    log = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    if os.environ.get("PYTHONFAULTHANDLER"):
        import faulthandler

        faulthandler.enable()
    # a fresh process seeds these from the OS; a forked one would share the zygote's state
    random.seed()
    import torch

    torch.seed()
    if "numpy.random" in sys.modules:
        sys.modules["numpy.random"].seed()
    target = req["target"]
    if req["mode"] == "rank":  # as `python -m distengine.launch.rank TARGET`
        from distengine.launch import rank

        sys.argv = [rank.__file__, target, *req["args"]]
        rank.main([target, *req["args"]])
    else:  # as `python TARGET`
        import runpy

        sys.argv = [target, *req["args"]]
        sys.path[0] = os.path.dirname(os.path.realpath(target))
        runpy.run_path(target, run_name="__main__")


class Forked:
    """A child of the zygote, with the part of ``subprocess.Popen`` the harness uses."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote, self.pid, self.returncode = zygote, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.zygote.ask({"op": "poll", "pid": self.pid})["code"]
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> int:
        import subprocess
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked pid {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode


class Zygote:
    def __init__(self, python: str, env: dict[str, str]) -> None:
        import random
        import subprocess

        self.env = env
        self.random_hash = "PYTHONHASHSEED" not in env
        if self.random_hash:  # its children take runs that leave the hash seed to chance: draw one
            env = {**env, "PYTHONHASHSEED": str(random.randint(1, 2**32 - 1))}
        self.proc = subprocess.Popen([python, "-W", "ignore", __file__], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
                                     cwd="/")
        hello = self.ask(None)
        if hello.get("threads") != 1:
            raise RuntimeError(f"the zygote started {hello.get('threads')} threads while loading")

    def ask(self, req: dict | None) -> dict:
        if req is not None:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the zygote exited ({self.proc.poll()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def alive(self) -> bool:
        return self.proc.poll() is None

    def start(self, target: str, cwd: str, env: dict[str, str], log: str, mode: str = "script",
              args: list[str] = ()) -> Forked:
        wrong = [k for k in STARTUP_ENV if env.get(k) != self.env.get(k)
                 and not (k == "PYTHONHASHSEED" and self.random_hash and k not in env)]
        if wrong:
            raise ValueError(f"a forked run cannot change {wrong}; start a zygote with them")
        pid = self.ask({"op": "run", "mode": mode, "target": target, "args": list(args), "cwd": cwd, "env": env,
                        "log": log})["pid"]
        return Forked(self, pid)


_ZYGOTES: dict[tuple, Zygote] = {}


def enabled() -> bool:
    return os.environ.get("DISTENGINE_TEST_START", "zygote") != "spawn" and sys.platform.startswith("linux")


def zygote(python: str, env: dict[str, str], slot: int = 0) -> Zygote:
    """The zygote of this pytest process for ``python`` and the start-up part of ``env``.

    Without ``PYTHONHASHSEED`` in ``env`` a fresh process draws its own hash seed; a zygote draws
    one when it starts, which its children share. Pass each rank of a job its own ``slot`` (the
    rank) so that, as under a launcher, the ranks of one job hash strings differently."""
    key = (python, slot if "PYTHONHASHSEED" not in env else 0, *(env.get(k) for k in STARTUP_ENV))
    z = _ZYGOTES.get(key)
    if z is None or not z.alive():
        z = _ZYGOTES[key] = Zygote(python, env)
    return z


if __name__ == "__main__":
    _become(_serve())
