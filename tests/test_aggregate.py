"""Aggregators (METHODS.md section 2) against numpy / hand-worked references, and every config error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust_rlhf.aggregate import (
    AGGREGATORS,
    AggregatorConfig,
    aggregate,
    aggregate_brme_nominal,
    aggregate_brme_tradeoff,
    aggregate_lcb,
    aggregate_max,
    aggregate_mean,
    aggregate_median,
    aggregate_min,
    aggregate_uwo,
    aggregator_params,
    normalize_heads,
)
from robust_rlhf.errors import UserError
from robust_rlhf.reward.output import RewardOutput


def _random_output(b: int = 6, k: int = 5, seed: int = 0, gaussian: bool = True) -> RewardOutput:
    g = torch.Generator().manual_seed(seed)
    per_head = torch.randn(b, k, generator=g, dtype=torch.float64) * 2 + 1  # (B, K)
    std = torch.rand(b, k, generator=g, dtype=torch.float64) + 0.1 if gaussian else None
    return RewardOutput(per_head, std)


# A hand-worked example: 2 samples, 4 heads.
#   row 0: r = [1, 3, 2, 6]  mean 3, unbiased var ((4+0+1+9)/3) = 14/3, min 1, max 6, median (2+3)/2 = 2.5
#   row 1: r = [0, 0, 4, 4]  mean 2, var (4+4+4+4)/3 = 16/3, min 0, max 4, median (0+4)/2 = 2
#   stds:  row 0 [.5, .2, .9, .3] -> head 1 is most confident -> nominal 3
#          row 1 [.4, .8, .1, .1] -> tie between heads 2 and 3 -> first (head 2) -> nominal 4
HAND = RewardOutput(
    torch.tensor([[1.0, 3.0, 2.0, 6.0], [0.0, 0.0, 4.0, 4.0]], dtype=torch.float64),
    torch.tensor([[0.5, 0.2, 0.9, 0.3], [0.4, 0.8, 0.1, 0.1]], dtype=torch.float64),
)


def test_hand_worked_example() -> None:
    torch.testing.assert_close(aggregate_mean(HAND), torch.tensor([3.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(aggregate_min(HAND), torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(aggregate_max(HAND), torch.tensor([6.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(aggregate_median(HAND), torch.tensor([2.5, 2.0], dtype=torch.float64))
    # uwo lam=0.3: 3 - 0.3*14/3 = 1.6 ; 2 - 0.3*16/3 = 0.4
    torch.testing.assert_close(aggregate_uwo(HAND, lam=0.3), torch.tensor([1.6, 0.4], dtype=torch.float64))
    # lcb beta=1: 3 - sqrt(14/3), 2 - sqrt(16/3)
    expected = torch.tensor([3 - (14 / 3) ** 0.5, 2 - (16 / 3) ** 0.5], dtype=torch.float64)
    torch.testing.assert_close(aggregate_lcb(HAND), expected)
    torch.testing.assert_close(aggregate_brme_nominal(HAND), torch.tensor([3.0, 4.0], dtype=torch.float64))
    # trade-off lam=0.4: 0.4*3 + 0.6*1 = 1.8 ; 0.4*4 + 0.6*0 = 1.6
    torch.testing.assert_close(
        aggregate_brme_tradeoff(HAND, lam=0.4), torch.tensor([1.8, 1.6], dtype=torch.float64)
    )


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 10])
def test_against_numpy(k: int) -> None:
    out = _random_output(b=7, k=k, seed=k)
    r = out.per_head.numpy()
    s = out.per_head_std.numpy()
    var = np.var(r, axis=1, ddof=1) if k > 1 else np.zeros(r.shape[0])
    np.testing.assert_allclose(aggregate_mean(out).numpy(), r.mean(axis=1))
    np.testing.assert_allclose(aggregate_min(out).numpy(), r.min(axis=1))
    np.testing.assert_allclose(aggregate_max(out).numpy(), r.max(axis=1))
    np.testing.assert_allclose(aggregate_median(out).numpy(), np.median(r, axis=1))
    np.testing.assert_allclose(aggregate_uwo(out).numpy(), r.mean(axis=1) - 0.1 * var)
    np.testing.assert_allclose(aggregate_uwo(out, lam=0.5).numpy(), r.mean(axis=1) - 0.5 * var)
    np.testing.assert_allclose(aggregate_lcb(out).numpy(), r.mean(axis=1) - np.sqrt(var))
    np.testing.assert_allclose(aggregate_lcb(out, beta=2.0).numpy(), r.mean(axis=1) - 2 * np.sqrt(var))
    nominal = np.array([r[i, np.argmin(s[i])] for i in range(r.shape[0])])
    np.testing.assert_allclose(aggregate_brme_nominal(out).numpy(), nominal)
    np.testing.assert_allclose(aggregate_brme_tradeoff(out).numpy(), 0.5 * nominal + 0.5 * r.min(axis=1))
    for lam in (0.0, 0.2, 1.0):
        np.testing.assert_allclose(
            aggregate_brme_tradeoff(out, lam=lam).numpy(), lam * nominal + (1 - lam) * r.min(axis=1)
        )


def test_tradeoff_endpoints() -> None:
    out = _random_output()
    # seed 000: lam = 1 is RLHF on the nominal reward, lam = 0 pure worst case
    torch.testing.assert_close(aggregate_brme_tradeoff(out, lam=1.0), aggregate_brme_nominal(out))
    torch.testing.assert_close(aggregate_brme_tradeoff(out, lam=0.0), aggregate_min(out))
    # lam = 0 does not need Gaussian heads
    point = _random_output(gaussian=False)
    torch.testing.assert_close(aggregate_brme_tradeoff(point, lam=0.0), aggregate_min(point))


def test_brme_needs_std() -> None:
    point = _random_output(gaussian=False)
    with pytest.raises(UserError, match="per_head_std"):
        aggregate_brme_nominal(point)
    with pytest.raises(UserError, match="per_head_std"):
        aggregate(point, AggregatorConfig(name="brme_tradeoff"))


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_gradients_flow(name) -> None:
    # Each aggregator on its own, its autograd gradient against central finite differences
    # (float64, distinct values so min / max / median are differentiable there). A detached
    # aggregator fails: its output does not require grad, or its gradient is zero.
    g = torch.Generator().manual_seed(3)
    per_head = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    std = torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.1
    fn = lambda ph: aggregate(RewardOutput(ph, std), AggregatorConfig(name=name))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (per_head,), eps=1e-6, atol=1e-5)
    fn(per_head).sum().backward()
    assert per_head.grad.abs().sum() > 0


def test_aggregate_dispatches_with_defaults_and_params() -> None:
    out = _random_output()
    torch.testing.assert_close(aggregate(out, AggregatorConfig()), aggregate_mean(out))
    torch.testing.assert_close(aggregate(out, AggregatorConfig(name="uwo")), aggregate_uwo(out, lam=0.1))
    torch.testing.assert_close(aggregate(out, AggregatorConfig(name="uwo", lam=0.5)), aggregate_uwo(out, lam=0.5))
    torch.testing.assert_close(aggregate(out, AggregatorConfig(name="lcb", beta=0.0)), aggregate_mean(out))
    torch.testing.assert_close(
        aggregate(out, AggregatorConfig(name="brme_tradeoff", lam=0.6)), aggregate_brme_tradeoff(out, lam=0.6)
    )
    torch.testing.assert_close(aggregate(out, AggregatorConfig(name="max")), aggregate_max(out))
    assert set(AGGREGATORS) == {"mean", "min", "max", "uwo", "lcb", "median", "brme_nominal", "brme_tradeoff"}


def test_aggregator_params() -> None:
    assert aggregator_params(AggregatorConfig(name="uwo")) == {"lam": 0.1}
    assert aggregator_params(AggregatorConfig(name="lcb", beta=2)) == {"beta": 2.0}
    assert aggregator_params(AggregatorConfig(name="brme_tradeoff")) == {"lam": 0.5}
    assert aggregator_params(AggregatorConfig(name="median")) == {}


# ----------------------------------------------------------------------------- normalisation


def test_normalize_heads_against_numpy() -> None:
    out = _random_output(b=8, k=3)
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    std = torch.tensor([2.0, 0.5, 4.0], dtype=torch.float64)
    normed = normalize_heads(out, mean, std)
    np.testing.assert_allclose(normed.per_head.numpy(), (out.per_head.numpy() - mean.numpy()) / std.numpy())
    np.testing.assert_allclose(normed.per_head_std.numpy(), out.per_head_std.numpy() / std.numpy())
    # aggregate(normalize=True) == aggregator on normalised heads
    cfg = AggregatorConfig(name="min", normalize=True)
    torch.testing.assert_close(aggregate(out, cfg, head_stats=(mean, std)), aggregate_min(normed))


def test_normalize_makes_scales_comparable() -> None:
    # Head 1 is head 0 on a 10x scale plus an offset: after normalising by each head's own
    # statistics the two heads agree exactly, so the ensemble variance vanishes.
    base = torch.randn(50, dtype=torch.float64)
    out = RewardOutput(torch.stack([base, 10 * base + 3], dim=1))
    stats = (out.per_head.mean(0), out.per_head.std(0))
    cfg = AggregatorConfig(name="uwo", lam=1.0, normalize=True)
    torch.testing.assert_close(aggregate(out, cfg, head_stats=stats), normalize_heads(out, *stats).mean)


@pytest.mark.parametrize(
    "mean, std, match",
    [
        (torch.zeros(2), torch.ones(2), "shape"),
        (torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]), "> 0"),
        (torch.zeros(3), torch.tensor([1.0, -1.0, 1.0]), "> 0"),
        (torch.tensor([0.0, float("nan"), 0.0]), torch.ones(3), "finite"),
    ],
)
def test_normalize_heads_bad_stats(mean, std, match) -> None:
    with pytest.raises(UserError, match=match):
        normalize_heads(_random_output(k=3), mean, std)


def test_normalize_without_stats_is_an_error() -> None:
    with pytest.raises(UserError, match="normalize"):
        aggregate(_random_output(), AggregatorConfig(normalize=True))


def test_stats_without_normalize_is_an_error() -> None:
    with pytest.raises(UserError, match="no effect"):
        aggregate(_random_output(k=5), AggregatorConfig(), head_stats=(torch.zeros(5), torch.ones(5)))


# ----------------------------------------------------------------------------- config errors


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UserError, match="unknown aggregator 'maen'") as info:
        AggregatorConfig(name="maen")
    for name in AGGREGATORS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "uwo", "lam": -0.1}, ">= 0"),
        ({"name": "lcb", "beta": -1.0}, ">= 0"),
        ({"name": "lcb", "beta": float("inf")}, "finite"),
        ({"name": "uwo", "lam": float("nan")}, "finite"),
        ({"name": "uwo", "beta": 1.0}, "no effect"),
        ({"name": "lcb", "lam": 0.1}, "no effect"),
        ({"name": "mean", "lam": 0.1}, "no effect"),
        ({"name": "min", "beta": 1.0}, "no effect"),
        ({"name": "max", "lam": 0.1}, "no effect"),
        ({"name": "maximum"}, "unknown aggregator .*max"),
        ({"name": "median", "lam": 0.0}, "no effect"),
        ({"name": "brme_nominal", "lam": 0.5}, "no effect"),
        ({"name": "brme_tradeoff", "beta": 0.5}, "no effect"),
        ({"name": "brme_tradeoff", "lam": 1.5}, r"\[0, 1\]"),
        ({"name": "brme_tradeoff", "lam": -0.5}, ">= 0"),
        ({"name": "uwo", "lam": "0.1"}, "number"),
        ({"normalize": "yes"}, "true or false"),
    ],
)
def test_config_errors(kwargs, match) -> None:
    with pytest.raises(UserError, match=match):
        AggregatorConfig(**kwargs)


def test_aggregate_revalidates_mutated_config() -> None:
    cfg = AggregatorConfig(name="uwo")
    cfg.lam = -1.0  # e.g. set by an override after construction
    with pytest.raises(UserError, match=">= 0"):
        aggregate(_random_output(), cfg)
    cfg = AggregatorConfig(name="uwo")
    cfg.name = "nope"
    with pytest.raises(UserError, match="unknown aggregator"):
        aggregate(_random_output(), cfg)
