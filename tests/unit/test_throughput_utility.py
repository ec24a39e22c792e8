"""Throughput's rolling rates and the peak-FLOPs table (ThroughputMonitor against Lightning:
tests/conformance/test_throughput.py)."""
import pytest
import torch

from distengine.utilities.throughput import _GPU_FLOPS, Throughput, _gpu_key


def test_rates_over_the_window_with_global_metrics_and_mfu():
    t = Throughput(available_flops=100.0, world_size=2, window_size=3)
    for i in range(1, 6):  # 1 s per batch of 4 samples, 12 items, 10 FLOPs
        t.update(time=float(i), batches=i, samples=4 * i, lengths=12 * i, flops=10)
    m = t.compute()
    assert m["time"] == 5.0 and m["batches"] == 5 and m["samples"] == 20 and m["lengths"] == 60
    assert m["device/batches_per_sec"] == 1.0 and m["device/samples_per_sec"] == 4.0
    assert m["device/items_per_sec"] == 12.0
    assert m["batches_per_sec"] == 2.0 and m["samples_per_sec"] == 8.0 and m["items_per_sec"] == 24.0
    # the window's last two batches' FLOPs on both devices over its 2 s
    assert m["flops_per_sec"] == 20.0 and m["device/flops_per_sec"] == 10.0 and m["device/mfu"] == 0.1


def test_no_rates_before_the_window_is_full_and_one_device_has_no_global_metrics():
    t = Throughput(window_size=3, separator="|")
    t.update(time=1.0, batches=1, samples=2)
    assert t.compute() == {"time": 1.0, "batches": 1, "samples": 2}
    t.update(time=2.0, batches=2, samples=4)
    t.update(time=3.0, batches=3, samples=6)
    assert t.compute() == {"time": 3.0, "batches": 3, "samples": 6, "device|batches_per_sec": 1.0,
                           "device|samples_per_sec": 2.0}


def test_bad_updates_say_what_is_wrong():
    t = Throughput(window_size=2)
    t.update(time=1.0, batches=1, samples=1)
    with pytest.raises(ValueError, match="time=1.0 is not larger"):
        t.update(time=1.0, batches=2, samples=2)
    with pytest.raises(ValueError, match="samples .1. must be at least batches .2."):
        Throughput().update(time=1.0, batches=2, samples=1)
    with pytest.raises(ValueError, match="window of 2 or more"):
        Throughput(window_size=1)


@pytest.mark.parametrize("name,dtype,peak", [("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4e12),
                                             ("NVIDIA H100 PCIe", torch.float32, 51.2e12),
                                             ("NVIDIA H200", torch.bfloat16, 989.4e12),
                                             ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312e12),
                                             ("NVIDIA A100 80GB PCIe", torch.float32, 19.5e12)])
def test_peak_flops_table(name, dtype, peak):
    assert _GPU_FLOPS[_gpu_key(name)][dtype] == pytest.approx(peak)
    assert _gpu_key("Some Future GPU") is None
