"""Per-rank output: one ``rank_K.log`` per rank (stdout and stderr together) and the console.

Each rank's stdout and stderr are named pipes read by one launcher thread. Every whole line
is appended to ``<log dir>/rank_K.log`` as it arrives (so the file is complete even if the
rank is killed; a partial line waits for its end, or ``IDLE_FLUSH_S``, or the end of the
pipe, so stdout and stderr never splice mid-line), and echoed to the launcher's own
stdout/stderr for the ranks shown on the console: global rank 0 by default, or every rank
with a ``[rank K] `` prefix. A log file that cannot be written (a full disk) is given up
with one line on the console; the pipes are drained all the same, so the ranks never block.

Pipes rather than the agent's usual log files because two independent ``open(path, "w")``
of one file (one for each stream) would overwrite each other; with pipes the launcher is
the only writer of ``rank_K.log``.

Example::

    logs = RankLogs("logs", runtime_dir, console="rank0")
    ...   # handed to LocalElasticAgent(logs_specs=logs); reify() is called once per attempt
    logs.end_attempt(); logs.close()
"""
from __future__ import annotations

import json
import os
import select
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

from torch.distributed.elastic.multiprocessing.api import LogsDest, LogsSpecs

from distengine.launch.report import looks_like_consequence

# A rank's partial line (no newline yet) is held back this long before it is written anyway
# (a prompt, a progress bar that is not redrawn): lines stay whole, output still shows up.
IDLE_FLUSH_S = 0.5
_TB_HEADER = b"Traceback (most recent call last):"
_MAX_HELD_LINES = 400  # a "traceback" longer than this is shown after all
_MAX_PENDING = 1 << 20


def _say(message: str) -> None:
    try:
        print(f"distengine: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


class _LogFile:
    """One rank's ``rank_K.log``. Writing it must never stop the job: the first error (a full
    disk, a quota, a vanished mount) is said once on the console, and the file is given up."""

    def __init__(self, path: str, announced: set[int]) -> None:
        self.path = path
        self.announced = announced  # errno values already reported (shared by a job's files)
        self.open_line: object = None  # the stream whose unfinished line ends the file
        self.fh: BinaryIO | None = None
        try:
            self.fh = open(path, "wb", buffering=0)  # noqa: SIM115 - lives for the whole job
        except OSError as exc:
            self._give_up(exc)

    def write(self, data: bytes, owner: object = None) -> None:
        if self.fh is None or not data:
            return
        try:
            if self.open_line is not None and self.open_line is not owner:
                self.fh.write(b"\n")  # another stream's unfinished line: end it, do not splice into it
            self.fh.write(data)
        except OSError as exc:
            self._give_up(exc)
            return
        self.open_line = None if data.endswith(b"\n") else owner

    def _give_up(self, exc: OSError) -> None:
        if self.fh is not None:
            try:
                self.fh.close()
            except OSError:
                pass
        self.fh = None
        if exc.errno not in self.announced:
            self.announced.add(exc.errno)
            _say(f"cannot write the log file {self.path}: {exc.strerror or exc} (errno {exc.errno}); "
                 "the job goes on without this file (ranks shown on the console still are)")

    def close(self) -> None:
        if self.fh is not None:
            try:
                self.fh.close()
            except OSError:
                pass


class _Console:
    """The launcher's stdout and stderr, shared by the ranks shown there: a rank's unfinished
    line is ended before another stream writes, so lines from two streams never splice."""

    def __init__(self) -> None:
        self.open_line: object = None

    def write(self, owner: object, fh: BinaryIO, data: bytes) -> None:
        if self.open_line is not None and self.open_line is not owner:
            fh.write(b"\n")
        fh.write(data)
        fh.flush()
        self.open_line = None if data.endswith(b"\n") else owner


@dataclass
class _Stream:
    rank: int
    log: _LogFile
    console: BinaryIO | None
    prefix: bytes
    keep_writer: int            # our own write end: the pipe never reads EOF mid-attempt
    pending: bytes = b""        # read after the last line end: written once the line is whole
    last_read: float = 0.0
    line_start: bool = True     # the console is at the start of one of this stream's lines
    held: list | None = None    # console lines of a traceback being read (see _Pump._hold)
    tb_prefix: bytes = b""


def _split_whole(data: bytes) -> tuple[bytes, bytes]:
    """(whole lines, the rest). A carriage return also ends a piece (a progress bar redraws
    with ``\\r``): the text before the last one is whole, so bars keep moving."""
    nl, cr = data.rfind(b"\n"), data.rfind(b"\r")
    cut = cr if cr > nl else nl + 1
    return data[:cut], data[cut:]


class _Pump(threading.Thread):
    """Copies every pipe to its log file and, if wanted, to the console, in whole lines.

    On the console, a Python traceback whose exception says a *peer* went away (gloo's
    "Connection closed by peer", a collective timeout...) is held back and dropped: it is a
    consequence of another rank's failure, which the launcher's report names first. The log
    file keeps it.
    """

    def __init__(self) -> None:
        super().__init__(name="distengine-logs", daemon=True)
        self._streams: dict[int, _Stream] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._console = _Console()
        self.console_enabled = True

    def add(self, fd: int, stream: _Stream) -> None:
        with self._lock:
            self._streams[fd] = stream

    def run(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                fds = list(self._streams)
            if not fds:
                self._closed.wait(0.05)
                continue
            try:
                ready, _, _ = select.select(fds, [], [], 0.1)
            except (OSError, ValueError):  # a descriptor closed under us by drain(): look again
                continue
            with self._lock:
                for fd in ready:
                    if fd in self._streams:
                        self._read(fd)
                now = time.monotonic()
                for stream in self._streams.values():
                    if stream.pending and now - stream.last_read > IDLE_FLUSH_S:
                        self._emit(stream, stream.pending)
                        stream.pending = b""

    def _read(self, fd: int) -> bool:
        """Copy one chunk; False when the pipe has nothing more right now."""
        stream = self._streams[fd]
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        if not data:
            return False
        stream.last_read = time.monotonic()
        whole, stream.pending = _split_whole(stream.pending + data)
        if len(stream.pending) > _MAX_PENDING:  # one enormous line: written in pieces after all
            whole, stream.pending = whole + stream.pending, b""
        self._emit(stream, whole)
        return True

    def _emit(self, stream: _Stream, data: bytes) -> None:
        if not data:
            return
        stream.log.write(data, owner=stream)
        if stream.console is None or not self.console_enabled:
            return
        shown = [out for line in data.splitlines(keepends=True) for out in self._hold(stream, line)]
        # A log file that cannot be written leaves the console as the only copy: no line is held.
        if stream.log.fh is None and stream.held:
            shown, stream.held = shown + stream.held, None
        if shown:
            self._echo(stream, b"".join(shown))

    def _hold(self, stream: _Stream, line: bytes) -> list[bytes]:
        """The console lines to show now for ``line``: a traceback is held until its exception
        line says whether it is the rank's own error (shown) or a lost peer (dropped)."""
        body = line.rstrip(b"\r\n")
        if stream.held is None:
            if body.rstrip().endswith(_TB_HEADER):
                stream.held, stream.tb_prefix = [line], body[:body.index(_TB_HEADER)]
                return []
            return [line]
        stream.held.append(line)
        rest = body[len(stream.tb_prefix):] if body.startswith(stream.tb_prefix) else body
        if rest.startswith((b" ", b"\t")) and len(stream.held) < _MAX_HELD_LINES:
            return []
        held, stream.held = stream.held, None
        if looks_like_consequence(rest.strip().decode(errors="replace")) and stream.log.fh is not None:
            return []  # the log has it (without a log file, the console is the only copy)
        return held

    def _echo(self, stream: _Stream, data: bytes) -> None:
        if stream.prefix:
            out = []
            for piece in data.splitlines(keepends=True):
                out.append(stream.prefix + piece if stream.line_start else piece)
                stream.line_start = piece.endswith(b"\n")
            data = b"".join(out)
        try:
            self._console.write(stream, stream.console, data)
        except (BrokenPipeError, ValueError, OSError):
            stream.console = None  # nobody is reading the console: keep writing the logs

    def drain(self) -> None:
        """Copy whatever the (finished) ranks left in the pipes, then close them."""
        with self._lock:
            for fd, stream in list(self._streams.items()):
                os.close(stream.keep_writer)
                while self._read(fd):
                    pass
                # the end of the pipe: an unfinished last line is written as it is
                self._emit(stream, stream.pending)
                stream.pending = b""
                if stream.held and stream.console is not None and self.console_enabled:
                    self._echo(stream, b"".join(stream.held))  # a traceback cut short: show it
                stream.held = None
                if self._console.open_line is stream and stream.console is not None:
                    self._echo(stream, b"\n")  # (even when muted) the launcher's report starts a line
                os.close(fd)
                del self._streams[fd]

    def stop(self) -> None:
        self._closed.set()
        if self.is_alive():
            self.join(timeout=5)
        self.drain()


class RankLogs(LogsSpecs):
    """Elastic ``LogsSpecs`` that sends each rank's streams through :class:`_Pump`.

    ``console``: ``"rank0"`` (global rank 0, unprefixed), ``"all"`` (``[rank K] `` prefix) or ``"none"``.
    Its own state has no leading underscore: those names belong to torch's ``LogsSpecs``.
    """

    def __init__(self, log_dir: str, runtime_dir: str, console: str = "rank0") -> None:
        super().__init__(log_dir=log_dir)
        os.makedirs(log_dir, exist_ok=True)
        self.log_dir, self.runtime_dir, self.console = log_dir, runtime_dir, console
        self.pump = _Pump()
        self.pump.start()
        self.files: dict[int, _LogFile] = {}
        self.write_errors: set[int] = set()
        self.rank_logs: dict[int, str] = {}
        self.error_files: dict[int, str] = {}   # global rank -> error file, this attempt
        self.attempt = 0

    @property
    def root_log_dir(self) -> str:
        return self.log_dir

    def set_console(self, enabled: bool) -> None:
        """Mute the console (the log files keep everything), e.g. while ranks are being torn down."""
        self.pump.console_enabled = enabled

    def console_for(self, rank: int, fd_name: str) -> tuple[BinaryIO | None, bytes]:
        if self.console == "none" or (self.console == "rank0" and rank != 0):
            return None, b""
        target = sys.stdout if fd_name == "stdout" else sys.stderr
        prefix = f"[rank {rank}] ".encode() if self.console == "all" else b""
        return getattr(target, "buffer", None), prefix

    def log_file(self, rank: int) -> _LogFile:
        if rank not in self.files:
            path = os.path.join(self.log_dir, f"rank_{rank}.log")
            self.rank_logs[rank] = path
            self.files[rank] = _LogFile(path, self.write_errors)
        return self.files[rank]

    def reify(self, envs: dict[int, dict[str, str]]) -> LogsDest:
        self.pump.drain()  # the previous attempt's pipes, if any
        self.set_console(True)
        first = envs[0] if envs else {}
        restart = int(first.get("TORCHELASTIC_RESTART_COUNT", "0"))
        max_restarts = int(first.get("TORCHELASTIC_MAX_RESTARTS", "0"))
        self.attempt = restart + 1
        attempt_dir = os.path.join(self.runtime_dir, f"attempt_{restart}")
        os.makedirs(attempt_dir, exist_ok=True)
        stdouts, stderrs, error_files = {}, {}, {}
        for local_rank, env in envs.items():
            rank = int(env["RANK"])
            log = self.log_file(rank)
            log.write(f"[distengine] attempt {restart + 1}: restart {restart} of at most {max_restarts}; "
                      f"rank {rank} of {env['WORLD_SIZE']}, local rank {local_rank}, "
                      f"node {env.get('GROUP_RANK', '0')}\n".encode())
            paths = {}
            for name in ("stdout", "stderr"):
                path = os.path.join(attempt_dir, f"rank_{rank}.{name}")
                os.mkfifo(path, 0o600)
                # Open our read end (non-blocking: no writer yet) and a write end of our own,
                # so the agent's open(path, "w") returns at once and the pipe only reaches
                # EOF when we say so.
                read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                console, prefix = self.console_for(rank, name)
                self.pump.add(read_fd, _Stream(rank, log, console, prefix, keep))
                paths[name] = path
            stdouts[local_rank], stderrs[local_rank] = paths["stdout"], paths["stderr"]
            error_files[local_rank] = os.path.join(attempt_dir, f"error_{rank}.json")
            env["TORCHELASTIC_ERROR_FILE"] = error_files[local_rank]
            self.error_files[rank] = error_files[local_rank]
        return LogsDest(stdouts=stdouts, stderrs=stderrs, tee_stdouts={}, tee_stderrs={},
                        error_files=error_files,
                        filtered_stdout=os.path.join(attempt_dir, "filtered_stdout.log"),
                        filtered_stderr=os.path.join(attempt_dir, "filtered_stderr.log"))

    def set_aside_incomplete_error_files(self) -> dict[int, str]:
        """Call once every rank of the attempt has ended, before torch's agent reads their error
        files. A file that is not a whole error record (a rank stopped in the middle of writing
        it leaves half a document, or none) would make torch's agent raise while it collects the
        failures, and the launcher would crash instead of naming the rank and restarting. Such a
        file is moved into the log folder as ``error_<rank>.attempt_<N>.incomplete`` and kept there:
        torch then sees a rank that wrote no error file, and the report falls back on the rank's
        log. Returns rank -> the kept file."""
        kept = {}
        for rank, path in self.error_files.items():
            if os.path.exists(path) and not _whole_error_record(path):
                kept[rank] = os.path.join(self.log_dir, f"error_{rank}.attempt_{self.attempt}.incomplete")
                try:
                    shutil.move(path, kept[rank])
                except OSError:  # a full disk under the log folder: aside where it is, then
                    kept[rank] = path + ".incomplete"
                    os.replace(path, kept[rank])
                self.note(rank, f"this rank's error file was left incomplete (it stopped while writing it); "
                                f"kept as {kept[rank]}")
        return kept

    def note(self, rank: int, text: str) -> None:
        """Append a launcher line (e.g. why this rank was stopped) to a rank's log."""
        if rank in self.files:
            self.files[rank].write(f"[distengine] {text}\n".encode())  # errors: said once, then ignored

    def end_attempt(self) -> None:
        """Call once the attempt's ranks (and their children) are gone: copies the rest."""
        self.pump.drain()

    def close(self) -> None:
        self.pump.stop()
        for f in self.files.values():
            f.close()


def _whole_error_record(path: str) -> bool:
    """``path`` reads the way torch's agent reads an error file (``ProcessFailure``): a JSON object
    whose "message" is a string, or an object with ``extraInfo.timestamp``."""
    try:
        with open(path) as f:
            data = json.load(f)
        message = data["message"]
        if not isinstance(message, str):
            int(message["extraInfo"]["timestamp"])
    except OSError:
        return True  # not readable at all (gone): torch's agent copes with a missing file
    except (ValueError, KeyError, TypeError):
        return False
    return True
