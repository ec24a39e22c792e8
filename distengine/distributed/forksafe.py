"""Forking a rank safely while its process-group threads call into Python (CPython gh-112275).

A rank forks whenever a ``DataLoader`` with ``num_workers > 0`` starts its workers (every epoch
unless ``persistent_workers=True``). The run-loop threads of torch's gloo process group (and any
C++ thread that drops a tensor Python owns) finish a collective by dropping the tensors it held; when such a tensor has
a Python object, they take the GIL for a moment, and a thread that has no Python thread state
first creates one under the interpreter's runtime lock, *without* the GIL. If the main thread
forks at that instant, the child inherits the lock held, and CPython before 3.10.15 / 3.11.10
takes that lock in the child before re-initialising it (gh-112275, fixed by reordering
``PyOS_AfterFork_Child``): the DataLoader worker hangs at birth, its rank waits for a batch
forever, and the other ranks fail after the process-group timeout ("Timed out waiting ... for
recv"). Seen here with torch 2.14.1 on CPython 3.11.7 under load (between one run in ten and one
in sixty of a 2-rank job with two workers per loader).

:func:`install` applies CPython's own fix from the outside on the affected versions: a
``pthread_atfork`` child handler puts a fresh lock in the runtime lock's slot (as CPython's
``_PyRuntimeState_ReInitThreads`` does a little later in the child anyway) before
``PyOS_AfterFork_Child`` takes it. The slot is found by its neighbours (the interpreter
pointers the C API returns), and nothing is installed unless exactly one place fits. The
handler runs in the child's only thread, the one that forked and holds the GIL there; it enters
no Python bytecode (a first version that did hung in the child's eval loop, waiting to hand the
GIL to a thread the child does not have). A fork from a thread that does not hold the GIL
(``os.fork``, ``multiprocessing`` and ``subprocess`` always hold it) is not covered. Nothing is installed on
CPython versions that carry the fix, nor on other interpreters.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import os
import sys

_handler = None  # the installed callback; kept alive for the life of the process


def affected(version: tuple = tuple(sys.version_info[:3]), implementation: str = sys.implementation.name) -> bool:
    """True for the CPython releases whose forked child can deadlock on the runtime lock."""
    if implementation != "cpython":
        return False
    version = tuple(version[:3])
    return (3, 10, 0) <= version < (3, 10, 15) or (3, 11, 0) <= version < (3, 11, 10)


def head_lock_slot() -> int | None:
    """The address of the runtime lock's slot (``_PyRuntime.interpreters.mutex``), found by
    its neighbours: the slots after it hold the first and the main interpreter, which the C API
    names. None unless exactly one place in the runtime's first words fits."""
    api = ctypes.pythonapi
    try:
        base = ctypes.addressof(ctypes.c_char.in_dll(api, "_PyRuntime"))
    except ValueError:
        return None
    api.PyInterpreterState_Head.restype = ctypes.c_void_p
    api.PyInterpreterState_Main.restype = ctypes.c_void_p
    head, main = api.PyInterpreterState_Head(), api.PyInterpreterState_Main()

    def word(offset: int) -> int | None:
        return ctypes.c_void_p.from_address(base + offset).value

    fits = [off - 8 for off in range(8, 160, 8) if word(off) == head and word(off + 8) == main and word(off - 8)]
    return base + fits[0] if len(fits) == 1 else None


def _register_child_handler(handler) -> bool:
    libc = ctypes.CDLL(None)
    pointer = ctypes.cast(handler, ctypes.c_void_p)
    register = getattr(libc, "__register_atfork", None)  # glibc: pthread_atfork is a static stub
    if register is not None:
        register.argtypes = [ctypes.c_void_p] * 4
        return register(None, None, pointer, None) == 0
    atfork = getattr(libc, "pthread_atfork", None)
    if atfork is None:
        return False
    atfork.argtypes = [ctypes.c_void_p] * 3
    return atfork(None, None, pointer) == 0


def install() -> bool:
    """Install the child handler once per process (distributed setup calls it before the
    process group starts). True when it is installed; False when this Python does not need
    it or does not expose what it needs (then nothing changes)."""
    global _handler
    if _handler is not None:
        return True
    if os.name != "posix" or not affected():
        return False
    api = ctypes.pythonapi
    slot = head_lock_slot()
    reinit = getattr(api, "_PyThread_at_fork_reinit", None)
    if slot is None or reinit is None:
        return False
    reinit.argtypes = [ctypes.c_void_p]
    reinit.restype = None
    # The handler must run no Python bytecode: in the child, before PyOS_AfterFork_Child, the
    # eval loop would honour a GIL hand-over another (now absent) thread had asked for and wait
    # for it forever. A partial of the ctypes function is called entirely in C; the garbage
    # collector (which could run finalizers) is kept off across the fork.
    handler = ctypes.CFUNCTYPE(None)(functools.partial(reinit, ctypes.c_void_p(slot)))
    if not _register_child_handler(handler):
        return False
    os.register_at_fork(before=_gc_off, after_in_parent=_gc_back, after_in_child=_gc_back)
    _handler = handler
    return True


_gc_was_enabled = False


def _gc_off() -> None:
    global _gc_was_enabled
    _gc_was_enabled = gc.isenabled()
    gc.disable()


def _gc_back() -> None:
    if _gc_was_enabled:
        gc.enable()
