"""Prints, as JSON, what Lightning's public helpers give for fixed inputs. Run under real
Lightning and under distengine (the shim makes `import pytorch_lightning` resolve to it); the
test compares the two outputs. Argument: the part to probe."""
import json
import os
import random
import sys
import tempfile

import torch


def _clean(keep=()):
    for k in list(os.environ):
        if k.startswith(("SLURM_", "JSM_", "LSB_", "TORCHELASTIC_")) or k in (
                "RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
                "LOCAL_WORLD_SIZE", "PL_GLOBAL_SEED", "PL_SEED_WORKERS", "DISTENGINE_SEED"):
            if k not in keep:
                del os.environ[k]


def _read(env):
    out = {"external": bool(env.creates_processes_externally)}
    for name in ("world_size", "global_rank", "local_rank", "node_rank"):
        try:
            out[name] = getattr(env, name)()
        except Exception as e:  # noqa: BLE001 - the exception type is part of the behaviour
            out[name] = type(e).__name__
    for name in ("main_address", "main_port"):
        try:
            out[name] = getattr(env, name)
        except Exception as e:  # noqa: BLE001
            out[name] = type(e).__name__
    return out


def environments():
    from pytorch_lightning.plugins import environments as E

    res = {}
    _clean()
    os.environ.update({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
                       "SLURM_NODEID": "1", "SLURM_NODELIST": "gpu[07-08],cpu1", "SLURM_JOB_ID": "123456",
                       "SLURM_JOB_NAME": "train"})
    res["slurm_detect"] = E.SLURMEnvironment.detect()
    res["slurm"] = _read(E.SLURMEnvironment())
    res["slurm_root"] = E.SLURMEnvironment.resolve_root_node_address("node[1-3],x")
    res["slurm_job_id"] = E.SLURMEnvironment.job_id()
    os.environ["SLURM_JOB_NAME"] = "bash"
    res["slurm_interactive"] = [E.SLURMEnvironment.detect(), E.SLURMEnvironment.job_id()]
    _clean()
    os.environ.update({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "GROUP_RANK": "2",
                       "MASTER_ADDR": "head", "MASTER_PORT": "2345"})
    res["elastic_detect"] = E.TorchElasticEnvironment.detect()
    os.environ["TORCHELASTIC_RUN_ID"] = "x"
    res["elastic_detect_run_id"] = E.TorchElasticEnvironment.detect()
    res["elastic"] = _read(E.TorchElasticEnvironment())
    res["kubeflow"] = _read(E.KubeflowEnvironment())
    lenv = E.LightningEnvironment()
    res["lightning"] = _read(lenv)
    lenv.set_world_size(4)
    lenv.set_global_rank(3)
    res["lightning_set"] = [lenv.world_size(), lenv.global_rank()]
    try:
        E.KubeflowEnvironment.detect()
    except NotImplementedError as e:
        res["kubeflow_detect"] = str(e)
    _clean()
    res["lightning_alone"] = {k: v for k, v in _read(E.LightningEnvironment()).items() if k != "main_port"}
    res["lsf_detect_empty"] = E.LSFEnvironment.detect()
    with tempfile.NamedTemporaryFile("w", suffix=".rank", delete=False) as f:
        import socket

        f.write("launch\n" + "\n".join(["hostA", "hostA", socket.gethostname(), socket.gethostname()]) + "\n")
    os.environ.update({"LSB_JOBID": "98765", "LSB_DJOB_RANKFILE": f.name, "JSM_NAMESPACE_LOCAL_RANK": "1",
                       "JSM_NAMESPACE_SIZE": "4", "JSM_NAMESPACE_RANK": "3"})
    res["lsf_detect"] = E.LSFEnvironment.detect()
    res["lsf"] = _read(E.LSFEnvironment())
    res["lsf_sets"] = [os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]]
    try:
        E.MPIEnvironment()
    except ModuleNotFoundError as e:
        res["mpi"] = str(e)
    res["mpi_detect"] = E.MPIEnvironment.detect()
    res["abstract"] = sorted(E.ClusterEnvironment.__abstractmethods__)
    return res


def seed():
    from pytorch_lightning import seed_everything
    from pytorch_lightning.utilities.seed import isolate_rng

    try:  # 1.x's home of reset_seed (distengine keeps it there); 2.x moved it to lightning_fabric
        from pytorch_lightning.utilities.seed import reset_seed
    except ImportError:
        from lightning_fabric.utilities.seed import reset_seed

    _clean()
    res = {"returned": seed_everything(7, workers=True), "env": [os.environ["PL_GLOBAL_SEED"],
                                                                  os.environ["PL_SEED_WORKERS"]]}
    first = [torch.rand(2).tolist(), random.random()]
    reset_seed()
    res["reset_repeats"] = [torch.rand(2).tolist(), random.random()] == first
    with isolate_rng():
        torch.rand(5), random.random()
    after = [torch.rand(1).tolist(), random.random()]
    reset_seed()
    torch.rand(2), random.random()
    res["isolated"] = [torch.rand(1).tolist(), random.random()] == after
    return res


def utilities():
    import collections
    import dataclasses
    import pickle
    import warnings

    from pytorch_lightning import utilities as U
    from pytorch_lightning.utilities.enums import GradClipAlgorithmType as G
    from pytorch_lightning.utilities.parameter_tying import find_shared_parameters, set_shared_parameters

    @dataclasses.dataclass
    class Box:
        x: torch.Tensor
        tag: str

    pair = collections.namedtuple("pair", "a b")
    batch = {"t": torch.ones(2), "l": [torch.zeros(1), "s", 3], "p": pair(torch.ones(1), None),
             "d": collections.defaultdict(list, k=torch.ones(1)), "box": Box(torch.ones(1), "b")}
    moved = U.move_data_to_device(batch, "meta")

    def describe(o):
        if isinstance(o, torch.Tensor):
            return f"tensor@{o.device.type}"
        if isinstance(o, dict):
            return [type(o).__name__, {k: describe(v) for k, v in o.items()}]
        if isinstance(o, (list, tuple)):
            return [type(o).__name__, [describe(v) for v in o]]
        if dataclasses.is_dataclass(o):
            return [type(o).__name__, {f.name: describe(getattr(o, f.name)) for f in dataclasses.fields(o)}]
        return repr(o)

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    net[2].weight = net[0].weight
    shared = find_shared_parameters(net)
    net[2].weight = torch.nn.Parameter(net[2].weight.detach().clone())
    untied = find_shared_parameters(net)
    set_shared_parameters(net, shared)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        U.disable_possible_user_warnings()
        from pytorch_lightning.utilities.warnings import PossibleUserWarning

        warnings.warn("possible", PossibleUserWarning)
        warnings.warn("plain", UserWarning)
    try:
        G.from_str("bad")
    except ValueError as e:
        bad = str(e)
    try:
        U.suggested_max_num_workers(0)
    except ValueError as e:
        zero = str(e)
    return {"moved": describe(moved), "shared": shared, "untied": untied, "retied": find_shared_parameters(net),
            "warnings": [str(w.message) for w in caught],
            "enum": [list(map(repr, G)), G.NORM == "NORM", G.from_str("value").value, G("norm").value,
                     hash(G.NORM) == hash("norm"), str(G.VALUE), bad],
            "workers": [U.suggested_max_num_workers(1) == max(1, len(os.sched_getaffinity(0)) - 1), zero],
            "picklable": [U.is_picklable(1), U.is_picklable(lambda: 1), U.is_picklable(pickle)],
            "shared_fs_one_process": U.is_shared_filesystem(object(), tempfile.gettempdir()),
            "names": sorted(n for n in ("move_data_to_device", "is_shared_filesystem", "suggested_max_num_workers",
                                        "find_shared_parameters", "set_shared_parameters",
                                        "disable_possible_user_warnings", "GradClipAlgorithmType", "rank_zero_only",
                                        "rank_zero_info", "rank_zero_warn", "AttributeDict") if hasattr(U, n)),
            "callbacks": [hasattr(__import__("pytorch_lightning.callbacks", fromlist=["x"]), n)
                          for n in ("LambdaCallback", "OnExceptionCheckpoint")]}


def surface():
    """ThroughputMonitor, ModelPruning, CometLogger at Lightning's module paths with its
    constructor parameters, and Throughput's metrics for a fixed series of updates."""
    import importlib
    import inspect

    def params(cls):
        return [[p.name, str(p.kind), repr(p.default)] for p in inspect.signature(cls.__init__).parameters.values()]

    res = {}
    for module, name in (("pytorch_lightning.callbacks", "ThroughputMonitor"),
                         ("pytorch_lightning.callbacks.throughput_monitor", "ThroughputMonitor"),
                         ("pytorch_lightning.callbacks", "ModelPruning"),
                         ("pytorch_lightning.callbacks.pruning", "ModelPruning"),
                         ("pytorch_lightning.loggers", "CometLogger"),
                         ("pytorch_lightning.loggers.comet", "CometLogger")):
        cls = getattr(importlib.import_module(module), name)
        res[f"{module}.{name}"] = params(cls)
    res["PARAMETER_NAMES"] = importlib.import_module("pytorch_lightning.callbacks").ModelPruning.PARAMETER_NAMES
    try:  # Lightning keeps these in lightning_fabric, distengine in its utilities
        from lightning_fabric.utilities.throughput import Throughput, get_available_flops
    except ImportError:
        from pytorch_lightning.utilities.throughput import Throughput, get_available_flops
    series = []
    for world, window, lengths in ((1, 3, False), (4, 2, True), (2, 5, True)):
        t = Throughput(available_flops=1e6, world_size=world, window_size=window, separator="|")
        for i in range(1, 5):
            t.update(time=0.5 * i + 0.01 * i * i, batches=i, samples=3 * i, lengths=7 * i if lengths else None,
                     flops=1000 + i)
            series.append({k: round(v, 9) for k, v in sorted(t.compute().items())})
    res["throughput"] = series
    res["cpu_flops"] = get_available_flops(torch.device("cpu"), torch.float32)
    return res


if __name__ == "__main__":
    print("PROBE " + json.dumps(globals()[sys.argv[1]](), sort_keys=True))
