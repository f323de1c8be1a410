"""What a hyperparameter search would cost in privacy had it run on private data.

A random search that runs a DP-SGD training a random number K of times and releases the best
run is analysed by Papernot & Steinke, "Hyperparameter Tuning with Renyi Differential Privacy"
(ICLR 2022, arXiv 2110.03620): Theorem 2 for K truncated-negative-binomial (shape eta: 0
logarithmic, 1 geometric), Theorem 6 for K Poisson. mammofl does not re-derive them: Google's
`dp_accounting` implements both (`RepeatAndSelectDpEvent`, RDP accountant), and this module
only states one DP-SGD run as its event. mammofl's searches run a fixed number of candidates on
development data, so the figure is what the same search would cost if it had used a site's
private data with a random number of runs of that mean.
"""

from __future__ import annotations

import math

from common.privacy.rdp_analysis import DEFAULT_ORDERS

DISTRIBUTIONS = {"poisson": math.inf, "geometric": 1.0, "logarithmic": 0.0}


def random_search_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    *,
    mean_runs: float,
    distribution: str = "geometric",
) -> dict[str, float]:
    """(epsilon at `delta`) of one run and of the best of K runs, E[K] = `mean_runs`.

    Returns {"single_run_epsilon", "search_epsilon", "mean_runs", "order"} (order: the Renyi
    order of the search's bound). Raises ValueError for mean_runs < 1 or an unknown
    distribution (poisson | geometric | logarithmic).
    """
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution {distribution!r}: choose one of {sorted(DISTRIBUTIONS)}")
    if not mean_runs >= 1:
        raise ValueError(f"mean_runs={mean_runs}: a search runs at least once on average")
    run = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
        ),
        steps,
    )
    single = RdpAccountant(orders=list(DEFAULT_ORDERS))
    single.compose(run)
    search = RdpAccountant(orders=list(DEFAULT_ORDERS))
    search.compose(
        dp_accounting.dp_event.RepeatAndSelectDpEvent(
            run, float(mean_runs), DISTRIBUTIONS[distribution]
        )
    )
    epsilon, order = search.get_epsilon_and_optimal_order(delta)
    return {
        "single_run_epsilon": float(single.get_epsilon(delta)),
        "search_epsilon": float(epsilon),
        "mean_runs": float(mean_runs),
        "order": float(order),
    }
