"""Pure unit tests: the resumable sampler's arithmetic and environment detection."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from distengine.data import EvalShardSampler, ResumableSampler, prepare_train_loader
from distengine.distributed.env import detect, expand_nodelist


def _epoch(n, world, start=0, shuffle=True, seed=3, epoch=1):
    out = []
    for r in range(world):
        s = ResumableSampler(n, shuffle=shuffle, seed=seed, num_replicas=world, rank=r)
        s.set_epoch(epoch)
        s.set_start(start)
        out.append(list(s))
    return out


@pytest.mark.parametrize("old_world,new_world", [(2, 1), (1, 2), (2, 3), (3, 2)])
def test_resume_at_any_world_size_visits_the_rest_exactly_once(old_world, new_world):
    n, per_rank_done = 30, 4
    before = _epoch(n, old_world)
    consumed = [i for r in range(old_world) for i in before[r][:per_rank_done]]
    rest = _epoch(n, new_world, start=per_rank_done * old_world)
    remaining = [i for shard in rest for i in shard]
    assert sorted(set(consumed) | set(remaining)) == list(range(n))
    assert not set(consumed) & set(remaining)
    # padding only repeats samples so that every rank gets the same count
    assert len({len(s) for s in rest}) == 1


def test_same_world_resume_continues_each_rank_exactly():
    full = _epoch(20, 2)
    resumed = _epoch(20, 2, start=6)
    assert [s[3:] for s in full] == resumed


def test_unshuffled_single_rank_is_sequential():
    assert _epoch(7, 1, shuffle=False) == [list(range(7))]


def test_eval_shards_are_contiguous_and_unpadded():
    shards = [list(EvalShardSampler(9, 2, r)) for r in range(2)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]


def test_random_sampler_is_replaced_and_keeps_loader_settings():
    dl = DataLoader(TensorDataset(torch.arange(10)), batch_size=3, shuffle=True, drop_last=True)
    new, sampler = prepare_train_loader(dl, 2, 1, enabled=True)
    assert isinstance(sampler, ResumableSampler) and sampler.shuffle and sampler.rank == 1
    assert new.batch_size == 3 and new.drop_last and not isinstance(new.sampler, RandomSampler)


def test_custom_sampler_under_ddp_is_a_clear_error():
    ds = TensorDataset(torch.arange(10))
    dl = DataLoader(ds, sampler=torch.utils.data.WeightedRandomSampler([1.0] * 10, 10))
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        prepare_train_loader(dl, 2, 0, enabled=True)


def test_detect_launched_slurm_and_local():
    launched = detect({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                       "GROUP_RANK": "0", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234",
                       "TORCHELASTIC_RESTART_COUNT": "2"})
    assert (launched.rank, launched.world_size, launched.local_world_size, launched.restart_count) == (1, 4, 2, 2)
    slurm = detect({"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4", "SLURM_NNODES": "2",
                    "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123",
                    "SLURM_JOB_NAME": "train"})
    assert (slurm.source, slurm.rank, slurm.local_rank, slurm.node_rank) == ("slurm", 3, 1, 1)
    assert slurm.master_addr == "gpu07" and slurm.master_port == 20123 and slurm.local_world_size == 2
    assert not detect({}).distributed
    # an interactive allocation is not a multi-task launch
    assert not detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NAME": "bash"}).distributed


def test_expand_nodelist():
    assert expand_nodelist("a[1-3,07],b2") == ["a1", "a2", "a3", "a07", "b2"]
    assert expand_nodelist("node[001-002]") == ["node001", "node002"]


def test_single_task_slurm_job_reads_its_restart_count():
    from distengine.distributed.env import detect

    one_task = {"SLURM_JOB_ID": "41", "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_RESTART_COUNT": "2",
                "SLURM_JOB_NAME": "train"}
    env = detect(one_task)
    assert (env.distributed, env.restart_count) == (False, 2)
    assert detect(dict(one_task, SLURM_JOB_NAME="bash")).restart_count == 0  # an interactive shell
    assert detect({"SLURM_RESTART_COUNT": "2"}).restart_count == 0  # not inside a job


@pytest.mark.parametrize("n,world,batch,drop_last", [(30, 4, 8, True), (30, 4, 8, False), (44, 2, 8, True),
                                                     (50, 4, 4, True), (7, 3, 2, False), (40, 2, 5, True)])
def test_several_ranks_get_the_batches_of_lightnings_distributed_sampler(n, world, batch, drop_last):
    """Lightning injects DistributedSampler(shuffle=True, seed=...) (its own drop_last left
    False: it pads) and keeps the loader's batch-level drop_last: the same batches on every rank."""
    from torch.utils.data import DistributedSampler

    data = TensorDataset(torch.arange(n))
    for rank in range(world):
        theirs = DataLoader(data, batch_size=batch, drop_last=drop_last,
                            sampler=DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=3))
        theirs.sampler.set_epoch(2)
        ours, sampler = prepare_train_loader(DataLoader(data, batch_size=batch, shuffle=True, drop_last=drop_last),
                                             world, rank, enabled=True)
        sampler.seed = 3
        sampler.set_epoch(2)
        assert [b[0].tolist() for b in ours] == [b[0].tolist() for b in theirs], (rank, len(ours), len(theirs))


def test_one_process_shuffle_draws_as_random_sampler():
    """One process: the permutations and the global generator's state after them are those of a
    plain DataLoader(shuffle=True) (RandomSampler), with and without the loader's generator=."""
    data = TensorDataset(torch.arange(13))
    for gen_seed in (None, 4):
        runs = []
        for ours in (False, True):
            torch.manual_seed(0)
            gen = torch.Generator().manual_seed(gen_seed) if gen_seed is not None else None
            dl = DataLoader(data, batch_size=4, shuffle=True, generator=gen)
            if ours:
                dl, _ = prepare_train_loader(dl, 1, 0, enabled=True)
            runs.append(([[b[0].tolist() for b in dl] for _ in range(3)], torch.rand(3)))
        assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1]), gen_seed


def test_one_process_sampling_with_replacement_is_left_as_it_is():
    """Lightning leaves it alone in one process; a permutation would silently drop the
    replacement (and a num_samples of its own)."""
    data = TensorDataset(torch.arange(10))
    for sampler in (RandomSampler(data, replacement=True), RandomSampler(data, num_samples=25)):
        dl = DataLoader(data, batch_size=4, sampler=sampler)
        assert prepare_train_loader(dl, 1, 0, enabled=True) == (dl, None)


def test_one_replica_of_a_distributed_strategy_shuffles_as_lightnings_distributed_sampler():
    """Lightning counts DDP, FSDP and ModelParallelStrategy as distributed even with one replica
    (one process, or one tensor-parallel group): it puts in DistributedSampler(seed + epoch), so
    the order does not come from the global generator (nor does a replacement sampler stay)."""
    from torch.utils.data import DistributedSampler

    data = TensorDataset(torch.arange(13))
    for loader in (DataLoader(data, batch_size=4, shuffle=True),
                   DataLoader(data, batch_size=4, sampler=RandomSampler(data, replacement=True))):
        theirs = DataLoader(data, batch_size=4, sampler=DistributedSampler(data, num_replicas=1, rank=0, seed=3))
        ours, sampler = prepare_train_loader(loader, 1, 0, enabled=True, distributed=True)
        sampler.seed = 3
        for epoch in range(3):
            theirs.sampler.set_epoch(epoch)
            sampler.set_epoch(epoch)
            state = torch.get_rng_state()
            expected = [b[0].tolist() for b in theirs]
            after = torch.get_rng_state()  # the loader's own base-seed draw
            torch.set_rng_state(state)
            assert [b[0].tolist() for b in ours] == expected, epoch
            assert torch.equal(torch.get_rng_state(), after)  # the sampler draws nothing from it
