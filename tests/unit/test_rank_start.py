"""tests/helpers.run_ranks forks ranks from a fork server; it must survive that server being gone."""
import os
import signal
import time
from multiprocessing import forkserver

from tests.helpers import run_ranks


def _times_ten(rank):
    return rank * 10


def test_run_ranks_starts_a_new_fork_server_when_the_old_one_was_reaped_or_died():
    assert run_ranks(_times_ten, 2) == [0, 10]
    pid = forkserver._forkserver._forkserver_pid
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)  # reaped by someone else in this process (as a library may do)
    assert run_ranks(_times_ten, 2) == [0, 10]
    second = forkserver._forkserver._forkserver_pid
    assert second != pid
    os.kill(second, signal.SIGKILL)  # died, not reaped yet
    time.sleep(0.2)
    assert run_ranks(_times_ten, 2) == [0, 10]
