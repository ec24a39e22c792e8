"""A rank forks DataLoader workers safely while its process-group threads call into Python.

On CPython before 3.10.15 / 3.11.10 a child forked while another thread holds the runtime lock
deadlocks at birth (gh-112275); torch's gloo and NCCL threads take that lock without the GIL
when they drop a tensor after a collective, so a 2-rank job with loader workers hung now and
then (a DataLoader worker stuck in ``PyOS_AfterFork_Child``, its rank waiting for a batch).
distengine.distributed.forksafe installs a child handler that gives the lock a fresh one.
These tests hold the lock in a real thread and fork a real child.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from distengine.distributed import forksafe, setup

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "fork_while_locked.py")

needs_layout = pytest.mark.skipif(forksafe.head_lock_slot() is None,
                                  reason="this Python's runtime lock is not where 3.10/3.11 keep it")


def _run(mode: str) -> list[str]:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, SCRIPT, mode], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


def test_affected_versions():
    assert forksafe.affected((3, 11, 7), "cpython") and forksafe.affected((3, 10, 12), "cpython")
    assert not forksafe.affected((3, 11, 10), "cpython") and not forksafe.affected((3, 12, 1), "cpython")
    assert not forksafe.affected((3, 10, 15), "cpython") and not forksafe.affected((3, 11, 7), "pypy")


@needs_layout
def test_a_child_forked_while_the_runtime_lock_is_held_starts_with_the_handler():
    lines = _run("install")
    assert lines[0] == f"installed: {forksafe.affected()}"
    assert lines[1] == "children: exited 7"
    if forksafe.affected():
        assert lines[2] == "sub ok [9]"  # subprocess's fork path and multiprocessing still work


@needs_layout
@pytest.mark.skipif(not forksafe.affected(), reason="this CPython re-initialises the lock itself")
def test_without_the_handler_the_child_hangs_on_this_python():
    # the bug the handler exists for, shown on this interpreter (it fails if CPython fixed it)
    assert _run("plain") == ["installed: False", "children: hung"]


def test_distributed_setup_installs_it():
    made = setup.init_single_process_group(torch.device("cpu"), 30)
    try:
        assert (forksafe._handler is not None) == (forksafe.affected() and forksafe.head_lock_slot() is not None)
    finally:
        if made:
            setup.destroy_single_process_group()
