"""BatchSampler: seeded epochs of permutations, int32 indices where they fit."""

import torch

from descentlab.train.sampler import BatchSampler


def draws(sampler: BatchSampler, k: int) -> list[torch.Tensor]:
    return [sampler.next().clone() for _ in range(k)]


def test_int32_indices_are_the_int64_permutations_of_the_seed():
    n, batch, seed = 1000, 64, 7
    sampler = BatchSampler(n, batch, seed, torch.device("cpu"))
    got = torch.cat(draws(sampler, 3 * (n // batch)))  # three epochs
    assert got.dtype == torch.int32
    generator = torch.Generator().manual_seed(seed)
    per_epoch = (n // batch) * batch  # the last incomplete batch is dropped
    expected = torch.cat([torch.randperm(n, generator=generator)[:per_epoch] for _ in range(3)])
    assert torch.equal(got.long(), expected)


def test_a_state_with_an_int64_permutation_resumes_the_same_draws():
    n, batch = 300, 32
    uninterrupted = BatchSampler(n, batch, 3, torch.device("cpu"))
    draws(uninterrupted, 5)
    state = uninterrupted.state_dict()
    state["perm"] = state["perm"].long()  # as states written before int32 indices
    later = draws(uninterrupted, 20)
    resumed = BatchSampler(n, batch, 3, torch.device("cpu"))
    resumed.load_state_dict(state)
    for a, b in zip(later, draws(resumed, 20)):
        assert b.dtype == torch.int32 and torch.equal(a, b)
