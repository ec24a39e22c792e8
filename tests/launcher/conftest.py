"""Fixtures for the launcher tests."""
from __future__ import annotations

import pytest

from tests.launcher.util import kill_session, start


@pytest.fixture
def launched():
    """Start launchers through this; whatever a failing test leaves behind is killed."""
    procs = []

    def _start(*args, **kwargs):
        proc = start(*args, **kwargs)
        procs.append(proc)
        return proc

    yield _start
    for proc in procs:
        if proc.poll() is None:
            kill_session(proc)
        proc.communicate()
