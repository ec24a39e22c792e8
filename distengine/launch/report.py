"""What the launcher tells the user when a job fails: which rank, how, and the first lines of why.

Pure functions over exit codes and log text (no torch, no processes), so they are unit-tested
directly.

Example::

    >>> describe_exit(-9)
    'killed by signal SIGKILL (9)'
    >>> extract_error("Traceback (most recent call last):\\n  File \\"t.py\\", line 1\\nValueError: x\\n")[0]
    'ValueError: x'
"""
from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field

_TB_HEADER = "Traceback (most recent call last):"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(exitcode: int) -> str:
    """``-9`` -> "killed by signal SIGKILL (9)", ``143`` -> "exit code 143 (after SIGTERM)"."""
    if exitcode < 0:
        return f"killed by signal {signal_name(-exitcode)} ({-exitcode})"
    if exitcode > 128 and exitcode - 128 in (s.value for s in signal.Signals):
        return f"exit code {exitcode} (after {signal_name(exitcode - 128)})"
    return f"exit code {exitcode}"


def extract_error(text: str) -> tuple[str | None, list[str]]:
    """The last Python traceback in ``text``: (exception line, traceback lines incl. header).

    Lines may carry a prefix (torch.distributed prints ``[rank1]: `` before each line of an
    uncaught exception); the prefix of the header line is stripped from the lines after it.
    """
    lines = text.splitlines()
    start = None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].rstrip().endswith(_TB_HEADER):
            start = i
            break
    if start is None:
        return None, []
    prefix = lines[start][:lines[start].index(_TB_HEADER)]
    tb = [_TB_HEADER]
    for line in lines[start + 1:]:
        body = line[len(prefix):] if line.startswith(prefix) else line
        if body.startswith((" ", "\t")):
            tb.append(body.rstrip())
            continue
        # The first line back at the header's indentation names the exception.
        return body.strip() or None, tb
    return None, tb


def stack_top(text: str) -> str | None:
    """Innermost Python frame of the last fault-handler stack dump in ``text`` (where a stopped
    rank was). ``None`` when the dump has no frame: "Garbage-collecting" or "<no Python frame>"
    say only that the rank was inside the interpreter, not what the program was doing."""
    marker = "(most recent call first):"
    at = text.rfind(marker)
    if at < 0:
        return None
    for line in text[at + len(marker):].splitlines():
        line = line.strip()
        if line.startswith('File "'):
            return line
        if line and line not in ("Garbage-collecting", "<no Python frame>"):
            return None  # the end of the dump ("Extension modules: ...", the next thread)
    return None


_ATTEMPT_MARK = "[distengine] attempt "


def attempt_text(text: str) -> str:
    """The part of a rank's log written in the last attempt (the log spans every restart)."""
    at = text.rfind("\n" + _ATTEMPT_MARK)
    return text[at + 1:] if at >= 0 else text


def last_words(text: str, count: int = 3, width: int = 300) -> list[str]:
    """A rank's own last lines before it died by a signal: what a C++ abort printed
    ("terminate called after throwing ...", "what(): ... collective mismatch") and
    Python's "Fatal Python error: ..." line; not the stack dump that follows."""
    at = text.rfind("Fatal Python error:")
    before = text[:at] if at >= 0 else text
    lines = [line.rstrip() for line in before.splitlines()
             if line.strip() and not line.startswith("[distengine]")][-count:]
    if at >= 0:
        lines.append(text[at:].splitlines()[0].rstrip())
    return [line if len(line) <= width else line[:width - 3] + "..." for line in lines]


# Errors a rank raises because a PEER died or stalled: a consequence, rarely the cause.
_CONSEQUENCE_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                        "Timed out waiting", "DistNetworkError", "DistBackendError", "NCCL communicator",
                        "ProcessGroupNCCL", "Socket Timeout", "remote worker crashing")


def looks_like_consequence(exception_line: str | None) -> bool:
    return bool(exception_line) and any(m in exception_line for m in _CONSEQUENCE_MARKERS)


def error_from_file(data: dict | None) -> tuple[str | None, list[str]]:
    """Exception line and traceback from an elastic error file (a rank that used ``@record``)."""
    message = (data or {}).get("message")
    if not message or message == "<NONE>":  # elastic's marker for "the rank wrote no error file"
        return None, []
    if isinstance(message, str):
        try:
            message = json.loads(message)
        except ValueError:
            return message.splitlines()[0] if message else None, []
    if not isinstance(message, dict):
        return None, []
    text = str(message.get("message", ""))
    stack = str((message.get("extraInfo") or {}).get("py_callstack", ""))
    exc_line, tb = extract_error(stack)
    return exc_line or (text.splitlines()[0] if text else None), tb


@dataclass
class RankOutcome:
    """How one rank of the failed attempt ended."""

    rank: int
    exitcode: int
    pid: int | None = None
    local_rank: int | None = None
    root_cause: bool = False        # failed on its own (not stopped by the launcher)
    log_path: str | None = None
    error_file_data: dict | None = field(default=None, repr=False)
    left_early_s: float | None = None  # exited 0 this many s into the attempt, while others ran
    error_written: float | None = None  # when its error file was written (time.time() scale), if it wrote one
    error_file_incomplete: str | None = None  # its half-written error file, set aside (kept here)


def _traceback_excerpt(tb: list[str], head: int = 8, tail: int = 4) -> list[str]:
    if len(tb) <= head + tail + 1:
        return tb
    return tb[:head] + [f"  ... ({len(tb) - head - tail} more lines)"] + tb[-tail:]


def _error_of(o: RankOutcome) -> tuple[str | None, list[str], str]:
    """(exception line, traceback lines, log text) for one rank."""
    text = ""
    if o.log_path:
        try:
            with open(o.log_path, errors="replace") as f:
                text = attempt_text(f.read())
        except OSError:
            pass
    exc_line, tb = error_from_file(o.error_file_data)
    if exc_line is None:
        exc_line, tb = extract_error(text)
    return exc_line, tb, text


def _stopped_rank_lines(exc_line: str | None, text: str, first: int) -> list[str]:
    """What a rank the launcher stopped was doing: the error it had already raised (a lost
    peer, said in one line: its traceback stays in its log), or where its stack dump says it was."""
    if exc_line:
        short = exc_line if len(exc_line) <= 200 else exc_line[:197] + "..."
        why = f" (because rank {first} failed)" if looks_like_consequence(exc_line) else ""
        return [f"    it had stopped with {short}{why}"]
    where = stack_top(text)
    return [f"    was at: {where}"] if where else []


def format_summary(outcomes: list[RankOutcome], *, attempts: int, log_dir: str | None,
                   logs_kept: bool = True) -> str:
    """The multi-line failure report printed by the launcher (the root cause first)."""
    errors = {o.rank: _error_of(o) for o in outcomes}

    def blame(o: RankOutcome) -> tuple:
        # Root causes first: a rank that left early (its peers then failed), then a signal
        # death or an ordinary exception before a "peer went away" error that the first
        # failure provoked in another rank.
        # Ranks that failed in the same poll: the one whose error was written first (the other
        # failed because it went away, whatever its message says), then the lowest rank.
        return (not o.root_cause, o.left_early_s is None,
                o.exitcode >= 0 and looks_like_consequence(errors[o.rank][0]),
                o.error_written if o.error_written is not None else float("inf"), o.rank)

    ordered = sorted(outcomes, key=blame)
    first = ordered[0]
    what = (f"exited with code 0 {first.left_early_s:.1f}s into the run while other ranks were still running"
            if first.left_early_s is not None else describe_exit(first.exitcode))
    lines = [f"distengine: the job failed after {attempts} attempt{'s' if attempts != 1 else ''}: "
             f"rank {first.rank} {what}"]
    for o in ordered:
        if o.left_early_s is not None:
            lines.append(f"  rank {o.rank} (left early): exit code 0 after {o.left_early_s:.1f}s, before the "
                         "job finished; the ranks still running lost a peer (a script that returns or calls "
                         "sys.exit/os._exit on one rank only?)")
            continue
        exc_line, tb, text = errors[o.rank]
        failed = o.root_cause or o is first
        role = "failed" if failed else "stopped by the launcher"
        pid = f", pid {o.pid}" if o.pid else ""
        lines.append(f"  rank {o.rank} ({role}{pid}): {describe_exit(o.exitcode)}")
        if o.error_file_incomplete:
            lines.append("    its error file was left incomplete (it stopped while writing it): "
                         f"kept as {o.error_file_incomplete}")
        # a rank that lost its peer says so in one line whether the launcher stopped it or it
        # failed on its own first (a race: its traceback stays in its log)
        lost_peer = o is not first and o.exitcode >= 0 and looks_like_consequence(exc_line)
        if not failed or lost_peer:
            lines.extend(_stopped_rank_lines(exc_line, text, first.rank))
            continue
        if exc_line:
            lines.append(f"    {exc_line}")
        for tb_line in _traceback_excerpt(tb) if o is first else tb[-2:]:
            lines.append(f"    | {tb_line}")
        if not exc_line and (o.exitcode < 0 or o.exitcode > 128):
            words = last_words(text)
            if words:
                lines.append("    its last output:")
                lines.extend(f"    | {w}" for w in words)
                where = stack_top(text)
                if where:
                    lines.append(f"    at: {where}")
            elif o.exitcode < 0:
                lines.append(f"    (no Python traceback: the process was killed by {signal_name(-o.exitcode)})")
    if log_dir:
        lines.append(f"  per-rank logs{' (kept)' if logs_kept else ''}: {log_dir}/rank_<K>.log "
                     "(stopped ranks have their stacks dumped there)")
    return "\n".join(lines)
