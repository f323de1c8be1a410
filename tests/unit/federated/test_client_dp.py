"""Client-level DP around FedAvg (Flower 1.42's client-side fixed clipping + RdpAccountant):
noise of the right size from OS entropy, the site's update clipped by the ClientApp's mod,
epsilon equal to dp-accounting's computed here, the accountant kept across a checkpoint, and
the limits Flower 1.42 sets refused as config errors."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.app import client_level_clipping
from common.config.federated_schema import ClientDPConfig, FederationConfig
from common.errors import ConfigError
from common.federated import protocol as p
from common.fl_records import to_array_record, train_reply_content
from server.client_dp import ClientLevelDP
from server.strategy import EligibleNodes, build_strategy, load_strategy_state, strategy_state
from tests.unit.federated.conftest import Grid

EVENT = {
    "noise_multiplier": 1.0,
    "sample_rate": 0.5,
    "steps": 2,
    "kind": "dp-sgd",
    "round": 1,
    "status": "settled",
}
SIZE = 20_000


pytestmark = pytest.mark.usefixtures("task_identity")


def _strategy(sigma: float = 2.0, clip: float = 0.5, seed: int | None = None) -> ClientLevelDP:
    federation = FederationConfig(
        client_dp=ClientDPConfig(enabled=True, noise_multiplier=sigma, clipping_norm=clip)
    )
    strategy = build_strategy(federation, population=3, noise_seed=seed)
    assert isinstance(strategy, ClientLevelDP)
    return strategy


def _round(strategy: ClientLevelDP, round_number: int, values: list[float]) -> np.ndarray:
    strategy.sample(len(values), round_number)
    arrays = {"w": np.zeros(SIZE, np.float32)}
    messages = list(
        strategy.configure_train(
            round_number,
            to_array_record(arrays),
            ConfigRecord({p.BASE_SHA: "x"}),
            EligibleNodes(Grid(), [1, 2, 3][: len(values)]),
        )
    )
    replies = [
        Message(
            train_reply_content(
                {"w": np.full(SIZE, v, np.float32)},
                {"w": (SIZE,)},
                weight=1.0,
                epsilon=1.0,
                event=EVENT,
                weighting="equal",
            ),
            reply_to=m,
        )
        for v, m in zip(values, messages, strict=True)
    ]
    aggregated, _ = strategy.aggregate_train(round_number, replies)
    strategy.close_round()
    return np.asarray(aggregated["w"].numpy()) if aggregated is not None else np.array([])


def test_noise_has_std_sigma_clip_over_sites_around_the_mean() -> None:
    strategy = _strategy(sigma=2.0, clip=0.5)
    result = _round(strategy, 1, [0.1, 0.2, 0.3])
    noise = result - 0.2
    expected = 2.0 * 0.5 / 3
    # a chi-square interval on the variance: false alarm about 1e-6 at 20k coordinates
    assert abs(noise.std() / expected - 1) < 5 * math.sqrt(2 / SIZE)
    assert abs(noise.mean()) < 5 * expected / math.sqrt(SIZE)


def test_noise_comes_from_os_entropy_unless_seeded() -> None:
    np.random.seed(0)  # Flower's own noise (numpy's global generator) would now repeat
    first = _round(_strategy(), 1, [0.0, 0.0])
    np.random.seed(0)
    assert not np.array_equal(first, _round(_strategy(), 1, [0.0, 0.0]))
    first = _round(_strategy(seed=5), 1, [0.0, 0.0])
    assert np.array_equal(first, _round(_strategy(seed=5), 1, [0.0, 0.0]))
    # seeded mode: each round has its own noise, also after a resume
    seeded = _strategy(seed=5)
    assert not np.array_equal(_round(seeded, 1, [0.0]), _round(seeded, 2, [0.0]))


def test_the_deployed_client_app_clips() -> None:
    from client.app import app

    assert client_level_clipping in app._mods


def test_epsilon_is_dp_accountings_and_survives_a_checkpoint() -> None:
    strategy = _strategy(sigma=1.3)
    for round_number in (1, 2):
        _round(strategy, round_number, [0.0, 0.0, 0.0])
    resumed = _strategy(sigma=1.3)
    load_strategy_state(resumed, strategy_state(strategy))
    _round(resumed, 3, [0.0, 0.0, 0.0])
    independent = dp_accounting.rdp.RdpAccountant()
    independent.compose(dp_accounting.GaussianDpEvent(1.3), 3)
    report = resumed.report()
    assert report["releases"] == 3 and report["unit"] == "site"
    assert report["epsilon"] == pytest.approx(independent.get_epsilon(1e-2), rel=1e-9)
    assert report["epsilon_after_round"][:2] == strategy.report()["epsilon_after_round"]
    assert report["epsilon_after_round"] == sorted(report["epsilon_after_round"])


def test_a_missing_reply_voids_the_round_and_charges_nothing() -> None:
    strategy = _strategy()
    strategy.sample(3, 1)
    messages = list(
        strategy.configure_train(
            1,
            to_array_record({"w": np.zeros(SIZE, np.float32)}),
            ConfigRecord({p.BASE_SHA: "x"}),
            EligibleNodes(Grid(), [1, 2, 3]),
        )
    )
    aggregated, _ = strategy.aggregate_train(1, [])  # nobody answered
    assert aggregated is None and len(messages) == 3
    assert strategy.report()["releases"] == 0 and strategy.epsilon() == 0.0


def test_the_site_clips_its_update_only_when_asked() -> None:
    sent = {"w": np.zeros(4, np.float32)}
    trained = {"w": np.full(4, 3.0, np.float32)}  # update norm 6

    def call_next(message: Message, context: Context) -> Message:
        return Message(
            train_reply_content(
                trained, {"w": (4,)}, weight=1.0, epsilon=1.0, event=EVENT, weighting="equal"
            ),
            reply_to=message,
        )

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    for config, norm in (({"clipping_norm": 1.5}, 1.5), ({}, 6.0)):
        content = RecordDict(
            {p.ARRAYS: to_array_record(sent), p.CONFIG: ConfigRecord({p.BASE_SHA: "x", **config})}
        )
        message = Message(content=content, message_type=p.TRAIN, dst_node_id=1)
        reply = client_level_clipping(message, context, call_next)
        update = reply.content.array_records[p.ARRAYS]["w"].numpy()
        assert np.linalg.norm(update) == pytest.approx(norm, rel=1e-6)


@pytest.mark.parametrize(
    "changes",
    [{"strategy": "fedadam"}, {"weighting": "examples"}],
)
def test_flower_limits_are_config_errors(changes: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="client_dp"):
        FederationConfig(client_dp=ClientDPConfig(enabled=True), **changes)  # type: ignore[arg-type]


def test_a_release_beyond_max_epsilon_is_refused_before_sending() -> None:
    from flwr.serverapp.exception import PrivacyBudgetExhausted

    federation = FederationConfig(
        client_dp=ClientDPConfig(enabled=True, noise_multiplier=1.0, max_epsilon=3.5)
    )
    strategy = build_strategy(federation, population=3)
    assert isinstance(strategy, ClientLevelDP)
    _round(strategy, 1, [0.0, 0.0, 0.0])  # 2.75 at delta 1e-2; two releases: 4.34
    spent = strategy.epsilon()
    assert 0 < spent <= 3.5
    with pytest.raises(PrivacyBudgetExhausted):
        _round(strategy, 2, [0.0, 0.0, 0.0])
    assert strategy.epsilon() == spent and strategy.report()["releases"] == 1
