"""Rank and linear agreement (mechdiff.stats) against hand-computed values: ties get mean ranks,
constant inputs give NaN, the top-k overlap counts shared sites."""

from __future__ import annotations

import math

import pytest
import torch

from mechdiff.stats import (
    fraction_interval,
    fraction_samples,
    pearson,
    ranks,
    spearman,
    top_overlap,
)


def test_ranks_share_the_mean_rank_of_ties() -> None:
    assert ranks(torch.tensor([0.0, 0.0, 1.0, 2.0, 0.0])).tolist() == [2.0, 2.0, 4.0, 5.0, 2.0]
    assert ranks(torch.tensor([[3.0, 1.0], [2.0, 2.0]])).tolist() == [4.0, 1.0, 2.5, 2.5]


def test_spearman_is_pearson_of_ranks_and_ignores_monotone_maps() -> None:
    a = torch.tensor([0.1, 0.5, -2.0, 3.0, 0.0])
    assert spearman(a, a.exp()) == pytest.approx(1.0)
    assert spearman(a, -(a**3)) == pytest.approx(-1.0)
    # Hand-computed: ranks (2,3,1,4) and (1,3,2,4): d = (1,0,-1,0), rho = 1 - 6*2/(4*15) = 0.8.
    assert spearman(torch.tensor([1.0, 2.0, 0.0, 5.0]),
                    torch.tensor([0.0, 7.0, 1.0, 9.0])) == pytest.approx(0.8)
    x, y = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 3.0, 2.0, 5.0])
    assert pearson(x, y) == pytest.approx(float(torch.corrcoef(torch.stack([x, y]))[0, 1]))


def test_constant_input_has_no_correlation() -> None:
    assert math.isnan(spearman(torch.zeros(4), torch.arange(4.0)))
    assert math.isnan(pearson(torch.ones(3), torch.arange(3.0)))
    assert math.isnan(pearson(torch.ones(1), torch.ones(1)))
    with pytest.raises(ValueError, match="cannot correlate"):
        spearman(torch.zeros(3), torch.zeros(4))


def test_top_overlap_counts_shared_strongest_sites() -> None:
    a = torch.tensor([[0.9, -0.8], [0.1, 0.0]])
    b = torch.tensor([[-0.7, 0.0], [0.6, 0.05]])
    assert top_overlap(a, b, 2) == 1  # a: {0, 1}; b: {0, 2} (by |value|)
    assert top_overlap(a, a, 10) == 4


@pytest.mark.parametrize(("n", "samples"), [(12, 300), (30, 50), (2, 9), (1, 4)])
def test_spearman_samples_is_spearman_of_every_column(n: int, samples: int) -> None:
    """The batched rank correlation of bootstrap samples equals spearman() column by column
    (its old loop, the oracle): ties (integer draws), a constant column and a non-finite one
    are NaN or mean-ranked alike."""
    from mechdiff.stats import spearman_samples

    gen = torch.Generator().manual_seed(n)
    a = torch.randint(0, 4, (n, samples), generator=gen).float()
    b = torch.randn(n, samples, generator=gen)
    a[:, 1] = 2.0
    b[0, 2] = float("inf")
    ref = torch.tensor([spearman(a[:, s], b[:, s]) for s in range(samples)])
    got = spearman_samples(a, b)
    torch.testing.assert_close(got, ref.float(), atol=1e-6, rtol=0, equal_nan=True)
    assert bool(got[1:3].isnan().all())


def test_fraction_samples_drop_resamples_whose_gap_is_rounding() -> None:
    # two prompts: on one the donor differs from the receiver by 1, on the other by 1e-9 (float
    # noise next to values of 1000). Resamples of only the second prompt have no gap to share:
    # NaN (left out of intervals), not a fraction of 1e9 made of noise.
    receiver = torch.tensor([0.0, 1000.0], dtype=torch.float64)
    donor = torch.tensor([1.0, 1000.0 + 1e-9], dtype=torch.float64)
    patched = torch.tensor([[0.5, 1000.0 + 1e-9]], dtype=torch.float64)
    weights = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    got = fraction_samples(patched, receiver, donor, weights)
    # hand computation: (mean patched - mean receiver) / (mean donor - mean receiver)
    assert got[0, 0].item() == pytest.approx((0.25 + 0.5e-9) / (0.5 + 0.5e-9), rel=1e-6)
    assert got[0, 1].item() == pytest.approx(0.5)
    assert torch.isnan(got[0, 2])
    lo, hi = fraction_interval(patched, receiver, donor, samples=200)
    assert 0.4 < lo.item() <= hi.item() < 0.6
