"""`RunIf` on the distengine side of the gate (our code; the suite's own helper calls Lightning's
private `_runif_reasons`). The same keywords, each decided from the machine and the installed
packages, so a test is skipped here exactly when its requirement is not met here."""
import importlib.util
import os
import sys

import pytest
import torch
from packaging.version import Version

_PACKAGES = {"deepspeed": "deepspeed", "rich": "rich", "omegaconf": "omegaconf", "psutil": "psutil",
             "sklearn": "sklearn", "onnx": "onnx", "onnxscript": "onnxscript", "tensorrt": "torch_tensorrt"}
_TORCH = Version(Version(torch.__version__).base_version)


def _reasons(min_cuda_gpus=0, min_torch=None, max_torch=None, min_python=None, bf16_cuda=False, tpu=False,
             mps=None, skip_windows=False, standalone=False, dynamo=False, linux_only=False, **packages):
    reasons = []
    if min_cuda_gpus and torch.cuda.device_count() < min_cuda_gpus:
        reasons.append(f"GPUs>={min_cuda_gpus}")
    if min_torch and _TORCH < Version(min_torch):
        reasons.append(f"torch>={min_torch}")
    if max_torch and _TORCH >= Version(max_torch):
        reasons.append(f"torch<{max_torch}")
    if min_python and sys.version_info < tuple(int(p) for p in min_python.split(".")):
        reasons.append(f"python>={min_python}")
    if bf16_cuda and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        reasons.append("CUDA device bf16")
    if tpu:
        reasons.append("TPU")
    if mps is True and not torch.backends.mps.is_available():
        reasons.append("MPS")
    if mps is False and torch.backends.mps.is_available():
        reasons.append("not MPS")
    if skip_windows and sys.platform == "win32":
        reasons.append("unimplemented on Windows")
    if linux_only and sys.platform != "linux":
        reasons.append("only run on Linux")
    if standalone and os.getenv("PL_RUN_STANDALONE_TESTS", "0") != "1":
        reasons.append("Standalone execution")
    if dynamo and sys.platform == "win32":
        reasons.append("torch.dynamo")
    for key, wanted in packages.items():
        if key not in _PACKAGES:
            reasons.append(f"unknown RunIf condition {key}")
        elif wanted and importlib.util.find_spec(_PACKAGES[key]) is None:
            reasons.append(key)
    return reasons


def RunIf(**kwargs):
    reasons = _reasons(**kwargs)
    return pytest.mark.skipif(condition=bool(reasons), reason=f"Requires: [{' + '.join(reasons)}]", **kwargs)


_xfail_gloo_windows = pytest.mark.xfail(RuntimeError, strict=True, condition=sys.platform == "win32",
                                        reason="makeDeviceForHostname(): unsupported gloo device")
