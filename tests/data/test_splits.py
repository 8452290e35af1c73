"""Stratified split and k-fold on imbalanced labels, class weights, and the class-balanced
sampler's frequencies."""

import pytest
import torch

from cnnlab.data.splits import (
    ClassBalancedSampler,
    class_weights,
    seeded_generator,
    stratified_kfold,
    stratified_split,
)
from cnnlab.errors import CnnlabError, DataError

# Classes of 50, 30, 15, 4, 2 and 1 samples, interleaved.
COUNTS = [50, 30, 15, 4, 2, 1]
LABELS = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])[
    torch.randperm(sum(COUNTS), generator=torch.Generator().manual_seed(0))
]


def per_class(indices: torch.Tensor) -> list[int]:
    return torch.bincount(LABELS[indices], minlength=len(COUNTS)).tolist()


def test_split_partitions_the_indices():
    train, val = stratified_split(LABELS, 0.2, seed=0)
    assert train.dtype == val.dtype == torch.int64
    assert torch.equal(train, train.sort().values) and torch.equal(val, val.sort().values)
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(len(LABELS)))


def test_split_takes_each_class_in_proportion():
    train, val = stratified_split(LABELS, 0.2, seed=0)
    # round half up of 0.2 * count: 10, 6, 3, 0.8 -> 1, 0.4 -> at least 1, a single one stays
    assert per_class(val) == [10, 6, 3, 1, 1, 0]
    assert per_class(train) == [40, 24, 12, 3, 1, 1]


def test_split_keeps_a_training_sample_of_every_splittable_class():
    _, val = stratified_split(LABELS, 0.9, seed=0)
    assert per_class(val) == [45, 27, 14, 3, 1, 0]  # 13.5 rounds up; 2 gives 1 and keeps 1


def test_split_is_deterministic_for_a_seed():
    first = stratified_split(LABELS, 0.3, seed=7)
    again = stratified_split(LABELS, 0.3, seed=7)
    other = stratified_split(LABELS, 0.3, seed=8)
    assert torch.equal(first[1], again[1]) and torch.equal(first[0], again[0])
    assert not torch.equal(first[1], other[1])
    assert per_class(first[1]) == per_class(other[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_refuses_a_fraction_outside_0_1(fraction):
    with pytest.raises(CnnlabError, match=rf"fraction must be in \(0, 1\), got {fraction}"):
        stratified_split(LABELS, fraction)


def test_labels_are_checked():
    with pytest.raises(DataError, match=r"1-D tensor of integer class indices, got torch.float32"):
        stratified_split(torch.rand(10), 0.2)
    with pytest.raises(DataError, match=r"shape \(2, 5\)"):
        stratified_split(torch.zeros(2, 5, dtype=torch.long), 0.2)
    with pytest.raises(DataError, match="must be >= 0, found -1"):
        stratified_split([0, 1, -1, 2], 0.2)
    with pytest.raises(DataError, match="labels are empty"):
        stratified_split([], 0.2)


def test_kfold_puts_every_sample_in_exactly_one_validation_fold():
    folds = stratified_kfold(LABELS, 5, seed=0)
    assert len(folds) == 5
    vals = torch.cat([val for _, val in folds])
    assert torch.equal(vals.sort().values, torch.arange(len(LABELS)))
    for train, val in folds:
        assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(len(LABELS)))


def test_kfold_keeps_class_proportions():
    folds = stratified_kfold(LABELS, 5, seed=3)
    counts = torch.tensor([per_class(val) for _, val in folds])  # folds x classes
    assert torch.equal(counts.sum(0), torch.tensor(COUNTS))
    assert int((counts.max(0).values - counts.min(0).values).max()) <= 1
    assert counts[:, 0].tolist() == [10] * 5 and counts[:, 1].tolist() == [6] * 5
    sizes = counts.sum(1)
    assert int(sizes.max() - sizes.min()) <= 1


def test_kfold_is_deterministic_for_a_seed_and_checks_k():
    first, again = stratified_kfold(LABELS, 3, seed=1), stratified_kfold(LABELS, 3, seed=1)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0][1], stratified_kfold(LABELS, 3, seed=2)[0][1])
    with pytest.raises(CnnlabError, match=r"2 <= k <= number of samples \(102\), got k=1"):
        stratified_kfold(LABELS, 1)
    with pytest.raises(CnnlabError, match="got k=103"):
        stratified_kfold(LABELS, 103)


def test_class_weights_are_inverse_frequency_with_mean_one():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    weights = class_weights(labels, num_classes=4)
    # n / (present classes * count): 10 / 18, 10 / 9, 10 / 3; class 3 never occurs
    expected = torch.tensor([10 / 18, 10 / 9, 10 / 3, 0.0])
    assert weights.dtype == torch.float32
    assert torch.allclose(weights, expected)
    assert torch.isclose(weights[labels].mean(), torch.tensor(1.0))
    assert torch.allclose(class_weights([1, 1, 0, 0], 2), torch.ones(2))


def test_class_weights_refuse_labels_beyond_the_classes():
    with pytest.raises(DataError, match="labels must be < num_classes=3, found label 3"):
        class_weights([0, 1, 3], num_classes=3)


def test_balanced_sampler_draws_classes_equally_often():
    labels = torch.tensor([0] * 900 + [1] * 100)
    sampler = ClassBalancedSampler(labels, num_samples=20_000, seed=0)
    drawn = sampler.indices(0)
    assert len(sampler) == 20_000 and drawn.shape == (20_000,) and drawn.dtype == torch.int64
    share = float((labels[drawn] == 1).float().mean())
    # Expected 0.5 with a standard deviation of 0.0035: 0.03 is over 8 of them.
    assert abs(share - 0.5) < 0.03
    assert len(set(drawn[labels[drawn] == 1].tolist())) > 95, "the minority is resampled widely"


def test_balanced_sampler_is_deterministic_per_epoch():
    sampler = ClassBalancedSampler(LABELS, seed=4)
    assert len(sampler) == len(LABELS)
    assert torch.equal(sampler.indices(2), ClassBalancedSampler(LABELS, seed=4).indices(2))
    assert not torch.equal(sampler.indices(2), sampler.indices(3))
    assert not torch.equal(sampler.indices(2), ClassBalancedSampler(LABELS, seed=5).indices(2))
    with pytest.raises(CnnlabError, match="at least 1 sample, got 0"):
        ClassBalancedSampler(LABELS, num_samples=0)


def test_seeded_generators_separate_streams_and_refuse_negative_seeds():
    def draw(*key):
        return torch.rand(4, generator=seeded_generator(*key)).tolist()

    assert draw(0, 1, 2) == draw(0, 1, 2)
    assert len({tuple(draw(0, 1, 2)), tuple(draw(0, 2, 1)), tuple(draw(1, 1, 2))}) == 3
    with pytest.raises(CnnlabError, match="non-negative integer, got -1"):
        seeded_generator(-1)
