"""The real ClientApp, called in-process with Flower messages: replies that pass the
allow-list, and refusals that are error replies (never a crash), with no private path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.app import app
from common.federated import protocol as p
from common.federated.model import initial_model
from common.federated.run_config import SPEC_ENV, write_spec
from common.fl_records import (
    parse_evaluate_reply,
    parse_site_status,
    parse_status,
    parse_synthetic_reply,
    parse_train_evaluation,
    parse_train_reply,
    to_array_record,
)
from common.training.engine import state_fingerprint, trainable_state
from common.training.settings import resolve_device
from tests.conftest import tiny_federated_config


@pytest.fixture
def site(tiny_workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from flwr.supercore.task_identity import TaskIdentity

    # what a SuperNode sets before it runs a ClientApp (as Flower's own simulation does)
    for key, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 7)):
        monkeypatch.setattr(TaskIdentity, key, value)
    overrides = ["experiment=federated/tiny", f"out_dir={tiny_workspace}", f"run_dir={tmp_path}"]
    monkeypatch.setenv(SPEC_ENV, str(write_spec(tmp_path / "spec.json", overrides)))
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 0, "num-partitions": 2},
        state=RecordDict(),
        run_config={},
    )
    return context, tiny_federated_config(tiny_workspace, f"run_dir={tmp_path}")


def _ask(context: Context, message_type: str, content: RecordDict) -> Message:
    return app(Message(content=content, dst_node_id=7, message_type=message_type), context)


def _started(context: Context, config: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The site answered its status; the server's base model and its trainable part."""
    _ask(context, p.STATUS, RecordDict())
    model = initial_model(config, resolve_device("cpu"))
    base = {k: v.numpy() for k, v in model.state_dict().items()}
    return base, {k: v.numpy() for k, v in trainable_state(model).items()}


def test_a_site_speaks_only_the_allow_list(site) -> None:  # type: ignore[no-untyped-def]
    context, config = site
    status = parse_status(_ask(context, p.STATUS, RecordDict()).content)
    assert status["site"] == "site-a" and status["ledger"]["events"] == []
    count = config.gan.per_site
    reply = _ask(context, p.SYNTHESIZE, RecordDict({p.CONFIG: ConfigRecord({p.COUNT: count})}))
    pixels, labels, provenance = parse_synthetic_reply(reply.content, count, 32)
    assert provenance["memorisation_check"] == "filtered" and not provenance["formal_guarantee"]
    assert pixels.dtype == np.uint8 and set(labels.tolist()) <= {0, 1}
    # the synthesize reply says what the GAN charged: no status exchange needed after it
    assert parse_site_status(reply.content)["synthetic_guarantee"].startswith("no formal")
    model = initial_model(config, resolve_device("cpu"))
    base = {k: v.numpy() for k, v in model.state_dict().items()}
    trainable = {k: v.numpy() for k, v in trainable_state(model).items()}
    expected = {k: v.shape for k, v in trainable.items()}
    for round_number in (1, 2, 3, 4):
        train = RecordDict(
            {
                p.ARRAYS: to_array_record(trainable),
                p.CONFIG: ConfigRecord(
                    {
                        p.ROUND: round_number,
                        p.BASE_SHA: state_fingerprint(base),
                        p.WEIGHTING: "equal",
                        p.EVALUATE_RECEIVED: round_number == 2,
                    }
                ),
            }
        )
        if round_number == 1:  # the run's first message to the site brings the base model
            train[p.BASE] = to_array_record(base)
        reply = _ask(context, p.TRAIN, train)
        if round_number <= 3:
            arrays, metrics, event = parse_train_reply(reply.content, expected, "equal")
            assert metrics[p.WEIGHT] == 1.0 and event["round"] == round_number
            # the reply's status is the site's ledger with this round in it
            carried = parse_site_status(reply.content)["ledger"]["events"]
            assert [e["round"] for e in carried if e["kind"] == "dp-sgd"] == list(
                range(1, round_number + 1)
            )
            scores = parse_train_evaluation(reply.content)
            if round_number == 2:  # round 1's model, scored in round 2's exchange
                assert scores is not None and set(scores) >= {"auroc", p.WEIGHT}
            else:
                assert scores is None
            trainable = arrays
        else:  # beyond the site's plan: an error reply, not a crash, and nothing charged
            assert reply.has_error() and reply.error.code == p.ErrorCode.BUDGET_EXCEEDED
            assert "nothing charged" in reply.error.reason
    events = parse_status(_ask(context, p.STATUS, RecordDict()).content)["ledger"]["events"]
    assert [e["round"] for e in events] == [1, 2, 3]


def test_errors_never_carry_private_paths(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    context, _ = site
    _ask(context, p.STATUS, RecordDict())
    bad = RecordDict(
        {
            p.ARRAYS: to_array_record({"head.weight": np.zeros((2, 3), np.float32)}),
            p.CONFIG: ConfigRecord({p.ROUND: 1, p.BASE_SHA: "0" * 64}),
        }
    )
    reply = _ask(context, p.TRAIN, bad)  # no base model was ever sent
    assert reply.has_error() and reply.error.code == p.ErrorCode.CONFIG
    assert "see the site's log" in reply.error.reason
    assert str(tmp_path) not in reply.error.reason
    log = (tmp_path / "sites" / "site-a" / "state" / "site.log").read_text()
    assert "base model" in log  # the full message stays at the site
    # a site's own mistake is its message, not a stack (it was repeated per status query)
    assert "train failed: " in log and "Traceback" not in log


def test_a_refused_node_config_points_to_the_supernodes_output(site) -> None:  # type: ignore[no-untyped-def]
    """Refused before the site's log opens: "see the site's log" sent its IT to a log that
    did not hold the message."""
    context, _ = site
    context.node_config = {"site-name": "h1", "data-dir": "/d", "state-dir": "/s"}
    context.node_config |= {"epsilon-cap": 4, "delta_cap": 1e-5}  # meant: delta-cap
    reply = _ask(context, p.STATUS, RecordDict())
    assert reply.has_error() and reply.error.code == p.ErrorCode.CONFIG
    assert "see the SuperNode's output" in reply.error.reason
    assert "delta_cap" not in reply.error.reason  # the details stay at the site


def test_scores_come_after_training_and_their_failure_costs_only_them(
    site, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from common.site.runtime import SiteRuntime

    context, config = site
    base, trainable = _started(context, config)
    expected = {k: v.shape for k, v in trainable.items()}
    calls: list[int] = []

    def failing(self: SiteRuntime, arrays: object, sha: str) -> dict[str, float]:
        calls.append(len(self._ledger().events))  # the round is charged before scoring
        raise OSError("validation patches unreadable")

    monkeypatch.setattr(SiteRuntime, "evaluate", failing)
    for round_number in (1, 2, 3, 4):
        config_record = ConfigRecord(
            {
                p.ROUND: round_number,
                p.BASE_SHA: state_fingerprint(base),
                p.WEIGHTING: "equal",
                p.EVALUATE_RECEIVED: True,
            }
        )
        content = RecordDict({p.ARRAYS: to_array_record(trainable), p.CONFIG: config_record})
        if round_number == 1:
            content[p.BASE] = to_array_record(base)
        reply = _ask(context, p.TRAIN, content)
        if round_number <= 3:  # trained and charged; only the scores are missing
            arrays, _, event = parse_train_reply(reply.content, expected, "equal")
            assert event["round"] == round_number and parse_train_evaluation(reply.content) is None
            trainable = arrays
        else:  # beyond the plan: refused before any scoring
            assert reply.has_error() and reply.error.code == p.ErrorCode.BUDGET_EXCEEDED
    assert calls == [1, 2, 3]


def test_a_policy_refusal_tells_the_server_which_rule(site, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """What a site's own node_config refuses is said in the reply (only the run's setting and
    the site's rule), so the server can change the run; other privacy errors stay at the site."""
    context, config = site
    assert not config.sites[0].share_exact_count  # the tiny site did not opt in
    base, trainable = _started(context, config)
    train = RecordDict(
        {
            p.BASE: to_array_record(base),
            p.ARRAYS: to_array_record(trainable),
            p.CONFIG: ConfigRecord(
                {
                    p.ROUND: 1,
                    p.BASE_SHA: state_fingerprint(base),
                    p.WEIGHTING: "examples",
                    p.EVALUATE_RECEIVED: False,
                }
            ),
        }
    )
    reply = _ask(context, p.TRAIN, train)
    assert reply.has_error() and reply.error.code == p.ErrorCode.PRIVACY
    assert "did not opt in (node_config share-exact-count=true)" in reply.error.reason
    assert str(tmp_path) not in reply.error.reason


def _train_content(
    trainable: dict[str, np.ndarray], sha: str, *, base: dict[str, np.ndarray] | None = None
) -> RecordDict:
    config = {p.ROUND: 1, p.BASE_SHA: sha, p.WEIGHTING: "equal", p.EVALUATE_RECEIVED: False}
    content = RecordDict({p.ARRAYS: to_array_record(trainable), p.CONFIG: ConfigRecord(config)})
    if base is not None:
        content[p.BASE] = to_array_record(base)
    return content


def test_a_base_model_that_does_not_match_its_fingerprint_is_refused_before_any_charge(
    site,
) -> None:  # type: ignore[no-untyped-def]
    context, config = site
    base, trainable = _started(context, config)
    tampered = {k: v + 1.0 if k == next(iter(base)) else v for k, v in base.items()}
    reply = _ask(
        context, p.TRAIN, _train_content(trainable, state_fingerprint(base), base=tampered)
    )
    assert reply.has_error() and reply.error.code == p.ErrorCode.BASE_MODEL
    shape_broken = {k: v[:1] if v.ndim else v for k, v in base.items()}  # another model's
    reply = _ask(  # its own fingerprint: refused when it does not load into the site's model
        context,
        p.EVALUATE,
        _train_content(trainable, state_fingerprint(shape_broken), base=shape_broken),
    )
    assert reply.has_error() and reply.error.code == p.ErrorCode.BASE_MODEL
    events = parse_status(_ask(context, p.STATUS, RecordDict()).content)["ledger"]["events"]
    assert events == []  # refused before the round: nothing reserved, nothing charged
    # a base model message (client-level DP's own exchange) must bring one
    reply = _ask(context, p.BASE_MODEL, _train_content(trainable, state_fingerprint(base)))
    assert reply.has_error() and reply.error.code == p.ErrorCode.BASE_MODEL
    reply = _ask(context, p.BASE_MODEL, _train_content(trainable, "0" * 64, base=base))
    assert reply.has_error() and reply.error.code == p.ErrorCode.BASE_MODEL
    # the right model, brought by an evaluate message, is installed and scores
    reply = _ask(context, p.EVALUATE, _train_content(trainable, state_fingerprint(base), base=base))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert "auroc" in parse_evaluate_reply(reply.content)
    assert parse_site_status(reply.content)["ledger"]["non_dp_uses"]  # the scores' use, recorded
    # checked before it replaces anything: a tampered model leaves the one held in place
    sha = state_fingerprint(base)
    reply = _ask(context, p.EVALUATE, _train_content(trainable, sha, base=tampered))
    assert reply.has_error() and reply.error.code == p.ErrorCode.BASE_MODEL
    reply = _ask(context, p.EVALUATE, _train_content(trainable, sha))  # no model brought
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""


def test_client_level_clipping_clips_a_round_that_brings_the_base_model(site) -> None:  # type: ignore[no-untyped-def]
    """Flower's fixedclipping_mod takes exactly one ArrayRecord: the base model travels around
    it, and the update (returned minus sent trainable weights) is clipped to the norm."""
    context, config = site
    base, trainable = _started(context, config)
    content = _train_content(trainable, state_fingerprint(base), base=base)
    norm = 1e-3
    content.config_records[p.CONFIG]["clipping_norm"] = norm
    reply = _ask(context, p.TRAIN, content)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    expected = {k: v.shape for k, v in trainable.items()}
    arrays, _, event = parse_train_reply(reply.content, expected, "equal")
    update = sum(float(np.sum((arrays[k] - trainable[k]) ** 2)) for k in trainable) ** 0.5
    assert 0 < update <= norm * (1 + 1e-5) and event["round"] == 1


def test_a_base_model_message_installs_it_and_answers_with_the_sites_status(site) -> None:  # type: ignore[no-untyped-def]
    context, config = site
    base, trainable = _started(context, config)
    sha = state_fingerprint(base)
    reply = _ask(context, p.BASE_MODEL, _train_content(trainable, sha, base=base))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert set(reply.content.keys()) == {p.SITE_STATUS}
    assert parse_site_status(reply.content)["site"] == "site-a"
    reply = _ask(context, p.TRAIN, _train_content(trainable, sha))  # no model brought: held
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
