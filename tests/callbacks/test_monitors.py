"""LearningRateMonitor, DeviceStatsMonitor and ModelSummary with a fake trainer."""
import builtins
import sys
from types import SimpleNamespace

import pytest
import torch

from distengine.callbacks.device_stats import DeviceStatsMonitor
from distengine.callbacks.lr_monitor import LearningRateMonitor
from distengine.callbacks.model_summary import ModelSummary, count_parameters, summarize
from distengine.utilities.exceptions import MisconfigurationException
from tests.callbacks.fakes import FakeTrainer, RecordingLogger


# ---------------------------------------------------------------------------- LearningRateMonitor
def _sgd(lr=0.1, groups=1, **kw):
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr * (i + 1)} for i in range(groups)]
    return torch.optim.SGD(params, lr=lr, **kw)


def _run_steps(cb, trainer, steps):
    cb.on_fit_start(trainer, None)
    cb.on_train_epoch_start(trainer, None)
    for i in range(steps):
        trainer.global_step = i
        cb.on_train_batch_start(trainer, None, None, i)


def test_lr_monitor_needs_a_logger():
    with pytest.raises(MisconfigurationException, match="needs a logger"):
        LearningRateMonitor().on_fit_start(FakeTrainer(), None)


def test_lr_monitor_step_interval_honours_log_every_n_steps():
    lg = RecordingLogger()
    opt = _sgd(0.1)
    trainer = FakeTrainer(loggers=[lg], log_every_n_steps=2, optimizers=[opt])
    _run_steps(LearningRateMonitor(logging_interval="step"), trainer, 6)
    # logged before steps 2, 4, 6, under those steps' batch indices (1, 3, 5) as Lightning does
    assert lg.calls == [(1, {"lr-SGD": 0.1}), (3, {"lr-SGD": 0.1}), (5, {"lr-SGD": 0.1})]


def test_lr_monitor_follows_scheduler_values_and_param_groups():
    lg = RecordingLogger()
    opt = _sgd(1.0, groups=2, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    config = SimpleNamespace(scheduler=sched, interval="step", frequency=1, monitor=None)
    trainer = FakeTrainer(loggers=[lg], log_every_n_steps=1, optimizers=[opt], lr_scheduler_configs=[config])
    cb = LearningRateMonitor(log_momentum=True)
    cb.on_fit_start(trainer, None)
    cb.on_train_epoch_start(trainer, None)  # a step-interval scheduler is not logged at epoch start
    assert lg.calls == []
    for i in range(3):
        trainer.global_step = i
        cb.on_train_batch_start(trainer, None, None, i)
        opt.step()
        sched.step()
    assert [c[1]["lr-SGD/pg1"] for c in lg.calls] == [1.0, 0.5, 0.25]
    assert [c[1]["lr-SGD/pg2"] for c in lg.calls] == [2.0, 1.0, 0.5]
    assert lg.calls[0][1]["lr-SGD/pg1-momentum"] == 0.9
    assert cb.lrs["lr-SGD/pg2"] == [2.0, 1.0, 0.5]


def test_lr_monitor_epoch_interval_and_names():
    lg = RecordingLogger()
    adam_a = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01, betas=(0.8, 0.99))
    adam_b = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.02)
    trainer = FakeTrainer(loggers=[lg], log_every_n_steps=1, optimizers=[adam_a, adam_b], global_step=7)
    cb = LearningRateMonitor(logging_interval="epoch", log_momentum=True, log_weight_decay=True)
    cb.on_fit_start(trainer, None)
    cb.on_train_batch_start(trainer, None, None, 0)  # step logging is off
    cb.on_train_epoch_start(trainer, None)
    assert lg.calls == [(7, {"lr-Adam": 0.01, "lr-Adam-momentum": 0.8, "lr-Adam-weight_decay": 0.0,
                             "lr-Adam-1": 0.02, "lr-Adam-1-momentum": 0.9, "lr-Adam-1-weight_decay": 0.0})]


def test_lr_monitor_group_names_as_lightning():
    lg = RecordingLogger()
    named = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "name": "enc"}], lr=0.1)
    trainer = FakeTrainer(loggers=[lg], log_every_n_steps=1, optimizers=[named])
    LearningRateMonitor().on_train_epoch_start(trainer, None)
    assert lg.calls == [(0, {"lr-SGD/enc": 0.1})]  # one named group: /<name> (Lightning 2.6.6)
    twice = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "name": "x"},
                             {"params": [torch.nn.Parameter(torch.zeros(1))], "name": "x"}], lr=0.1)
    with pytest.raises(ValueError, match="same name"):
        LearningRateMonitor().on_train_epoch_start(FakeTrainer(loggers=[lg], optimizers=[twice]), None)


def test_lr_monitor_moves_the_history_of_an_optimizer_that_gains_groups():
    """As Lightning: finetuning adds a parameter group, so ``lr-SGD`` becomes ``lr-SGD/pg1`` (its
    history kept) and ``lr-SGD/pg2`` starts, both after the keys that did not change."""
    lg = RecordingLogger()
    sgd, adam = _sgd(0.1), torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    trainer = FakeTrainer(loggers=[lg], optimizers=[sgd, adam])
    cb = LearningRateMonitor(logging_interval="epoch")
    cb.on_train_start(trainer, None)
    cb.on_train_epoch_start(trainer, None)
    assert list(cb.lrs) == ["lr-SGD", "lr-Adam"]
    sgd.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.5})
    trainer.current_epoch = 1
    cb.on_train_epoch_start(trainer, None)
    assert cb.lrs == {"lr-Adam": [0.01, 0.01], "lr-SGD/pg1": [0.1, 0.1], "lr-SGD/pg2": [0.5]}
    assert lg.calls[-1][1] == {"lr-SGD/pg1": 0.1, "lr-SGD/pg2": 0.5, "lr-Adam": 0.01}


def test_lr_monitor_logs_nothing_off_rank_zero():
    lg = RecordingLogger()
    trainer = FakeTrainer(loggers=[lg], log_every_n_steps=1, optimizers=[_sgd()], is_global_zero=False)
    cb = LearningRateMonitor()
    _run_steps(cb, trainer, 3)
    assert lg.calls == []
    assert cb.lrs == {"lr-SGD": [0.1] * 4}  # epoch start + 3 steps: every rank keeps the history


def test_lr_monitor_bad_interval():
    with pytest.raises(ValueError, match="'step', 'epoch' or None"):
        LearningRateMonitor(logging_interval="batch")


# ---------------------------------------------------------------------------- DeviceStatsMonitor
@pytest.fixture
def no_nvml(monkeypatch):
    """Make ``import pynvml`` fail, as on a machine without the NVIDIA driver."""
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "pynvml":
            raise ImportError("No module named 'pynvml' (simulated)")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)


def _run_device_stats(cb, trainer, steps):
    cb.on_fit_start(trainer, None)
    for i in range(steps):
        trainer.global_step = i + 1
        cb.on_train_batch_end(trainer, None, None, None, i)
        cb.on_train_batch_end(trainer, None, None, None, i)  # accumulation: same step twice
    cb.teardown(trainer, None, "fit")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_device_stats_without_nvml_logs_cpu_and_says_so_once(no_nvml, capsys, device):
    lg = RecordingLogger()
    trainer = FakeTrainer(loggers=[lg], log_every_n_steps=2,
                          strategy=SimpleNamespace(root_device=torch.device(device)))
    _run_device_stats(DeviceStatsMonitor(), trainer, 6)
    assert [step for step, _ in lg.calls] == [1, 3, 5]  # after steps 2, 4, 6, under their batch indices
    for _, metrics in lg.calls:
        assert set(metrics) == {"device_stats/cpu_percent", "device_stats/ram_used_gb",
                                "device_stats/ram_percent", "device_stats/process_rss_gb"}
        assert metrics["device_stats/ram_used_gb"] > 0
        assert 0 <= metrics["device_stats/cpu_percent"] <= 100 * 64
    err = capsys.readouterr().err
    assert err.count("NVML is not available") == 1
    assert "GPU statistics are skipped" in err


def test_device_stats_every_n_steps_and_rank_zero_only(no_nvml, capsys):
    lg = RecordingLogger()
    trainer = FakeTrainer(loggers=[lg], log_every_n_steps=50)
    _run_device_stats(DeviceStatsMonitor(every_n_steps=3), trainer, 7)
    assert [step for step, _ in lg.calls] == [2, 5]  # after steps 3 and 6
    lg1 = RecordingLogger()
    _run_device_stats(DeviceStatsMonitor(every_n_steps=1), FakeTrainer(loggers=[lg1], is_global_zero=False), 3)
    assert lg1.calls == []
    assert capsys.readouterr().err.count("NVML") == 1  # only the rank-zero monitor said it


def test_device_stats_cpu_stats_false_logs_nothing_without_gpu(no_nvml):
    lg = RecordingLogger()
    _run_device_stats(DeviceStatsMonitor(cpu_stats=False, every_n_steps=1), FakeTrainer(loggers=[lg]), 2)
    assert lg.calls == []


def test_device_stats_with_fake_nvml(monkeypatch):
    """The GPU path, against a stand-in pynvml module (this machine has no NVIDIA driver)."""
    class NVMLError(Exception):
        pass

    def unsupported(handle):
        raise NVMLError("Not Supported")

    fake = SimpleNamespace(
        NVML_TEMPERATURE_GPU=0, inits=[],
        nvmlInit=lambda: fake.inits.append("init"), nvmlShutdown=lambda: fake.inits.append("shutdown"),
        nvmlDeviceGetCount=lambda: 4,
        nvmlDeviceGetHandleByUUID=lambda key: {"GPU-uuid-a": "h2", "GPU-uuid-b": "h3"}[key],
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=87, memory=40),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=2 * 1024 ** 3, total=80 * 1024 ** 3),
        nvmlDeviceGetTemperature=lambda h, kind: 61,
        nvmlDeviceGetPowerUsage=unsupported,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    # CUDA devices 0 and 1 are matched to NVML's devices by UUID, not by position
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(uuid=["uuid-a", "uuid-b"][i]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    lg = RecordingLogger()
    trainer = FakeTrainer(loggers=[lg], strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    _run_device_stats(DeviceStatsMonitor(every_n_steps=1), trainer, 1)
    (step, metrics), = lg.calls
    assert step == 0  # step 1, under its batch index
    assert metrics["device_stats/gpu0.utilization"] == 87
    assert metrics["device_stats/gpu1.memory_used_gb"] == 2.0
    assert metrics["device_stats/gpu1.temperature_c"] == 61
    assert "device_stats/gpu0.power_w" not in metrics  # unsupported query skipped
    assert not any(k.startswith("device_stats/cpu") for k in metrics)  # cpu_stats=None on GPU
    assert fake.inits == ["init", "shutdown"]


def test_device_stats_needs_a_logger():
    with pytest.raises(MisconfigurationException, match="needs a logger"):
        DeviceStatsMonitor().on_fit_start(FakeTrainer(), None)
    with pytest.raises(ValueError, match="positive integer"):
        DeviceStatsMonitor(every_n_steps=0)


# ---------------------------------------------------------------------------- ModelSummary
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
        self.head = torch.nn.Linear(8, 2)
        self.head.weight.requires_grad_(False)


def test_count_parameters():
    totals = count_parameters(Net())
    assert totals.total == (4 * 8 + 8) + (8 * 8 + 8) + (8 * 2 + 2)
    assert totals.non_trainable == 16
    assert totals.trainable == totals.total - 16
    assert totals.size_bytes == 4 * totals.total
    tied = torch.nn.Sequential(torch.nn.Linear(3, 3, bias=False), torch.nn.Linear(3, 3, bias=False))
    tied[1].weight = tied[0].weight
    assert count_parameters(tied).total == 9  # a shared weight counts once


def test_summarize_depths():
    text = summarize(Net(), max_depth=1)
    lines = text.splitlines()
    assert lines[0].split() == ["|", "Name", "|", "Type", "|", "Params"]
    assert any(line.split()[:5] == ["0", "|", "encoder", "|", "Sequential"] and line.endswith("112")
               for line in lines)
    assert any("head" in line and line.endswith("18") for line in lines)
    assert "encoder.0" not in text
    assert "encoder.2" in summarize(Net(), max_depth=2)
    assert "encoder.2" in summarize(Net(), max_depth=-1)
    assert "16         Non-trainable params" in text
    assert "130        Total params" in text
    assert "Name" not in summarize(Net(), max_depth=0)
    with pytest.raises(ValueError, match="max_depth"):
        summarize(Net(), max_depth=-2)


def test_model_summary_prints_on_rank_zero_only(capsys):
    net = Net()
    ModelSummary(max_depth=1).on_fit_start(FakeTrainer(lightning_module=net), net)
    out = capsys.readouterr().out
    assert "encoder" in out and "Total params" in out
    ModelSummary().on_fit_start(FakeTrainer(lightning_module=net, is_global_zero=False), net)
    assert capsys.readouterr().out == ""


def test_device_stats_with_the_real_pynvml_on_a_machine_without_driver(capsys):
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has a working NVML")
    lg = RecordingLogger()
    _run_device_stats(DeviceStatsMonitor(every_n_steps=1), FakeTrainer(loggers=[lg]), 2)
    assert len(lg.calls) == 2 and "device_stats/ram_used_gb" in lg.calls[0][1]
    assert capsys.readouterr().err.count("NVML is not available") == 1
