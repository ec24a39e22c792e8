"""GPU-only code paths, checked on the CPU.

These paths only run for real on a GPU (and the multi-GPU ones never on a one-GPU machine),
so each test reproduces the condition with what the CPU has: the ``meta`` device as a second
device, fused CPU optimizers, and test doubles for NVML and the CUDA device count where only
the calls and placements can be checked.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import types

import pytest
import torch
import torch.distributed as dist

from distengine.distributed import collectives
from tests.core.models import Regressor, loader, quiet_trainer, regression_data
from tests.helpers import run_ranks


# ------------------------------------------------------------------ 1: epoch reduce across devices
def test_pack_float64_moves_every_tensor_to_the_communication_device():
    cpu_count = torch.tensor(3.0, dtype=torch.float64)
    device_sum = torch.ones(2, dtype=torch.float32, device="meta")  # stands in for a CUDA sum
    with pytest.raises(RuntimeError):  # what the old code did: cat across devices
        torch.cat([device_sum.reshape(-1).double(), cpu_count.reshape(-1)])
    flat = collectives.pack_float64([device_sum, cpu_count], torch.device("meta"))
    assert (flat.device.type, flat.dtype, flat.numel()) == ("meta", torch.float64, 3)


def test_reduce_tensors_hands_one_float64_tensor_on_the_comm_device_to_all_reduce(monkeypatch):
    """Sums on one device and counts on another (the multi-GPU epoch reduce) reach the
    collective as one tensor on the communication device."""
    seen = []

    class Reached(Exception):
        pass

    def fake_all_reduce(t, op=None):
        seen.append((t.device.type, t.dtype, t.numel()))
        raise Reached

    monkeypatch.setattr(collectives, "is_distributed", lambda: True)
    monkeypatch.setattr(collectives, "_comm_device", lambda: torch.device("meta"))
    monkeypatch.setattr(collectives.dist, "all_reduce", fake_all_reduce)
    sums = [torch.ones((), device="meta"), torch.ones((), device="meta")]
    counts = [torch.tensor(4.0, dtype=torch.float64), torch.tensor(5.0, dtype=torch.float64)]
    with pytest.raises(Reached):
        collectives.reduce_tensors(sums + counts, "sum")
    assert seen == [("meta", torch.float64, 4)]


def _mixed_logging(rank):
    class Mixed(Regressor):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            # a tensor and a Python float, both synced per step and reduced per epoch
            self.log("tensor_metric", loss.detach() * 0 + rank, sync_dist=True, on_epoch=True)
            self.log("float_metric", float(rank + 1), sync_dist=True, on_epoch=True)
            return loss

        def validation_step(self, batch, batch_idx):
            self.log("val_rank", torch.tensor(float(rank)))
            self.log("val_const", 2.0)

    import tempfile

    logged = []

    from distengine.callbacks import Callback

    class Capture(Callback):
        def on_train_batch_end(self, trainer, *a):
            logged.append(dict(trainer.logged_metrics))

    trainer = quiet_trainer(tempfile.mkdtemp(), max_epochs=1, limit_train_batches=2, limit_val_batches=2,
                 log_every_n_steps=1, callbacks=[Capture()])
    trainer.fit(Mixed(), loader(regression_data()), loader(regression_data()))
    return {k: float(v) for k, v in trainer.callback_metrics.items()}, logged[-1]


def test_two_ranks_reduce_mixed_float_and_tensor_values():
    (m0, step0), (m1, _) = run_ranks(_mixed_logging, 2)
    reduced = [k for k in m0 if k.endswith("_epoch") or k.startswith("val_")]
    assert len(reduced) == 4 and all(m0[k] == m1[k] for k in reduced)
    assert m0["val_rank"] == pytest.approx(0.5) and m0["val_const"] == 2.0
    assert m0["tensor_metric_epoch"] == pytest.approx(0.5) and m0["float_metric_epoch"] == pytest.approx(1.5)
    assert step0["float_metric_step"] == pytest.approx(1.5) and step0["tensor_metric_step"] == pytest.approx(0.5)


# ------------------------------------------------------------------ 2: resume keeps Adam's step on the CPU
def test_resume_loads_on_cpu_and_keeps_adam_step_counters_on_the_cpu(tmp_path, monkeypatch):
    first = quiet_trainer(tmp_path, max_epochs=1)
    first.fit(Regressor(), loader(regression_data()))
    path = str(tmp_path / "one.ckpt")
    first.save_checkpoint(path)

    import distengine.checkpoint.files as ckfiles  # (the checkpoint-file layer: files.py)

    real_load = torch.load
    locations = []

    def recording_load(f, *a, **kw):
        locations.append(kw.get("map_location"))
        return real_load(f, *a, **kw)

    monkeypatch.setattr(ckfiles.torch, "load", recording_load)
    module = Regressor()
    resumed = quiet_trainer(tmp_path, max_epochs=2)
    resumed.fit(module, loader(regression_data()), ckpt_path=path)
    assert locations and all(loc == "cpu" for loc in locations), locations
    steps = [s["step"] for s in resumed.optimizers[0].state.values()]
    assert steps and all(s.device.type == "cpu" for s in steps)
    assert all(p.device == resumed.strategy.root_device for p in module.parameters())
    assert int(steps[0]) == resumed.global_step


# ------------------------------------------------------------------ 3: the launcher starts without psutil
def test_launcher_imports_and_answers_without_psutil(repo_root):
    code = ("import sys; sys.modules['psutil'] = None\n"
            "import distengine.launch.procs, distengine.launch.agent, distengine.launch.cli\n"
            "print('imported')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=repo_root)
    assert proc.returncode == 0 and "imported" in proc.stdout, proc.stderr[-2000:]


# ------------------------------------------------------------------ 4: on_nonfinite_loss="skip"
class NanAt(Regressor):
    def __init__(self, bad_batch: int, fused: bool):
        super().__init__()
        self.bad_batch, self.fused = bad_batch, fused

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if batch_idx == self.bad_batch else loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, fused=self.fused)


@pytest.mark.parametrize("fused", [True, False])
def test_skip_nonfinite_skips_the_step_and_counts_it(tmp_path, fused):
    module = NanAt(bad_batch=2, fused=fused)
    trainer = quiet_trainer(tmp_path, max_epochs=1, on_nonfinite_loss="skip")
    trainer.fit(module, loader(regression_data()))
    steps = [int(s["step"]) for s in trainer.optimizers[0].state.values()]
    assert steps == [len(loader(regression_data())) - 1] * len(steps)  # the NaN step was not applied
    assert int(trainer._parts.loop_state.skipped_nonfinite) == 1
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_fused_optimizer_decides_on_the_device_without_reading_back(monkeypatch):
    from distengine.loop import step_unless_nonfinite

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1, fused=True)
    net(torch.ones(1, 3)).sum().backward()
    net.weight.grad[0, 0] = float("inf")
    before = net.weight.detach().clone()

    def no_host_read(self, *a, **k):
        raise AssertionError("read a device value back to the host")

    monkeypatch.setattr(torch.Tensor, "item", no_host_read)
    monkeypatch.setattr(torch.Tensor, "__bool__", no_host_read)
    skipped = step_unless_nonfinite(opt, opt.step)
    monkeypatch.undo()
    assert isinstance(skipped, torch.Tensor) and int(skipped) == 1
    assert torch.equal(net.weight, before) and not hasattr(opt, "found_inf")


# ------------------------------------------------------------------ 5: NVML handle by identity
class FakeNVML:
    """NVML numbers the GPUs in PCI order; CUDA (fastest first) numbers them the other way."""

    def __init__(self):
        self.by_uuid = {"GPU-aaaa": "nvml-0", "GPU-bbbb": "nvml-1"}

    def nvmlDeviceGetHandleByUUID(self, key):
        if key not in self.by_uuid:
            raise RuntimeError("NVMLError_NotFound")
        return self.by_uuid[key]

    def nvmlDeviceGetHandleByPciBusId(self, key):
        return {"00000000:3b:00.0": "nvml-0", "00000000:86:00.0": "nvml-1"}[key]


def test_nvml_handle_matches_cuda_devices_by_uuid_not_position():
    from distengine.callbacks.device_stats import nvml_handle

    cuda_props = {0: types.SimpleNamespace(uuid="bbbb"), 1: types.SimpleNamespace(uuid="aaaa")}
    assert nvml_handle(FakeNVML(), 0, cuda_props.__getitem__) == "nvml-1"
    assert nvml_handle(FakeNVML(), 1, cuda_props.__getitem__) == "nvml-0"
    by_pci = {1: types.SimpleNamespace(uuid="", pci_domain_id=0, pci_bus_id=0x3b, pci_device_id=0)}
    assert nvml_handle(FakeNVML(), 1, by_pci.__getitem__) == "nvml-0"
    assert nvml_handle(FakeNVML(), 2, {}.__getitem__) is None


def test_device_stats_reads_the_gpu_a_single_process_trains_on(monkeypatch):
    from distengine.callbacks import device_stats

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    one = types.SimpleNamespace(strategy=types.SimpleNamespace(root_device=torch.device("cuda", 2)),
                                num_devices=1)
    assert device_stats._cuda_indices(one) == [2]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    node = types.SimpleNamespace(strategy=types.SimpleNamespace(root_device=torch.device("cuda", 0)),
                                 num_devices=3)
    assert device_stats._cuda_indices(node) == [0, 1, 2]


# ------------------------------------------------------------------ 7: one GPU bound per task
def test_a_rank_that_sees_one_gpu_trains_on_cuda_0(monkeypatch):
    from distengine.distributed import setup
    from distengine.distributed.env import ClusterEnv

    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(d))
    env = ClusterEnv(rank=3, local_rank=3, world_size=4, local_world_size=4, source="slurm")
    assert setup.select_device("gpu", env, None) == torch.device("cuda", 0)
    assert chosen == [torch.device("cuda", 0)]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert setup.select_device("gpu", env, None) == torch.device("cuda", 3)


# ------------------------------------------------------------------ 8: writer thread sets its device
def test_async_writer_thread_selects_the_copies_device_before_waiting(tmp_path, monkeypatch):
    from distengine.checkpoint import async_writer

    calls = []

    class FakeEvent:
        def synchronize(self):
            calls.append(("synchronize", threading.current_thread().name))

    monkeypatch.setattr(async_writer._Stager, "copies_done", lambda self: [(3, FakeEvent())])
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    writer = async_writer.AsyncCheckpointWriter()
    writer.submit({"w": torch.ones(2)}, tmp_path / "a.ckpt")
    writer.wait()
    assert calls == [("set_device", 3), ("synchronize", "distengine-ckpt-writer")]
    assert torch.equal(torch.load(tmp_path / "a.ckpt")["w"], torch.ones(2))


# ------------------------------------------------------------------ 9: gloo follows NCCL's interface
def test_gloo_interface_follows_nccl_only_when_it_names_real_interfaces():
    from distengine.distributed.env import gloo_ifname_from_nccl

    ifs = ["lo", "eth0", "ib0"]
    assert gloo_ifname_from_nccl({"NCCL_SOCKET_IFNAME": "eth0"}, ifs) == "eth0"
    assert gloo_ifname_from_nccl({"NCCL_SOCKET_IFNAME": "eth0,ib0"}, ifs) == "eth0,ib0"
    assert gloo_ifname_from_nccl({"NCCL_SOCKET_IFNAME": "eth"}, ifs) is None  # an NCCL prefix
    assert gloo_ifname_from_nccl({"NCCL_SOCKET_IFNAME": "^docker"}, ifs) is None
    assert gloo_ifname_from_nccl({"NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "ib0"}, ifs) is None
    assert gloo_ifname_from_nccl({}, ifs) is None


def _gloo_env(rank):
    import tempfile

    quiet_trainer(tempfile.mkdtemp(), max_epochs=1, limit_train_batches=1).fit(
        Regressor(), loader(regression_data()))
    return os.environ.get("GLOO_SOCKET_IFNAME"), dist.get_backend()


def test_ranks_set_gloo_interface_from_nccl_interface(monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    got = run_ranks(_gloo_env, 2, env={"NCCL_SOCKET_IFNAME": "lo"})
    assert got == [("lo", "gloo"), ("lo", "gloo")]
