"""The DP-SGD core: Poisson batches, clipping to min(norm, C), noise of the right size."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from common.errors import UnsupportedDPModelError
from common.privacy.dp_sgd import (
    GaussianMechanism,
    check_per_record_rows,
    clipped_sum,
    per_sample_norms,
    poisson_indices,
)
from common.privacy.randomness import private_generator


def test_clipped_norms_are_min_of_norm_and_c() -> None:
    """Records below the clip norm are untouched, records above are scaled to C."""
    grads = [torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])]  # norms 5, 0.5, 0
    norms = per_sample_norms(grads)
    torch.testing.assert_close(norms, torch.tensor([5.0, 0.5, 0.0]))
    clip = 1.0
    per_record = [clipped_sum([g[i : i + 1] for g in grads], clip)[0] for i in range(3)]
    got = torch.stack([r.norm() for r in per_record])
    torch.testing.assert_close(got, torch.minimum(norms, torch.tensor(clip)), atol=1e-5, rtol=0)


def test_poisson_batch_sizes_are_binomial() -> None:
    n, q, draws = 200, 0.1, 2000
    generator = private_generator("cpu", seed=3)
    sizes = np.array([len(poisson_indices(n, q, generator)) for _ in range(draws)])
    assert abs(sizes.mean() - n * q) < 4 * np.sqrt(n * q * (1 - q) / draws)
    assert abs(sizes.var() - n * q * (1 - q)) < 0.2 * n * q * (1 - q)


def test_noise_has_sigma_c_over_expected_batch_per_coordinate() -> None:
    """Zero clipped sums in: the output is pure noise N(0, (sigma C / E[B])^2) per coordinate
    (Kolmogorov-Smirnov at a fixed false-alarm rate of 1e-3)."""
    sigma, clip, batch = 1.7, 0.5, 8
    mechanism = GaussianMechanism(
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=batch,
        generator=private_generator("cpu", seed=11),
    )
    noisy = mechanism.privatize([torch.zeros(20_000, dtype=torch.float64)])[0].numpy()
    assert stats.kstest(noisy, "norm", args=(0, sigma * clip / batch)).pvalue > 1e-3
    assert mechanism.invocations == 1


def test_os_entropy_noise_differs_seeded_repeats() -> None:
    draw = lambda g: torch.randn(5, generator=g)  # noqa: E731
    assert not torch.equal(draw(private_generator()), draw(private_generator()))
    assert torch.equal(draw(private_generator(seed=4)), draw(private_generator(seed=4)))


def test_guard_refuses_rows_that_are_not_records() -> None:
    with pytest.raises(UnsupportedDPModelError, match="rows for a batch of 2"):
        check_per_record_rows([torch.zeros(8, 3)], records=2)


def test_seeded_streams_of_different_names_never_share_draws() -> None:
    """With additive offsets one mechanism's seed + 1 was another's seed + 1001 + 1000 * r: a
    DP-SGD round's noise was the Box-Muller transform of the DP-MCGAN's Poisson uniforms.
    Streams are now hashed from (seed, names, numbers)."""
    from common.privacy.randomness import seeded_stream

    seed = 1234
    round_one = seeded_stream(seed, "dp-sgd", 0, 1)
    streams = {
        "dp-sgd round 1, noise": private_generator("cpu", round_one, stream="noise"),
        "dp-sgd round 1, poisson": private_generator("cpu", round_one, stream="poisson"),
        "dp-sgd round 2, noise": private_generator(
            "cpu", seeded_stream(seed, "dp-sgd", 1, 2), stream="noise"
        ),
        "dp-sgd round 1 again, later run": private_generator(
            "cpu", seeded_stream(seed, "dp-sgd", 3, 1), stream="noise"
        ),
        "dp-gan poisson": private_generator("cpu", seed, stream="dp-gan-poisson"),
        "dp-gan noise": private_generator("cpu", seed, stream="dp-gan-noise"),
    }
    draws = {name: torch.rand(64, generator=g) for name, g in streams.items()}
    for a, b in itertools.combinations(draws, 2):
        assert not torch.isclose(draws[a], draws[b]).any(), (a, b)
    assert seeded_stream(seed, "dp-sgd", 0, 1) == round_one  # reproducible
    assert 0 <= round_one < 2**63


def test_an_unreachable_or_meaningless_epsilon_is_refused_by_name() -> None:
    """opacus' bare ValueError for a budget too low becomes a PrivacyError with the fix; an
    epsilon of 1e9 (the PLD cross-check hung on it) is no budget."""
    from common.config.compose import compose_config
    from common.errors import ConfigError, PrivacyError
    from common.privacy.plan import noise_multiplier_for

    with pytest.raises(PrivacyError, match="cannot be reached in 18 steps"):
        noise_multiplier_for(
            target_epsilon=0.01, delta=1e-4, sample_rate=1 / 6, steps=18, accountant="rdp"
        )
    with pytest.raises(ConfigError, match="at most 100000"):
        compose_config(["experiment=tiny", "privacy.enabled=true", "privacy.target_epsilon=1e9"])
