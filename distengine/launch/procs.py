"""Stopping ranks and everything they started (dataloader workers included).

The elastic agent starts each rank as the leader of a new session, so every process a rank
starts (and does not move to a session of its own) carries the rank's pid as its session
id, even after the rank itself has died. That is how most leftovers are found here: by
session id, not by walking a tree that breaks as soon as a parent dies.

A process that left the rank's session (``start_new_session=True``, ``setsid``, a daemon's
double fork) is found another way: the launcher is a *child subreaper*
(:func:`become_subreaper`, Linux), so when its parent dies (a rank that failed, or a helper that
forked and exited) the kernel makes it a child of the launcher instead of init. Every child of
the launcher that is not a rank, with all its descendants, is therefore something a rank
started, and is killed (and reaped) with the ranks.

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
import sys
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


def become_subreaper() -> bool:
    """Make this process the one that inherits orphaned descendants (``PR_SET_CHILD_SUBREAPER``),
    so processes a rank started in a session of their own stay findable after the rank died.
    Linux only; returns whether it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    pr_set_child_subreaper = 36  # <linux/prctl.h>
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def adopted_leftovers(rank_pids: Iterable[int]) -> list[psutil.Process]:
    """This process's children that are not ranks (orphans the ranks left, re-parented here by
    :func:`become_subreaper`), with all their descendants."""
    import psutil

    ranks = set(rank_pids)
    found = []
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return []
    for child in children:
        if child.pid in ranks:
            continue
        found.append(child)
        try:
            found.extend(child.children(recursive=True))
        except psutil.Error:
            pass
    return found


def _reap(processes: Iterable[psutil.Process]) -> None:
    """Collect the exit status of those of ``processes`` that are this process's (adopted)
    children, so no zombie is left; never a rank (torch's agent reaps those)."""
    for p in processes:
        try:
            os.waitpid(p.pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            pass


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
    """SIGKILL the ranks, every process in their sessions, every process they left to this
    launcher (:func:`adopted_leftovers`) and ``extra``; wait for all of them."""
    import psutil

    for pid in pids:
        if running(pid):
            _signal(pid, signal.SIGKILL)
    leftovers = {p.pid: p for p in extra}
    leftovers.update({p.pid: p for p in session_leftovers(pids)})
    adopted = adopted_leftovers(pids)
    leftovers.update({p.pid: p for p in adopted})
    for p in leftovers.values():
        try:
            p.kill()
        except psutil.Error:
            pass
    _wait_all(pids, 10.0)
    _wait_gone(leftovers.values(), 5.0)
    _reap(p for p in adopted if p.pid not in pids)


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
