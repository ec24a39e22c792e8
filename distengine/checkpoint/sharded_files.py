"""The files of a sharded checkpoint directory: what makes it complete, its checksums, and the
publish (temporary directory -> final name) with the recovery of a publish a crash interrupted.

Split from :mod:`distengine.checkpoint.sharded` (which re-exports these names); the save and
load paths are there. See that module's docstring for the layout."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import uuid
import zlib
from typing import Any

from distengine.checkpoint.files import CheckpointError, _atomic_write, _write_text, file_problem
from distengine.checkpoint.temp_files import _fsync_dir, is_temp_file

META_FILE = "meta.pt"
_TMP_MARK = ".tmp-"
_DCP_METADATA = ".metadata"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """True for a complete sharded checkpoint directory (DCP index and ``meta.pt`` both present)."""
    path = os.fspath(path)
    return (os.path.isdir(path) and os.path.isfile(os.path.join(path, _DCP_METADATA))
            and os.path.isfile(os.path.join(path, META_FILE)))



def remove_stale_temp_dirs(folder: str) -> list[str]:
    """Tidy ``folder`` after sharded saves that never finished (a crash or a SIGKILL mid-save),
    with :func:`recover_interrupted_saves`; returns what it removed. Called by rank 0 before
    each save, when none of its own is in flight; the ranks of one job are the only writers
    into its checkpoint folder."""
    return [path for action, path in recover_interrupted_saves(folder) if action == "removed"]


#: leftovers of a save: ``.<name>.tmp-<id>`` (being written), ``.<name>.old-<id>`` (the previous
#: checkpoint of that name, moved aside by a publish), ``.<name>.tmp-old-<id>`` (link_atomic's)
_LEFTOVER = re.compile(r"^\.(?P<base>.+?)\.(?P<kind>tmp|old|tmp-old)-[0-9a-f]+$")


def _complete(path: str) -> bool:
    """A complete checkpoint under any layout: a sharded directory that passes its size checks,
    or a file checkpoint that loads."""
    if os.path.isdir(path):  # last.ckpt: a link to one
        return is_sharded_checkpoint(path) and sharded_problem(path) is None
    return os.path.isfile(path) and file_problem(path) is None


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def recover_interrupted_saves(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """Put back what an interrupted save left in ``folder``; returns ``(action, path)`` pairs.

    A publish that reuses a name moves the previous checkpoint aside (``.<name>.old-<id>``),
    renames the finished ``.<name>.tmp-<id>`` into place, then deletes the old one; a crash can
    stop it between any two steps. For each name: the newest complete ``.tmp-`` directory (all
    shards and DCP's ``.metadata`` written) is published under it; otherwise, when the name is
    absent, the newest complete ``.old-`` one is renamed back. Incomplete temporaries, and old
    copies once a complete checkpoint holds the name, are removed. No complete checkpoint is
    removed before a newer complete one holds its name. Rank 0 only, with no save in flight.
    """
    folder = os.fspath(folder)
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    groups: dict[str, dict[str, list[str]]] = {}
    for name in names:
        found = _LEFTOVER.match(name)
        if found:
            kind = "tmp" if found["kind"] == "tmp" else "old"
            groups.setdefault(found["base"], {"tmp": [], "old": []})[kind].append(os.path.join(folder, name))
    actions: list[tuple[str, str]] = []

    def newest_first(paths: list[str]) -> list[str]:
        def mtime(p: str) -> int:
            try:
                return os.lstat(p).st_mtime_ns
            except OSError:
                return -1
        return sorted(paths, key=mtime, reverse=True)

    for base, found in sorted(groups.items()):
        final = os.path.join(folder, base)
        tmps = newest_first(found["tmp"])
        olds = newest_first(found["old"])
        good_tmp = next((t for t in tmps if os.path.isdir(t) and _complete(t)), None)
        if good_tmp is not None:  # written to the end: the newest checkpoint of this name
            _publish(good_tmp, final)
            actions.append(("published", final))
        elif not os.path.lexists(final):
            good_old = next((o for o in olds if _complete(o)), None)
            if good_old is not None:  # the crash came between the two renames: the old one goes back
                os.rename(good_old, final)
                _fsync_dir(folder)
                olds.remove(good_old)
                actions.append(("restored", final))
        held = os.path.lexists(final) and _complete(final)
        for path in tmps:
            if path != good_tmp and os.path.lexists(path):
                _remove(path)
                actions.append(("removed", path))
        if held:  # a complete checkpoint holds the name: the copies moved aside are superseded
            for path in olds:
                if os.path.lexists(path):
                    _remove(path)
                    actions.append(("removed", path))
    return actions


#: environment variable of the crash tests: ``<point>:<n>`` SIGKILLs this process at crash point
#: ``<point>`` of the publish sequence the n-th time it is reached (see :func:`_publish`)
_CRASH_ENV = "DISTENGINE_TEST_CRASH"
_crash_counts: dict[str, int] = {}


def _crash_point(name: str) -> None:
    spec = os.environ.get(_CRASH_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point == name:
        _crash_counts[name] = _crash_counts.get(name, 0) + 1
        if _crash_counts[name] >= int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def _publish(tmp: str, final: str) -> None:
    """Rank 0: rename the finished DCP directory (``meta.pt`` already in it) into place.

    First the checksums of every file go into the directory (:data:`MANIFEST`). A previous
    checkpoint of the same name (a directory, or a file from a full-layout save) is moved
    aside to ``.<name>.old-<id>``, the new one renamed into place, then the old one deleted; a
    crash between any two steps is put right by :func:`recover_interrupted_saves`."""
    if not os.path.isfile(os.path.join(tmp, _DCP_METADATA)):
        raise CheckpointError(f"the sharded save into {tmp!r} finished without DCP's .metadata file")
    if not os.path.isfile(os.path.join(tmp, MANIFEST)):  # a recovered directory has one already
        write_manifest(tmp)
    _crash_point("before-move-old")
    old = None
    if os.path.lexists(final):  # a directory cannot be renamed over a non-empty one: move it aside
        old = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
        _crash_point("after-move-old")
    _crash_point("before-rename")
    os.rename(tmp, final)
    _fsync_dir(os.path.dirname(final))
    _crash_point("after-rename")
    if old is not None:
        _crash_point("before-delete")
        _remove(old)
        _crash_point("after-delete")


# ---------------------------------------------------------------------------- checksums
#: per-file sizes and CRC-32s of a sharded checkpoint, written by rank 0 before the publish rename
MANIFEST = "checksums.json"
_MANIFEST_VERSION = 1
_CHUNK = 1 << 22


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_manifest(directory: str) -> None:
    """Record the size and CRC-32 of every file of sharded checkpoint ``directory`` (every
    rank's shards, ``.metadata``, ``meta.pt``) in ``directory/checksums.json``."""
    files = {}
    for name in sorted(os.listdir(directory)):
        full = os.path.join(directory, name)
        if name != MANIFEST and os.path.isfile(full) and not is_temp_file(name):
            files[name] = {"size": os.path.getsize(full), "crc32": _crc32(full)}
    text = json.dumps({"version": _MANIFEST_VERSION, "files": files}, sort_keys=True) + "\n"
    _atomic_write(os.path.join(directory, MANIFEST), lambda tmp: _write_text(tmp, text))


def _read_manifest(path: str) -> dict[str, Any] | str | None:
    """The manifest's files, None for a checkpoint written before manifests, or why it is unreadable."""
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"its {MANIFEST} is unreadable ({type(exc).__name__})"
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return f"its {MANIFEST} lists no files"
    return files


_verified: dict[tuple[str, tuple[tuple[int, int, int], ...]], bool] = {}


def sharded_problem(path: str | os.PathLike, deep: bool = False) -> str | None:
    """Why sharded checkpoint ``path`` cannot be loaded, naming the file, or None.

    Checks that ``.metadata`` and ``meta.pt`` exist and, when the checkpoint has a
    :data:`MANIFEST`, that every file it lists exists with its recorded size; ``deep`` also
    compares every file's CRC-32 (reads the whole checkpoint once; remembered per process).
    A checkpoint written before manifests is checked for its files' presence only."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return "does not exist or is not a directory"
    for name in (_DCP_METADATA, META_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            return f"is incomplete: it has no {name} (it was not written to the end)"
    files = _read_manifest(path)
    if files is None:
        return None
    if isinstance(files, str):
        return f"is damaged: {files}"
    for name, want in sorted(files.items()):
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            return f"is damaged: its file {name} is missing"
        size = os.path.getsize(full)
        if size != want.get("size"):
            return f"is damaged: its file {name} has {size} bytes, {want.get('size')} were written"
    if not deep:
        return None
    stats = [os.stat(os.path.join(path, name)) for name in sorted(files) + [MANIFEST]]
    key = (os.path.realpath(path), tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats))
    if key in _verified:  # verified before, and no file was written since
        return None
    for name, want in sorted(files.items()):
        if _crc32(os.path.join(path, name)) != want.get("crc32"):
            return f"is damaged: its file {name} does not match the checksum written with it"
    _verified[key] = True
    return None
