"""FedAvg / FedProx / FedAdam over the trainable parameters: equal weights by default, FedProx's
pull towards the round's start, FedAdam's moments kept across a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message

from common.config.federated_schema import FederationConfig
from common.federated import protocol as p
from common.fl_records import to_array_record, train_reply_content
from common.privacy.ledger import PrivacyLedger
from common.training.engine import trainable_state
from common.training.fit import fit
from server.strategy import EligibleNodes, build_strategy, load_strategy_state, strategy_state
from tests.unit.federated.conftest import Grid
from tests.unit.training.helpers import random_patches, settings, tiny_model

EVENT = {
    "noise_multiplier": 1.0,
    "sample_rate": 0.5,
    "steps": 2,
    "kind": "dp-sgd",
    "round": 1,
    "status": "settled",
}


pytestmark = pytest.mark.usefixtures("task_identity")


def _replies(values: list[float], messages: list[Message]) -> list[Message]:
    expected = {"w": (2,)}
    return [
        Message(
            train_reply_content(
                {"w": np.full(2, v, np.float32)},
                expected,
                weight=1.0,
                epsilon=1.0,
                event=EVENT,
                weighting="equal",
            ),
            reply_to=m,
        )
        for v, m in zip(values, messages, strict=True)
    ]


def _configure(strategy, arrays):  # type: ignore[no-untyped-def]
    config = ConfigRecord({p.BASE_SHA: "x"})
    return list(
        strategy.configure_train(1, to_array_record(arrays), config, EligibleNodes(Grid(), [1, 3]))
    )


def test_fedavg_samples_only_eligible_sites_and_weighs_them_equally() -> None:
    strategy = build_strategy(FederationConfig())
    messages = _configure(strategy, {"w": np.zeros(2, np.float32)})
    assert sorted(m.metadata.dst_node_id for m in messages) == [1, 3]
    aggregated, _ = strategy.aggregate_train(1, _replies([1.0, 4.0], messages))
    assert isinstance(aggregated, ArrayRecord)
    np.testing.assert_allclose(aggregated["w"].numpy(), [2.5, 2.5])


def test_fedprox_sends_mu_and_pulls_towards_the_start() -> None:
    strategy = build_strategy(FederationConfig(strategy="fedprox", proximal_mu=0.5))
    messages = _configure(strategy, {"w": np.zeros(2, np.float32)})
    assert messages[0].content[p.CONFIG][p.PROXIMAL_MU] == 0.5
    start = tiny_model("swin", policy="head")
    moved = {}
    for mu in (0.0, 50.0):
        model = tiny_model("swin", policy="head")
        fit(
            model,
            "cached",
            random_patches(8),
            None,
            settings(False, q=1.0),
            epochs=3,
            ledger=PrivacyLedger(),
            selection="last",
            epsilon_cap=100.0,
            proximal_mu=mu,
        )
        moved[mu] = sum(
            float((v - trainable_state(start)[k]).norm()) for k, v in trainable_state(model).items()
        )
    assert moved[50.0] < moved[0.0]


def test_fedadam_moments_survive_a_checkpoint() -> None:
    federation = FederationConfig(strategy="fedadam", server_learning_rate=0.1)
    strategy = build_strategy(federation)
    messages = _configure(strategy, {"w": np.zeros(2, np.float32)})
    first, _ = strategy.aggregate_train(1, _replies([1.0, 3.0], messages))
    state = strategy_state(strategy)
    assert set(state) == {"current_arrays", "m_t", "v_t"}
    resumed = build_strategy(federation)
    load_strategy_state(resumed, torch.load(_save(state), weights_only=False))
    for s in (strategy, resumed):
        again = _configure(s, {"w": first["w"].numpy()})
        second, _ = s.aggregate_train(2, _replies([2.0, 2.0], again))
        assert second is not None
    np.testing.assert_allclose(
        strategy_state(strategy)["v_t"]["w"], strategy_state(resumed)["v_t"]["w"]
    )


def _save(state):  # type: ignore[no-untyped-def]
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer
