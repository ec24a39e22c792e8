"""Where a submitted job's files are, and what SLURM says about it, without ``sacct``.

Accounting is often off (always on the local test cluster), so the state of a job comes from
``scontrol show job`` while ``slurmctld`` still remembers it (``MinJobAge``), and afterwards
from the events the job's rank 0 appended to ``<log folder>/distengine_events.jsonl``.

A job's log folder is ``<log dir>/<job id>/`` (submitit's layout): ``<id>_<rank>_log.out``,
``<id>_<rank>_log.err``, ``<id>_submission.sh``, plus ``distengine_submit.json`` (what was
submitted) and ``distengine_events.jsonl`` (one line per start, requeue, completion or failure).

Example::

    folder = find_folder("1234", log_dir="slurm_logs")
    summary(1234, folder)["state"]          # "RUNNING", "PENDING", "COMPLETED", "FAILED", ...
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

EVENTS_FILE = "distengine_events.jsonl"
SUBMIT_FILE = "distengine_submit.json"
#: States after which a job never runs again (REQUEUED, PENDING, RUNNING, COMPLETING... are not).
FINISHED_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                             "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT"})


# ------------------------------------------------------------------ job folders
def job_folder_from_env() -> str | None:
    """Inside a submitit task: the job's log folder (submitit's folder with ``%j`` filled in)."""
    folder = os.environ.get("SUBMITIT_FOLDER")
    job_id = os.environ.get("SLURM_JOB_ID")
    if not folder or not job_id:
        return None
    return folder.replace("%j", job_id)


def _index_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "distengine" / "slurm-jobs"


def remember_folder(job_id: str, folder: str) -> None:
    """Note where a job's logs are, so ``status``/``logs`` find them from any directory."""
    try:
        d = _index_dir()
        d.mkdir(parents=True, exist_ok=True)
        (d / str(job_id)).write_text(os.path.abspath(folder) + "\n")
    except OSError:
        pass  # only a convenience: --log-dir and scontrol still find the folder


def find_folder(job_id: str, log_dir: str | None = None) -> str | None:
    """The log folder of ``job_id``: from ``scontrol`` while SLURM knows the job (authoritative:
    a reset test cluster reuses job ids), else under ``log_dir``, else from the index."""
    candidates = []
    info = query_job(job_id)
    if info and info.get("StdOut"):
        candidates.append(os.path.dirname(info["StdOut"].replace("%j", str(job_id))))
    if log_dir:
        candidates.append(os.path.join(log_dir, str(job_id)))
    try:
        candidates.append((_index_dir() / str(job_id)).read_text().strip())
    except OSError:
        pass
    for c in candidates:
        if c and os.path.isdir(c):
            return c
    return None


def log_paths(folder: str, job_id: str, rank: int) -> tuple[str, str]:
    return (os.path.join(folder, f"{job_id}_{rank}_log.out"), os.path.join(folder, f"{job_id}_{rank}_log.err"))


# ------------------------------------------------------------------ events written by rank 0
def record_event(folder: str | None, event: str, **fields: Any) -> None:
    """Append one event line; a single ``write`` of one line, so readers never see half a record."""
    if not folder:
        return
    rec = {"event": event, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **fields}
    with open(os.path.join(folder, EVENTS_FILE), "a") as f:
        f.write(json.dumps(rec) + "\n")


def read_events(folder: str | None) -> list[dict[str, Any]]:
    if not folder:
        return []
    try:
        with open(os.path.join(folder, EVENTS_FILE)) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []


def read_state(folder: str | None) -> dict[str, Any]:
    """Counts over the events: requeues after a time limit (``timeouts``) and after preemption."""
    events = read_events(folder)
    requeued = [e for e in events if e.get("requeued")]
    return {"events": events,
            "timeouts": sum(e["event"] == "timeout" for e in requeued),
            "preemptions": sum(e["event"] == "preemption" for e in requeued)}


# ------------------------------------------------------------------ what SLURM says
def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def query_job(job_id: str | int) -> dict[str, str] | None:
    """``scontrol show job -o`` as a dict, or None when SLURM no longer knows the job."""
    out = _run(["scontrol", "show", "job", "-o", str(job_id)])
    if not out or not out.strip():
        return None
    fields: dict[str, str] = {}
    key = None
    for token in out.strip().split():
        k, eq, v = token.partition("=")
        if eq and re.fullmatch(r"[A-Za-z][\w/:]*", k):
            key, fields[k] = k, v
        elif key:  # a value with spaces (a command line, a comment)
            fields[key] += " " + token
    return fields


def query_state(job_id: str | int) -> str | None:
    info = query_job(job_id)
    return info.get("JobState") if info else None


def parse_duration(text: str) -> int | None:
    """Seconds in a squeue duration (``[D-]HH:MM:SS``, ``MM:SS``); None for UNLIMITED etc."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text.strip())
    if not m:
        return None
    d, h, mnt, s = (int(x) if x else 0 for x in m.groups())
    return ((d * 24 + h) * 60 + mnt) * 60 + s


def time_left_s(job_id: str | int) -> int | None:
    out = _run(["squeue", "-h", "-j", str(job_id), "-o", "%L"])
    return parse_duration(out) if out else None


# ------------------------------------------------------------------ one summary for `status`
def summary(job_id: str, folder: str | None) -> dict[str, Any]:
    """State, restarts and requeue counts of a job, from SLURM when it knows it, else from files."""
    info = query_job(job_id) or {}
    state = read_state(folder)
    events = state["events"]
    last = events[-1]["event"] if events else None
    job_state = info.get("JobState")
    if job_state is None:  # forgotten by slurmctld: fall back on what rank 0 wrote
        job_state = {"completed": "COMPLETED", "failed": "FAILED", "cancelled": "CANCELLED",
                     "timeout": "FAILED"}.get(last or "", "UNKNOWN")
    restarts = info.get("Restarts")
    if restarts is None:
        restarts = str(sum(1 for e in events if e["event"] == "started") - 1) if events else "?"
    return {"job_id": str(job_id), "state": job_state, "reason": info.get("Reason"),
            "restarts": restarts, "timeouts": state["timeouts"], "preemptions": state["preemptions"],
            "last_event": last, "exit_code": info.get("ExitCode"), "nodes": info.get("NodeList"),
            "run_time": info.get("RunTime"), "time_limit": info.get("TimeLimit"), "folder": folder,
            "submit": _read_submit(folder)}


def _read_submit(folder: str | None) -> dict[str, Any]:
    if not folder:
        return {}
    try:
        with open(os.path.join(folder, SUBMIT_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_submit(folder: str, record: dict[str, Any]) -> None:
    tmp = os.path.join(folder, SUBMIT_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, os.path.join(folder, SUBMIT_FILE))
