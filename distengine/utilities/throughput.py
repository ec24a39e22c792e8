"""``Throughput``: rolling rates (batches, samples, items, FLOPs per second, and MFU) from
running totals, and ``get_available_flops``: a device's peak FLOPs for MFU.

The metric names are Lightning's (``lightning_fabric.utilities.throughput``):

* always: ``time``, ``batches``, ``samples`` (and ``lengths`` with lengths) - the last totals;
* once ``window_size`` updates were seen: ``device/batches_per_sec``, ``device/samples_per_sec``
  (and ``device/items_per_sec`` with lengths), over the last ``window_size`` updates;
* with FLOPs: ``device/flops_per_sec``, and ``device/mfu`` when the peak FLOPs are known;
* with ``world_size > 1`` also the global ``batches_per_sec``, ``samples_per_sec``,
  ``items_per_sec`` and ``flops_per_sec``: this rank's rate times ``world_size`` (no
  collective: every rank is assumed to run the same batch sizes at the same pace).

Example::

    throughput = Throughput(window_size=10)
    t0 = time.perf_counter()
    for i in range(1, 101):
        train_step()
        throughput.update(time=time.perf_counter() - t0, batches=i, samples=i * batch_size)
        if i % 10 == 0:
            print(throughput.compute())
"""
from __future__ import annotations

from collections import deque

import torch

from distengine.distributed.rank_zero import rank_zero_warn
from distengine.utilities.flops import measure_flops

__all__ = ["Throughput", "get_available_flops", "measure_flops"]


class _Window(list):
    """The last ``maxlen`` values of a running total; each must be larger than the one before."""

    def __init__(self, maxlen: int, name: str) -> None:
        super().__init__()
        self.maxlen, self.name = maxlen, name

    def append(self, value: float) -> None:
        if self and value <= self[-1]:
            raise ValueError(f"Throughput.update: {self.name}={value} is not larger than the previous "
                             f"{self[-1]}; pass running totals that grow with every update")
        super().append(value)
        if len(self) > self.maxlen:
            del self[0]

    @property
    def full(self) -> bool:
        return len(self) == self.maxlen


class Throughput:
    """Rolling throughput over the last ``window_size`` updates (Lightning's ``Throughput``).

    Args:
        available_flops: peak FLOPs of one device (for ``device/mfu``); see :func:`get_available_flops`.
        world_size: number of devices; above 1 the global metrics are added.
        window_size: number of updates the rates are averaged over (at least 2).
        separator: between ``device`` and the metric name.
    """

    def __init__(self, available_flops: float | None = None, world_size: int = 1, window_size: int = 100,
                 separator: str = "/") -> None:
        if world_size < 1:
            raise ValueError(f"Throughput(world_size={world_size}): use the number of devices (1 or more)")
        if window_size < 2:
            raise ValueError(f"Throughput(window_size={window_size}): a rate needs a window of 2 or more updates")
        self.available_flops, self.world_size, self.separator = available_flops, world_size, separator
        self._time = _Window(window_size, "time")
        self._batches = _Window(window_size, "batches")
        self._samples = _Window(window_size, "samples")
        self._lengths = _Window(window_size, "lengths")
        self._flops: deque[float] = deque(maxlen=window_size)

    def update(self, *, time: float, batches: int, samples: int, lengths: int | None = None,
               flops: int | None = None) -> None:
        """Record running totals on this device: elapsed ``time`` (s), ``batches``, ``samples``,
        ``lengths`` (items, e.g. tokens); ``flops``: those of the latest batch alone."""
        if samples < batches:
            raise ValueError(f"Throughput.update: samples ({samples}) must be at least batches ({batches})")
        if lengths is not None and lengths < samples:
            raise ValueError(f"Throughput.update: lengths ({lengths}) must be at least samples ({samples})")
        self._time.append(time)
        self._batches.append(batches)
        self._samples.append(samples)
        if lengths is not None:
            self._lengths.append(lengths)
            if len(self._lengths) != len(self._samples):
                raise RuntimeError("Throughput.update: pass lengths with every update or with none")
        if flops is not None:
            self._flops.append(flops * self.world_size)

    def compute(self) -> dict[str, float]:
        """The metrics (module docstring); rates only once the window is full."""
        dev = f"device{self.separator}"
        out: dict[str, float] = {"time": self._time[-1], "batches": self._batches[-1], "samples": self._samples[-1]}
        if self._lengths:
            out["lengths"] = self._lengths[-1]
        scale = self.world_size if self.world_size > 1 else None
        span = self._time[-1] - self._time[0] if self._time else 0.0
        if self._time.full:
            rates = {"batches_per_sec": (self._batches[-1] - self._batches[0]) / span,
                     "samples_per_sec": (self._samples[-1] - self._samples[0]) / span}
            if self._lengths.full:
                rates["items_per_sec"] = (self._lengths[-1] - self._lengths[0]) / span
            for name, rate in rates.items():
                out[dev + name] = rate
                if scale:
                    out[name] = rate * scale
        if len(self._flops) == self._flops.maxlen:
            # the FLOPs done after the window's first update, over the window's time
            flops_per_sec = (sum(self._flops) - self._flops[0]) / span
            if scale:
                out["flops_per_sec"] = flops_per_sec
            out[dev + "flops_per_sec"] = flops_per_sec / self.world_size
            if self.available_flops:
                out[dev + "mfu"] = flops_per_sec / self.world_size / self.available_flops
        return out

    def reset(self) -> None:
        for window in (self._time, self._batches, self._samples, self._lengths, self._flops):
            window.clear()


# Peak dense tensor-core FLOP/s of one GPU (vendor data sheets, without sparsity), by the name
# torch.cuda.get_device_name reports. "tf32": float32 matmuls when TF32 is allowed.
_T = 1e12
_GPU_FLOPS: dict[str, dict[object, float]] = {
    "h200": {torch.float64: 34 * _T, torch.float32: 67 * _T, "tf32": 494.7 * _T, torch.bfloat16: 989.4 * _T,
             torch.float16: 989.4 * _T, torch.int8: 1978.9 * _T},
    "h100 sxm": {torch.float64: 33.5 * _T, torch.float32: 66.9 * _T, "tf32": 494.7 * _T,
                 torch.bfloat16: 989.4 * _T, torch.float16: 989.4 * _T, torch.int8: 1978.9 * _T},
    "h100 pcie": {torch.float64: 25.6 * _T, torch.float32: 51.2 * _T, "tf32": 378 * _T, torch.bfloat16: 756 * _T,
                  torch.float16: 756 * _T, torch.int8: 1513 * _T},
    "h100 nvl": {torch.float64: 30 * _T, torch.float32: 60 * _T, "tf32": 417.5 * _T, torch.bfloat16: 835 * _T,
                 torch.float16: 835 * _T, torch.int8: 1670 * _T},
    "a100": {torch.float64: 9.7 * _T, torch.float32: 19.5 * _T, "tf32": 156 * _T, torch.bfloat16: 312 * _T,
             torch.float16: 312 * _T, torch.int8: 624 * _T},
    "a10g": {torch.float32: 31.2 * _T, "tf32": 62.5 * _T, torch.bfloat16: 125 * _T, torch.float16: 125 * _T},
    "l40s": {torch.float32: 91.6 * _T, "tf32": 183 * _T, torch.bfloat16: 362 * _T, torch.float16: 362 * _T},
    "l40": {torch.float32: 90.5 * _T, "tf32": 90.5 * _T, torch.bfloat16: 181 * _T, torch.float16: 181 * _T},
    "l4": {torch.float32: 30.3 * _T, "tf32": 60 * _T, torch.bfloat16: 121 * _T, torch.float16: 121 * _T},
    "rtx 4090": {torch.float32: 82.6 * _T, "tf32": 82.6 * _T, torch.bfloat16: 165.2 * _T,
                 torch.float16: 165.2 * _T},
    "rtx 3090": {torch.float32: 35.6 * _T, "tf32": 35.6 * _T, torch.bfloat16: 71 * _T, torch.float16: 71 * _T},
    "v100": {torch.float64: 7.8 * _T, torch.float32: 15.7 * _T, torch.float16: 125 * _T},
    "t4": {torch.float32: 8.1 * _T, torch.float16: 65 * _T, torch.int8: 130 * _T},
}


def _gpu_key(name: str) -> str | None:
    """The table row for a device name such as 'NVIDIA H100 80GB HBM3' (None: not in the table)."""
    n = name.lower()
    if "h200" in n:
        return "h200"
    if "h100" in n:
        return "h100 nvl" if "nvl" in n else "h100 pcie" if ("pcie" in n or "hbm2e" in n) else "h100 sxm"
    for key in ("a100", "a10g", "l40s", "l40", "l4", "rtx 4090", "rtx 3090", "v100", "t4"):
        if key in n:
            return key
    return None


def get_available_flops(device: torch.device, dtype: torch.dtype | str) -> int | None:
    """Peak FLOP/s of ``device`` for matmuls in ``dtype`` (None on a CPU, as in Lightning, and
    on a GPU or dtype the table lacks, with a warning). float32 counts as TF32 on Ampere and
    later unless ``torch.set_float32_matmul_precision("highest")``."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    key = _gpu_key(name)
    if key is None:
        rank_zero_warn(f"No peak FLOPs known for {name!r}: device/mfu is not logged")
        return None
    row = _GPU_FLOPS[key]
    if dtype is torch.float32 and torch.cuda.get_device_capability(device)[0] >= 8 \
            and torch.get_float32_matmul_precision() != "highest":
        dtype = "tf32"
    if dtype not in row:
        rank_zero_warn(f"No peak FLOPs known for {name!r} in {dtype}: device/mfu is not logged")
        return None
    return int(row[dtype])
