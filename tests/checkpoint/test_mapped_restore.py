"""The Trainer's restore and ``load_from_checkpoint`` read a full checkpoint memory-mapped
(issue 21 item 3.4), and keep no tensor that still reads the file: one truncated in place
afterwards would otherwise kill the process with SIGBUS (so this runs in a child process)."""
from __future__ import annotations

import os
import shutil

from tests.helpers import run_ranks


def _restore_then_truncate(rank, tmp):
    import torch

    from distengine.callbacks.model_checkpoint import ModelCheckpoint
    from distengine.checkpoint.io import read_last_pointer
    from tests.checkpoint.test_trainer_checkpointing import Reg, _loaders, _trainer

    _trainer(tmp, [ModelCheckpoint()], epochs=1).fit(Reg(), *_loaders())
    path = os.path.join(tmp, "resume.ckpt")  # outside the folder the next fit prunes
    shutil.copy(read_last_pointer(os.path.join(tmp, "checkpoints")), path)
    calls = []
    real = torch.load

    def spy(f, *args, **kwargs):
        calls.append((os.path.basename(os.fspath(f)), kwargs.get("mmap")))
        return real(f, *args, **kwargs)

    torch.load = spy
    ckpt = ModelCheckpoint()
    trainer = _trainer(tmp, [ckpt], epochs=2)
    module = Reg()
    trainer.fit(module, *_loaders(), ckpt_path=path)
    loaded = Reg.load_from_checkpoint(path)
    torch.load = real
    with open(path, "r+b") as f:  # in place, as torch.save or shutil.copy onto it would
        f.truncate(0)
    # every tensor the run kept is still readable (a mapped page past the end: SIGBUS)
    kept = [p.detach() for p in module.parameters()] + [p.detach() for p in loaded.parameters()]
    for opt in trainer.optimizers:
        kept += [v for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    kept += [v for v in ckpt.state_dict().values() if isinstance(v, torch.Tensor)]
    total = sum(float(t.double().sum()) for t in kept)
    return calls, trainer.global_step, total == total


def test_restore_and_load_from_checkpoint_map_the_file_and_keep_nothing_mapped(tmp_path):
    [(calls, step, readable)] = run_ranks(_restore_then_truncate, 1, str(tmp_path), timeout=120)
    assert [c for c in calls if c[0] == "resume.ckpt"] == [("resume.ckpt", True)] * 2, calls
    assert step == 8 and readable
