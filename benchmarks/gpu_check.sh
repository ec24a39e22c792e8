#!/usr/bin/env bash
# GPU check for distengine: one PASS/FAIL/SKIP line per check, results JSON in $OUT (or benchmarks/results).
#
#   benchmarks/gpu_check.sh                  # on a machine with an NVIDIA GPU (about 8 minutes on one H100, estimated; +4-5 on 2 GPUs, with the 2-rank FSDP2 runs)
#   benchmarks/gpu_check.sh --dry-run-cpu    # the same code paths on the CPU, tiny, targets not judged
#   benchmarks/gpu_check.sh --only precision-bf16-mixed,compile --rounds 3
#
# Needs NO network and installs nothing. It needs a Python with a CUDA build of torch >= 2.10;
# it tries, in order, $PYTHON, python3, python, and .venv/bin/python, and takes the first whose
# torch sees a GPU (the repo's own .venv usually holds a CPU-only torch, so the system Python
# comes first). distengine itself is used straight from this working tree, not installed: when
# the chosen Python cannot already import it, a throw-away folder of symlinks that mirrors the
# installed package layout (distengine/, with launch/ as distengine.launch) goes on PYTHONPATH.
# Modules the checks use from that Python: nvidia-ml-py (pynvml; device-stats fails without
# it), psutil (CPU/RAM figures), pytest (sigkill-resume), pytorch-lightning 2.6.6 (optional:
# the precision checks add Lightning's figures when it is there). torch.compile needs a C
# compiler and the interpreter's Python.h; without them the compile check says SKIP and why.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cd "$repo"

dry_run=0
for arg in "$@"; do
    if [[ "$arg" == "--dry-run-cpu" ]]; then
        dry_run=1
    fi
done

# A probe prints "ok" when this interpreter's torch is usable for the run we want.
# One torch import per candidate: it takes seconds on a busy machine.
if [[ $dry_run -eq 1 ]]; then
    want_cuda=False
else
    want_cuda=True
fi
probe="import sys, torch
ok = torch.cuda.is_available() or not $want_cuda
print(('ok' if ok else 'no-cuda'), sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"

py=""
tried=()
for cand in "${PYTHON:-}" python3 python "$repo/.venv/bin/python"; do
    [[ -n "$cand" ]] || continue
    command -v "$cand" >/dev/null 2>&1 || { tried+=("$cand (not found)"); continue; }
    answer="$("$cand" -c "$probe" 2>/dev/null | tail -n 1 || true)"
    if [[ "$answer" == ok* ]]; then
        py="$cand"
        break
    fi
    tried+=("$cand (${answer:-no torch})")
done
if [[ -z "$py" ]]; then
    echo "FAIL setup: no Python with a CUDA-enabled torch; tried: ${tried[*]:-nothing}." \
         "Set PYTHON=/path/to/python (torch>=2.10 built with CUDA)."
    exit 1
fi
echo "using $py (${answer#ok })"

# Make `distengine` (with distengine.launch) importable from this tree without installing.
shim=""
# shellcheck disable=SC2317  # called through the EXIT trap
cleanup() { if [[ -n "$shim" ]]; then rm -rf "$shim"; fi; }
trap cleanup EXIT
if ! PYTHONPATH="" "$py" -c 'import distengine.launch' >/dev/null 2>&1 \
   || [[ "$(PYTHONPATH="" "$py" -c 'import distengine, os; print(os.path.realpath(distengine.__file__))' 2>/dev/null)" \
         != "$(realpath "$repo/distengine/__init__.py")" ]]; then
    shim="$(mktemp -d "${TMPDIR:-/tmp}/distengine-gpu-check.XXXXXX")"
    mkdir "$shim/distengine"
    for entry in "$repo"/distengine/*; do
        ln -s "$entry" "$shim/distengine/$(basename "$entry")"
    done
    ln -s "$repo/launch" "$shim/distengine/launch"
    ln -s "$repo/slurm" "$shim/distengine/slurm"
    export PYTHONPATH="$shim:$repo${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
fi

missing="$("$py" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("pynvml", "psutil", "pytest", "pytorch_lightning")
               if importlib.util.find_spec(m) is None))
EOF
)"
if [[ -n "$missing" ]]; then
    echo "note: not installed here: $missing (pynvml comes from the nvidia-ml-py package)"
fi

# The check finishes in about 8 minutes on one H100 (estimated from the H200 run; see gpu_check.py's
# docstring; 4-5 more on 2 GPUs, with the 2-rank FSDP2 runs); the timeout only stops a hang.
status=0
timeout --signal=TERM --kill-after=30 1200 "$py" "$here/gpu_check.py" "$@" || status=$?
exit "$status"
