"""FSDP2 strategy and sharded checkpoints, used directly (no Trainer) on 2 real gloo ranks.

One 2-rank job covers: sharding by layer class with activation checkpointing, accumulation
without sync, clipping (total norm vs one unsharded process), an async sharded checkpoint that
resumes bit for bit, 16-mixed's GradScaler skipping a step on both ranks when one rank's shard
is inf, and a model built on the meta device in configure_model(). The parent process then
loads the checkpoint without FSDP, consolidates it with the CLI and checks bad input.
"""
from __future__ import annotations

import os
import shutil
import warnings

import pytest
import torch

from distengine.checkpoint.io import CheckpointError, safe_load
from tests.fsdp.models import Block, MetaNet, Net, data
from tests.helpers import run_ranks

STEPS, MICRO, CLIP, LR = 4, 2, 0.5, 0.01


def _batch(x, y, rank_or_none, step, mb):
    """Micro-batch ``mb`` of ``step``: 4 rows per rank; rank None is the union of both ranks'."""
    def rows(r):
        return torch.arange(r, 64, 2)[(step * MICRO + mb) * 4:(step * MICRO + mb + 1) * 4]
    idx = torch.cat([rows(0), rows(1)]) if rank_or_none is None else rows(rank_or_none)
    return x[idx], y[idx]


def _train(model, opt, strategy, rank, steps, clip):
    x, y = data(64)
    norms = []
    for step in steps:
        for mb in range(MICRO):
            ctx = strategy.no_sync(model, mb == MICRO - 1) if strategy else torch.enable_grad()
            with ctx:
                (model.training_step(_batch(x, y, rank, step, mb)) / MICRO).backward()
        norms.append(float(clip(opt)))
        opt.step()
        opt.zero_grad()
    return norms


def _full(model):
    from distengine.strategies.fsdp import full_tensor
    return {k: full_tensor(v).detach().clone() for k, v in model.state_dict().items()}


def _strategy(model, **kw):
    from distengine.distributed.env import detect
    from distengine.strategies.fsdp import FSDPStrategy

    s = FSDPStrategy(**kw)
    s.setup_environment("cpu", detect(), None, 30)
    return s, s.setup_module(model)


def _units(model):
    from torch.distributed.fsdp import FSDPModule
    return sorted(n for n, m in model.named_modules() if isinstance(m, FSDPModule))


def _train_save_resume(rank, tmp, out):
    from distengine.checkpoint.sharded import ShardedCheckpointer, load_sharded

    s, model = _strategy(Net(), auto_wrap_policy={Block}, activation_checkpointing_policy={Block})
    out["units"] = _units(model)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    clip = lambda o: s.clip_gradients(o, CLIP)  # noqa: E731
    out["norms"] = _train(model, opt, s, rank, range(2), clip)
    out["w2"] = _full(model)
    ckpt = ShardedCheckpointer()
    if rank == 0:  # what a save killed half way leaves behind: removed by the next save
        os.makedirs(os.path.join(tmp, ".step=1.ckpt.tmp-dead"))
        open(os.path.join(tmp, ".step=1.ckpt.tmp-dead", "__0_0.distcp"), "wb").close()
    out["done"] = []
    ckpt.save(os.path.join(tmp, "step=2.ckpt"),
              {"state_dict": s.module_state_dict(model), "optimizer_states": {"0": s.optimizer_state_dict(model, opt)}},
              meta={"global_step": 2, "rng": [torch.get_rng_state()]}, async_save=True,
              on_done=lambda p: out["done"].append((p, sorted(os.listdir(p)))))
    out["norms"] += _train(model, opt, s, rank, range(2, STEPS), clip)  # overlaps the async write
    ckpt.wait()
    out["w4"] = _full(model)

    # resume from the sharded checkpoint into a fresh model and optimizer, on 2 ranks
    s2, model2 = _strategy(Net(seed=7), auto_wrap_policy={Block})
    opt2 = torch.optim.AdamW(model2.parameters(), lr=LR)
    state = {"state_dict": s2.module_state_dict(model2),
             "optimizer_states": {"0": s2.optimizer_state_dict(model2, opt2)}}
    out["meta"] = load_sharded(os.path.join(tmp, "step=2.ckpt"), state)
    s2.load_module_state_dict(model2, state["state_dict"])
    s2.load_optimizer_state_dict(model2, opt2, state["optimizer_states"]["0"])
    _train(model2, opt2, s2, rank, range(2, STEPS), lambda o: s2.clip_gradients(o, CLIP))
    out["w4b"] = _full(model2)
    ckpt.close()

    # the same checkpoint into complete tensors on each of the 2 ranks (how DDP loads it)
    plain = Net(seed=9).state_dict()
    load_sharded(os.path.join(tmp, "step=2.ckpt"), {"state_dict": plain})
    out["plain_equal"] = all(torch.equal(plain[k], out["w2"][k]) for k in plain)
    # state_dict_type="full": complete CPU tensors on rank 0 only; loading them back reshards
    s2.state_dict_type = "full"
    full = s2.module_state_dict(model2)
    out["full_keys"] = len(full)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # so that a load which does nothing shows
    s2.load_module_state_dict(model, s2.broadcast(full))
    out["full_roundtrip"] = all(torch.equal(v, out["w4b"][k]) for k, v in _full(model).items())
    return s, model, opt


def _evaluate_unevenly(rank, s, model, opt, out):
    """A different number of batches per rank: no collective inside, so no hang."""
    from distengine.strategies.fsdp import full_tensor

    x, y = data(64)
    with torch.no_grad(), s.evaluation_context(model):
        preds = [model.validation_step(x[i * 8:(i + 1) * 8]) for i in range(3 - 2 * rank)]
    out["eval"] = torch.cat(preds)
    out["eval_w"] = _full(model)  # all-gathers again: the units are sharded as before
    model.training_step((x[:4], y[:4])).backward()  # training after evaluation still reduce-scatters
    out["after_eval_grad"] = full_tensor(model.blocks[0].fc1.weight.grad).abs().sum().item()
    opt.zero_grad()


def _fp16_skip(rank, out):
    """16-mixed: an inf in rank 1's shard only makes both ranks skip the step."""
    _, m3 = _strategy(Net(), auto_wrap_policy={Block}, mixed_precision="16-mixed")
    opt3 = torch.optim.AdamW(m3.parameters(), lr=LR)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    with torch.autocast("cpu", dtype=torch.float16):  # as the Trainer's 16-mixed runs the step
        loss = m3.training_step(_batch(*data(64), rank, 0, 0))
    scaler.scale(loss).backward()
    with torch.no_grad():  # the forward computes in fp16 (the step's fp32 target makes the loss fp32)
        forward_dtype = m3(_batch(*data(64), rank, 0, 0)[0]).dtype
    out["fp16"] = (forward_dtype, m3.blocks[1].fc1.weight.dtype, m3.blocks[1].fc1.weight.grad.dtype)
    if rank == 1:
        m3.blocks[1].fc1.weight.grad.to_local().fill_(float("inf"))
    before = _full(m3)
    scaler.step(opt3)
    scaler.update()
    out["fp16_skipped"] = all(torch.equal(before[k], v) for k, v in _full(m3).items())
    out["fp16_scale"] = scaler.get_scale()


def _options(rank, out):
    """cpu_offload, reshard_after_forward=False and bf16-mixed train; value clipping bounds the shards."""
    from distengine.strategies.fsdp import full_tensor

    x, y = data(64)
    for name, kw in {"plain": {}, "offload": {"cpu_offload": True}, "keep": {"reshard_after_forward": False},
                     "bf16": {"mixed_precision": "bf16-mixed"}}.items():
        s, m = _strategy(Net(), auto_wrap_policy={Block}, **kw)
        opt = torch.optim.AdamW(m.parameters(), lr=LR)
        mixed = torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16")  # as the Trainer runs it
        for _ in range(2):
            with mixed:
                loss = m.training_step((x[rank::2], y[rank::2]))
            loss.backward()
            s.clip_gradients(opt, 0.01, "value")
            grad_max = full_tensor(m.blocks[0].fc1.weight.grad).abs().max().item()
            opt.step()
            opt.zero_grad()
        with torch.no_grad():  # the forward's dtype (the step's fp32 target makes the loss fp32)
            forward_dtype = m(x[rank::2]).dtype
        out[name] = (forward_dtype, grad_max, _full(m))


def _fit_manual(tmp, strategy):
    """Trainer.fit with manual optimization (manual_backward, clip_gradients, self.log)."""
    import distengine as de
    from tests.fsdp.models import manual_module

    x, y = data(64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8 if strategy else 16)
    model = manual_module()
    trainer = de.Trainer(max_epochs=1, accelerator="cpu", strategy=strategy or "auto", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp)
    trainer.fit(model, loader)
    return float(trainer.callback_metrics["loss_epoch"]), _full(model), trainer.global_step


def _loaders():
    x, y = data(64)
    ds = torch.utils.data.TensorDataset
    # validation: 17 samples, 9 and 8 per rank, so 2 batches on rank 0 and 1 on rank 1
    return (torch.utils.data.DataLoader(ds(x, y), batch_size=8),
            torch.utils.data.DataLoader(ds(x[:17], y[:17]), batch_size=8))


def _save_then_validate(tmp, out):
    """Trainer.save_checkpoint in both layouts, then validate(ckpt_path=...) in a new Trainer."""
    import distengine as de
    from distengine.strategies.fsdp import FSDPStrategy
    from tests.fsdp.models import manual_module

    train, val = _loaders()
    kw = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
          "enable_model_summary": False, "default_root_dir": tmp}
    for layout in ("sharded", "full"):
        model = manual_module()
        trainer = de.Trainer(max_epochs=1, strategy=FSDPStrategy(auto_wrap_policy={Block}, state_dict_type=layout),
                             **kw)
        trainer.fit(model, train)
        path = os.path.join(tmp, f"manual-{layout}.ckpt")
        trainer.save_checkpoint(path)
        out[f"val_{layout}"] = trainer.validate(model, val)[0]["val_loss"]
        other = de.Trainer(strategy=FSDPStrategy(auto_wrap_policy={Block}, state_dict_type=layout), **kw)
        out[f"val_{layout}_loaded"] = other.validate(manual_module(), val, ckpt_path=path)[0]["val_loss"]


def _trainer_bf16(tmp, out):
    """Trainer(precision="bf16-mixed") reaches FSDP's MixedPrecisionPolicy; the shards stay fp32."""
    import distengine as de
    from distengine.strategies.fsdp import FSDPStrategy
    from tests.fsdp.models import manual_module

    model = manual_module()
    trainer = de.Trainer(max_epochs=1, strategy=FSDPStrategy(auto_wrap_policy={Block}), precision="bf16-mixed",
                         accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp)
    trainer.fit(model, _loaders()[0])
    policy = model.blocks[0]._get_fsdp_state()._mp_policy
    out["bf16_trainer"] = (policy.param_dtype, policy.reduce_dtype, model.blocks[0].fc1.weight.dtype,
                           float(trainer.callback_metrics["loss_epoch"]))


def _two_ranks(rank, tmp):
    from distengine.strategies.fsdp import FSDPStrategy

    out = {"manual": _fit_manual(tmp, FSDPStrategy(auto_wrap_policy={Block}))}
    _save_then_validate(tmp, out)
    _trainer_bf16(tmp, out)
    s, model, opt = _train_save_resume(rank, tmp, out)
    _evaluate_unevenly(rank, s, model, opt, out)
    _fp16_skip(rank, out)
    _options(rank, out)
    # configure_model builds the blocks on meta and shards them by hand; the policy is not applied
    _, m4 = _strategy(MetaNet(), auto_wrap_policy={torch.nn.Linear})
    out["meta_units"] = _units(m4)
    out["meta_materialised"] = not any(p.is_meta for p in m4.parameters())
    out["meta_loss"] = m4.training_step(data()).item()
    return out


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("fsdp"))
    return tmp, run_ranks(_two_ranks, 2, tmp, timeout=180)


def _reference():
    """The same training on one process, unsharded: each step sees both ranks' rows."""
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    clip = lambda o: torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)  # noqa: E731
    norms = _train(model, opt, None, None, range(2), clip)
    w2 = {k: v.clone() for k, v in model.state_dict().items()}
    norms += _train(model, opt, None, None, range(2, STEPS), clip)
    return norms, w2, model.state_dict()


def test_two_ranks_match_one_process_and_resume_exactly(job):
    _, (r0, r1) = job
    assert r0["units"] == ["", "blocks.0", "blocks.1", "blocks.2"]
    norms, w2, w4 = _reference()
    assert r0["norms"] == r1["norms"], "the clipped total norm must be the same on every rank"
    assert r0["norms"] == pytest.approx(norms, rel=1e-5)
    for k in w4:
        torch.testing.assert_close(r0["w2"][k], w2[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r0["w4"][k], w4[k], rtol=1e-5, atol=1e-6)
    for r in (r0, r1):
        assert all(torch.equal(r["w4"][k], r["w4b"][k]) for k in w4), "resuming the sharded checkpoint changed it"
    assert r0["meta"]["global_step"] == 2 and r1["meta"]["global_step"] == 2
    # rank 0 was told once the directory was complete and in place; rank 1 is never told
    assert [(os.path.basename(p), files) for p, files in r0["done"]] == \
        [("step=2.ckpt", [".metadata", "__0_0.distcp", "__1_0.distcp", "checksums.json", "meta.pt"])] \
        and r1["done"] == []
    n0 = len(r0["eval"])
    assert (n0, len(r1["eval"])) == (24, 8)
    reference = Net()
    reference.load_state_dict(r0["eval_w"])
    torch.testing.assert_close(r0["eval"], reference(data(64)[0][:24]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r1["eval"], reference(data(64)[0][:8]), rtol=1e-5, atol=1e-6)
    assert r0["after_eval_grad"] > 0 and r0["after_eval_grad"] == r1["after_eval_grad"]
    assert r0["plain_equal"] and r1["plain_equal"], "2 ranks loading complete tensors got other values"
    assert (r0["full_keys"], r1["full_keys"]) == (len(w4), 0), "a full state dict lives on rank 0 only"
    assert r0["full_roundtrip"] and r1["full_roundtrip"]


def test_trainer_manual_optimization_matches_one_process(job, tmp_path):
    _, (r0, r1) = job
    loss, weights, steps = _fit_manual(str(tmp_path), None)
    assert r0["manual"][2] == r1["manual"][2] == steps == 4
    assert r0["manual"][0] == r1["manual"][0] == pytest.approx(loss, rel=1e-5)  # the epoch mean, over ranks
    for k, v in weights.items():
        torch.testing.assert_close(r0["manual"][1][k], v, rtol=1e-5, atol=1e-6)


def test_trainer_checkpoints_validate_on_two_ranks_and_in_one_process(job, tmp_path):
    import distengine as de
    from tests.fsdp.models import manual_module

    tmp, (r0, r1) = job
    _, val = _loaders()
    for layout in ("sharded", "full"):
        assert r0[f"val_{layout}"] == r1[f"val_{layout}"] == r0[f"val_{layout}_loaded"] == r1[f"val_{layout}_loaded"]
        path = os.path.join(tmp, f"manual-{layout}.ckpt")
        assert os.path.isdir(path) == (layout == "sharded")
        one = de.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path)).validate(manual_module(), val, ckpt_path=path)
        assert one[0]["val_loss"] == pytest.approx(r0[f"val_{layout}"], rel=1e-5)
    # load_from_checkpoint takes the directory as it takes a file (safe_load reads its shards whole)
    from_dir = type(manual_module()).load_from_checkpoint(os.path.join(tmp, "manual-sharded.ckpt"))
    from_file = type(manual_module()).load_from_checkpoint(os.path.join(tmp, "manual-full.ckpt"))
    for k, v in from_file.state_dict().items():
        torch.testing.assert_close(from_dir.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_precision_offload_reshard_options(job):
    _, (r0, r1) = job
    plain = r0["plain"][2]
    for name in ("offload", "keep"):  # where the shards live / when they are freed: same numbers
        assert all(torch.equal(r0[name][2][k], v) for k, v in plain.items()), name
    assert r0["bf16_trainer"][:3] == (torch.bfloat16, torch.float32, torch.float32)
    bf16_loss, fp32_loss = r0["bf16_trainer"][3], r0["manual"][0]  # the same run in fp32
    assert bf16_loss == pytest.approx(fp32_loss, rel=0.05) and bf16_loss != fp32_loss
    assert r0["bf16"][0] == torch.bfloat16 and r0["plain"][0] == torch.float32
    assert all(v.dtype == torch.float32 for v in r0["bf16"][2].values()), "bf16-mixed keeps fp32 shards"
    assert not all(torch.equal(r0["bf16"][2][k], v) for k, v in plain.items())
    for name in ("plain", "offload", "keep", "bf16"):
        assert r0[name][1] == r1[name][1] == pytest.approx(0.01), "value clipping must bound every shard"


def test_fp16_scaler_skips_on_every_rank_and_meta_init(job):
    _, (r0, r1) = job
    assert r0["fp16"] == (torch.float16, torch.float32, torch.float32)  # fp16 compute, fp32 shards
    assert r0["fp16_skipped"] and r1["fp16_skipped"]
    assert r0["fp16_scale"] == r1["fp16_scale"] == 512.0
    # the hand-sharded blocks and the root; the policy (nn.Linear) would have sharded the head too
    assert r0["meta_units"] == ["", "blocks.0", "blocks.1", "blocks.2"]
    assert r0["meta_materialised"] and torch.isfinite(torch.tensor(r0["meta_loss"]))


def test_sharded_checkpoint_loads_in_one_process_and_consolidates(job, tmp_path, capsys):
    from distengine.checkpoint.sharded import load_sharded
    from distengine.launch.cli import main

    tmp, (r0, _) = job
    src = os.path.join(tmp, "step=2.ckpt")
    assert not [n for n in os.listdir(tmp) if n.startswith(".")], "a temporary directory was left behind"
    plain = Net(seed=3).state_dict()
    assert load_sharded(src, {"state_dict": plain})["global_step"] == 2
    assert all(torch.equal(plain[k], r0["w2"][k]) for k in plain)

    dst = str(tmp_path / "full.ckpt")
    assert main(["checkpoint", "consolidate", src, dst]) == 0
    assert "wrote" in capsys.readouterr().out
    ckpt = safe_load(dst)
    assert ckpt["global_step"] == 2
    assert all(torch.equal(ckpt["state_dict"][k], r0["w2"][k]) for k in plain)
    # the optimizer state resumes in an unsharded process: two more steps land where FSDP did
    model = Net()
    model.load_state_dict(ckpt["state_dict"])
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    opt.load_state_dict(ckpt["optimizer_states"][0])
    _train(model, opt, None, None, range(2, STEPS),
           lambda o: torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, r0["w4"][k], rtol=1e-5, atol=1e-6)

    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: .*; in the checkpoint but not in "
                                              r"the model: blocks\.2\.fc1\.bias"):
        other = {k.replace("head", "out"): v for k, v in Net(n_blocks=2).state_dict().items()}
        load_sharded(src, {"state_dict": other})


class _Marker:
    """Unpickling it creates a directory: the proof that a load ran code from the checkpoint."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_loading_a_sharded_checkpoint_runs_no_code_from_it(job, tmp_path):
    import pickle

    import torch.distributed.checkpoint as dcp

    from distengine.checkpoint.sharded import consolidate, load_sharded

    tmp, _ = job
    src = os.path.join(tmp, "step=2.ckpt")
    # 1: a crafted index (.metadata is a pickle)
    bad_index = tmp_path / "index.ckpt"
    shutil.copytree(src, bad_index)
    with open(bad_index / ".metadata", "wb") as f:
        pickle.dump(_Marker(str(tmp_path / "ran1")), f)
    with pytest.raises(CheckpointError, match="damaged: its file .metadata"):  # the checksums catch it first
        load_sharded(bad_index, {"state_dict": Net().state_dict()})
    os.remove(bad_index / "checksums.json")  # crafted without them, as checkpoints written before them
    with pytest.raises(CheckpointError, match="refused as unsafe"):
        load_sharded(bad_index, {"state_dict": Net().state_dict()})
    # 2: a non-tensor entry that is not plain data (DCP pickles those with torch.save)
    bad_entry = tmp_path / "entry.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"state_dict": Net().state_dict(), "extra": _Marker(str(tmp_path / "ran2"))},
                 checkpoint_id=str(bad_entry), no_dist=True)
    shutil.copy(os.path.join(src, "meta.pt"), bad_entry / "meta.pt")
    with pytest.raises(CheckpointError, match="refused as unsafe: an entry is not plain data"):
        consolidate(bad_entry, tmp_path / "x.ckpt")
    with pytest.raises(CheckpointError, match="refused as unsafe: an entry is not plain data"):
        load_sharded(bad_entry, {"state_dict": Net().state_dict(), "extra": 0})
    assert not (tmp_path / "ran1").exists() and not (tmp_path / "ran2").exists()


def test_bad_input_is_one_line_before_training(tmp_path, capsys):
    from distengine.checkpoint.sharded import load_sharded
    from distengine.launch.cli import main
    from distengine.strategies.fsdp import FSDPStrategy

    with pytest.raises(ValueError, match=r"auto_wrap_policy=\{<class 'torch.nn.modules.conv.Conv1d'>\} matches no"):
        FSDPStrategy(auto_wrap_policy={torch.nn.Conv1d}).setup_module(Net())
    with pytest.raises(ValueError, match="does not support precision='bf16-true'"):
        FSDPStrategy(mixed_precision="bf16-true")
    with pytest.raises(TypeError, match="auto_wrap_policy must be a set of nn.Module classes"):
        FSDPStrategy(auto_wrap_policy={"Block"})
    half = tmp_path / "half.ckpt"
    half.mkdir()
    with pytest.raises(CheckpointError, match="is incomplete"):
        load_sharded(half, {"model": {}})
    assert main(["checkpoint", "consolidate", str(tmp_path / "nope"), "x.ckpt"]) == 2
    assert main(["checkpoint", "merge"]) == 2
    assert main(["checkpoint", "consolidate", str(half)]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and "unknown subcommand 'merge'" in err and "takes two arguments" in err
    assert main(["checkpoint", "--help"]) == 0 and "consolidate [--overwrite] SRC DST.ckpt" in capsys.readouterr().out
    assert main(["checkpoint", "consolidate", str(half), str(tmp_path / "x.ckpt")]) == 2
    assert "is incomplete" in capsys.readouterr().err
