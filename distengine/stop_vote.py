"""``StopVote``: the ranks agree on stopping (a signal, ``should_stop``) without waiting for the
answer every step; the Trainer starts one per fit and the loop casts a vote after each step.
"""
from __future__ import annotations

import threading
import weakref
from typing import Any

import torch

from distengine.distributed import collectives

# How long StopVote.close waits for torch to free the last vote's tensor (normally microseconds).
_RELEASE_WAIT_S = 10.0


class StopVote:
    """Agree across ranks on stopping without waiting for the answer every step.

    ``step`` starts a small non-blocking all-reduce (MAX of [stop flag, signal number]) and
    returns the result of the one started at the PREVIOUS step: every rank sees the same
    answer at the same step, one step after the request, and the reduce overlaps the next
    step's work. ``sync`` is the blocking version used at epoch ends. ``close`` ends a fit:
    one vote is made per fit, and closed when its loop has stopped.
    """

    def __init__(self) -> None:
        from distengine.distributed import setup

        self.pending: tuple[Any, torch.Tensor] | None = None
        self.distributed = collectives.is_distributed()
        self.group = None
        if self.distributed and self._side_group_needed():
            # Vote over a CPU (gloo) side group: reading an NCCL result every step would make
            # the host wait for the GPU. Every rank builds it here, at the same point.
            self.group = setup.new_gloo_group()  # with the Trainer's dist_timeout

    @staticmethod
    def _side_group_needed() -> bool:
        import torch.distributed as dist

        return dist.get_backend() != "gloo"

    def _start(self, flag: bool, signum: int):
        import torch.distributed as dist

        buf = torch.tensor([float(flag), float(signum)])
        return dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=self.group, async_op=True), buf

    def _drain(self) -> tuple[bool, int]:
        if self.pending is None:
            return False, 0
        work, buf = self.pending
        self.pending = None
        work.wait()
        flag, signum = buf.tolist()
        return flag > 0, int(signum)

    def step(self, flag: bool, signum: int) -> tuple[bool, int]:
        if not self.distributed:
            return flag, signum
        result = self._drain()
        self.pending = self._start(flag, signum)
        return result

    def close(self) -> None:
        """After the fit loop stopped (every rank): finish the vote still in flight, free the side group.

        The vote started at the last step is never read. Left running, its gloo worker thread
        would finish it in its own time, and freeing the vote's tensor needs the GIL: when that
        happens during interpreter shutdown, Python ends the thread and the process aborts
        (exit 134) after a successful run. So wait for the vote, and then until the worker has
        let go of the tensor: the weak reference dies when the tensor is freed, in whichever
        thread frees it. The bound only guards against a torch that never frees it. (Any
        collective leaves such a release behind; for launched jobs launch/rank.py makes sure
        none can abort a finished process.)
        """
        import torch.distributed as dist

        if self.pending is not None:
            work, buf = self.pending
            self.pending = None
            work.wait()
            freed = threading.Event()
            ref = weakref.ref(buf, lambda _: freed.set())
            del work, buf
            freed.wait(_RELEASE_WAIT_S)
            del ref
        if self.group is not None:  # created by this vote, used by nobody else
            dist.destroy_process_group(self.group)
            self.group = None

    def sync(self, flag: bool, signum: int) -> tuple[bool, int]:
        if not self.distributed:
            return flag, signum
        prev_flag, prev_sig = self._drain()
        work, buf = self._start(flag or prev_flag, max(signum, prev_sig))
        work.wait()
        f, s = buf.tolist()
        return f > 0, int(s)
