"""Fork while another thread holds the interpreter's runtime lock (what a process-group thread
does for a moment when it creates a Python thread state to drop a tensor).

    python fork_while_locked.py install|plain

Prints ``installed: True|False``, then ``children: exited 7`` or ``children: ...hung`` for 50
forks made while the lock is held and another thread keeps asking for the GIL; with ``install``
it also runs a subprocess through the fork path (a ``preexec_fn``) and a multiprocessing fork
worker, to show the handler leaves other forks working.
"""
import ctypes
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time

from distengine.distributed import forksafe

FORKS = 50  # each child is forked while the lock is held and a thread waits for the GIL


def _square(x):
    return x * x


def main() -> None:
    installed = forksafe.install() if sys.argv[1] == "install" else False
    print(f"installed: {installed}", flush=True)
    slot = forksafe.head_lock_slot()
    lib = ctypes.CDLL(None)  # a CDLL call releases the GIL while it waits for the lock
    lib.PyThread_acquire_lock.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.PyThread_release_lock.argtypes = [ctypes.c_void_p]
    held, done = threading.Event(), threading.Event()

    def holder() -> None:
        lock = ctypes.c_void_p.from_address(slot).value
        lib.PyThread_acquire_lock(lock, 1)
        held.set()
        done.wait()
        lib.PyThread_release_lock(lock)

    stop = threading.Event()

    def spinner() -> None:  # runs bytecode, so it keeps asking the main thread for the GIL
        while not stop.is_set():
            sum(range(100))

    sys.setswitchinterval(1e-5)
    spin = threading.Thread(target=spinner, daemon=True)  # first: a thread starts under the lock
    spin.start()
    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    held.wait()
    results = []
    for _ in range(FORKS):
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                results.append(f"exited {os.waitstatus_to_exitcode(status)}")
                break
            time.sleep(0.01)
        else:
            results.append("hung")
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
    done.set()
    thread.join()  # the lock is free again before the spinner ends (a thread ends under it)
    stop.set()
    spin.join()
    print("children: " + ", ".join(sorted(set(results))), flush=True)
    if installed:
        out = subprocess.run([sys.executable, "-c", "print('sub ok')"], preexec_fn=lambda: None,
                             capture_output=True, text=True, timeout=60).stdout.strip()
        with mp.get_context("fork").Pool(1) as pool:
            print(out, pool.map(_square, [3]), flush=True)


if __name__ == "__main__":
    main()
