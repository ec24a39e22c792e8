"""The benchmark harness and the GPU check's code paths, on CPU and small.

Timings are never asserted (the machine is shared); what is asserted is that the
statistics are right, that the contenders do the very same work, and that the GPU check
runs end to end in its CPU dry-run mode.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch

from benchmarks import _harness
from benchmarks._harness import Row, interleave, markdown_table, ratio_row, rows_from_foreign

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_interleave_shuffles_order_and_drops_warmup(monkeypatch):
    calls: list[str] = []
    counter = {"a": 0, "b": 0, "c": 0}

    def make(name):
        def go():
            calls.append(name)
            counter[name] += 1
            return float(counter[name])
        return go

    # a collection before every measurement; counted, not run: in a test process that has imported
    # torch one takes 0.2 to 0.8 s, and this test made 42 of them (13 to 33 s)
    collections = []
    monkeypatch.setattr(_harness.gc, "collect", lambda: collections.append(len(calls)))
    out = interleave({n: make(n) for n in "abc"}, rounds=6, warmup=1)
    assert collections == list(range(21))  # once before each of the 21 calls
    assert out == {n: [2.0, 3.0, 4.0, 5.0, 6.0, 7.0] for n in "abc"}  # the warm-up round is dropped
    rounds = [tuple(calls[i:i + 3]) for i in range(0, len(calls), 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)  # each contender once per round
    assert len({r[0] for r in rounds}) > 1  # not always the same one first
    # seeded: the same call gives the same orders
    calls_before = list(calls)
    calls.clear()
    interleave({n: make(n) for n in "abc"}, rounds=6, warmup=1)
    assert calls == calls_before
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        interleave({"a": make("a")}, rounds=0)


def test_ratio_row_uses_per_round_ratios():
    row = ratio_row("x", "b / a", [2.0, 3.0, 10.0], [1.0, 2.0, 4.0], target=2.0)
    assert row.value == 2.0 and row.lo == 1.5 and row.hi == 2.5
    assert row.ok is True
    assert "best-of-3 ratio 2.000" in row.context  # min 2.0 / min 1.0
    assert ratio_row("x", "b / a", [3.0], [1.0], target=2.0).ok is False
    assert ratio_row("x", "b / a", [3.0], [1.0], target=2.0, higher_is_better=True).ok is True
    table = markdown_table([row, Row("x", "no target", 1.5, unit="s")])
    assert "| x | b / a | 2.000x | 1.500-2.500 | <= 2.000x | PASS |" in table
    assert "| x | no target | 1.500 s | - | - | - |" in table


def test_foreign_results_become_rows():
    rows = rows_from_foreign("launch", {"rows": [{"name": "wall", "ratio": 0.9, "min": 0.8, "max": 1.0,
                                                  "target": 1.0}]})
    assert (rows[0].comparison, rows[0].value, rows[0].ok) == ("wall", 0.9, True)
    flat = rows_from_foreign("checkpoint", {"save_ratio": 1.05, "note": "text", "ok": True})
    assert [(r.comparison, r.unit) for r in flat] == [("save_ratio", "x")]


def test_plain_workload_matches_the_example():
    """benchmarks/_work.py duplicates examples/synthetic.py so that hand-written contenders need
    not import distengine; the duplicate must stay identical."""
    from benchmarks import _work
    from examples import synthetic

    a, b = _work.make_dataset(256, 16, seed=3), synthetic.make_dataset(256, 16, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.tensors, b.tensors))
    torch.manual_seed(5)
    m1 = _work.build_mlp(16, 32)
    torch.manual_seed(5)
    m2 = synthetic.build_mlp(16, 32)
    assert all(torch.equal(p, q) for p, q in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_overhead_contenders_do_identical_work():
    """Same init, same data order, same steps: the loop and the Trainer end with equal weights,
    so the overhead ratio compares equal work."""
    from benchmarks._work import make_dataset
    from benchmarks.overhead import Work, run_loop, run_trainer

    work = Work(num_samples=640, epochs=2)
    data = make_dataset(work.num_samples, work.dim)
    _, loop_model = run_loop(work, data)
    for defaults in (False, True):
        _, trainer_model = run_trainer(work, data, defaults=defaults)
        for (name, p), q in zip(loop_model.state_dict().items(), trainer_model.state_dict().values()):
            assert torch.equal(p, q), f"{name} differs (defaults={defaults})"


def test_gpu_check_dry_run_in_process(tmp_path):
    from benchmarks import gpu_check

    only = "precision-32,precision-16-mixed,precision-bf16-mixed,device-stats,checkpoint-resume,async-checkpoint"
    rc = gpu_check.main(["--dry-run-cpu", "--only", only, "--out", str(tmp_path)])
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = [(c["check"], c["message"], c["data"].get("traceback", "")) for c in result["checks"] if not c["ok"]]
    assert rc == 0 and not failed, failed
    assert result["dry_run"] is True and len(result["checks"]) == 6


def test_gpu_check_script_dry_run_launch(tmp_path):
    """The shell wrapper: finds the interpreter, makes distengine importable from the tree
    without installing it, and the launch check runs a real launched child."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHON=sys.executable, OUT=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh"), "--dry-run-cpu",
                           "--only", "launch-nccl"], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PASS launch-nccl" in proc.stdout
    assert json.loads((tmp_path / "gpu_check.json").read_text())["checks"][0]["data"]["backend"] == "gloo"


def test_gpu_check_without_cuda_says_so():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from benchmarks import gpu_check

    assert gpu_check.main(["--only", "compile"]) == 1


@pytest.mark.skipif(os.environ.get("DISTENGINE_TEST_COMPILE") != "1",
                    reason="torch.compile on CPU takes minutes here; set DISTENGINE_TEST_COMPILE=1")
def test_gpu_check_dry_run_compile(tmp_path):
    from benchmarks import gpu_check

    assert gpu_check.main(["--dry-run-cpu", "--only", "compile", "--out", str(tmp_path)]) == 0


def test_fsdp_benchmark_quick_measures_equal_work(tmp_path, monkeypatch):
    """``python -m benchmarks --only fsdp --quick``'s run on 2 gloo ranks: the Trainer and the
    hand-written loops train to the same losses, and the byte accounting is exact (timings are
    not asserted)."""
    from benchmarks import fsdp

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the report folder goes
    result = fsdp.run(quick=True)
    assert not list(tmp_path.glob("bench-fsdp-report-*")), "the report folder was left behind"
    details = result["details"]
    assert "trainer_skipped" not in details, details["trainer_skipped"]
    rows = {r.comparison: r for r in result["rows"]}
    for label in ("FSDP2", "DDP"):
        loss = rows[f"{label} step: loss per step vs loop (mean rel. diff)"]
        assert loss.ok, (label, loss.value)
    n = details["num_params"]
    b = details["bytes_per_rank"]
    # DDP: every rank holds the whole fp32 model, its gradients and AdamW's two moments (+ step counters)
    assert b["ddp_loop"]["params"] == b["ddp_loop"]["grads"] == 4 * n
    assert 8 * n <= b["ddp_loop"]["optimizer"] <= 8 * n + 8 * 64
    assert b["ddp_trainer"] == b["ddp_loop"]
    # FSDP2 on 2 ranks: half of it (dim-0 shards, padding included), the same for Trainer and loop
    assert 2 * n <= b["fsdp_loop"]["params"] <= 2 * n + 4 * 64 * 64
    assert b["fsdp_trainer"] == b["fsdp_loop"]
    assert rows["memory: params+grads+AdamW, Trainer FSDP / Trainer DDP"].value <= fsdp.TARGET_MEM_VS_DDP
    assert rows["memory: params+grads+AdamW, Trainer FSDP / fully_shard loop"].value == 1.0
    for name in ("sharded save: Trainer / dcp.save", "async sharded save: Trainer blocked / Trainer sync save"):
        assert rows[name].value > 0, name


def test_gpu_check_dry_run_fsdp(tmp_path):
    """The GPU check's FSDP2 run (bf16 + activation checkpointing) on 2 CPU ranks."""
    from benchmarks import gpu_check

    rc = gpu_check.main(["--dry-run-cpu", "--only", "fsdp-act-ckpt", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    check = result["checks"][0]
    assert rc == 0 and check["ok"], check["message"]
    report = check["data"]["report"]
    assert report["work"]["bf16"] and report["work"]["act_ckpt"]
    assert set(report["steps"]["rounds"]) == {"fsdp_loop", "fsdp_trainer", "ddp_loop", "ddp_trainer"}


def test_state_bytes_counts_each_storage_once():
    """The FSDP benchmark's memory figure: exact storage bytes, a shared storage counted once."""
    from benchmarks._fsdp_plain import state_bytes

    emb, head = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied: one storage
    params = list(emb.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(emb.parameters(), lr=0.1)
    assert state_bytes(params, [opt]) == {"params": 160, "grads": 0, "optimizer": 0, "total": 160}
    head(emb(torch.tensor([1, 2]))).sum().backward()
    opt.step()
    got = state_bytes(params, [opt])
    # one 10x4 fp32 gradient; AdamW: exp_avg and exp_avg_sq (160 bytes each) + a float32 step counter
    assert got == {"params": 160, "grads": 160, "optimizer": 324, "total": 644}


def test_gpu_check_dry_run_fsdp_one_process(tmp_path):
    """The one-GPU FSDP2 checks (benchmarks/_gpu_fsdp1.py) and ``ModelParallelStrategy(1, 1)``
    (benchmarks/_gpu_mp.py) on the CPU: ``Trainer(strategy="fsdp")`` in this process on a mesh of 1,
    each check a PASS on what the dry run judges."""
    import torch.distributed as dist

    from benchmarks import gpu_check

    names = [*gpu_check.FSDP1_CHECKS, "mp1-tp-fsdp"]
    rc = gpu_check.main(["--dry-run-cpu", "--only", ",".join(names), "--out", str(tmp_path)])
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [c["check"] for c in result["checks"]] == names
    not_passed = [(c["check"], c["ok"], c["message"], c["data"].get("traceback", "")) for c in result["checks"]
                  if c["ok"] is not True]
    assert rc == 0 and not not_passed, not_passed
    assert not dist.is_initialized()  # every check removes what its Trainers left up
    by_name = {c["check"]: c for c in result["checks"]}
    assert by_name["fsdp1-target-dtype"]["data"]["dtypes"] == [["float32", "float32", "bfloat16"]]
    counts = by_name["fsdp1-accumulate"]["data"]["counts"]
    assert counts["4"]["foreach_reduce"] * 4 == counts["1"]["foreach_reduce"]  # one reduction per window
    assert len(by_name["fsdp1-async-ckpt"]["data"]["blocked_s"]) == 3
    mp = by_name["mp1-tp-fsdp"]  # fp32 equal to the hand-written TP x FSDP2 loop; bf16-mixed really bf16
    assert mp["data"]["max_abs_diff"] <= 1e-5 and mp["data"]["bf16_gap"] > 0 and "HSDP across replicas" in mp["message"]


def test_gpu_check_fsdp_one_process_refused_is_a_skip(monkeypatch):
    """While the Trainer refuses FSDP in one process, the fsdp1 checks say SKIP and why."""
    from benchmarks import _gpu_fsdp1
    from benchmarks.gpu_check import Setup
    from distengine.strategies.fsdp import FSDPStrategy

    def refuse(self, *args, **kwargs):
        raise RuntimeError("strategy='fsdp' needs 2 or more processes (it shards each parameter over the ranks)")

    monkeypatch.setattr(FSDPStrategy, "setup_environment", refuse)
    ok, msg, _ = _gpu_fsdp1.check_target_dtype(Setup(True, 1))
    assert ok is None and "refuses FSDP in one process" in msg


def test_gpu_check_two_gpu_fsdp_skips_on_one_gpu(monkeypatch):
    """The 2-rank FSDP checks say SKIP on a one-GPU machine (before any CUDA call)."""
    from benchmarks import _gpu_fsdp
    from benchmarks.gpu_check import Setup

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for act_ckpt in (False, True):
        ok, msg, _ = _gpu_fsdp.check_fsdp(Setup(False, 1), act_ckpt=act_ckpt)
        assert ok is None and msg.startswith("needs 2 GPUs") and "fsdp1-*" in msg


@pytest.mark.slow  # 4 gloo ranks: ~30 s on a loaded 2-core machine
def test_model_parallel_benchmark_quick_measures_equal_work(tmp_path, monkeypatch):
    """``python -m benchmarks --only model_parallel --quick`` on 4 gloo ranks: the Trainer under
    ``ModelParallelStrategy(2, 2)`` and the hand-written loop with the same plan train to the same
    losses and hold the same bytes on every rank (timings are not asserted)."""
    from benchmarks import model_parallel

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the report folder goes
    result = model_parallel.run(quick=True)
    assert not list(tmp_path.glob("bench-mp-report-*")), "the report folder was left behind"
    rows = {r.comparison: r for r in result["rows"]}
    assert rows["TP 2 x DP 2: loss per step, Trainer vs loop (mean rel. diff)"].ok
    b, n = result["details"]["bytes_per_rank"], result["details"]["num_params"]
    assert b["tp_trainer"] == b["tp_loop"]
    assert rows["memory: params+grads+AdamW, TP 2 x DP 2 Trainer / hand-written loop"].value == 1.0
    # fp32: a quarter of the model a rank, 4 bytes each (the norms: a half, replicated over tensor
    # parallel), plus FSDP2's padding
    assert all(n <= r["params"] <= n + 4 * 64 * 64 for r in b["tp_loop"]), (n, b["tp_loop"])
    losses = result["details"]["losses"]
    torch.testing.assert_close(losses["fsdp_trainer"], losses["tp_loop"], rtol=1e-4, atol=1e-5)
