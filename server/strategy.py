"""The aggregation strategy: Flower's FedAvg, FedProx or FedAdam over the trainable parameters.

Sampling is restricted to the sites the ledger mirror still allows (`EligibleNodes`), and the
weights are the sites' `aggregation-weight` metric: 1.0 each by default, so no exact dataset
size leaves a site; exact-count weighting is an opt-in (`federation.weighting=examples`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from common.config.federated_schema import FederationConfig
from common.errors import ConfigError
from common.federated import protocol as p
from server.client_dp import ClientLevelDP


def build_strategy(
    federation: FederationConfig, population: int | None = None, noise_seed: int | None = None
) -> FedAvg | ClientLevelDP:
    """Flower's strategy, wrapped for client-level DP when `federation.client_dp.enabled`
    (population: the number of sites in the consortium, required then)."""
    strategy = _base_strategy(federation)
    if federation.client_dp.enabled:
        if population is None:
            raise ConfigError("client-level DP needs the number of sites (population)")
        return ClientLevelDP(strategy, federation.client_dp, population, noise_seed)
    return strategy


def _base_strategy(federation: FederationConfig) -> FedAvg:
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": 1,  # mammofl checks federation.min_sites itself, without waiting
        "min_evaluate_nodes": 1,
        "min_available_nodes": 1,
        "weighted_by_key": p.WEIGHT,
        "arrayrecord_key": p.ARRAYS,
        "configrecord_key": p.CONFIG,
    }
    if federation.strategy == "fedprox":
        return FedProx(**common, proximal_mu=federation.proximal_mu)
    if federation.strategy == "fedadam":
        return FedAdam(**common, eta=federation.server_learning_rate)
    return FedAvg(**common)


class EligibleNodes:
    """A view of the grid whose node list holds only the sites still selectable; the strategy
    samples from it (Flower's FedAvg only calls `get_node_ids`)."""

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        self.grid = grid
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)


FEDOPT_STATE = ("current_arrays", "m_t", "v_t")


def strategy_state(strategy: FedAvg | ClientLevelDP) -> dict[str, Any]:
    """What a strategy carries between rounds (FedAdam's moments, the client-level DP
    accountant), for checkpoints."""
    inner = strategy.strategy if isinstance(strategy, ClientLevelDP) else strategy
    state: dict[str, Any] = {
        key: {k: np.array(v) for k, v in getattr(inner, key).items()}
        for key in FEDOPT_STATE
        if getattr(inner, key, None) is not None
    }
    if isinstance(strategy, ClientLevelDP):
        state[CLIENT_DP_STATE] = strategy.state_dict()
    return state


CLIENT_DP_STATE = "client_dp"


def load_strategy_state(strategy: FedAvg | ClientLevelDP, state: dict[str, Any]) -> None:
    if CLIENT_DP_STATE in state:
        if not isinstance(strategy, ClientLevelDP):
            raise ConfigError("the checkpoint has client-level DP state; this run has none")
        strategy.load_state_dict(state[CLIENT_DP_STATE])
    elif isinstance(strategy, ClientLevelDP):
        raise ConfigError("this run has client-level DP; the checkpoint has no accountant")
    inner = strategy.strategy if isinstance(strategy, ClientLevelDP) else strategy
    for key, value in state.items():
        if key != CLIENT_DP_STATE:
            setattr(inner, key, {k: np.array(v) for k, v in value.items()})
