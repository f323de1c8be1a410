"""The server's log line for each site's accepted synthetic set (the README promises an MCGAN
trained at each site, its patches memorisation-checked or covered by DP: the log shows it)."""

from __future__ import annotations

import numpy as np

from server.pretrain import synthetic_summary


def _set(n: int, **provenance: object) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    return np.zeros((n, 4, 4), np.uint8), np.zeros(n, np.int64), dict(provenance)


def test_names_the_generator_its_privacy_and_the_memorisation_check() -> None:
    assert synthetic_summary(_set(197, dp=False, memorisation_check="filtered")) == (
        "197 synthetic patches from its MCGAN without DP; memorisation check: filtered"
    )
    dp = synthetic_summary(_set(200, dp=True, epsilon=9.87654321, memorisation_check="skipped"))
    assert (
        dp
        == "200 synthetic patches from its DP-MCGAN, epsilon 9.876543; memorisation check: skipped"
    )


def test_a_provenance_of_unexpected_types_is_printed_short_not_raised() -> None:
    line = synthetic_summary(_set(3, dp=True, epsilon=None, memorisation_check=["x"] * 1000))
    assert line.startswith("3 synthetic patches from its DP-MCGAN, epsilon None;")
    assert len(line) < 200
