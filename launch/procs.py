"""Stopping ranks and everything they started (dataloader workers included).

The elastic agent starts each rank as the leader of a new session, so every process a rank
starts (and does not move to a session of its own) carries the rank's pid as its session
id, even after the rank itself has died and its children were re-parented to init. That is
how leftovers are found here: by session id, not by walking a tree that breaks as soon as a
parent dies.

Ranks are known by pid only (torch's agent holds their ``Popen`` objects and is the one that
reaps them). They are watched with ``waitid(..., WNOWAIT)``, which reads a child's exit
status and leaves it to be reaped: reaping a rank here would make torch's ``Popen`` report
exit status 0 for a rank that failed. Until torch reaps it, an ended rank is a zombie that
keeps its pid, so signalling a rank's pid can never reach an unrelated process.

Example::

    stop_ranks(pids, signal.SIGTERM, grace=30)   # ask nicely, wait, then SIGKILL all that is left
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

# psutil is imported where it is used, not here: a job whose ranks all finish cleanly never
# needs it, so `distengine launch` starts (and the CLI answers) on a Python that lacks it.


def session_leftovers(session_ids: Iterable[int]) -> list[psutil.Process]:
    """Live processes (other than the session leaders) in the given sessions."""
    import psutil

    sids = set(session_ids)
    if not sids:
        return []
    found = []
    for proc in psutil.process_iter():
        pid = proc.pid
        if pid in sids:
            continue  # a rank itself (or a new session leader that reused a dead rank's pid)
        try:
            if os.getsid(pid) in sids:
                found.append(proc)
        except OSError:
            continue
    return found


def _descendants(pids: Iterable[int]) -> list[psutil.Process]:
    import psutil

    out = []
    for pid in pids:
        try:
            out.extend(psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            continue
    return out


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


GONE = object()  # exit_status(): the child was reaped already (by torch), its status is unknown here


def exit_status(pid: int):
    """A child's exit status without reaping it: ``None`` while it runs, else ``Popen``'s
    convention (the exit code, or ``-N`` for signal N); :data:`GONE` once it was reaped."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return GONE
    if info is None:
        return None
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return -info.si_status  # CLD_KILLED / CLD_DUMPED


def running(pid: int) -> bool:
    return exit_status(pid) is None


def abort_for_stacks(pid: int) -> None:
    """SIGABRT one rank so its fault handler writes every thread's stack to its log.

    The core-file limit of that one process is set to 0 first: a core dump of a large
    training process could take minutes, and the stack text is all that is wanted.
    """
    if not running(pid):
        return
    import psutil

    try:
        psutil.Process(pid).rlimit(psutil.RLIMIT_CORE, (0, 0))
    except (psutil.Error, OSError, AttributeError):
        pass
    _signal(pid, signal.SIGABRT)


def _wait_all(pids: Sequence[int], timeout: float) -> None:
    """Wait until every rank has ended (without reaping any), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    pending = [pid for pid in pids if running(pid)]
    while pending and time.monotonic() < deadline:
        time.sleep(0.01)
        pending = [pid for pid in pending if running(pid)]


def kill_everything(pids: Sequence[int], extra: Iterable[psutil.Process] = ()) -> None:
    """SIGKILL the ranks, every process in their sessions and ``extra``; wait for all of them."""
    import psutil

    for pid in pids:
        if running(pid):
            _signal(pid, signal.SIGKILL)
    leftovers = {p.pid: p for p in extra}
    leftovers.update({p.pid: p for p in session_leftovers(pids)})
    for p in leftovers.values():
        try:
            p.kill()
        except psutil.Error:
            pass
    _wait_all(pids, 10.0)
    _wait_gone(leftovers.values(), 5.0)


def _wait_gone(processes: Iterable[psutil.Process], timeout: float) -> None:
    """Wait until none of ``processes`` runs. Not our children, so we cannot reap them: a
    zombie waiting for its (possibly non-reaping) new parent counts as gone."""
    import psutil

    pending = list(processes)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        still = []
        for p in pending:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    still.append(p)
            except psutil.Error:
                pass
        pending = still
        if pending:
            time.sleep(0.02)


def stop_ranks(pids: Sequence[int], first_signal: int | None, grace: float) -> None:
    """Stop all ranks: ``first_signal`` (to the rank processes only), wait ``grace`` s, then kill all.

    ``first_signal`` goes to the ranks and not to their process groups: a dataloader worker
    killed by SIGTERM would make the rank's DataLoader raise before the rank could stop
    cleanly at a step boundary. ``signal.SIGABRT`` dumps each rank's stacks first.
    ``None`` skips straight to SIGKILL.
    """
    live = [pid for pid in pids if running(pid)]
    # Snapshot the trees while the ranks are alive: processes that left the rank's session
    # (setsid) are only reachable this way.
    tree = _descendants(live)
    if live and first_signal is not None:
        for pid in live:
            if first_signal == signal.SIGABRT:
                abort_for_stacks(pid)
            else:
                _signal(pid, first_signal)
        _wait_all(live, grace)
    kill_everything(pids, tree)
