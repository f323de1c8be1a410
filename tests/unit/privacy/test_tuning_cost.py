"""The privacy cost of a random search (Papernot & Steinke 2022 via dp_accounting)."""

from __future__ import annotations

import pytest

from common.privacy.ledger import LedgerEvent, epsilon_of
from common.privacy.tuning_cost import random_search_epsilon

RUN = dict(noise_multiplier=4.59, sample_rate=1 / 8, steps=2400, delta=1e-4)


def test_one_run_is_the_ledgers_epsilon_and_a_search_costs_more_with_more_runs() -> None:
    ledger = epsilon_of([LedgerEvent(noise_multiplier=4.59, sample_rate=1 / 8, steps=2400)], 1e-4)
    costs = [random_search_epsilon(**RUN, mean_runs=m)["search_epsilon"] for m in (1, 10, 50)]
    single = random_search_epsilon(**RUN, mean_runs=10)["single_run_epsilon"]
    assert single == pytest.approx(ledger, rel=1e-3)  # the same run, two RDP implementations
    assert single < costs[0] < costs[1] < costs[2]
    # Theorem 2's geometric case grows with log E[K]: far below composing 50 runs
    assert costs[2] < 3 * single
    poisson = random_search_epsilon(**RUN, mean_runs=10, distribution="poisson")
    assert poisson["search_epsilon"] > costs[1]  # Poisson's bound is the looser one here


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mean_runs": 0.5}, "at least once"),
        ({"mean_runs": 5, "distribution": "uniform"}, "choose"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        random_search_epsilon(**RUN, **kwargs)
