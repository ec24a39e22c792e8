"""Stop signals during ``fit``: SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 only set a flag
(``TrainerStatus.stop_signal``); at the next step boundary all ranks agree (the stop vote),
save one checkpoint and exit with ``128 + signal``. In the other calls a Ctrl-C interrupts at
once and is only noted. A KeyboardInterrupt with no signal noted was raised by user code: the
run ends it as Lightning does (``on_exception``, teardown, ``SystemExit(1)``; stage_run.py)."""
from __future__ import annotations

import signal
import sys
import time
from typing import Any

from distengine.state import TrainerStatus

_STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR1", None),
                                  getattr(signal, "SIGUSR2", None)) if s is not None)

# Stop signals that arrive within this many seconds of the first count as that one: one Ctrl-C
# often arrives twice (the terminal's process group, and a wrapper such as `timeout --foreground`
# or the re-launching parent that forwards it). A Ctrl-C after the window interrupts at once.
SIGNAL_COALESCE_S = 1.0


def install_signal_handlers(status: TrainerStatus) -> dict:
    """Install the stop handlers (main thread only); returns the previous ones, to put back."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}

    first_at: list[float] = []

    def handler(signum, frame):  # only sets a flag: the loop acts at the next step boundary
        now = time.monotonic()
        if first_at and now - first_at[0] < SIGNAL_COALESCE_S:
            return  # the same Ctrl-C delivered twice (process group + a forwarding wrapper)
        if first_at and signum == signal.SIGINT:  # a second Ctrl-C, later: interrupt at once
            before = previous.get(signal.SIGINT)
            signal.signal(signal.SIGINT, before if before is not None else signal.default_int_handler)
            if callable(before) and before is not signal.default_int_handler:
                signal.raise_signal(signal.SIGINT)  # the program's own handler decides
                return
            # Python's default, or SIGINT ignored when the process started (a background job of a
            # non-interactive shell): re-raising would be lost, so interrupt here
            raise KeyboardInterrupt
        first_at[:] = [now]
        status.stop_signal = signum

    for s in _STOP_SIGNALS:
        try:
            previous[s] = signal.signal(s, handler)
        except (ValueError, OSError):
            pass
    return previous


def install_interrupt_marker(status: TrainerStatus) -> dict:
    """validate/test/predict: Ctrl-C interrupts at once, as Python's handler does, but is noted
    (``status.stop_signal``) so the run tells a real Ctrl-C (the KeyboardInterrupt goes on) from a
    KeyboardInterrupt raised by user code (as in Lightning: exit 1). Returns the previous handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    before = signal.getsignal(signal.SIGINT)
    if not callable(before):  # SIGINT ignored (or not set from Python): nothing to note
        return {}

    def handler(signum, frame):
        status.stop_signal = signum
        before(signum, frame)  # Python's default raises KeyboardInterrupt here

    try:
        signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):
        return {}
    return {signal.SIGINT: before}


def restore_signal_handlers(previous: dict) -> None:
    for s, h in previous.items():
        signal.signal(s, h)


def finish_signal_stop(trainer: Any, status: TrainerStatus, stop_now: bool, save: Any) -> None:
    """After the fit loop: when every rank agreed to stop on a signal, save the stop checkpoint
    (``save(signum)``: its path or None) and exit with ``128 + signal``."""
    signum = status.stop_signal
    if signum is None or not stop_now:
        return
    path = save(signum)
    if trainer.is_global_zero:
        where = f"; checkpoint: {path}" if path else ""
        print(f"distengine: stopped by signal {signal.Signals(signum).name} at step "
              f"{trainer.global_step}{where}", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)
