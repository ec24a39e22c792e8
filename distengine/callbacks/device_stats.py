"""Log GPU, CPU and memory statistics every N training steps.

GPU figures come from NVML (the ``pynvml`` module of the ``nvidia-ml-py`` package), not from
``torch.cuda``: reading them never synchronises the device. ``torch.cuda`` is asked once, at the
first reading and only in a job that trains on the GPU, which NVML device each training GPU
is; a CPU job never initialises CUDA through this callback. CPU and RAM come from
``psutil``. Global rank zero reads the GPUs its node trains on, named by their CUDA index
(one process on ``devices=[k]``: GPU ``k``; several local ranks: ``cuda:0`` up to
``LOCAL_WORLD_SIZE - 1``), each matched to its NVML handle by UUID or PCI address, never by
position, and writes to the loggers; other ranks do nothing, so the callback adds no collective.

Keys: ``device_stats/gpu<i>.utilization`` (%), ``.memory_utilization`` (%),
``.memory_used_gb``, ``.memory_total_gb``, ``.temperature_c``, ``.power_w``, and
``device_stats/cpu_percent``, ``device_stats/ram_used_gb``, ``device_stats/ram_percent``,
``device_stats/process_rss_gb``.

Example::

    from distengine.callbacks import DeviceStatsMonitor

    trainer = de.Trainer(logger=True, callbacks=[DeviceStatsMonitor(every_n_steps=100)])
"""
from __future__ import annotations

import os
import sys
from typing import Any

from distengine.callbacks.base import Callback
from distengine.utilities.exceptions import ConfigError

_GB = 1024 ** 3
PREFIX = "device_stats/"


class DeviceStatsMonitor(Callback):
    """Log device statistics to the loggers on global rank zero.

    Args:
        cpu_stats: ``True`` always logs CPU/RAM, ``False`` never, ``None`` (default) logs them
            when the job does not run on GPUs or GPU statistics are unavailable.
        every_n_steps: logging period in optimizer steps; ``None`` uses
            ``trainer.log_every_n_steps``.
    """

    def __init__(self, cpu_stats: bool | None = None, every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise ValueError(f"DeviceStatsMonitor(every_n_steps={every_n_steps!r}): use a positive "
                             "integer or None")
        self.cpu_stats = cpu_stats
        self.every_n_steps = every_n_steps
        self._nvml: Any = None          # the pynvml module once initialised
        self._nvml_tried = False
        self._nvml_absent_said = False
        self._handles: list[tuple[int, Any]] = []  # (cuda index, NVML handle)
        self._last_step: int | None = None
        self._process: Any = None

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: Any, module: Any) -> None:
        if not getattr(trainer, "loggers", None):
            raise ConfigError("DeviceStatsMonitor needs a logger, but the Trainer has none. Pass "
                              "logger=True (TensorBoard) or e.g. logger=CSVLogger('logs') to the Trainer, "
                              "or remove the callback.")
        if getattr(trainer, "is_global_zero", True):
            import psutil

            self._process = psutil.Process()
            psutil.cpu_percent(interval=None)  # the first reading is meaningless; prime it

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not getattr(trainer, "is_global_zero", True):
            return
        step = int(trainer.global_step)
        every = self.every_n_steps or max(1, int(getattr(trainer, "log_every_n_steps", 50) or 1))
        # with gradient accumulation several batches end on the same step: log it once
        if step % every != 0 or step == self._last_step:
            return
        self._last_step = step
        stats = self.collect(trainer)
        if stats:  # under the index of the batch that made the step, as the Trainer and Lightning do
            for lg in getattr(trainer, "loggers", None) or []:
                lg.log_metrics(stats, step=step - 1)

    def teardown(self, trainer: Any, module: Any, stage: str | None = None) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001, S110 - shutting down a library that may be half-broken
                pass
        self._nvml = None
        self._nvml_tried = False
        self._handles = []

    # ------------------------------------------------------------------ collection
    def collect(self, trainer: Any) -> dict[str, float]:
        """Read the statistics now. Called on rank zero only."""
        stats: dict[str, float] = {}
        if not self._nvml_tried:
            # tried even for a CPU job so that a machine without NVML says so once
            self._init_nvml(trainer)
        gpu = _uses_gpu(trainer)
        if gpu:
            stats.update(self._gpu_stats())
        want_cpu = self.cpu_stats if self.cpu_stats is not None else (not gpu or not stats)
        if want_cpu:
            stats.update(self._cpu_stats())
        return stats

    def _cpu_stats(self) -> dict[str, float]:
        import psutil

        if self._process is None:
            self._process = psutil.Process()
        vm = psutil.virtual_memory()
        return {
            f"{PREFIX}cpu_percent": float(psutil.cpu_percent(interval=None)),
            f"{PREFIX}ram_used_gb": vm.used / _GB,
            f"{PREFIX}ram_percent": float(vm.percent),
            f"{PREFIX}process_rss_gb": self._process.memory_info().rss / _GB,
        }

    def _init_nvml(self, trainer: Any) -> None:
        self._nvml_tried = True
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - ImportError or any NVMLError: no GPU stats
            if not self._nvml_absent_said:
                self._nvml_absent_said = True
                print(f"[distengine] DeviceStatsMonitor: NVML is not available ({type(exc).__name__}: "
                      f"{exc}); GPU statistics are skipped, CPU and RAM are still logged.",
                      file=sys.stderr, flush=True)
            return
        self._nvml = pynvml
        # which NVML device is which CUDA device is asked of torch.cuda, so only in a job that
        # already trains on the GPU: a CPU job on a GPU machine must not initialise CUDA
        for cuda_index in (_cuda_indices(trainer) if _uses_gpu(trainer) else []):
            handle = nvml_handle(pynvml, cuda_index)
            if handle is not None:  # a device NVML cannot see is skipped, not fatal
                self._handles.append((cuda_index, handle))

    def _gpu_stats(self) -> dict[str, float]:
        if self._nvml is None:
            return {}
        nv = self._nvml
        out: dict[str, float] = {}
        for idx, handle in self._handles:
            key = f"{PREFIX}gpu{idx}."
            # every query is optional: consumer boards and MIG slices refuse some of them
            for name, read in (
                ("utilization", lambda h: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                ("memory_utilization", lambda h: nv.nvmlDeviceGetUtilizationRates(h).memory),
                ("memory_used_gb", lambda h: nv.nvmlDeviceGetMemoryInfo(h).used / _GB),
                ("memory_total_gb", lambda h: nv.nvmlDeviceGetMemoryInfo(h).total / _GB),
                ("temperature_c", lambda h: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
                ("power_w", lambda h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
            ):
                try:
                    out[key + name] = float(read(handle))
                except Exception:  # noqa: BLE001, S112 - NVMLError_NotSupported and friends
                    continue
        return out


def _cuda_indices(trainer: Any) -> list[int]:
    """CUDA indices of the GPUs this node trains on: the root device's alone when one process
    trains or each rank sees only its own GPU, else the first ``LOCAL_WORLD_SIZE`` devices
    (local rank r trains on ``cuda:r``)."""
    import torch

    device = getattr(getattr(trainer, "strategy", None), "root_device", None)
    index = device.index if getattr(device, "type", None) == "cuda" and device.index is not None else 0
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or getattr(trainer, "num_devices", 1) or 1)
    count = torch.cuda.device_count()
    if local <= 1 or count <= 1:
        return [index]
    return list(range(min(local, count)))


def nvml_handle(nvml: Any, cuda_index: int, props_of: Any = None) -> Any:
    """The NVML handle of CUDA device ``cuda_index``, or None.

    Matched by the device's UUID (or its PCI address), never by position: NVML numbers the
    GPUs in PCI order, CUDA fastest first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, and CUDA's
    numbering also passes through ``CUDA_VISIBLE_DEVICES``.
    """
    if props_of is None:
        import torch

        props_of = torch.cuda.get_device_properties
    try:
        props = props_of(cuda_index)
    except Exception:  # noqa: BLE001 - no such device
        return None
    uuid = str(getattr(props, "uuid", "") or "")
    keys = []
    if uuid:
        keys += [("uuid", uuid)] if uuid.startswith(("GPU-", "MIG-")) else [("uuid", "GPU-" + uuid),
                                                                           ("uuid", "MIG-" + uuid)]
    if getattr(props, "pci_bus_id", None) is not None:
        keys.append(("pci", f"{int(getattr(props, 'pci_domain_id', 0)):08x}:{int(props.pci_bus_id):02x}:"
                            f"{int(getattr(props, 'pci_device_id', 0)):02x}.0"))
    for kind, key in keys:
        try:
            if kind == "uuid":
                return nvml.nvmlDeviceGetHandleByUUID(key)
            return nvml.nvmlDeviceGetHandleByPciBusId(key)
        except Exception:  # noqa: BLE001, S112 - NVMLError_NotFound: try the next key
            continue
    return None


def _uses_gpu(trainer: Any) -> bool:
    device = getattr(getattr(trainer, "strategy", None), "root_device", None)
    if device is not None:
        return getattr(device, "type", str(device)) == "cuda"
    accelerator = str(getattr(trainer, "accelerator", "") or "")
    return accelerator in ("gpu", "cuda")
