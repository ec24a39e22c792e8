"""The stored reference side of the conformance harness: what Lightning produced for each script.

Running real Lightning for every corpus script on 1 process and on 2 ranks is most of the
harness's time, and its output only changes when one of its inputs does. So each result is kept,
committed, under `tests/conformance/reference/<script>/<ranks>/`:

  key.json      what the result was produced from (below)
  run.json      each rank's result json, the logged scalars, the checkpoint paths (what compare reads)
  weights.pt    each rank's state dict (CPU tensors)

The key has two parts. `source`: a hash of the script's bytes, every file in runtime/, the
reference recipe (Lightning and torch versions, envs.RECIPES), the rank count, the command shape
and the environment variables the harness gives the Lightning side (and any PL_*/LIGHTNING_* ones
inherited). `platform`: the machine, torch's CPU capability, the Python version and `kernels`, a
hash of the exact bits a few float operations give here (matrix products of several shapes, a
linear layer's backward, convolution, normalisation, softmax, the elementwise functions an
optimizer uses), on one thread as the harness runs. Float kernels differ across CPUs, and weights
are compared with torch.equal: two CPUs of the same capability (AVX512 with and without AMX, say)
round a matrix product differently, so the capability alone is not enough (found when a fresh
machine read results stored on another one and every script differed in the 8th digit). An entry
whose platform differs only in `kernels` is still used: on 2 ranks as it is (only steps and
epochs are compared with Lightning there), on 1 process with the weights compared within
harness.REL_TOL instead of bit for bit (`Run.approx`; the test says so). Exact comparison
everywhere: `DISTENGINE_CONFORMANCE_CACHE=0` (Lightning runs here), or record on this machine.
Otherwise an entry is used only when both parts match; if not, the harness runs Lightning as
before (building its environment on first use). A stale entry (its script, runtime/ or recipe
changed since) is never used, and test_reference_entries_match_their_scripts fails until it is
refreshed:

    .venv/bin/python -m tests.conformance.record            # every script
    .venv/bin/python -m tests.conformance.record NAME ...   # some

A new script without an entry simply runs Lightning; `DISTENGINE_CONFORMANCE_RECORD=1` makes the
tests store what they ran. `DISTENGINE_CONFORMANCE_CACHE=0` ignores the store (always run
Lightning); so does naming another interpreter with DISTENGINE_CONFORMANCE_PL1/PL2.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

from tests.conformance import envs, harness

STORE = harness.HERE / "reference"
FORMAT = 1  # bump when what is stored, or how Lightning is started, changes


def enabled(style: str) -> bool:
    return os.environ.get("DISTENGINE_CONFORMANCE_CACHE", "1") != "0" and not os.environ.get(envs.OVERRIDE[style])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _invocation(script: harness.Script, ranks: int) -> dict:
    """How the harness starts Lightning for `script`, with paths and the port left out."""
    cmd, extra = harness._command(script, "python", False, ranks)
    if "--master-port" in cmd:
        del cmd[cmd.index("--master-port") + 1]
    env = harness._env(Path("out"), distengine=False)
    env.update(extra)
    kept = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "CONFORMANCE_OUT")
            and (k in harness.FIXED_ENV or k.startswith(("PL_", "LIGHTNING")))}
    shape = {"start": "direct"} if harness.direct(ranks) else {}  # one process a rank, no launcher
    return {"command": [a if a != str(script.path) else script.name for a in cmd], "env": dict(sorted(kept.items())),
            **shape}


def source_parts(script: harness.Script, ranks: int) -> dict:
    runtime = {p.name: _sha(p.read_bytes()) for p in sorted((harness.HERE / "runtime").glob("*.py"))}
    return {"format": FORMAT, "script": _sha(script.path.read_bytes()), "runtime": runtime,
            "reference": envs.RECIPES[script.style], "ranks": ranks, **_invocation(script, ranks)}


@functools.lru_cache(maxsize=1)
def kernels_fingerprint() -> str:
    """A hash of the bits of float results that depend on how this CPU's kernels round (one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(1234)
        outs = []
        for m, k, n in ((3, 7, 5), (16, 32, 8), (64, 64, 64), (257, 129, 33), (1000, 20, 1)):
            a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
            outs += [a @ b, a.t().contiguous().t() @ b, torch.addmm(torch.randn(n, generator=g), a, b)]
        x = torch.randn(32, 20, generator=g, requires_grad=True)
        lin = torch.nn.Linear(20, 16)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(16, 20, generator=g))
            lin.bias.copy_(torch.randn(16, generator=g))
        y = torch.nn.functional.gelu(lin(x))
        loss = torch.nn.functional.cross_entropy(y, torch.arange(32) % 16) + y.pow(2).mean()
        loss.backward()
        outs += [y, loss, x.grad, lin.weight.grad, lin.bias.grad]
        img = torch.randn(2, 3, 12, 12, generator=g)
        outs += [torch.nn.functional.conv2d(img, torch.randn(4, 3, 3, 3, generator=g), padding=1)]
        v = torch.randn(4096, generator=g)
        outs += [torch.nn.functional.layer_norm(v.view(64, 64), (64,)), torch.softmax(v, 0), v.exp(), v.tanh(),
                 v.sigmoid(), v.abs().sqrt(), torch.log1p(v.abs()), v.sum(), v.square().mean(), v.norm()]
        h = hashlib.sha256()
        for t in outs:
            h.update(t.detach().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
    finally:
        torch.set_num_threads(threads)


def platform_parts() -> dict:
    return {"machine": platform.machine(), "cpu": torch.backends.cpu.get_cpu_capability(),
            "python": f"{sys.version_info[0]}.{sys.version_info[1]}", "kernels": kernels_fingerprint()}


def key(script: harness.Script, ranks: int) -> dict:
    parts = source_parts(script, ranks)
    return {"source": _sha(json.dumps(parts, sort_keys=True).encode()), "platform": platform_parts(), "parts": parts}


def entry(script: harness.Script, ranks: int, store: Path = STORE) -> Path:
    return store / script.name / str(ranks)


def stored_key(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "key.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def load(script: harness.Script, ranks: int, store: Path = STORE) -> harness.Run | None:
    """The stored Lightning run of `script` on `ranks`, or None when there is none for these inputs."""
    if not enabled(script.style):
        return None
    folder = entry(script, ranks, store)
    want, have = key(script, ranks), stored_key(folder)
    if have is None or have["source"] != want["source"]:
        return None
    other = {k for k in set(want["platform"]) | set(have["platform"])
             if want["platform"].get(k) != have["platform"].get(k)}
    if other - {"kernels"}:
        return None
    # Only the rounding differs (the same capability, other kernels): a 2-rank entry is still exact
    # for what is compared on 2 ranks (steps and epochs); a 1-process one is compared within float
    # tolerance (Run.approx), which no real slip (a missed or extra step) passes.
    approx = bool(other) and ranks != 2  # 1 process, or a `world:` script: weights compared
    run = json.loads((folder / "run.json").read_text())
    weights = torch.load(folder / "weights.pt", weights_only=True)
    return harness.Run(folder, {int(r): res for r, res in run["results"].items()},
                       {int(r): w for r, w in weights.items()},
                       {(d, tag, int(step)): float(v) for d, tag, step, v in run["scalars"]},
                       list(run["checkpoints"]), f"(Lightning's stored result, {folder})", approx=approx)


def save(script: harness.Script, ranks: int, run: harness.Run, store: Path = STORE) -> Path:
    folder = entry(script, ranks, store)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    torch.save({r: {k: v.detach().cpu().clone() for k, v in w.items()} for r, w in sorted(run.weights.items())},
               folder / "weights.pt")
    scalars = [[d, tag, step, value] for (d, tag, step), value in sorted(run.scalars.items())]
    results = {str(r): res for r, res in sorted(run.results.items())}
    # one scalar a line: small, and a refreshed entry's diff shows what changed
    text = (f'{{"checkpoints": {json.dumps(run.checkpoints)},\n"results": {json.dumps(results, sort_keys=True)},\n'
            '"scalars": [\n' + ",\n".join(json.dumps(s) for s in scalars) + "\n]}\n")
    (folder / "run.json").write_text(text)
    (folder / "key.json").write_text(json.dumps(key(script, ranks), sort_keys=True, indent=1) + "\n")
    return folder


def rank_counts(script: harness.Script) -> list[int]:
    if script.world > 1:
        return [script.world]
    return [1, 2] if script.ranks else [1]


def missing(scripts=None, store: Path = STORE) -> list[tuple[harness.Script, int]]:
    """(script, ranks) pairs with no usable entry here: the harness runs Lightning for these."""
    scripts = harness.corpus() if scripts is None else scripts
    return [(s, n) for s in scripts for n in rank_counts(s) if load(s, n, store) is None]


def stale(store: Path = STORE, scripts=None) -> list[str]:
    """Entries whose script is gone, or whose script, runtime/ or recipe changed since recording."""
    by_name = {s.name: s for s in (harness.corpus() if scripts is None else scripts)}
    found = []
    for folder in sorted(p for p in store.glob("*/*") if p.is_dir()):
        script, have = by_name.get(folder.parent.name), stored_key(folder)
        if script is None:
            found.append(f"{folder.parent.name}/{folder.name} (no such script)")
        elif not folder.name.isdigit() or int(folder.name) not in rank_counts(script):
            found.append(f"{folder.parent.name}/{folder.name} (the script does not run on {folder.name} ranks)")
        elif have is None or have["source"] != key(script, int(folder.name))["source"]:
            found.append(f"{folder.parent.name}/{folder.name}")
    return found
