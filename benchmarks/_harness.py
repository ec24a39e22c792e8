"""Shared machinery for the benchmarks: interleaved rounds, ratio statistics, result rows.

Why interleave: on a shared or thermally throttled machine the speed drifts over minutes.
Running contender A then B then A then B ... and comparing each B with the A of the *same*
round cancels most of that drift; the median of the per-round ratios ignores the odd round
that a neighbour's burst spoiled, and min/max show how noisy the run was. The order inside
a round is a fresh (seeded) shuffle, so that no contender always runs first, or always right
after the same other one (which may leave a fragmented heap or a cold cache behind).

Example::

    times = interleave({"loop": run_loop, "trainer": run_trainer}, rounds=5)
    row = ratio_row("overhead", "trainer / loop", times["trainer"], times["loop"], target=1.05)
    print(markdown_table([row]))
"""
from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Row:
    """One line of the results table.

    ``value`` is the median (a ratio for ``unit='x'``, else in ``unit``); ``lo``/``hi`` the
    spread over rounds; ``target`` is an upper bound (``<=``) unless ``higher_is_better``;
    ``context`` carries the absolute figures behind a ratio.
    """

    benchmark: str
    comparison: str
    value: float
    lo: float | None = None
    hi: float | None = None
    unit: str = "x"
    target: float | None = None
    higher_is_better: bool = False
    context: str = ""
    rounds: int = 0
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool | None:
        if self.target is None or math.isnan(self.value):
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


class Clock:
    """Wall and CPU seconds of a block.

    Wall time is what the user waits for. This process's CPU time is what the work cost;
    on a machine shared with other jobs it is far steadier, because time spent waiting for
    a core is not counted (with one thread, CPU time ~ wall time on an idle machine).

    Example::

        with Clock() as c:
            train()
        print(c.wall, c.cpu)
    """

    wall: float = float("nan")
    cpu: float = float("nan")

    def __enter__(self) -> Clock:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def interleave(contenders: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 1,
               on_round: Callable[[int], None] | None = None) -> dict[str, list[Any]]:
    """Run every contender once per round, in a shuffled order; return what they measured.

    Each callable runs one complete measurement and returns a number (seconds, bytes...)
    or any record (a :class:`Clock`). ``warmup`` extra rounds run first and are thrown
    away (lazy imports, allocator and page-cache warm-up).

    Example::

        interleave({"a": lambda: 1.0, "b": lambda: 2.0}, rounds=3)   # {'a': [1.0]*3, 'b': [2.0]*3}
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    names = list(contenders)
    out: dict[str, list[Any]] = {n: [] for n in names}
    order_rng = random.Random(len(names) * 1000 + rounds)  # seeded: a rerun uses the same orders
    for r in range(-warmup, rounds):
        order = list(names)
        order_rng.shuffle(order)
        for name in order:
            gc.collect()
            value = contenders[name]()
            if r >= 0:
                out[name].append(float(value) if isinstance(value, (int, float)) else value)
        if on_round is not None and r >= 0:
            on_round(r)
    return out


def ratios(numer: Sequence[float], denom: Sequence[float]) -> list[float]:
    """Per-round ratios ``numer[i] / denom[i]`` (the rounds pair up in time)."""
    if len(numer) != len(denom):
        raise ValueError(f"cannot pair {len(numer)} and {len(denom)} rounds")
    return [n / d for n, d in zip(numer, denom)]


def ratio_row(benchmark: str, comparison: str, numer: Sequence[float], denom: Sequence[float],
              target: float | None = None, higher_is_better: bool = False, unit_label: str = "s",
              numer_name: str = "", denom_name: str = "") -> Row:
    """A row with the median per-round ratio, its min/max, and both medians as context."""
    rs = ratios(numer, denom)
    ctx = (f"median {numer_name + ' ' if numer_name else ''}{_fmt(statistics.median(numer))} {unit_label}"
           f" vs {denom_name + ' ' if denom_name else ''}{_fmt(statistics.median(denom))} {unit_label}")
    if len(rs) > 1:
        # Load from other jobs only ever adds time, so the best run of each contender is a
        # second, steadier estimate of the true ratio on a busy machine.
        best = (max(numer) / max(denom)) if higher_is_better else (min(numer) / min(denom))
        ctx += f"; best-of-{len(rs)} ratio {_fmt(best)}"
    return Row(benchmark, comparison, statistics.median(rs), min(rs), max(rs), "x", target,
               higher_is_better, ctx, len(rs), {"numer": list(numer), "denom": list(denom)})


def diff_row(benchmark: str, comparison: str, numer: Sequence[float], denom: Sequence[float],
             unit: str, target: float | None = None, scale: float = 1.0) -> Row:
    """A row with the median per-round difference ``(numer - denom) * scale`` in ``unit``."""
    ds = [(n - d) * scale for n, d in zip(numer, denom)]
    ctx = f"median {_fmt(statistics.median(numer) * scale)} vs {_fmt(statistics.median(denom) * scale)} {unit}"
    return Row(benchmark, comparison, statistics.median(ds), min(ds), max(ds), unit, target,
               False, ctx, len(ds), {"numer": list(numer), "denom": list(denom)})


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isnan(x):
        return "nan"
    ax = abs(x)
    return f"{x:.3g}" if ax >= 100 or ax == 0 else f"{x:.3f}" if ax >= 0.01 else f"{x:.2e}"


def markdown_table(rows: Sequence[Row]) -> str:
    """Render rows as a GitHub markdown table (ratios as ``1.03x``, spreads as ``1.01-1.06``)."""
    lines = ["| benchmark | comparison | median | spread (min-max) | target | status | context |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        u = "x" if r.unit == "x" else f" {r.unit}"
        spread = "-" if r.lo is None else f"{_fmt(r.lo)}-{_fmt(r.hi)}"
        if r.target is None:
            target = "-"
        else:
            target = f"{'>=' if r.higher_is_better else '<='} {_fmt(r.target)}{u}"
        status = {True: "PASS", False: "MISS", None: "-"}[r.ok]
        lines.append(f"| {r.benchmark} | {r.comparison} | {_fmt(r.value)}{u} | {spread} | {target} | "
                     f"{status} | {r.context} |")
    return "\n".join(lines)


def rows_from_foreign(benchmark: str, result: Mapping[str, Any]) -> list[Row]:
    """Turn another module's ``run()`` dict into rows, whatever shape it chose.

    Accepted: ``{"rows": [Row-like dicts]}`` (keys as in :class:`Row`; ``comparison`` may be
    called ``name``/``metric`` and ``value`` may be called ``ratio``/``median``), or a flat dict
    whose number-valued entries become one row each (ratios when the key mentions "ratio").
    """
    rows: list[Row] = []
    if isinstance(result.get("rows"), list):
        for d in result["rows"]:
            if isinstance(d, Row):
                rows.append(d)
                continue
            value = next((d[k] for k in ("value", "ratio", "median") if k in d), float("nan"))
            rows.append(Row(
                benchmark=str(d.get("benchmark", benchmark)),
                comparison=str(d.get("comparison", d.get("name", d.get("metric", "?")))),
                value=float(value), lo=_opt_float(d.get("lo", d.get("min"))),
                hi=_opt_float(d.get("hi", d.get("max"))), unit=str(d.get("unit", "x")),
                target=_opt_float(d.get("target")), higher_is_better=bool(d.get("higher_is_better", False)),
                context=str(d.get("context", "")), rounds=int(d.get("rounds", 0))))
        return rows
    for key, value in result.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        rows.append(Row(benchmark, key, float(value), unit="x" if "ratio" in key else ""))
    return rows


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


def fresh_python(code: str, env: Mapping[str, str] | None = None, timeout: float = 300) -> Any:
    """Run ``code`` in a fresh interpreter (repo on the path, one thread); return its last
    stdout line parsed as JSON. Used where a measurement must not see this process's state
    (import time, peak memory)."""
    full_env = child_env(env)
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                          env=full_env, cwd=REPO_ROOT, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for benchmark subprocesses: the repo importable, one thread per process,
    no inherited job variables (a benchmark run from inside a job must not join it)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                        "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")}
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def timed_subprocess(cmd: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 600) -> float:
    """Wall seconds for ``cmd`` from spawn to exit; raises with the output tail on failure."""
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), check=False, capture_output=True, text=True, env=child_env(env), cwd=REPO_ROOT,
                          timeout=timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed (exit {proc.returncode}):\n"
                           f"{(proc.stdout + proc.stderr)[-3000:]}")
    return wall


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge absolute numbers: host, CPUs, load, versions."""
    info: dict[str, Any] = {
        "host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
        "cpus": os.cpu_count(), "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        info["pytorch_lightning"] = version("pytorch-lightning")
    except Exception:  # noqa: BLE001 - any failure just means "not installed"
        info["pytorch_lightning"] = None
    return info


def write_results(rows: Sequence[Row], extra: Mapping[str, Any], out_dir: str, command: str,
                  info: dict[str, Any] | None = None) -> tuple[str, str]:
    """Write ``<host>-<date>.json`` and ``.md`` into ``out_dir``; return both paths.

    ``info`` is :func:`machine_info` taken when the run started (its load average is the
    one that matters); the load average at the end is added here.
    """
    os.makedirs(out_dir, exist_ok=True)
    stem = f"{socket.gethostname()}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    info = dict(info or machine_info())
    try:
        info["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    payload = {"command": command, "machine": info, "rows": [r.to_dict() for r in rows], **extra}
    json_path = os.path.join(out_dir, stem + ".json")
    md_path = os.path.join(out_dir, stem + ".md")
    with open(json_path + ".tmp", "w") as f:
        json.dump(payload, f, indent=1, default=str)
    os.replace(json_path + ".tmp", json_path)
    with open(md_path, "w") as f:
        load = info.get("loadavg_start")
        load_text = f", load average at start {load[0]:.1f}" if load else ""
        f.write(f"Command: `{command}`  \nMachine: {info['host']}, {info['cpus']} CPUs, "
                f"torch {info.get('torch')}, pytorch-lightning {info.get('pytorch_lightning')}, "
                f"{info['date']}{load_text}\n\n{markdown_table(rows)}\n")
    return json_path, md_path
