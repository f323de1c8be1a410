"""The DP-SGD mechanism in every path that uses it: clipping, noise, Poisson batches, empty batches.

Each test here fails when the behaviour it names breaks:
- clipping: every per-record contribution has norm min(||g_i||, C), with records below C (the
  cap branch of min(1, C / ||g||)) and above C, in `dp_sgd.clipped_sum`, the cached engine's exact
  head clipping and the naive engine's opacus path;
- noise: zero gradients in, the noisy gradient is N(0, (sigma C / E[B])^2) per coordinate, for
  `GaussianMechanism`, the cached engine's step, the naive engine's step and the DP-MCGAN
  discriminator's step;
- Poisson sampling through each engine's own sampling path: batch sizes Binomial(N, q), every
  record in with probability q;
- an empty Poisson batch (q tiny) is a counted, noise-only step that changes the weights.

The noise is OS-entropy (never seeded here), so the statistical tests are built for a fixed
false-alarm rate: each call of `assert_gaussian` or `assert_binomial` rejects a correct
implementation with probability at most ALPHA, and `assert_gaussian` checks its own power to see
a 10 % error in the standard deviation.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import fields, replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from common.models.classifier import Classifier
from common.models.policies import frozen_checksum
from common.privacy import dp_sgd
from common.privacy.dp_sgd import GaussianMechanism, clipped_sum
from common.privacy.ledger import PrivacyLedger
from common.privacy.plan import PrivacyPlan, plan_privacy
from common.privacy.randomness import private_generator
from common.training.cached_engine import CachedEngine
from common.training.fit import fit
from common.training.gan_trainer import GanTrainer
from common.training.naive_engine import NaiveEngine
from common.training.settings import DPSettings, EngineSettings
from tests.unit.gan.helpers import tiny_config, tiny_data, trainer
from tests.unit.training.helpers import loop_gradients, random_patches, settings, tiny_model

ALPHA = 1e-4  # false-alarm rate of one statistical assertion
cached_module = importlib.import_module("common.training.cached_engine")
naive_module = importlib.import_module("common.training.naive_engine")
gan_module = importlib.import_module("common.training.gan_trainer")


@cache
def _plan_once(**settings: object) -> PrivacyPlan:
    return plan_privacy(**settings)  # type: ignore[arg-type]


@pytest.fixture
def gan_plan_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny GAN's privacy plan (opacus' noise search, seconds on a CPU) computed once."""
    monkeypatch.setattr(gan_module, "plan_privacy", _plan_once)


# ---- statistics -------------------------------------------------------------------------------
def chi2_power(n: int, ratio: float, alpha: float = ALPHA) -> float:
    """Probability that the two-sided chi-square variance test on n N(0, (ratio s)^2) draws
    rejects s."""
    low, high = stats.chi2.ppf(alpha / 2, n), stats.chi2.isf(alpha / 2, n)
    r2 = ratio**2
    return float(stats.chi2.cdf(low / r2, n) + stats.chi2.sf(high / r2, n))


def assert_gaussian(samples: torch.Tensor | np.ndarray, std: float) -> None:
    """Samples are N(0, std^2): a two-sided chi-square test on sum(x^2) / std^2 (known mean 0)
    and a two-sided z test on the mean, ALPHA / 2 each."""
    x = np.asarray(torch.as_tensor(samples).detach().cpu().double().flatten())
    n = x.size
    assert chi2_power(n, 1.1, ALPHA / 2) > 0.999 and chi2_power(n, 0.9, ALPHA / 2) > 0.999, (
        f"{n} coordinates cannot see a 10 % error in the std"
    )
    statistic = float(np.sum((x / std) ** 2))
    p_std = 2 * min(stats.chi2.cdf(statistic, n), stats.chi2.sf(statistic, n))
    assert p_std > ALPHA / 2, f"std {x.std():.6g} != {std:.6g} (n={n}, p={p_std:.2g})"
    z = x.mean() / (std / np.sqrt(n))
    p_mean = 2 * stats.norm.sf(abs(z))
    assert p_mean > ALPHA / 2, f"mean {x.mean():.3g} != 0 (z={z:.2f})"


def assert_binomial(sizes: list[int], n: int, q: float) -> None:
    """Batch sizes are Binomial(n, q): chi-square goodness of fit (tails pooled to >= 5 expected),
    z tests on the mean and on the variance; ALPHA / 3 each."""
    draws = len(sizes)
    observed = np.bincount(np.asarray(sizes), minlength=n + 1).astype(float)
    expected = draws * stats.binom.pmf(np.arange(n + 1), n, q)
    bins_o, bins_e, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(observed, expected, strict=True):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 5:
            bins_o.append(acc_o)
            bins_e.append(acc_e)
            acc_o = acc_e = 0.0
    bins_o[-1] += acc_o
    bins_e[-1] += acc_e
    chi2 = float(np.sum((np.array(bins_o) - np.array(bins_e)) ** 2 / np.array(bins_e)))
    assert len(bins_o) >= 4
    p_fit = stats.chi2.sf(chi2, len(bins_o) - 1)
    assert p_fit > ALPHA / 3, f"batch sizes are not Binomial({n}, {q}): p={p_fit:.2g}"
    mean, var = n * q, n * q * (1 - q)
    s = np.asarray(sizes, dtype=float)
    z_mean = (s.mean() - mean) / np.sqrt(var / draws)
    mu4 = var * (1 + 3 * (n - 2) * q * (1 - q))  # the binomial's 4th central moment
    z_var = (s.var(ddof=1) - var) / np.sqrt((mu4 - var**2 * (draws - 3) / (draws - 1)) / draws)
    limit = stats.norm.isf(ALPHA / 6)
    assert abs(z_mean) < limit, f"mean batch {s.mean():.3f} != N q = {mean:.3f}"
    assert abs(z_var) < limit, f"batch-size variance {s.var(ddof=1):.3f} != N q (1 - q) = {var:.3f}"


def test_the_tests_reject_wrong_distributions() -> None:
    """The assertions themselves: a 10 % std error, noise left out and q off are all caught."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1.0, 20_000)
    assert_gaussian(x, 1.0)
    for wrong in (1.1, 0.9, 4.0):
        with pytest.raises(AssertionError, match="std"):
            assert_gaussian(x, wrong)
    sizes = rng.binomial(40, 0.1, 4000).tolist()
    assert_binomial(sizes, 40, 0.1)
    with pytest.raises(AssertionError):
        assert_binomial(rng.binomial(40, 0.11, 4000).tolist(), 40, 0.1)
    with pytest.raises(AssertionError):  # right mean, wrong shape: a fixed batch of 4
        assert_binomial([4] * 4000, 40, 0.1)


# ---- engines with a zero loss -----------------------------------------------------------------
class ZeroLossSettings(EngineSettings):
    """The engine's settings with a per-sample loss of exactly 0: every per-sample gradient is 0,
    so the DP gradient is the mechanism's noise alone."""

    def per_sample_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (logits * 0.0).sum(1)


def _zero_loss(base: EngineSettings) -> ZeroLossSettings:
    return ZeroLossSettings(**{f.name: getattr(base, f.name) for f in fields(base)})


def _dp(
    sigma: float = 1.0, clip: float = 1.0, q: float = 0.5, steps: int = 2, train_mode: bool = False
) -> EngineSettings:
    dp = DPSettings(
        noise_multiplier=sigma, sample_rate=q, max_grad_norm=clip, steps_per_epoch=steps
    )
    return replace(settings(train_mode), dp=dp)


def _capture_gradients(
    optimizer: torch.optim.Optimizer, parameters: list[torch.nn.Parameter]
) -> list[torch.Tensor]:
    """Every gradient the optimiser is about to apply, flattened, one tensor per step."""
    captured: list[torch.Tensor] = []

    def hook(*_: object) -> None:
        captured.append(torch.cat([p.grad.detach().flatten().clone() for p in parameters]))

    optimizer.register_step_pre_hook(hook)
    return captured


# ---- 1. clipping: min(norm, C) ----------------------------------------------------------------
def test_clipped_sum_caps_each_record_at_min_of_norm_and_c() -> None:
    """Two parameters, records with norms 0, below C, just below and above C, far above: each
    record's clipped gradient keeps its direction and has norm min(||g||, C) over all parameters."""
    clip = 1.0
    norms = torch.tensor([0.0, 0.3, 0.999, 1.001, 2.0, 50.0], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    raw = [torch.randn(6, 3, 4, generator=generator, dtype=torch.float64)]
    raw.append(torch.randn(6, 5, generator=generator, dtype=torch.float64))
    length = torch.cat([g.flatten(1) for g in raw], 1).norm(dim=1)
    grads = [g * (norms / length).view(-1, *[1] * (g.dim() - 1)) for g in raw]
    per_record = []
    for i in range(len(norms)):
        single = clipped_sum([g[i : i + 1] for g in grads], clip)
        assert [s.shape for s in single] == [g.shape[1:] for g in grads]
        per_record.append(single)
    got = torch.stack([torch.cat([s.flatten() for s in r]).norm() for r in per_record])
    torch.testing.assert_close(got, torch.minimum(norms, torch.tensor(clip)), rtol=1e-5, atol=1e-9)
    for i, record in enumerate(per_record):  # below C untouched, above C scaled, never rotated
        factor = min(1.0, clip / float(norms[i])) if norms[i] > 0 else 1.0
        for s, g in zip(record, grads, strict=True):
            torch.testing.assert_close(s, factor * g[i], rtol=1e-5, atol=1e-12)
    batch = clipped_sum(grads, clip)
    for k, s in enumerate(batch):
        torch.testing.assert_close(s, sum(r[k] for r in per_record), rtol=1e-12, atol=1e-12)


def _clip_between(norms: torch.Tensor) -> float:
    """A clip norm with records clearly on both sides (the middle of the two central norms)."""
    ordered = norms.sort().values
    middle = len(ordered) // 2
    clip = float(ordered[middle - 1] + ordered[middle]) / 2
    assert (norms < 0.98 * clip).any() and (norms > 1.02 * clip).any()
    return clip


def _assert_min_clipped(
    per_record: list[dict[str, torch.Tensor]],
    reference: dict[str, torch.Tensor],
    clip: float,
) -> None:
    names = sorted(reference)
    norms = torch.cat([reference[n].flatten(1) for n in names], 1).norm(dim=1)
    for i, clipped in enumerate(per_record):
        assert sorted(clipped) == names
        norm = torch.cat([clipped[n].flatten() for n in names]).norm()
        torch.testing.assert_close(
            norm, torch.minimum(norms[i], norm.new_tensor(clip)), rtol=1e-5, atol=0
        )
        factor = min(1.0, clip / float(norms[i]))
        for n in names:
            torch.testing.assert_close(clipped[n], factor * reference[n][i], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("head", ["mlp2", "linear"])
def test_cached_engine_exact_head_clipping_is_min_of_norm_and_c(head: str) -> None:
    model = tiny_model("swin", head=head, policy="head")
    data = random_patches(8)
    indices, flips = torch.arange(8), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    probe = CachedEngine(copy.deepcopy(model), data, {}, settings(False))
    features, labels = probe.batch(indices, flips)
    head_copy = copy.deepcopy(probe.head)
    reference: dict[str, list[torch.Tensor]] = {}
    for i in range(8):  # one backward pass per image through the head
        head_copy.zero_grad(set_to_none=True)
        probe.settings.per_sample_loss(
            head_copy(features[i : i + 1]), labels[i : i + 1]
        ).sum().backward()
        for (name, _), p in zip(
            probe.model.head.named_parameters(), head_copy.parameters(), strict=True
        ):
            assert p.grad is not None
            reference.setdefault(f"head.{name}", []).append(p.grad.detach().clone())
    stacked = {n: torch.stack(g) for n, g in reference.items()}
    norms = torch.cat([g.flatten(1) for g in stacked.values()], 1).norm(dim=1)
    clip = _clip_between(norms)
    engine = CachedEngine(copy.deepcopy(model), data, {}, settings(False, clip=clip))
    names = {id(p): n for n, p in engine.model.named_parameters()}
    per_record = []
    for i in range(8):
        f, y = engine.batch(indices[i : i + 1], flips[i : i + 1])
        sums, got_norms, _ = engine.dp_clipped_sum(f, y)
        torch.testing.assert_close(got_norms, norms[i : i + 1], rtol=1e-6, atol=1e-12)
        per_record.append({names[id(p)]: s for p, s in sums.items()})
    _assert_min_clipped(per_record, stacked, clip)
    whole, _, _ = engine.dp_clipped_sum(features, labels)
    for p, s in whole.items():
        torch.testing.assert_close(
            s, sum(r[names[id(p)]] for r in per_record), rtol=1e-9, atol=1e-12
        )


@pytest.mark.parametrize("policy", ["head", "head_last"])
def test_naive_engine_opacus_clipping_is_min_of_norm_and_c(policy: str) -> None:
    model = tiny_model("swin", policy=policy)
    data = random_patches(8)
    indices, flips = torch.arange(8), torch.tensor([3, 2, 1, 0, 3, 2, 1, 0])
    probe = NaiveEngine(copy.deepcopy(model), data, {}, settings(False))
    images, labels = probe.batch(indices, flips)
    probe.close()
    reference = loop_gradients(model, images, labels, train_mode=False)
    norms = torch.cat([g.flatten(1) for g in reference.values()], 1).norm(dim=1)
    clip = _clip_between(norms)
    engine = NaiveEngine(copy.deepcopy(model), data, {}, settings(False, clip=clip))
    per_record = [engine.dp_clipped_sum(indices[i : i + 1], flips[i : i + 1]) for i in range(8)]
    _assert_min_clipped(per_record, reference, clip)
    whole = engine.dp_clipped_sum(indices, flips)
    for name, s in whole.items():
        torch.testing.assert_close(s, sum(r[name] for r in per_record), rtol=1e-9, atol=1e-12)
    engine.close()


# ---- 2. noise: sigma C / E[B] per coordinate --------------------------------------------------
def test_gaussian_mechanism_noise_std_and_mean_division() -> None:
    sigma, clip, batch = 1.3, 0.7, 5
    mechanism = GaussianMechanism(
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=batch,
        generator=private_generator(),
    )
    zeros = [torch.zeros(40, 50, dtype=torch.float64), torch.zeros(3000, dtype=torch.float64)]
    noisy = mechanism.privatize(zeros)
    assert [n.shape for n in noisy] == [z.shape for z in zeros]
    assert_gaussian(torch.cat([n.flatten() for n in noisy]), sigma * clip / batch)
    # a non-zero sum is divided by E[B] together with its noise
    shifted = mechanism.privatize([torch.full((5000,), 2.0, dtype=torch.float64)])[0]
    assert_gaussian(shifted - 2.0 / batch, sigma * clip / batch)
    assert mechanism.invocations == 2


@pytest.mark.parametrize("engine_class", [CachedEngine, NaiveEngine])
def test_engine_dp_step_noise_has_sigma_c_over_expected_batch(engine_class: type) -> None:
    """Zero per-sample gradients in (zero loss, non-empty Poisson batches): every gradient the
    optimiser receives is N(0, (sigma C / int(N q))^2) per coordinate."""
    sigma, clip, q, n = 1.7, 0.6, 0.5, 8
    base = _dp(sigma=sigma, clip=clip, q=q, steps=12)
    engine = engine_class(tiny_model("swin"), random_patches(n), {}, _zero_loss(base))
    captured = _capture_gradients(engine.optimizer, engine.parameters)
    engine.train_epoch()
    engine.close()
    assert len(captured) == 12 and engine.steps_done == 12 and engine.mechanism_steps() == 12
    assert_gaussian(torch.cat(captured), sigma * clip / int(n * q))


def test_gan_discriminator_dp_step_noise_has_sigma_c_over_expected_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gan_plan_once: None
) -> None:
    """The MCGAN's loss set to zero: the discriminator's update is the mechanism's noise alone."""
    monkeypatch.setattr(gan_module, "bce", lambda logits, target: logits * 0.0)
    pixels, labels = tiny_data()
    gan = GanTrainer(
        tiny_config(dp=True, epochs=1, seeded=False), pixels, labels, tmp_path, torch.device("cpu")
    )
    assert gan.plan is not None and gan.plan.noise_multiplier is not None
    parameters = list(gan.discriminator.parameters())
    captured = _capture_gradients(gan.opt_d, parameters)
    gan.train_epoch()
    n, q = len(gan.labels), gan.plan.sample_rate
    assert len(captured) == gan.plan.steps_per_epoch
    std = gan.plan.noise_multiplier * gan.config.dp.max_grad_norm / int(n * q)
    assert_gaussian(torch.cat(captured), std)


# ---- 3. Poisson batches: Binomial(N, q) -------------------------------------------------------
def _engine_sizes(
    engine_class: type[CachedEngine] | type[NaiveEngine], n: int, q: float, draws: int
) -> tuple[list[int], torch.Tensor]:
    """The batches an engine's DP epoch hands to its step (the step itself replaced by a
    recorder, so thousands of draws take no time)."""
    engine = engine_class(tiny_model("swin"), random_patches(n), {}, _dp(q=q, steps=draws))
    sizes: list[int] = []
    counts = torch.zeros(n)

    def record(indices: torch.Tensor, *_: object) -> float:
        assert len(set(indices.tolist())) == len(indices)
        sizes.append(len(indices))
        counts[indices] += 1
        return 0.0

    engine._dp_step = record  # type: ignore[method-assign,assignment]
    engine.train_epoch()
    engine.close()
    assert engine.steps_done == draws
    return sizes, counts


def _gan_sizes(tmp_path: Path, draws: int) -> tuple[list[int], torch.Tensor, float]:
    gan = trainer(tmp_path, dp=True, epochs=1)
    assert gan.plan is not None
    batches: list[torch.Tensor] = []
    while len(batches) < draws:  # one epoch's batches at a time, the trainer's own path
        batches.extend(gan._batches())
    batches = batches[:draws]
    counts = torch.zeros(len(gan.labels))
    for b in batches:
        counts[b] += 1
    return [len(b) for b in batches], counts, gan.plan.sample_rate


@pytest.mark.parametrize("path", ["cached", "naive", "gan"])
def test_poisson_batch_sizes_are_binomial_through_the_engines(
    path: str, tmp_path: Path, gan_plan_once: None
) -> None:
    """Sizes Binomial(N, q); every record drawn in about q of the steps (a chi-square test on
    the per-record counts, so a sampler that favours some records fails too)."""
    draws, q = 2000, 0.1
    if path in ("cached", "naive"):
        n = 40
        sizes, counts = _engine_sizes(
            CachedEngine if path == "cached" else NaiveEngine, n, q, draws
        )
    else:
        n = 24  # the GAN helpers' data, q = 1 / ceil(24 / 8) from its plan
        sizes, counts, q = _gan_sizes(tmp_path, draws)
    assert len(sizes) == draws
    assert_binomial(sizes, n, q)
    z2 = float((((counts - draws * q) ** 2) / (draws * q * (1 - q))).sum())
    assert stats.chi2.sf(z2, n) > ALPHA, "records are not each sampled with probability q"


# ---- 4. an empty Poisson batch: a counted, noise-only step -----------------------------------
@pytest.mark.parametrize("engine_name", ["cached", "naive"])
def test_empty_poisson_batch_takes_a_counted_noise_only_step(
    engine_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """q = 1e-9: every batch is empty, yet every step runs the mechanism, is counted by the
    engine and the ledger, and moves every trainable weight (the noise)."""
    original = dp_sgd.poisson_indices
    sizes: list[int] = []

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        indices = original(*args, **kwargs)  # type: ignore[arg-type]
        sizes.append(len(indices))
        return indices

    monkeypatch.setattr(dp_sgd, "poisson_indices", spy)
    for module in (cached_module, naive_module):  # an engine that binds the name itself
        if hasattr(module, "poisson_indices"):
            monkeypatch.setattr(module, "poisson_indices", spy)
    model: Classifier = tiny_model("swin")
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    frozen = frozen_checksum(model)
    ledger = PrivacyLedger()
    result = fit(
        model,
        engine_name,
        random_patches(8),
        None,
        _dp(q=1e-9, steps=3),
        epochs=2,
        ledger=ledger,
        selection="last",
        epsilon_cap=1.0,
    )
    assert sizes == [0] * 6
    assert result.steps == 6 and result.mechanism_steps == 6
    assert [(e.status, e.steps) for e in ledger.events] == [("settled", 6)]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    after = model.state_dict()
    for name in trainable:  # every coordinate moved by the noisy update
        assert (after[name] != before[name]).all(), name
    assert frozen_checksum(model) == frozen
    for name in set(before) - trainable:
        assert torch.equal(after[name], before[name]), name
