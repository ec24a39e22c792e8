"""Run one corpus script under distengine and under Lightning, and compare what users see.

The scripts repeat the same small modules and set-up on purpose: each is a whole program the
way a user writes one, with nothing shared but the data and report helpers in runtime/.

A corpus script (tests/conformance/scripts/*.py) is an ordinary Lightning script that ends with
`report(trainer, model)`. Its docstring says which Lightning it is written for, and lists the
differences the harness is expected to find, each with its reason::

    '''Manual optimization, one optimizer.

    style: 2.x
    known checkpoints: distengine also writes ...
        (an indented line continues the reason)
    '''

A line `world: 4` runs the script only as 4 rank processes started directly (each with the
RANK/LOCAL_RANK/WORLD_SIZE/MASTER_* environment a launcher sets, no launcher process: the suite
starts at most 4 processes a test): distengine's through its rank entry point, Lightning's as an
already-launched job of PL_TRAINER_DEVICES=4; everything below is then compared on every rank.

distengine's side runs forked from a zygote that has imported torch (tests/zygote.py): each
run then skips about 2.5 CPU-seconds of imports. Its 2-rank runs start their ranks the same way,
with the environment `distengine launch --cpus 2` gives them, except the LAUNCHED scripts', which
run under the launcher itself. DISTENGINE_TEST_START=spawn: fresh processes, the launcher for all.

Compared (categories): `weights` (torch.equal), `global_step`, `current_epoch`,
`callback_metrics` (names and values), `logged` (the (folder, tag, step, value) scalars read back
from the TensorBoard event files and CSVLogger files), `checkpoints` (the .ckpt files' paths under the run folder),
`extra` (whatever else the script reports). A difference the script does not declare fails the
test, and so does a declared one that no longer occurs.
"""
from __future__ import annotations

import ast
import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "scripts"
CATEGORIES = ("weights", "global_step", "current_epoch", "callback_metrics", "logged", "checkpoints", "extra",
              "ranks")
REL_TOL = 1e-5  # float32 sums may be accumulated in another order; 1e-5 is far below any real slip


@dataclass
class Script:
    path: Path
    title: str
    style: str
    known: dict[str, str] = field(default_factory=dict)
    ranks: bool = True  # also run on 2 ranks (LAUNCHED: under `distengine launch --cpus 2`)
    world: int = 1  # > 1: run only as this many rank processes started directly, compared on every rank

    @property
    def name(self) -> str:
        return self.path.stem


def load_script(path: Path) -> Script:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    lines = doc.splitlines()
    title = lines[0].strip() if lines else path.stem
    style, known, ranks, world, current = "", {}, True, 1, None
    for raw in lines[1:]:
        line = raw.strip()
        if raw[:1].isspace() and current is not None and line:  # an indented line continues a reason
            known[current] += " " + line
            continue
        current = None
        if line.startswith("style:"):
            style = line.split(":", 1)[1].strip()
        elif line.startswith("known "):
            category, reason = line[len("known "):].split(":", 1)
            current = category.strip()
            known[current] = reason.strip()
        elif line.startswith("ranks:"):
            ranks = line.split(":", 1)[1].strip() != "no"
        elif line.startswith("world:"):
            world = int(line.split(":", 1)[1])
    if style not in ("2.x", "1.x"):
        raise ValueError(f"{path.name}: the docstring needs a line 'style: 2.x' or 'style: 1.x'")
    unknown = set(known) - set(CATEGORIES)
    if unknown:
        raise ValueError(f"{path.name}: unknown categories {sorted(unknown)}; use {CATEGORIES}")
    if world > 1:
        ranks = False  # its rank count only, not the 1-process and 2-rank runs
    return Script(path, title, style, known, ranks, world)


def corpus() -> list[Script]:
    return [load_script(p) for p in sorted(SCRIPTS.glob("*.py"))]


@dataclass
class Run:
    folder: Path
    results: dict[int, dict]
    weights: dict[int, dict[str, torch.Tensor]]
    scalars: dict[tuple[str, str, int], float]
    checkpoints: list[str]
    output: str
    approx: bool = False  # a stored Lightning result from a CPU that rounds otherwise: weights compared within REL_TOL


# what every run gets; part of the stored reference results' key (cache.py)
FIXED_ENV = {"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "PL_DISABLE_FORK": "1", "DISTENGINE_TIMEOUT": "60"}


def _env(out: Path, distengine: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "RANK", "LOCAL_RANK",
                                                                    "WORLD_SIZE", "MASTER_", "SLURM_"))}
    paths = [str(HERE / "runtime")]
    if distengine:
        paths.insert(0, str(HERE / "shim"))
    env.update({"PYTHONPATH": os.pathsep.join(paths), "CONFORMANCE_OUT": str(out), **FIXED_ENV})
    return env


def direct(ranks: int) -> bool:
    """More than 2 ranks are started directly, one process a rank with the environment a launcher
    gives it (no launcher process: the suite starts at most 4 processes a test)."""
    return ranks > 2


def _command(script: Script, python: Path | str, distengine: bool, ranks: int) -> tuple[list[str], dict]:
    if ranks == 1:
        return [str(python), "-W", "ignore", str(script.path)], {}
    if direct(ranks):
        if distengine:  # the entry point `distengine launch` starts each rank with
            return [str(python), "-W", "ignore", "-m", "distengine.launch.rank", str(script.path)], {}
        # Lightning joins an already-launched job (LOCAL_RANK set) of PL_TRAINER_DEVICES processes
        return [str(python), "-W", "ignore", str(script.path)], {"PL_TRAINER_ACCELERATOR": "cpu",
                                                                 "PL_TRAINER_DEVICES": str(ranks)}
    if distengine:
        return [str(Path(python).parent / "distengine"), "launch", "--cpus", str(ranks), str(script.path)], {}
    # Lightning on N CPU ranks: torchrun starts the ranks; the PL_TRAINER_* variables are
    # Lightning's own way to set Trainer defaults from outside the script
    from tests.helpers import free_port

    return ([str(python), "-W", "ignore", "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
             "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(script.path)],
            {"PL_TRAINER_ACCELERATOR": "cpu", "PL_TRAINER_DEVICES": str(ranks)})


#: 2-rank runs under the real `distengine launch --cpus 2` (the rest start their two ranks from
#: the zygote with the environment the launcher gives them; see `forked`): a checkpointing, an
#: early-stopping, a resuming, a two-logger, a manual-optimization and a 1.x script
LAUNCHED = frozenset({"checkpoint_topk_last", "early_stopping", "resume_from_checkpoint", "two_loggers",
                      "manual_one_optimizer", "onex_trainer_flags"})


def forked(script: Script, python: Path | str, distengine: bool, ranks: int) -> bool:
    """Whether distengine's side of this run is forked from the preloaded zygote (tests/zygote.py)
    instead of started as fresh processes: every distengine run but the LAUNCHED scripts' 2-rank
    runs, unless DISTENGINE_TEST_START=spawn."""
    from tests import zygote

    return (distengine and zygote.enabled() and str(python) == sys.executable
            and not (ranks == 2 and script.name in LAUNCHED))


def _rank_env(env: dict[str, str], rank: int, ranks: int, port: str, distengine: bool) -> dict[str, str]:
    out = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(ranks),
           "LOCAL_WORLD_SIZE": str(ranks), "GROUP_RANK": "0", "NODE_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    if distengine:  # what `distengine launch --cpus N` adds for its ranks (launch/config.rank_environment)
        out.update(DISTENGINE_ACCELERATOR="cpu", PYTHONFAULTHANDLER="1", GLOO_SOCKET_IFNAME="lo")
    return out


def start(script: Script, python: Path | str, folder: Path, distengine: bool, ranks: int = 1):
    """Start `script` in `folder` (its cwd, so default_root_dir is the folder); `collect` waits."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd, extra_env = _command(script, python, distengine, ranks)
    env = _env(folder / "_report", distengine)
    env.update(extra_env)
    fork = forked(script, python, distengine, ranks)
    if ranks == 1 or not (fork or direct(ranks)):
        log = open(folder / "_output.log", "w+")
        if fork:
            from tests import zygote

            proc = zygote.zygote(str(python), env).start(str(script.path), str(folder), env, log.name)
        else:
            proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        return (script, folder, distengine, ranks, [proc], [log])
    from tests.helpers import free_port

    port, procs, logs = str(free_port()), [], []
    for rank in range(ranks):
        logs.append(open(folder / f"_output-rank{rank}.log", "w+"))
        env_rank = _rank_env(env, rank, ranks, port, distengine)
        if fork:
            from tests import zygote

            procs.append(zygote.zygote(str(python), env).start(str(script.path), str(folder), env_rank,
                                                               logs[-1].name, mode="rank"))
        else:
            procs.append(subprocess.Popen(cmd, cwd=folder, env=env_rank, stdout=logs[-1], stderr=subprocess.STDOUT))
    return (script, folder, distengine, ranks, procs, logs)


def _wait(procs: list, timeout: float) -> None:
    """Wait for every process; when one fails the others get 10 s (they may wait on it in a
    collective), then they, and everything past ``timeout``, are killed."""
    import time

    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if any(p.returncode not in (None, 0) for p in procs):
            deadline = min(deadline, time.monotonic() + 10)
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def collect(started, timeout: float = 240) -> Run:
    script, folder, distengine, ranks, procs, logs = started
    _wait(procs, timeout)
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    output = texts[0] if len(texts) == 1 else "".join(f"--- rank {r}:\n{t}" for r, t in enumerate(texts))
    side = "distengine" if distengine else "Lightning"
    failed = [p.returncode for p in procs if p.returncode != 0]
    if failed:
        raise AssertionError(f"{script.name} exited {failed[0]} under {side} ({ranks} rank(s)):\n"
                             f"{output[-6000:]}")
    out = folder / "_report"
    results, weights = {}, {}
    for r in range(ranks):
        try:
            results[r] = json.loads((out / f"result-rank{r}.json").read_text())
            weights[r] = torch.load(out / f"weights-rank{r}.pt", weights_only=True)
        except FileNotFoundError as exc:
            raise AssertionError(f"{script.name}: rank {r} wrote no report under {side} ({exc}):\n"
                                 f"{output[-6000:]}") from None
    return Run(folder, results, weights, read_scalars(folder), checkpoint_files(folder), output)


def run_both(script: Script, reference, folder: Path, ranks: int = 1) -> tuple[Run, Run]:
    """Run the script under distengine and under Lightning side by side; (ours, theirs).

    `reference`: style -> the Lightning interpreter, asked for only when the stored Lightning
    result (cache.py) does not match the script; DISTENGINE_CONFORMANCE_RECORD=1 stores a new one."""
    from tests.conformance import cache

    stored = cache.load(script, ranks)
    ours = start(script, sys.executable, folder / "distengine", distengine=True, ranks=ranks)
    if stored is not None:
        return collect(ours), stored
    theirs = start(script, reference(script.style), folder / "lightning", distengine=False, ranks=ranks)
    ours, theirs = collect(ours), collect(theirs)
    if os.environ.get("DISTENGINE_CONFORMANCE_RECORD") == "1" and cache.enabled(script.style):
        cache.save(script, ranks, theirs)
    return ours, theirs


def read_scalars(folder: Path) -> dict[tuple[str, str, int], float]:
    """Every scalar in every TensorBoard event file and CSVLogger metrics.csv under `folder`:
    (log dir or csv file, tag, step) -> value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[tuple[str, str, int], float] = {}
    for logdir in sorted({p.parent for p in folder.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
        acc.Reload()
        rel = str(logdir.relative_to(folder))
        for tag in acc.Tags()["scalars"]:
            for event in acc.Scalars(tag):
                key = (rel, tag, int(event.step))
                # a tag logged twice at one step keeps the last value, as TensorBoard shows it
                found[key] = float(event.value)
    for csv_file in sorted(folder.rglob("metrics.csv")):
        rel = str(csv_file.relative_to(folder))
        with open(csv_file, newline="") as f:
            for row in csv.DictReader(f):
                step = int(float(row.pop("step")))
                for tag, value in row.items():
                    if value not in ("", None):
                        found[(rel, tag, step)] = float(value)
    return found


def checkpoint_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.ckpt") if "_report" not in p.parts)


def _close(a: float, b: float) -> bool:
    if math.isnan(a) and math.isnan(b):
        return True
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-7)


def _values_close(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return _close(float(a), float(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_values_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_values_close(a[k], b[k]) for k in a)
    return a == b


def _dict_diff(ours: dict, theirs: dict, limit: int = 6) -> str | None:
    lines = []
    for key in sorted(set(ours) | set(theirs), key=str):
        if key not in theirs:
            lines.append(f"only distengine: {key} = {ours[key]}")
        elif key not in ours:
            lines.append(f"only Lightning: {key} = {theirs[key]}")
        elif not _values_close(ours[key], theirs[key]):
            lines.append(f"{key}: distengine {ours[key]} != Lightning {theirs[key]}")
    if not lines:
        return None
    more = f" (+{len(lines) - limit} more)" if len(lines) > limit else ""
    return "; ".join(lines[:limit]) + more


def weights_diff(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], approx: bool = False) -> str | None:
    """None when every tensor is equal: bit for bit, or with `approx` within REL_TOL (and 1e-6 absolute)."""
    if ours.keys() != theirs.keys():
        return f"state dict keys differ: {sorted(set(ours) ^ set(theirs))}"

    def same(a, b):
        if not approx:
            return torch.equal(a, b)
        return a.shape == b.shape and a.dtype == b.dtype and torch.allclose(a, b, rtol=REL_TOL, atol=1e-6,
                                                                          equal_nan=True)

    bad = [k for k in ours if not same(ours[k], theirs[k])]
    if not bad:
        return None
    k = bad[0]
    gap = (ours[k].double() - theirs[k].double()).abs().max().item()
    return f"{len(bad)} of {len(ours)} tensors differ ({k}: max |diff| {gap:.3g})"


def compare_ranks(ours: Run, theirs: Run) -> str | None:
    """On N ranks: the same steps and epochs as Lightning, and every rank of ours in step."""
    steps = {r: (res["global_step"], res["current_epoch"]) for r, res in ours.results.items()}
    if len(set(steps.values())) > 1:
        return f"distengine ranks disagree on (global_step, current_epoch): {steps}"
    for r in ours.weights:
        if weights_diff(ours.weights[0], ours.weights[r]) is not None:
            return f"distengine rank {r} ended with other weights than rank 0"
    a, b = ours.results[0], theirs.results[0]
    if (a["global_step"], a["current_epoch"]) != (b["global_step"], b["current_epoch"]):
        return (f"(global_step, current_epoch) on 2 ranks: distengine {(a['global_step'], a['current_epoch'])} "
                f"!= Lightning {(b['global_step'], b['current_epoch'])}")
    return None


def compare_every_rank(ours: Run, theirs: Run) -> dict[str, str]:
    """:func:`compare` on each rank (a script with ``world:``): category -> what differs, on which ranks."""
    found: dict[str, str] = {}
    for rank in sorted(theirs.results):
        for category, text in compare(ours, theirs, rank).items():
            found[category] = found.get(category, "") + ("; " if category in found else "") + f"rank {rank}: {text}"
    return found


def compare(ours: Run, theirs: Run, rank: int = 0) -> dict[str, str]:
    """category -> what differs, for every category that differs (``rank`` of each run; the logged
    scalars and checkpoint files are the run's)."""
    if rank not in ours.results:
        return {"ranks": f"distengine rank {rank} wrote no report"}
    a, b = ours.results[rank], theirs.results[rank]
    found = {
        "weights": weights_diff(ours.weights[rank], theirs.weights[rank], approx=theirs.approx),
        "global_step": None if a["global_step"] == b["global_step"]
        else f"distengine {a['global_step']} != Lightning {b['global_step']}",
        "current_epoch": None if a["current_epoch"] == b["current_epoch"]
        else f"distengine {a['current_epoch']} != Lightning {b['current_epoch']}",
        "callback_metrics": _dict_diff(a["callback_metrics"], b["callback_metrics"]),
        "logged": _dict_diff(ours.scalars, theirs.scalars),
        "checkpoints": None if ours.checkpoints == theirs.checkpoints
        else f"distengine {ours.checkpoints} != Lightning {theirs.checkpoints}",
        "extra": _dict_diff(a["extra"], b["extra"]),
    }
    return {k: v for k, v in found.items() if v is not None}
