"""Client-level DP around the aggregation strategy (a whole site is the privacy unit).

Flower 1.42's `DifferentialPrivacyClientSideFixedClipping` with its `RdpAccountant`
(dp-accounting): each site clips its round update to norm C (`client.app`'s clipping mod), the
server adds N(0, (sigma C / m)^2) to the mean of the m updates and composes one Gaussian
release per aggregated round, without sampling amplification (every selected site takes part).

Limits of Flower 1.42, kept here: the accounted mode needs FedAvg's own aggregation and equal
weights, and it skips a round's aggregation (and charges nothing) when any selected site sends
an error or no reply, so a refusing or dead site voids that round for everyone.

One change: Flower draws this noise from numpy's global generator, which a seeded process
would make predictable; here it comes from OS entropy (or from a marked seed in seeded mode).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

from common.config.federated_schema import ClientDPConfig

UNIT = "site"
ACCOUNTANT = "RDP (Flower 1.42 RdpAccountant over dp-accounting), no sampling amplification"


class ClientLevelDP(DifferentialPrivacyClientSideFixedClipping):
    def __init__(
        self,
        strategy: FedAvg,
        settings: ClientDPConfig,
        population: int,
        noise_seed: int | None = None,
    ) -> None:
        accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=settings.delta,
                population_size=population,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
                max_epsilon=settings.max_epsilon,
            )
        )
        super().__init__(
            strategy,
            settings.noise_multiplier,
            settings.clipping_norm,
            population,
            accountant=accountant,
        )
        self.settings = settings
        self.population = population
        # numpy's default_rng() without a seed draws 128 bits of OS entropy
        self.generator = np.random.default_rng(noise_seed)
        self.noise_seed = noise_seed
        self.seeded = noise_seed is not None
        self.epsilon_after_round: list[float] = []

    def sample(self, sites: int, round_number: int) -> None:
        """This round's number of selected sites (every one of them must reply). In seeded
        mode the round's noise comes from (seed, round): a resumed run never replays the
        noise of an earlier round."""
        self.num_sampled_clients = sites
        if self.noise_seed is not None:
            self.generator = np.random.default_rng([self.noise_seed, round_number])

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        std = self.noise_multiplier * self.clipping_norm / self.num_sampled_clients
        noisy = {}
        for key, array in aggregated_arrays.items():
            values = array.numpy()
            noise = self.generator.normal(0.0, std, size=values.shape)
            noisy[key] = Array(np.asarray(values + noise, dtype=values.dtype))
        return ArrayRecord(noisy)

    def epsilon(self) -> float:
        if self.accountant.num_releases == 0:
            return 0.0
        return float(self.accountant.get_privacy_spent().epsilon)

    def close_round(self) -> None:
        self.epsilon_after_round.append(self.epsilon())

    def report(self) -> dict[str, Any]:
        """`ledger.json`'s `client_level` section."""
        return {
            "unit": UNIT,
            "epsilon": self.epsilon(),
            "delta": self.settings.delta,
            "noise_multiplier": self.noise_multiplier,
            "clipping_norm": self.clipping_norm,
            "releases": self.accountant.num_releases,
            "population": self.population,
            "max_epsilon": self.settings.max_epsilon,
            "accountant": ACCOUNTANT,
            "epsilon_after_round": list(self.epsilon_after_round),
            "noise": "seeded (research mode)" if self.seeded else "os-entropy",
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "accountant": self.accountant.state_dict(),
            "epsilon_after_round": list(self.epsilon_after_round),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accountant.load_state_dict(state["accountant"])
        self.epsilon_after_round = list(state["epsilon_after_round"])
