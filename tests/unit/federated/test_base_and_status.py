"""No exchange only for bookkeeping: the base model rides on a site's next train or evaluate
message until a reply shows it installed, every work reply carries the site's status, and only
the sites whose last reply did not say what they charged are asked for their ledger.

The server's real `Federation`, with `send` answering as scripted sites would."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Message, RecordDict

from common.config.compose import compose_federated_config
from common.errors import ConfigError
from common.federated import protocol as p
from common.fl_records import (
    error_reply,
    evaluate_reply_content,
    status_content,
    with_site_status,
)
from server.federation import Federation
from server.ledgers import BASE_MODEL_MISSING, MirroredLedgers
from tests.unit.federated.conftest import site_status

SITES = {1: "site-a", 2: "site-b", 3: "site-c"}
LOCAL_EVALUATION = {"kind": "local-evaluation", "note": "validation patients scored"}
Answer = Callable[[Message], Message | None]


class Grid:
    """Three nodes; `exchange` hands each message to `answer` (None: the reply is lost)."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.answer: Answer = lambda m: None

    def get_node_ids(self) -> list[int]:
        return sorted(SITES)

    def exchange(self, messages: list[Message], *_: object) -> list[Message]:
        for message in messages:  # each gets its id as a grid's push gives it
            message.metadata.__dict__["_message_id"] = message.object_id
        self.sent.extend(messages)
        return [r for m in messages if (r := self.answer(m)) is not None]


def _status(site: str, *, scored: bool = False) -> dict[str, Any]:
    return site_status(site, [LOCAL_EVALUATION] if scored else [])


class ScriptedFederation(Federation):
    """The server's own `Federation`; only Flower's wait for replies is scripted (below)."""

    def __init__(self, run_dir: Path, *overrides: str) -> None:
        config = compose_federated_config(
            ["experiment=federated/tiny", f"run_dir={run_dir}", *overrides]
        )
        self.scripted = Grid()
        super().__init__(self.scripted, config, [])  # type: ignore[arg-type]

    @property
    def sent(self) -> list[Message]:
        return self.scripted.sent

    @property
    def answer(self) -> Answer:
        return self.scripted.answer

    @answer.setter
    def answer(self, answer: Answer) -> None:
        self.scripted.answer = answer


@pytest.fixture(autouse=True)
def scripted_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Federation.send` runs as it is; the exchange it calls asks the scripted grid."""
    monkeypatch.setattr(
        "server.federation.send_and_collect", lambda grid, messages, *rest: grid.exchange(messages)
    )


def _scored(message: Message, site: str | None = None) -> Message:
    site = site or SITES[message.metadata.dst_node_id]
    content = with_site_status(evaluate_reply_content({"auroc": 0.7}), _status(site, scored=True))
    return Message(content, reply_to=message)


def _status_reply(message: Message) -> Message:
    site = SITES[message.metadata.dst_node_id]
    return Message(status_content(_status(site, scored=True)), reply_to=message)


@pytest.fixture
def server(tmp_path: Path, task_identity: None) -> ScriptedFederation:
    federation = ScriptedFederation(tmp_path)
    federation.sites = dict(SITES)
    for site in SITES.values():
        federation.mirror.adopt_status(_status(site))
    return federation


STATE = SimpleNamespace(
    base_state={"backbone.weight": torch.ones(3)},
    base_sha="f" * 64,
    trainable={"head.weight": np.zeros(2, np.float32)},
)


def test_the_base_model_rides_on_the_next_message_until_a_reply_shows_it_installed(
    server: ScriptedFederation,
) -> None:
    def answer(message: Message) -> Message | None:
        node = message.metadata.dst_node_id
        if node == 2:  # could not install it: refused before any work
            return error_reply(message, p.ErrorCode.BASE_MODEL, "site site-b: base model: ...")
        return _scored(message) if node == 1 else None  # site-c's reply is lost

    server.send_base_model([1, 2, 3], STATE)  # type: ignore[arg-type]
    server.answer = answer
    scores = server.site_metrics([1, 2, 3], STATE)  # type: ignore[arg-type]
    assert set(scores) == {"site-a"}
    sent = {m.metadata.dst_node_id: m.content for m in server.sent}
    assert all(p.BASE in content.array_records for content in sent.values())
    base = sent[1].array_records[p.BASE].to_torch_state_dict()
    assert torch.equal(base["backbone.weight"], torch.ones(3))
    assert server.needs_base == {2, 3}
    # site-b is left out without a round presumed (it charged nothing); site-c owes its ledger
    mirror = server.mirror.sites
    assert mirror["site-b"].excluded == BASE_MODEL_MISSING and not mirror["site-b"].unconfirmed
    assert server.mirror.selectable() == ["site-a", "site-c"]
    assert mirror["site-a"].non_dp_uses == [LOCAL_EVALUATION]  # from its reply's status
    assert server.owes_status == {2, 3}

    server.sent.clear()
    server.answer = _scored
    server.site_metrics([1, 3], STATE)  # type: ignore[arg-type]
    carried = {m.metadata.dst_node_id: p.BASE in m.content.array_records for m in server.sent}
    assert carried == {1: False, 3: True}  # site-a holds it; site-c still had to get it
    assert server.needs_base == {2} and server.owes_status == {2}


def test_only_the_sites_that_owe_their_status_are_asked_for_it(
    server: ScriptedFederation,
) -> None:
    server.answer = lambda m: _scored(m) if m.metadata.dst_node_id != 3 else None
    server.site_metrics([1, 2, 3], STATE)  # type: ignore[arg-type]
    server.sent.clear()
    server.answer = _status_reply
    server.collect_owed_status([1, 2, 3])
    assert [(m.metadata.message_type, m.metadata.dst_node_id) for m in server.sent] == [
        (p.STATUS, 3)
    ]
    assert server.owes_status == set()
    assert server.mirror.sites["site-c"].non_dp_uses == [LOCAL_EVALUATION]
    server.sent.clear()
    server.collect_owed_status([1, 2, 3])
    assert server.sent == []  # nothing owed: no exchange
    server.stale.add(1)  # a round presumed: whatever it said since may predate its reservation
    server.collect_owed_status([1, 2, 3])
    assert [m.metadata.dst_node_id for m in server.sent] == [1]


def test_a_reply_without_its_own_sites_status_is_rejected(server: ScriptedFederation) -> None:
    def answer(message: Message) -> Message | None:
        node = message.metadata.dst_node_id
        if node == 1:  # another site's ledger
            return _scored(message, site="site-b")
        if node == 2:  # no status at all
            return Message(evaluate_reply_content({"auroc": 0.7}), reply_to=message)
        return _scored(message)

    server.answer = answer
    scores = server.site_metrics([1, 2, 3], STATE)  # type: ignore[arg-type]
    assert set(scores) == {"site-c"}
    assert server.owes_status == {1, 2}  # asked again before the outputs
    assert server.mirror.sites["site-b"].non_dp_uses == []  # site-a's word is not site-b's


def test_a_status_reply_that_is_not_one_leaves_the_site_owing_and_the_run_going(
    server: ScriptedFederation,
) -> None:
    server.owes_status.update({2, 3})
    server.mirror.presume_round("site-c", 1)  # its round 1 reply was lost

    def answer(message: Message) -> Message | None:
        if message.metadata.dst_node_id == 2:
            return Message(RecordDict(), reply_to=message)  # no status at all
        content = status_content(_status("site-c"))
        content.config_records[p.CONFIG][p.STATUS_JSON] = "[1, 2]"  # not a status
        return Message(content, reply_to=message)

    server.answer = answer
    server.collect_owed_status([2, 3])  # no exception: each is logged and left out
    assert server.owes_status == {2, 3}
    assert server.mirror.sites["site-c"].unplanned_rounds == [1]  # still counted at its budget
    server.answer = _status_reply
    assert server.query_status([2, 3], at_start=True) and not server.not_started


def test_under_client_level_dp_the_base_model_goes_first_in_an_exchange_of_its_own(
    tmp_path: Path, task_identity: None
) -> None:
    """There any site's failure voids a round for every site: a site that cannot install the
    model (or does not answer) is left out before round 1, not discovered in it."""
    server = ScriptedFederation(
        tmp_path, "federation.client_dp.enabled=true", "federation.client_dp.delta=0.1"
    )
    server.sites = dict(SITES)
    for site in SITES.values():
        server.mirror.adopt_status(_status(site))

    def answer(message: Message) -> Message | None:
        node = message.metadata.dst_node_id
        if node == 1:
            return Message(with_site_status(RecordDict(), _status("site-a")), reply_to=message)
        if node == 2:
            return error_reply(message, p.ErrorCode.BASE_MODEL, "site site-b: base model: ...")
        return None

    server.answer = answer
    server.send_base_model([1, 2, 3], STATE)  # type: ignore[arg-type]
    assert [(m.metadata.message_type, p.BASE in m.content.array_records) for m in server.sent] == [
        (p.BASE_MODEL, True)
    ] * 3
    assert server.needs_base == {2, 3} and server.owes_status == {2, 3}
    assert server.mirror.selectable() == ["site-a"]
    assert server.mirror.sites["site-c"].excluded == BASE_MODEL_MISSING
    # without client-level DP nothing is sent now: the model waits for the next message
    plain = ScriptedFederation(tmp_path / "plain")
    plain.send_base_model([1, 2, 3], STATE)  # type: ignore[arg-type]
    assert plain.sent == [] and plain.needs_base == {1, 2, 3}


PLAN = {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps_per_round": 2}


def test_a_stale_sites_work_reply_does_not_replace_the_round_presumed_for_it(
    server: ScriptedFederation,
) -> None:
    """A site whose round was presumed (its train failed or went silent) may report a ledger
    from before that round's reservation (a simulated site still training it in another
    worker): only its answer to a status query, asked after, replaces the presumed round."""
    server.mirror.adopt_status({**_status("site-c"), "plan": PLAN})
    server.mirror.presume_round("site-c", 1)
    server.stale.add(3)
    server.answer = _scored  # site-c's status still shows no round
    scores = server.site_metrics([1, 2, 3], STATE)  # type: ignore[arg-type]
    assert set(scores) == {"site-a", "site-b", "site-c"}
    assert [e["round"] for e in server.mirror.sites["site-c"].unconfirmed] == [1]
    assert server.owes_status == {3}
    server.sent.clear()
    server.answer = _status_reply
    server.collect_owed_status([1, 2, 3])  # the status query, after: the site's word now
    assert [m.metadata.dst_node_id for m in server.sent] == [3]
    assert server.mirror.sites["site-c"].unconfirmed == []
    assert server.owes_status == set()


def test_a_known_node_cannot_answer_as_another_site(server: ScriptedFederation) -> None:
    server.mirror.presume_round("site-b", 1)  # site-b: no plan yet, bounded by its budget
    server.owes_status.add(1)
    server.answer = lambda m: Message(status_content(_status("site-b")), reply_to=m)
    assert server.query_status([1], at_start=False) == []
    assert server.sites == SITES  # node 1 is still site-a, node 2 still site-b
    assert server.mirror.sites["site-b"].unplanned_rounds == [1]  # not cleared by site-a
    assert server.owes_status == {1}


def test_the_base_model_code_counts_only_from_a_node_that_was_sent_the_model(
    server: ScriptedFederation,
) -> None:
    """4005 says "nothing charged, the base model could not be installed": from a node that
    was not sent one it is a failure like any other, and the round it was sent is presumed."""
    for site in SITES.values():
        server.mirror.adopt_status({**_status(site), "plan": PLAN})
    server.needs_base = {2}
    server.answer = lambda m: error_reply(m, p.ErrorCode.BASE_MODEL, "base model: ...")
    outcome = server.train_round(1, STATE, [1, 2, 3])  # type: ignore[arg-type]
    assert outcome.trained == []
    mirror = server.mirror.sites
    assert mirror["site-b"].excluded == BASE_MODEL_MISSING and not mirror["site-b"].unconfirmed
    for site in ("site-a", "site-c"):
        assert [e["round"] for e in mirror[site].unconfirmed] == [1], site
    assert server.stale == {1, 3}


@pytest.mark.parametrize(
    "extreme",
    [{"noise_multiplier": 1e-300}, {"steps": 10**400}, {"noise_multiplier": 1e300}],
)
def test_a_status_whose_spending_cannot_be_computed_is_rejected_not_fatal(
    server: ScriptedFederation, extreme: dict[str, Any]
) -> None:
    """In the ledger's ranges but beyond what the accountant computes: rejected as a reply
    (the mirror would otherwise raise in the middle of the run)."""
    event = {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 2, "kind": "dp-sgd"}
    event |= {"round": 1, "status": "settled", **extreme}
    status = _status("site-c")
    status["ledger"] = {**status["ledger"], "events": [event]}
    server.owes_status.add(3)
    server.answer = lambda m: Message(status_content(status), reply_to=m)
    assert server.query_status([3], at_start=False) == []
    assert server.owes_status == {3} and server.mirror.sites["site-c"].events == []
    assert server.mirror.selectable() == ["site-a", "site-b", "site-c"]  # still computes


def test_a_new_node_naming_an_online_site_mid_run_is_not_admitted(
    server: ScriptedFederation,
) -> None:
    """Two SuperNodes as one site stop a run at its start; mid-run (a SuperNode restarted
    under a new key before its old node id went offline) that reply is rejected instead."""
    server.answer = lambda m: Message(status_content(_status("site-a")), reply_to=m)
    assert server.query_status([4], at_start=False) == []
    assert server.sites == SITES
    with pytest.raises(ConfigError, match="both claim to be site 'site-a'"):
        server.query_status([4], at_start=True)


def test_a_round_sent_before_the_server_died_is_still_counted_on_resume(
    server: ScriptedFederation, tmp_path: Path
) -> None:
    """The server dies after round 1's train messages went out and before its checkpoint; a
    site may have reserved the round on arrival. Resumed, the server starts from the mirror
    written ahead of the send, so a site that never reports again is still counted for the
    round (ledger.json never understates it); a site that reports replaces it by its own."""
    from server.checkpoint import ServerState, ledgers_to_resume

    for site in SITES.values():
        server.mirror.adopt_status({**_status(site), "plan": PLAN})
    checkpoint = ServerState(0, {}, "f" * 64, {}, {}, server.mirror.state_dict(), {}, [])

    class ServerDied(Exception):
        pass

    def die(message: Message) -> Message | None:
        raise ServerDied

    server.answer = die
    with pytest.raises(ServerDied):
        server.train_round(1, STATE, [1, 2, 3])  # type: ignore[arg-type]
    assert checkpoint.ledgers == server.mirror.state_dict()  # nothing presumed in memory yet
    resumed = MirroredLedgers.from_state_dict(ledgers_to_resume(tmp_path, checkpoint))
    resumed.adopt_status({**_status("site-a"), "plan": PLAN})  # back online: its own word
    report = resumed.report()
    assert [e["round"] for e in report["site-c"]["events"]] == [1]
    assert report["site-c"]["epsilon"] > 0 and report["site-a"]["epsilon"] == 0
    # once round 1's checkpoint exists, what was written ahead of it is no longer read
    after = ServerState(1, {}, "f" * 64, {}, {}, {"checkpointed": {}}, {}, [])
    assert ledgers_to_resume(tmp_path, after) == {"checkpointed": {}}
