import math

import pytest
from opacus.accountants.utils import get_noise_multiplier

from common.config.compose import compose_config
from common.privacy.plan import plan_privacy, sample_rate_for
from common.runs.planning import plan_report

# PAPER.md: opacus get_noise_multiplier, RDP, delta 1e-4, 300 epochs
PAPER_SIGMA = {
    "real": {1: 20.312, 6: 4.336, 12: 2.540, 20: 1.784, 60: 0.961},
    "real_syn": {1: 10.625, 6: 2.344, 12: 1.447, 20: 1.082, 60: 0.683},
}
PAPER_SIGMA["synpre_realft"] = PAPER_SIGMA["real"]


@pytest.mark.parametrize("n", [883, 1104, 3883, 4104])
@pytest.mark.parametrize("epsilon", [1.0, 3.5, 6.0])
def test_plan_matches_opacus(n: int, epsilon: float) -> None:
    plan = plan_privacy(
        dataset_size=n, batch_size=128, epochs=300, target_epsilon=epsilon, delta=1e-4
    )
    q = 1 / math.ceil(n / 128)
    assert plan.sample_rate == q
    assert plan.steps == math.ceil(n / 128) * 300
    expected = get_noise_multiplier(
        target_epsilon=epsilon, target_delta=1e-4, sample_rate=q, steps=plan.steps, accountant="rdp"
    )
    assert plan.noise_multiplier == expected  # same function, never rounded


def test_sample_rate_is_one_over_batches() -> None:
    assert sample_rate_for(1104, 128) == 1 / 9
    assert sample_rate_for(4104, 128) == 1 / 33
    assert sample_rate_for(10, 128) == 1.0


@pytest.mark.parametrize("kind", sorted(PAPER_SIGMA))
@pytest.mark.parametrize("epsilon", [1, 6, 12, 20, 60])
def test_presets_give_paper_sigmas(
    kind: str, epsilon: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # counts the configured data if present, else the paper sizes: both are 1104 / 4104
    report = plan_report(compose_config([f"experiment=table1/{kind}_eps{epsilon}"]))
    assert report["dataset_size"] == (4104 if kind == "real_syn" else 1104)
    assert report["noise_multiplier"] == pytest.approx(PAPER_SIGMA[kind][epsilon], rel=0.005)
    assert report["target_epsilon"] == epsilon and report["delta"] == 1e-4


def test_plan_uses_paper_sizes_without_data(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MAMMOFL_SHARED", "/nonexistent/shared")
    with caplog.at_level("WARNING"):
        report = plan_report(compose_config(["experiment=table1/real_syn_eps6"]))
    assert "not readable" in caplog.text and "/nonexistent/shared" in caplog.text
    assert report["dataset_size"] == 4104
    assert report["dataset_size_source"].startswith("paper sizes")
    assert report["noise_multiplier"] == pytest.approx(2.344, rel=0.005)
