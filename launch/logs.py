"""Per-rank output: one ``rank_K.log`` per rank (stdout and stderr together) and the console.

Each rank's stdout and stderr are named pipes read by one launcher thread. Every chunk is
appended to ``<log dir>/rank_K.log`` as it arrives (so the file is complete even if the rank
is killed), and echoed to the launcher's own stdout/stderr for the ranks shown on the
console: global rank 0 by default, or every rank with a ``[rank K] `` prefix.

Pipes rather than the agent's usual log files because two independent ``open(path, "w")``
of one file (one for each stream) would overwrite each other; with pipes the launcher is
the only writer of ``rank_K.log``.

Example::

    logs = RankLogs("logs", runtime_dir, console="rank0")
    ...   # handed to LocalElasticAgent(logs_specs=logs); reify() is called once per attempt
    logs.end_attempt(); logs.close()
"""
from __future__ import annotations

import os
import select
import sys
import threading
from dataclasses import dataclass
from typing import BinaryIO

from torch.distributed.elastic.multiprocessing.api import LogsDest, LogsSpecs


@dataclass
class _Stream:
    rank: int
    log: BinaryIO
    console: BinaryIO | None
    prefix: bytes
    keep_writer: int        # our own write end: the pipe never reads EOF mid-attempt
    partial: bytes = b""    # console text after the last newline (prefix mode only)


class _Pump(threading.Thread):
    """Copies every pipe to its log file and, if wanted, to the console."""

    def __init__(self) -> None:
        super().__init__(name="distengine-logs", daemon=True)
        self._streams: dict[int, _Stream] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
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
                ready, _, _ = select.select(fds, [], [], 0.05)
            except (OSError, ValueError):  # a descriptor closed under us by drain(): look again
                continue
            with self._lock:
                for fd in ready:
                    if fd in self._streams:
                        self._read(fd)

    def _read(self, fd: int) -> bool:
        """Copy one chunk; False when the pipe has nothing more right now."""
        stream = self._streams[fd]
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        if not data:
            return False
        stream.log.write(data)
        if stream.console is not None and self.console_enabled:
            self._echo(stream, data)
        return True

    def _echo(self, stream: _Stream, data: bytes) -> None:
        if stream.prefix:
            text = stream.partial + data
            *lines, stream.partial = text.split(b"\n")
            data = b"".join(stream.prefix + line + b"\n" for line in lines)
        try:
            stream.console.write(data)
            stream.console.flush()
        except (BrokenPipeError, ValueError, OSError):
            stream.console = None  # nobody is reading the console: keep writing the logs

    def drain(self) -> None:
        """Copy whatever the (finished) ranks left in the pipes, then close them."""
        with self._lock:
            for fd, stream in list(self._streams.items()):
                os.close(stream.keep_writer)
                while self._read(fd):
                    pass
                if stream.partial and stream.console is not None and self.console_enabled:
                    self._echo(stream, b"\n")
                os.close(fd)
                stream.log.flush()
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
        self.files: dict[int, BinaryIO] = {}
        self.rank_logs: dict[int, str] = {}
        self.error_files: dict[int, str] = {}

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

    def log_file(self, rank: int) -> BinaryIO:
        if rank not in self.files:
            path = os.path.join(self.log_dir, f"rank_{rank}.log")
            self.rank_logs[rank] = path
            self.files[rank] = open(path, "wb", buffering=0)  # noqa: SIM115 - lives for the whole job
        return self.files[rank]

    def reify(self, envs: dict[int, dict[str, str]]) -> LogsDest:
        self.pump.drain()  # the previous attempt's pipes, if any
        self.set_console(True)
        first = envs[0] if envs else {}
        restart = int(first.get("TORCHELASTIC_RESTART_COUNT", "0"))
        max_restarts = int(first.get("TORCHELASTIC_MAX_RESTARTS", "0"))
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

    def note(self, rank: int, text: str) -> None:
        """Append a launcher line (e.g. why this rank was stopped) to a rank's log."""
        if rank in self.files:
            self.files[rank].write(f"[distengine] {text}\n".encode())

    def end_attempt(self) -> None:
        """Call once the attempt's ranks (and their children) are gone: copies the rest."""
        self.pump.drain()

    def close(self) -> None:
        self.pump.stop()
        for f in self.files.values():
            f.close()
